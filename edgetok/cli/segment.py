"""``edgetok segment``: cut one sequence of token entropies into segments."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import click
import numpy as np


def _load_entropy(path: Path) -> np.ndarray:
    """The 1-D float array in ``path`` (a .npy file), or a click error naming the file."""
    hint = "expected a .npy file holding a 1-D float array of entropies"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise click.BadParameter(f"{path}: cannot read as .npy ({exc}); {hint}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        names = ", ".join(data.files)
        data.close()
        raise click.BadParameter(f"{path}: is a .npz archive ({names}); {hint}")
    if data.ndim != 1:
        raise click.BadParameter(f"{path}: holds an array of shape {data.shape}; {hint}")
    if data.dtype.kind != "f":
        raise click.BadParameter(f"{path}: holds dtype {data.dtype}; {hint}")
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size:
        i = int(bad[0])
        raise click.BadParameter(f"{path}: non-finite entropy {float(data[i])!r} at index {i}")
    return data


def _finite(value: float | None, name: str) -> None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be finite, got {value}", param_hint=name)


@click.command("segment")
@click.argument(
    "entropy_file",
    metavar="ENTROPY.npy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--target-hz",
    type=click.FloatRange(min=0, min_open=True),
    help="Solve the threshold (see --rule) so that the file gets this many segments "
    "per second. Excludes the threshold it solves.",
)
@click.option(
    "--global-threshold",
    type=float,
    help="Cut where H[t] > this (nats).",
)
@click.option(
    "--relative-threshold",
    type=float,
    help="Cut where H[t] - H[t-1] > this (nats).",
)
@click.option(
    "--rule",
    type=click.Choice(["global", "relative"]),
    default="global",
    show_default=True,
    help="Which threshold --target-hz solves; the other one, if given, is held fixed.",
)
@click.option(
    "--min-len",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Drop a rule cut while the current segment is shorter than this (tokens).",
)
@click.option(
    "--max-len",
    type=click.IntRange(min=1),
    default=None,
    help="Force a cut once the current segment has this many tokens [default: none].",
)
@click.option(
    "--token-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="Tokens per second of the sequence.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def command(
    entropy_file: Path,
    target_hz: float | None,
    global_threshold: float | None,
    relative_threshold: float | None,
    rule: str,
    min_len: int,
    max_len: int | None,
    token_rate: float,
    as_json: bool,
) -> None:
    """Segment start indices of the entropies in ENTROPY.npy (a 1-D float .npy).

    A segment starts at token t when H[t] > --global-threshold, or when
    H[t] - H[t-1] > --relative-threshold, bounded by --min-len/--max-len; token 0
    always starts one. With no threshold, only --max-len cuts. Use --target-hz to ask
    for a rate (e.g. 15) instead of a threshold.

    With --json, prints {"starts", "segments_per_s", "tokens", "global_threshold",
    "relative_threshold", "min_len", "max_len"}.

    \b
    Examples:
      edgetok segment utt.npy --target-hz 15 --min-len 2 --max-len 10
      edgetok segment utt.npy --global-threshold 2.5 --relative-threshold 1.0 --json
    """
    from edgetok import segment as seg

    _finite(global_threshold, "--global-threshold")
    _finite(relative_threshold, "--relative-threshold")
    if max_len is not None and min_len > max_len:
        raise click.UsageError(f"--min-len ({min_len}) must be <= --max-len ({max_len})")
    if target_hz is not None:
        solved = "--global-threshold" if rule == "global" else "--relative-threshold"
        given = global_threshold if rule == "global" else relative_threshold
        if given is not None:
            raise click.UsageError(
                f"--target-hz with --rule {rule} solves {solved}: give one or the other"
            )
    entropy = _load_entropy(entropy_file)
    n = int(entropy.shape[0])

    if target_hz is not None:
        try:
            theta = seg.threshold_for_rate(
                entropy,
                token_rate,
                target_hz,
                rule=rule,  # type: ignore[arg-type]
                min_len=min_len,
                max_len=max_len,
                global_threshold=global_threshold,
                relative_threshold=relative_threshold,
            )
        except ValueError as exc:
            raise click.BadParameter(f"{entropy_file}: {exc}", param_hint="--target-hz") from None
        if rule == "global":
            global_threshold = theta
        else:
            relative_threshold = theta

    starts = seg.boundaries(entropy, global_threshold, relative_threshold, min_len, max_len)
    duration = n / token_rate
    rate = len(starts) / duration if n else 0.0

    if as_json:
        obj = {
            "starts": [int(s) for s in starts],
            "segments_per_s": rate,
            "tokens": n,
            "global_threshold": global_threshold,
            "relative_threshold": relative_threshold,
            "min_len": min_len,
            "max_len": max_len,
        }
        click.echo(json.dumps(obj))
        return

    def fmt(v: float | None) -> str:
        return "off" if v is None else f"{v:.6g}"

    solved_note = f" (solved for {target_hz:g} Hz, --rule {rule})" if target_hz else ""
    click.echo(f"{entropy_file}: {n} tokens, {duration:.3f} s at {token_rate:g} tokens/s")
    click.echo(
        f"global threshold {fmt(global_threshold)}, relative threshold "
        f"{fmt(relative_threshold)}{solved_note}; min_len {min_len}, "
        f"max_len {max_len if max_len is not None else 'none'}"
    )
    if n == 0:
        click.echo("no tokens, no segments")
        return
    lengths = seg.segment_lengths(starts, n)
    click.echo(
        f"{len(starts)} segments, {rate:.3f} per second; length mean {lengths.mean():.2f}, "
        f"min {lengths.min()}, max {lengths.max()} tokens"
    )
    shown = " ".join(str(int(s)) for s in starts[:32])
    more = f" ... (+{len(starts) - 32} more; --json for all)" if len(starts) > 32 else ""
    click.echo(f"starts: {shown}{more}")
