"""``edgetok build``: compile a bundle for a target (ONNX Runtime, OpenVINO, LiteRT,
TensorRT), INT8 with calibration, and report its parity with the FP32 models.

Needs the ``build`` extra; everything heavy is imported inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgetok.cli._common import bundle_option

TARGETS_HELP = "x86-cpu, rpi, jetson, android (targets/*.toml)"
#: Exit status of a build whose parity report misses a threshold (the bundle is written).
PARITY_FAILED_EXIT = 3


@click.command("build")
@click.option("--target", "target", required=True, help=f"Target profile: {TARGETS_HELP}.")
@bundle_option
@click.option(
    "--int8/--fp32",
    "int8",
    default=None,
    help="Static INT8 with calibration, or FP32 [default: the target's precision].",
)
@click.option(
    "--backend",
    help="Build for one of the target's fallback backends instead of its first "
    "(e.g. onnxruntime for x86-cpu).",
)
@click.option(
    "--calib",
    type=click.Path(exists=True, path_type=Path),
    help="Calibration audio: a corpus directory, a .jsonl manifest or a directory of audio "
    "files [default: the bundle's training corpus in the edgetok cache, else a 6 min "
    "corpus synthesized once with this machine's TTS voices (espeak-ng, flite)].",
)
@click.option(
    "--heldout",
    type=click.Path(exists=True, path_type=Path),
    help="Held-out audio for the parity report (a manifest with text gives the WER change) "
    "[default: the test.jsonl beside --calib].",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Output bundle directory [default: build/<target>].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the parity report as JSON.")
def command(
    target: str,
    bundle_path: Path | None,
    int8: bool | None,
    backend: str | None,
    calib: Path | None,
    heldout: Path | None,
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """Build a bundle for --target under build/<target>/ with a parity report.

    With --backend, under build/<target>-<backend>/.

    Each FP32 ONNX model of the bundle is compiled for the target's backend (INT8 by
    static quantization on calibration audio where asked), written with bundle.toml
    (target, backend, precision and sha256 per model), and compared with the FP32
    models on held-out audio: token agreement, entropy error, segment-boundary F1 and
    WER change, stored in parity.json. The tokenizer is timed against FP32 on the same
    backend, one thread. Exits with status 3 when a parity threshold is missed (the
    bundle is still written, and `edgetok bench` lists it as failed).
    """
    from edgetok.bundle import BundleError, default_bundle_path

    try:
        from edgetok.targets.build import BuildError, build
        from edgetok.targets.compilers import ToolchainError
        from edgetok.targets.report import format_report
    except ImportError as exc:
        raise click.ClickException(
            f"the build tools are not installed ({exc}); pip install 'edgetok[build]'"
        ) from None

    def progress(message: str) -> None:
        click.echo(message, err=True)

    try:
        result = build(
            bundle_path or default_bundle_path(),
            target,
            out_dir or Path("build") / (target if backend is None else f"{target}-{backend}"),
            int8=int8,
            backend=backend,
            calib=calib,
            heldout=heldout,
            progress=progress,
        )
    except (ToolchainError, BuildError, BundleError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
    else:
        click.echo(format_report(result.report))
    click.echo(f"built {result.bundle.manifest_path.parent}", err=True)
    if result.failed_checks:
        click.echo(f"parity FAILED: {', '.join(result.failed_checks)}", err=True)
        raise SystemExit(PARITY_FAILED_EXIT)
