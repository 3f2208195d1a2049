"""Peak memory of ``edgetok transcribe`` against file length.

Run: ``python -m edgetok.bench.transcribe_rss``.

Makes speech files of the given lengths by looping a WAV (default: the shipped bundle's
sample.wav) with ``--gap`` seconds of silence after each pass, then runs
``edgetok transcribe FILE --json`` (plus any arguments after ``--``) on each in a child
process and reads the child's peak resident memory (``ru_maxrss`` from ``wait4``). It
prints one row per file and the ratio of each peak to the first one's; ``--json`` prints
the rows as one JSON object instead.

Standard library only, and the child's output goes to a file, so this process stays small:
on Linux a child's ``ru_maxrss`` starts from its parent's resident memory at the spawn.
Files are written once under ``--dir`` (default: /tmp/edgetok-rss) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/tmp/edgetok-rss")
BLOCK_FRAMES = 1 << 16


def default_voice() -> Path:
    """The shipped bundle's sample.wav, found without importing edgetok."""
    return Path(__file__).resolve().parent.parent / "edgetok" / "models" / "default" / "sample.wav"


def make_speech(voice: Path, minutes: float, gap_s: float, out: Path) -> Path:
    """``voice`` looped with ``gap_s`` of silence after each pass into the WAV ``out``,
    ``minutes`` long (written block by block; kept when it is already there)."""
    if out.is_file():
        return out
    with wave.open(str(voice), "rb") as source:
        params = source.getparams()
        speech = source.readframes(params.nframes)
    frame_bytes = params.sampwidth * params.nchannels
    one_pass = speech + bytes(round(gap_s * params.framerate) * frame_bytes)
    total = round(minutes * 60 * params.framerate) * frame_bytes
    partial = out.with_suffix(".part")
    with wave.open(str(partial), "wb") as sink:
        sink.setparams(params)
        written = 0
        while written < total:
            chunk = one_pass[: total - written]
            sink.writeframes(chunk)
            written += len(chunk)
    partial.rename(out)
    return out


def measure(path: Path, extra: list[str], log_dir: Path) -> dict[str, Any]:
    """Run ``edgetok transcribe path --json`` in a child; its peak RSS and result."""
    output = log_dir / f"{path.stem}.jsonl"
    errors = log_dir / f"{path.stem}.err"
    command = [sys.executable, "-m", "edgetok", "transcribe", str(path), "--json", *extra]
    started = time.perf_counter()
    with output.open("wb") as stdout, errors.open("wb") as stderr:
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - started
    row: dict[str, Any] = {
        "file": str(path),
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "wall_s": wall_s,
        "exit_status": child.returncode,
    }
    if child.returncode != 0:
        row["stderr_tail"] = errors.read_text(errors="replace")[-2000:]
        return row
    result = json.loads(output.read_text().splitlines()[-1])
    row |= {
        "audio_s": result["duration_s"],
        "utterances": len(result["utterances"]),
        "longest_utterance_s": max(u["end_s"] - u["start_s"] for u in result["utterances"]),
        "rtf": result["rtf"],
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 30.0])
    parser.add_argument("--voice", type=Path, default=None, help="WAV to loop")
    parser.add_argument("--gap", type=float, default=1.0, help="silence after each pass (s)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("extra", nargs="*", help="after --: more transcribe arguments")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    voice = args.voice or default_voice()
    rows = []
    for minutes in sorted(args.minutes):
        name = f"{voice.stem}-{minutes:g}min-gap{args.gap:g}.wav"
        path = make_speech(voice, minutes, args.gap, args.dir / name)
        print(f"transcribing {path} ...", file=sys.stderr, flush=True)
        row = {"minutes": minutes, **measure(path, args.extra, args.dir)}
        row["rss_ratio"] = row["peak_rss_mib"] / rows[0]["peak_rss_mib"] if rows else 1.0
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report = {
        "command": ["edgetok", "transcribe", "FILE", "--json", *args.extra],
        "gap_s": args.gap,
        "voice": str(voice),
        "parent_peak_rss_mib": _self_peak_mib(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{'minutes':>8} {'audio s':>9} {'utts':>6} {'peak RSS MiB':>13} {'ratio':>6} {'wall s':>8}"
    )
    for row in rows:
        print(
            f"{row['minutes']:8g} {row.get('audio_s', 0):9.1f} {row.get('utterances', 0):6d} "
            f"{row['peak_rss_mib']:13.1f} {row['rss_ratio']:6.3f} {row['wall_s']:8.1f}"
            + ("" if row["exit_status"] == 0 else f"  FAILED ({row['exit_status']})")
        )


def _self_peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
