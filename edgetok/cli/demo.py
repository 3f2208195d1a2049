"""``edgetok demo``: the whole system on one machine, a decoding server included."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgetok.cli._common import (
    beam_option,
    bundle_errors,
    bundle_option,
    open_transcriber,
    threads_option,
)
from edgetok.cli._live import traffic_rows, utterance_line, vad_config, vad_options

if TYPE_CHECKING:
    from edgetok.client import ClientStats
    from edgetok.pipeline import Utterance


@click.command("demo")
@bundle_option
@click.option(
    "--audio",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Audio file to stream [default: the bundle's sample.wav].",
)
@click.option(
    "--fast",
    is_flag=True,
    help="Stream as fast as the pipeline runs instead of in real time.",
)
@vad_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the results.")
@beam_option
@threads_option
def command(
    bundle_path: Path | None,
    audio: Path | None,
    fast: bool,
    vad_threshold: float,
    min_speech: float,
    hangover: float,
    as_json: bool,
    threads: int,
    beam: int,
) -> None:
    """Stream a sample through the whole pipeline to a decoding server started here.

    Starts `edgetok serve` in this process on 127.0.0.1 (random port and token), streams
    the audio in 32 ms chunks at real-time speed (as a microphone would) through the VAD,
    tokenizer, entropy LM, segmenter and aggregator, sends the segments over the wire
    protocol and prints the transcript, tokens/s -> segments/s, the bytes sent (compressed
    segments vs dense tokens vs raw PCM) and the end-of-speech -> final-text latency.
    """
    from edgetok.audio import AudioError, FileSource
    from edgetok.client import RemoteError
    from edgetok.pipeline import Pipeline
    from edgetok.protocol import wire_identity
    from edgetok.segment_codes import SegmentCodes
    from edgetok.server import start_server
    from edgetok.sinks import RemoteSink, wire_format
    from edgetok.stages import server_decoder
    from edgetok.token_wire import TokenVectors

    transcriber = open_transcriber(bundle_path, threads, beam, local=False)
    bundle = transcriber.bundle
    assert bundle.root is not None
    path = audio or bundle.root / "sample.wav"
    if not path.is_file():
        raise click.ClickException(f"bundle {bundle.root} has no sample.wav: pass --audio FILE")
    try:
        source = FileSource(path, realtime=not fast)
    except AudioError as exc:
        raise click.ClickException(str(exc)) from None
    vad = vad_config(vad_threshold, min_speech, hangover)
    token = secrets.token_urlsafe(16)
    with bundle_errors(bundle):
        decoder = server_decoder(bundle, beam=beam)
    say = (lambda _text: None) if as_json else click.echo
    # fp16; the traffic table shows what the segment codes and token ids would cost too
    wire = wire_format(bundle)
    codes, tokens = SegmentCodes.of_bundle(bundle), TokenVectors.of_bundle(bundle)
    identity = wire_identity(bundle)
    with start_server(decoder, identity, token=token, codes=codes, tokens=tokens) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        sink = RemoteSink(url, token, wire_identity(bundle), **wire)
        say(
            f"server: {url} (in-process, random token), bundle {bundle.meta.name!r}, "
            f"wire {wire['dtype']}"
        )
        pace = "as fast as possible" if fast else "in real time"
        say(f"streaming {path} ({source.duration_s:.2f} s) {pace}, 32 ms chunks")
        pipeline = Pipeline(transcriber, sink, vad=vad)
        utterances = []
        try:
            for utterance in pipeline.run(source):
                utterances.append(utterance)
                say(f"  {utterance_line(utterance)}")
                say(f"  > {utterance.text}")
        except (AudioError, FileNotFoundError, RemoteError, ConnectionError) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            sink.close()
        client = sink.remote.stats
    report = _report(utterances, client, pipeline.stats.overruns, fast)
    if as_json:
        click.echo(json.dumps(report))
    else:
        _print(report)


def _report(
    utterances: list[Utterance], client: ClientStats, overruns: int, fast: bool
) -> dict[str, Any]:
    """The demo's numbers as one JSON-ready dict."""
    speech = sum(u.duration_s for u in utterances)
    tokens = sum(u.tokens for u in utterances)
    segments = sum(u.segments for u in utterances)
    latencies = [u.latency_s for u in utterances]
    return {
        "transcript": " ".join(u.text.strip() for u in utterances),
        "realtime": not fast,
        "utterances": [u.to_dict() for u in utterances],
        "speech_s": speech,
        "tokens": tokens,
        "segments": segments,
        "tokens_per_s": tokens / speech if speech else 0.0,
        "segments_per_s": segments / speech if speech else 0.0,
        "bytes": {
            name: {"bytes": total, "bytes_per_s": rate}
            for name, total, rate in traffic_rows(utterances)
        },
        "client": {
            "payload_bytes": client.payload_bytes,
            "wire_bytes": client.wire_bytes,
            "frames": client.frames,
        },
        "latency_s": {
            "mean": sum(latencies) / len(latencies) if latencies else None,
            "max": max(latencies, default=None),
        },
        "overruns": overruns,
    }


def _print(report: dict[str, Any]) -> None:
    click.echo("")
    click.echo(f"transcript: {report['transcript']}")
    click.echo(
        f"{report['speech_s']:.2f} s of speech: {report['tokens']} tokens "
        f"({report['tokens_per_s']:.1f}/s) -> {report['segments']} segments "
        f"({report['segments_per_s']:.1f}/s)"
    )
    click.echo("bytes for the speech:")
    for name, row in report["bytes"].items():
        click.echo(f"  {name:<28} {row['bytes']:>10,} B  {row['bytes_per_s']:>10,.0f} B/s")
    client = report["client"]
    click.echo(
        f"  sent: {client['frames']} frames, {client['payload_bytes']:,} B "
        f"({client['wire_bytes']:,} B with websocket framing and the hello)"
    )
    latency = report["latency_s"]
    if latency["mean"] is not None:
        when = "VAD hangover included" if report["realtime"] else "--fast: no real-time hangover"
        click.echo(
            f"end of speech -> final text: mean {latency['mean'] * 1e3:.0f} ms, "
            f"max {latency['max'] * 1e3:.0f} ms ({when})"
        )
    click.echo(f"overruns: {report['overruns']} samples lost")
