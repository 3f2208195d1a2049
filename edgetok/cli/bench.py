"""``edgetok bench``: per-stage latency of built targets through the real device pipeline.

A thin command over ``edgetok.bench.profile`` (timing), ``edgetok.bench.table`` (the
terminal tables) and ``edgetok.bench.plot`` (the PNG); docs/bench.md documents the JSON
schema.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

TARGETS_HELP = "default (the shipped FP32 bundle), x86-cpu, rpi, jetson, android"


@click.command("bench")
@click.option(
    "--target",
    "target",
    default="default",
    show_default=True,
    help=f"Target to benchmark: {TARGETS_HELP}; every bundle built for it under "
    "--build-dir (edgetok build) is benchmarked.",
)
@click.option(
    "--bundle",
    "bundle_path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Benchmark this bundle directory as --target instead of searching --build-dir.",
)
@click.option(
    "--compare",
    multiple=True,
    metavar="T2",
    help="Also benchmark target T2 in the same interleaved runs (repeatable).",
)
@click.option(
    "--audio",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Audio file to stream [default: the bundle's sample.wav repeated to --duration].",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds of audio made from the sample (silence between repetitions).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Intra-op threads of each model session.",
)
@click.option("--runs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option(
    "--clock",
    type=click.Choice(["auto", "wall", "cpu"]),
    default="auto",
    show_default=True,
    help="wall: latency on the wall clock; cpu: CPU seconds of this process (what each "
    "stage costs an idle core; for a machine busy with other work); auto: cpu when this "
    "process is niced or the load average is at least half the CPUs.",
)
@click.option(
    "--pocketsphinx/--no-pocketsphinx",
    default=None,
    help="Also time pocketsphinx on the same audio [default: when it is installed].",
)
@click.option(
    "--cold-start/--no-cold-start",
    default=True,
    show_default=True,
    help="Spawn the device process twice (Numba cache warm / empty) for cold start and "
    "peak memory.",
)
@click.option(
    "--flops/--no-flops",
    default=True,
    show_default=True,
    help="Count MACs of the ONNX graphs (needs onnx) and compare with this CPU's rate.",
)
@click.option(
    "--build-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build"),
    show_default=True,
    help="Where edgetok build wrote the targets (build/<target>*/).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (docs/bench.md).")
@click.option(
    "--out",
    "out_json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the JSON report to this file.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG: per-stage stacked bars per target and precision.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def command(
    target: str,
    bundle_path: Path | None,
    compare: tuple[str, ...],
    audio: Path | None,
    duration: float,
    threads: int,
    runs: int,
    warmup: int,
    clock: str,
    pocketsphinx: bool | None,
    cold_start: bool,
    flops: bool,
    build_dir: Path,
    as_json: bool,
    out_json: Path | None,
    plot_path: Path | None,
    quiet: bool,
) -> None:
    """Latency of every stage for --target (and --compare targets), measured in one run.

    Streams the audio through the device pipeline (VAD, log-mel, tokenizer, entropy LM,
    segmenter, aggregator, wire frames) to a real `edgetok serve` on 127.0.0.1, after a
    warm-up, --runs times per configuration, interleaved. Reports per stage the p50/p90/p99
    latency per utterance and its share of each second of audio; the device real-time
    factor; first-result and end-of-speech -> final-text latency; cold start (process
    spawn -> first token, with and without Numba's cache); peak RSS; model sizes;
    tokens/s, segments/s, bytes/s; the MACs per second of speech of each model and the
    fraction of this CPU's rate the measured time reaches. A target whose runtime is
    missing here (TensorRT without a GPU) or that is not built is listed with the reason.
    """
    import importlib.util

    try:
        from edgetok.bench.configs import find_configs
        from edgetok.bench.profile import profile
        from edgetok.bench.table import format_report
    except ImportError as exc:  # pragma: no cover - bench ships with edgetok
        raise click.ClickException(f"the bench package is not importable here ({exc})") from None
    from edgetok.bundle import BundleError

    if pocketsphinx is None:
        pocketsphinx = importlib.util.find_spec("pocketsphinx") is not None

    def progress(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    try:
        configs = find_configs((target, *compare), bundle=bundle_path, build_dir=build_dir)
        report = profile(
            configs,
            audio=audio,
            duration_s=None if audio else duration,
            threads=threads,
            runs=runs,
            warmup=warmup,
            pocketsphinx=pocketsphinx,
            cold=cold_start,
            flops=flops,
            clock=clock,
            command=_command_line(),
            progress=progress,
        )
    except (BundleError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if plot_path is not None:
        from edgetok.bench.plot import plot_report

        try:
            plot_report(report, plot_path)
        except ImportError as exc:
            raise click.ClickException(f"--plot needs matplotlib ({exc})") from None
        progress(f"plot: {plot_path}")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_report(report))


def _command_line() -> str | None:
    """The command as typed (for the report), when this process was started as it."""
    if "bench" not in sys.argv:
        return None
    return shlex.join(["edgetok", *sys.argv[sys.argv.index("bench") :]])
