"""The comparison suite: ``python -m edgetok.bench.suite``.

Benchmarks, in one interleaved run on the same audio, the shipped FP32 bundle and every
target built under ``build/`` (edgetok INT8 vs FP32; ONNX Runtime vs OpenVINO vs LiteRT),
with pocketsphinx 5.1 beside them, and lists the targets that cannot run here with the
reason. Prints the tables of ``edgetok bench`` and the ratios measured in this run, and
keeps the result (JSON with the machine description, the printed text, the plot) in
``bench/results/<UTC time>-<cpu>.{json,txt,png}``.

Run on a shared machine with ``nice -n 19`` (the clock is then the CPU clock, see
``edgetok.bench.profile``)::

    OMP_NUM_THREADS=1 nice -n 19 python -m edgetok.bench.suite --runs 5 --duration 10
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import click

from edgetok.beam import DEFAULT_BEAM
from edgetok.bench.configs import find_configs
from edgetok.bench.profile import profile
from edgetok.bench.table import format_report

__all__ = ["ALL_TARGETS", "RESULTS_DIR", "save"]

#: The targets the suite looks for, the shipped bundle first.
ALL_TARGETS: Final = ("default", "x86-cpu", "android", "rpi", "jetson")
#: Where results are kept: ``bench/results`` of the current directory (the repository's
#: when run from its root; never inside an installed package).
RESULTS_DIR: Final = Path("bench") / "results"


def save(report: dict[str, Any], text: str, results: Path, *, plot: bool = True) -> Path:
    """Write ``<results>/<time>-<cpu>.json`` and ``.txt`` (and ``.png``); the JSON path."""
    results.mkdir(parents=True, exist_ok=True)
    cpu = report["machine"]["cpu"]["model"] or "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    stem = results / f"{stamp}-{slug}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    if plot:
        try:
            from edgetok.bench.plot import plot_report

            plot_report(report, stem.with_suffix(".png"))
        except ImportError:
            pass
    return stem.with_suffix(".json")


@click.command()
@click.option(
    "--targets",
    default=",".join(ALL_TARGETS),
    show_default=True,
    help="Comma-separated targets (default = the shipped bundle).",
)
@click.option("--audio", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--duration", type=float, default=10.0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--runs", type=int, default=5, show_default=True)
@click.option("--beam", type=int, default=DEFAULT_BEAM, show_default=True, help="Server beam.")
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--clock", type=click.Choice(["auto", "wall", "cpu"]), default="auto")
@click.option("--cold-start/--no-cold-start", default=True, show_default=True)
@click.option(
    "--build-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build")
)
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    default=RESULTS_DIR,
    show_default=True,
    help="Where the result files are kept.",
)
@click.option("--save/--no-save", "keep", default=True, show_default=True)
def main(
    targets: str,
    audio: Path | None,
    duration: float,
    threads: int,
    runs: int,
    beam: int,
    warmup: int,
    clock: str,
    cold_start: bool,
    build_dir: Path,
    results: Path,
    keep: bool,
) -> None:
    """edgetok INT8 vs FP32, ONNX Runtime vs OpenVINO vs LiteRT, and pocketsphinx."""
    configs = find_configs([t for t in targets.split(",") if t], build_dir=build_dir)
    report = profile(
        configs,
        audio=audio,
        duration_s=None if audio else duration,
        threads=threads,
        runs=runs,
        warmup=warmup,
        pocketsphinx=True,
        cold=cold_start,
        clock=clock,
        beam=beam,
        command=shlex.join(["python", "-m", "edgetok.bench.suite", *sys.argv[1:]]),
        progress=lambda message: click.echo(message, err=True),
    )
    text = format_report(report)
    text = f"$ {report['command']}\n{text}"
    click.echo(text)
    if keep:
        click.echo(f"kept: {save(report, text, results)}", err=True)


if __name__ == "__main__":
    main()
