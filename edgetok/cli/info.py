"""``edgetok info``: what a model bundle holds, with its hashes checked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from edgetok.bundle import Bundle, BundleError, default_bundle_path, load_bundle
from edgetok.runtime import available_backends


@click.command("info")
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON, with sizes.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 checks (files must exist).")
def command(bundle: Path | None, as_json: bool, no_verify: bool) -> None:
    """Show the models, token rate, segmenter settings and eval numbers of BUNDLE.

    BUNDLE is a bundle directory or its bundle.toml; default: the bundle shipped with
    edgetok. Every file's sha256 is checked unless --no-verify.
    """
    try:
        loaded = load_bundle(bundle or default_bundle_path(), verify=not no_verify)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    files = _files(loaded)
    backends = available_backends()
    if as_json:
        report = {
            "path": str(loaded.manifest_path),
            "verified": not no_verify,
            "manifest": loaded.to_dict(),
            "files": files,
            "backends": backends,
        }
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(_text(loaded, files, backends, verified=not no_verify))


def _files(bundle: Bundle) -> dict[str, dict[str, Any]]:
    """Role (and "codebook") -> file name, size in bytes (with the external data the bundle
    ships), parameter count or None, and the external data's file, bytes (None while a
    rebuilt one is not there yet) and source."""
    files = {}
    for role, entry in bundle.models.items():
        path = bundle.path_of(role)
        files[role] = {"file": entry.file, "bytes": path.stat().st_size, "params": _params(path)}
        external = bundle.external_path_of(role)
        if external is not None:
            size = external.stat().st_size if external.is_file() else None
            files[role]["external"] = {
                "file": entry.external_file,
                "bytes": size,
                "source": entry.external_source,
            }
            if entry.ships_external and size is not None:
                files[role]["bytes"] += size
    files["codebook"] = {
        "file": bundle.tokens.codebook_file,
        "bytes": bundle.codebook_path.stat().st_size,
        "params": None,
    }
    return files


def _params(path: Path) -> int | None:
    """Number of initializer elements of an ONNX model; None without the ``onnx`` package
    or when the file does not parse (``--no-verify`` shows unverified files too)."""
    if path.suffix != ".onnx":
        return None
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # ImportError, or the parser's own DecodeError
        return None
    return sum(math.prod(tensor.dims) for tensor in model.graph.initializer)


def _external_line(external: dict[str, Any]) -> str:
    """Where a model's external data comes from, for the models table."""
    size = "not yet built" if external["bytes"] is None else _size(external["bytes"])
    if external["source"] is None:
        return f"weights in {external['file']} ({size}, shipped; counted in size)"
    return f"weights in {external['file']} ({size}, rebuilt from {external['source']})"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _flat(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in table.items():
        if isinstance(value, dict):
            rows += _flat(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _text(
    bundle: Bundle,
    files: dict[str, dict[str, Any]],
    backends: dict[str, str | None],
    *,
    verified: bool,
) -> str:
    meta, fe, tok, seg = bundle.meta, bundle.frontend, bundle.tokens, bundle.segmenter

    def threshold(value: float | None) -> str:
        return "off" if value is None else f"{value:g}"

    lines = [
        f"{meta.name}" + (f": {meta.description}" if meta.description else ""),
        f"  manifest   {bundle.manifest_path}",
        f"  bundle     schema {meta.schema_version}, target {meta.target}, created {meta.created}",
        f"  hashes     {f'verified ({len(files)} files)' if verified else 'not verified'}",
        f"  audio      {bundle.audio.sample_rate} Hz; log-mel {fe.n_mels} bins "
        f"{fe.f_min:g}-{fe.f_max:g} Hz, n_fft {fe.n_fft}, window {fe.win_length}, "
        f"hop {fe.hop_length}, floor {fe.log_floor:g}",
        f"  tokens     {tok.rate_hz:g} Hz, vocab {tok.vocab_size}, codebook {tok.codebook_file} "
        f"({_size(files['codebook']['bytes'])})",
        f"  segmenter  global {threshold(seg.global_threshold)}, relative "
        f"{threshold(seg.relative_threshold)}, {seg.min_len}-{seg.max_len} tokens, "
        f"target {seg.target_hz:g} Hz",
        "  backends   "
        + ", ".join(f"{name} ({reason or 'available'})" for name, reason in backends.items()),
        "",
        f"  {'model':<11} {'file':<20} {'size':>9} {'params':>10}  {'precision':<9}  backend",
    ]
    for role, entry in bundle.models.items():
        info = files[role]
        params = "-" if info["params"] is None else f"{info['params']:,}"
        lines.append(
            f"  {role:<11} {entry.file:<20} {_size(info['bytes']):>9} {params:>10}  "
            f"{entry.precision:<9}  {entry.backend}"
        )
        if "external" in info:
            lines.append(f"{'':14}{_external_line(info['external'])}")
        lines += [f"{'':14}in  {spec}" for spec in entry.inputs]
        lines += [f"{'':14}out {spec}" for spec in entry.outputs]
    total = sum(files[role]["bytes"] for role in bundle.models)
    lines.append(f"  {'total':<11} {'':<20} {_size(total):>9}")
    for title, table in (("eval", bundle.eval), ("training", bundle.training)):
        if table:
            lines += ["", f"  {title}"]
            lines += [f"    {key} = {value}" for key, value in _flat(table)]
    return "\n".join(lines)
