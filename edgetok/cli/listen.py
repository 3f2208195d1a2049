"""``edgetok listen``: live transcription from a microphone (or raw PCM on stdin)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import click

from edgetok.cli._common import (
    beam_option,
    bundle_option,
    open_transcriber,
    signature_options,
    threads_option,
)
from edgetok.cli._live import open_sink, server_options, utterance_line, vad_config, vad_options


@click.command("listen")
@click.option(
    "--device",
    help="Input device: index or part of its name (see `edgetok devices`) [default: the "
    "system default].",
)
@click.option(
    "--raw",
    type=click.Choice(["s16le", "f32le"]),
    help="Read headerless PCM of this format from stdin instead of a device.",
)
@click.option(
    "--rate",
    type=click.IntRange(min=1000),
    default=16000,
    show_default=True,
    help="Sample rate of --raw input.",
)
@bundle_option
@server_options
@click.option(
    "--jsonl",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write each utterance's segments (wire frames, base64) to this file instead of "
    "decoding them.",
)
@vad_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per utterance (text, times, rates, latency, bytes, timings).",
)
@beam_option
@signature_options("bundle_path")
@threads_option
def command(
    device: str | None,
    raw: str | None,
    rate: int,
    bundle_path: Path | None,
    server: str | None,
    token: str | None,
    retry_for: float,
    wire: str | None,
    local: bool,
    jsonl: Path | None,
    vad_threshold: float,
    min_speech: float,
    hangover: float,
    as_json: bool,
    threads: int,
    beam: int,
) -> None:
    """Transcribe speech live, one line per utterance, until the input ends or Ctrl-C.

    The voice activity detector (silero-vad) cuts the input into utterances; each is
    tokenized, cut into entropy segments and decoded here (--local, the default) or by a
    server (--server). A first Ctrl-C finishes the current utterance, a second one quits.
    """
    from edgetok.audio import AudioError, Microphone, RawSource
    from edgetok.client import RemoteError
    from edgetok.pipeline import Pipeline

    if raw is not None and device is not None:
        raise click.UsageError("choose one of --device and --raw")
    vad = vad_config(vad_threshold, min_speech, hangover)
    local_decoder = server is None and jsonl is None
    transcriber = open_transcriber(bundle_path, threads, beam, local=local_decoder)
    source: Any
    try:
        if raw is not None:
            source = RawSource(format=raw, rate=rate)  # type: ignore[arg-type]
        else:
            source = Microphone(int(device) if device and device.isdigit() else device)
    except AudioError as exc:
        raise click.ClickException(str(exc)) from None
    sink = open_sink(transcriber.bundle, transcriber, server, token, local, jsonl, retry_for, wire)
    pipeline = Pipeline(transcriber, sink, vad=vad)
    name = "stdin" if raw is not None else source.name
    click.echo(f"listening to {name}; Ctrl-C to stop", err=True)

    def finish(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        click.echo("finishing (Ctrl-C again to quit)", err=True)
        source.close()

    previous = signal.signal(signal.SIGINT, finish)
    try:
        for utterance in pipeline.run(source):
            if as_json:
                click.echo(json.dumps(utterance.to_dict()))
            else:
                click.echo(utterance.text)
                click.echo(f"  {utterance_line(utterance)}", err=True)
    except (AudioError, FileNotFoundError, RemoteError, ConnectionError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        signal.signal(signal.SIGINT, previous)
        sink.close()
    stats = pipeline.stats
    click.echo(
        f"{stats.utterances} utterances from {stats.samples / pipeline.sample_rate:.1f} s of "
        f"audio; overruns: {stats.overruns} samples lost",
        err=True,
    )
