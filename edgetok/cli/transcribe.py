"""``edgetok transcribe``: audio files to text with a model bundle, on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgetok.cli._common import (
    bundle_option,
    open_transcriber,
    read_audio,
    threads_option,
    transcript_line,
    transcript_summary,
)


@click.command("transcribe")
@click.argument(
    "files", nargs=-1, required=True, metavar="FILE...", type=click.Path(path_type=Path)
)
@bundle_option
@click.option(
    "--local",
    "_local",
    is_flag=True,
    help="Decode on this machine (the default, and for now the only mode).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per file: file, text, duration_s, tokens, segments, "
    "tokens_per_s, segments_per_s, rtf, timings (seconds per stage).",
)
@threads_option
def command(
    files: tuple[Path, ...], bundle_path: Path | None, _local: bool, as_json: bool, threads: int
) -> None:
    """Transcribe each audio FILE (WAV, FLAC, OGG, ...; any rate, mixed to mono).

    Prints the transcript with the token rate, the segment rate after entropy
    compression, and the real-time factor (processing time / audio time). A file that
    cannot be read is reported and skipped; the exit status is then 1.
    """
    transcriber = open_transcriber(bundle_path, threads)
    failed = False
    for path in files:
        try:
            audio = read_audio(path, transcriber.sample_rate)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.message}", err=True)
            failed = True
            continue
        transcript = transcriber(audio)
        if as_json:
            click.echo(json.dumps({"file": str(path), **transcript_summary(transcript)}))
        else:
            click.echo(f"{path}  {transcript_line(transcript)}")
            click.echo(f"  {transcript.text}")
    if failed:
        raise SystemExit(1)
