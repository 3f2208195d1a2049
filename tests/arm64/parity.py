"""Parity of ``edgetok transcribe --local --json --dump-tokens`` between two machines.

Standard library only, so the same file runs on x86 and inside the arm64 root.

``python parity.py versions OUT.json``: this interpreter's machine and the versions of the
packages that compute the numbers (numpy, numba, onnxruntime, ai-edge-litert, edgetok).

``python parity.py compare REF_DIR DUT_DIR [--sample FILE] [--json OUT]``: each directory
holds ``<config>.jsonl`` (one transcribe object per file) and ``versions.json``; for each
config found in both, per file and over all files: token agreement (position by
position; a length difference counts as disagreement), entropy max abs diff (over the
positions both have), segment boundary F1 (exact start indices, pooled over files) and
transcript equality. Exit status 1 when a criterion of ``CRITERIA`` fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: config -> minimum token agreement; every config also needs boundary F1 >= MIN_F1 and
#: the sample's transcript equal on both machines.
CRITERIA = {"fp32-ort": 1.0, "litert-int8-rpi": 0.99}
MIN_F1 = 0.99
DEFAULT_MIN_AGREEMENT = 0.99
PACKAGES = ("numpy", "numba", "onnxruntime", "ai-edge-litert", "soundfile", "soxr", "edgetok")


def versions() -> dict[str, Any]:
    found: dict[str, Any] = {"machine": platform.machine(), "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["file"]: row for row in rows}


def compare_file(ref: dict[str, Any], dut: dict[str, Any]) -> dict[str, Any]:
    a, b = ref["token_ids"], dut["token_ids"]
    same = sum(x == y for x, y in zip(a, b, strict=False))
    n = max(len(a), len(b))
    ea, eb = ref["entropy"], dut["entropy"]
    diffs = [abs(x - y) for x, y in zip(ea, eb, strict=False)]
    sa, sb = set(ref["starts"]), set(dut["starts"])
    return {
        "tokens": (len(a), len(b)),
        "agree": same,
        "positions": n,
        "entropy_max_abs_diff": max(diffs, default=0.0),
        "starts": (len(sa), len(sb)),
        "starts_common": len(sa & sb),
        "text_equal": ref["text"] == dut["text"],
        "text": (ref["text"], dut["text"]),
    }


def compare_config(ref: Path, dut: Path) -> dict[str, Any]:
    a, b = read_jsonl(ref), read_jsonl(dut)
    missing = sorted(set(a) ^ set(b))
    files = {name: compare_file(a[name], b[name]) for name in a if name in b}
    agree = sum(f["agree"] for f in files.values())
    positions = sum(f["positions"] for f in files.values())
    common = sum(f["starts_common"] for f in files.values())
    total_starts = sum(sum(f["starts"]) for f in files.values())
    return {
        "files": files,
        "missing": missing,
        "token_agreement": agree / positions if positions else 0.0,
        "tokens": positions,
        "entropy_max_abs_diff": max((f["entropy_max_abs_diff"] for f in files.values()), default=0),
        "boundary_f1": 2 * common / total_starts if total_starts else 1.0,
        "transcripts_equal": sum(f["text_equal"] for f in files.values()),
    }


def check(config: str, result: dict[str, Any], sample: str | None) -> list[str]:
    """The criteria ``result`` fails, as sentences."""
    failures = []
    if result["missing"]:
        failures.append(f"{config}: files on one machine only: {result['missing']}")
    need = CRITERIA.get(config, DEFAULT_MIN_AGREEMENT)
    if result["token_agreement"] < need:
        failures.append(f"{config}: token agreement {result['token_agreement']:.4%} < {need:.0%}")
    if result["boundary_f1"] < MIN_F1:
        failures.append(f"{config}: boundary F1 {result['boundary_f1']:.4f} < {MIN_F1}")
    if sample is not None:
        row = result["files"].get(sample)
        if row is None:
            failures.append(f"{config}: the sample {sample} was not transcribed on both")
        elif not row["text_equal"]:
            failures.append(f"{config}: the sample's transcripts differ: {row['text']}")
    return failures


def report(ref: Path, dut: Path, sample: str | None) -> tuple[str, dict[str, Any], list[str]]:
    vr = json.loads((ref / "versions.json").read_text())
    vd = json.loads((dut / "versions.json").read_text())
    configs = sorted({p.stem for p in ref.glob("*.jsonl")} & {p.stem for p in dut.glob("*.jsonl")})
    lines = [f"parity: {vd['machine']} (emulated) vs {vr['machine']} reference"]
    for name in ("python", *PACKAGES):
        mark = "" if vr.get(name) == vd.get(name) else "   <- differs"
        lines.append(f"  {name:15s} {vr.get(name)!s:12s} {vd.get(name)!s:12s}{mark}")
    results, failures = {}, []
    for config in configs:
        result = compare_config(ref / f"{config}.jsonl", dut / f"{config}.jsonl")
        results[config] = result
        failures += check(config, result, sample)
        lines += [
            "",
            f"{config}: {len(result['files'])} files, {result['tokens']} tokens",
            f"  token agreement        {result['token_agreement']:.4%}",
            f"  entropy max abs diff   {result['entropy_max_abs_diff']:.3g} nats",
            f"  boundary F1            {result['boundary_f1']:.4f}",
            f"  transcripts equal      {result['transcripts_equal']}/{len(result['files'])}",
        ]
        for name, f in result["files"].items():
            lines.append(
                f"    {name}: tokens {f['agree']}/{f['positions']}, "
                f"H diff {f['entropy_max_abs_diff']:.2g}, starts {f['starts_common']}/"
                f"{f['starts'][0]}|{f['starts'][1]}, text {'=' if f['text_equal'] else '!='}"
                f" {f['text'][0]!r}" + ("" if f["text_equal"] else f" vs {f['text'][1]!r}")
            )
    if not configs:
        failures.append(f"no <config>.jsonl in both {ref} and {dut}")
    lines.append("")
    lines += [f"FAIL {f}" for f in failures] or ["PASS every parity criterion"]
    return "\n".join(lines), {"versions": {"ref": vr, "dut": vd}, "configs": results}, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("versions")
    v.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("ref", type=Path)
    c.add_argument("dut", type=Path)
    c.add_argument("--sample", help="the file whose transcripts must be equal")
    c.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.command == "versions":
        args.out.write_text(json.dumps(versions(), indent=2))
        return 0
    text, numbers, failures = report(args.ref, args.dut, args.sample)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({**numbers, "failures": failures}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
