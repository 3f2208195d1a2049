"""``edgetok transcribe``: audio files to text, decoded here or on an ``edgetok serve`` server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgetok.cli._common import (
    beam_option,
    bundle_option,
    open_transcriber,
    read_audio,
    threads_option,
    transcript_line,
    transcript_summary,
)
from edgetok.cli._live import connect, server_options

if TYPE_CHECKING:
    import numpy as np

    from edgetok.pipeline import Pipeline, Utterance


@click.command("transcribe")
@click.argument(
    "files", nargs=-1, required=True, metavar="FILE...", type=click.Path(path_type=Path)
)
@bundle_option
@server_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per file: file, text, duration_s, tokens, segments, "
    "tokens_per_s, segments_per_s, rtf, timings (seconds per stage); with --server also "
    "latency_s and bytes (compressed segments, dense tokens, raw PCM).",
)
@click.option(
    "--dump-tokens",
    is_flag=True,
    help="With --json and a local decoder: also token_ids, entropy (nats per token) and "
    "starts (segment starts, token indices), as inspect --json gives them; for parity "
    "checks across machines and backends.",
)
@beam_option
@threads_option
def command(
    files: tuple[Path, ...],
    bundle_path: Path | None,
    server: str | None,
    token: str | None,
    local: bool,
    as_json: bool,
    dump_tokens: bool,
    threads: int,
    beam: int,
) -> None:
    """Transcribe each audio FILE (WAV, FLAC, OGG, ...; any rate, mixed to mono).

    Prints the transcript with the token rate, the segment rate after entropy
    compression, and the real-time factor (processing time / audio time). With --server
    the segments go to a decoding server and the text comes back. A file that cannot be
    read is reported and skipped; the exit status is then 1.
    """
    if server is not None and local:
        raise click.UsageError("choose one of --server and --local")
    if dump_tokens and (server is not None or not as_json):
        raise click.UsageError("--dump-tokens needs --json and a local decoder (no --server)")
    transcriber = open_transcriber(bundle_path, threads, beam)
    pipeline = None
    if server is not None:
        from edgetok.pipeline import Pipeline

        pipeline = Pipeline(transcriber, connect(transcriber.bundle, server, token))
    failed = False
    try:
        for path in files:
            try:
                audio = read_audio(path, transcriber.sample_rate)
            except click.ClickException as exc:
                click.echo(f"Error: {exc.message}", err=True)
                failed = True
                continue
            if pipeline is None:
                transcript = transcriber(audio)
                summary, line = transcript_summary(transcript), transcript_line(transcript)
                if dump_tokens:
                    summary |= {
                        "token_ids": transcript.tokens.tolist(),
                        "entropy": transcript.entropy.tolist(),
                        "starts": transcript.starts.tolist(),
                    }
            else:
                utterance = _remote(pipeline, audio)
                summary = {k: v for k, v in utterance.to_dict().items() if k != "utterance"}
                line = (
                    f"{utterance.duration_s:.2f} s: {utterance.tokens} tokens "
                    f"({utterance.tokens_per_s:.1f}/s) -> {utterance.segments} segments "
                    f"({utterance.segments_per_s:.1f}/s), RTF {utterance.rtf:.3f}, "
                    f"{utterance.traffic.segments} B sent, text after "
                    f"{utterance.latency_s * 1e3:.0f} ms"
                )
            if as_json:
                click.echo(json.dumps({"file": str(path), **summary}))
            else:
                click.echo(f"{path}  {line}")
                click.echo(f"  {summary['text']}")
    finally:
        if pipeline is not None:
            pipeline.sink.close()
    if failed:
        raise SystemExit(1)


def _remote(pipeline: Pipeline, audio: np.ndarray) -> Utterance:
    """``pipeline.transcribe`` with the server's refusals as click errors."""
    from edgetok.client import RemoteError

    try:
        return pipeline.transcribe(audio)
    except (RemoteError, ConnectionError, TimeoutError) as exc:
        raise click.ClickException(f"the server failed: {exc}") from None
