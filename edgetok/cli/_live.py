"""Options and helpers of the live commands (listen, demo, transcribe --server).

Heavy modules (onnxruntime sessions, websockets) are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from edgetok.cli._common import token_options

if TYPE_CHECKING:
    from edgetok.bundle import Bundle
    from edgetok.pipeline import Utterance
    from edgetok.sinks import Sink
    from edgetok.stages import Transcriber
    from edgetok.vad import VadConfig

F = TypeVar("F", bound=Callable[..., Any])


def server_options(f: F) -> F:
    """``--server URL``, ``--token`` (env EDGETOK_TOKEN) or ``--token-file``,
    ``--retry-for``, ``--wire``, ``--local``."""
    f = click.option(
        "--wire",
        type=click.Choice(["codes", "fp16", "int8", "tokens"]),
        default=None,
        help="How segments travel to --server (and into --jsonl): fp16 vectors (the "
        "default; protocol 1, any server), int8, or protocol 2: the bundle's segment codes "
        "or the segments' token ids (tokens, read by the server's token reader), each "
        "under 100 B/s instead of 12 kB/s, at a WER cost: docs/architecture.md.",
    )(f)
    f = click.option(
        "--local",
        is_flag=True,
        help="Decode on this machine (the default without --server).",
    )(f)
    f = click.option(
        "--retry-for",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        metavar="SECONDS",
        help="With --server: how long the client keeps reconnecting (exponential backoff) "
        "before it gives up.",
    )(f)
    f = token_options("The server's bearer token (env EDGETOK_TOKEN).")(f)
    return click.option(
        "--server",
        metavar="URL",
        help="Decode on an `edgetok serve` server (ws://HOST:PORT/ or wss://...): only "
        "the compressed segments leave this machine.",
    )(f)


def vad_options(f: F) -> F:
    """``--vad-threshold``, ``--min-speech`` and ``--hangover``."""
    f = click.option(
        "--hangover",
        type=click.FloatRange(0.05, 5.0),
        default=0.3,
        show_default=True,
        help="Seconds of silence that end an utterance.",
    )(f)
    f = click.option(
        "--min-speech",
        type=click.FloatRange(0.0, 5.0),
        default=0.25,
        show_default=True,
        help="Seconds of speech before an utterance starts (shorter sounds are ignored).",
    )(f)
    return click.option(
        "--vad-threshold",
        type=click.FloatRange(0.01, 0.99),
        default=0.5,
        show_default=True,
        help="Speech probability (silero-vad) from which a 32 ms chunk counts as speech.",
    )(f)


def vad_config(threshold: float, min_speech: float, hangover: float) -> VadConfig:
    from edgetok.vad import VadConfig

    try:
        return VadConfig(
            threshold=threshold,
            min_speech_s=min_speech,
            min_silence_s=hangover,
            pad_s=min(0.1, hangover),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def open_sink(
    bundle: Bundle,
    transcriber: Transcriber,
    server: str | None,
    token: str | None,
    local: bool,
    jsonl: Path | None = None,
    retry_for_s: float = 30.0,
    wire: str | None = None,
) -> Sink:
    """The sink the options ask for: a server, a .jsonl file, or the local decoder."""
    from edgetok.sinks import JsonlSink, LocalSink

    if sum((server is not None, local, jsonl is not None)) > 1:
        raise click.UsageError("choose one of --server, --local and --jsonl")
    if jsonl is not None:
        return JsonlSink(jsonl, **wire_options(bundle, wire))
    if server is None:
        if wire is not None:
            raise click.UsageError("--wire is for --server and --jsonl")
        return LocalSink(transcriber.pack.decoder)
    return connect(bundle, server, token, retry_for_s, wire)


def wire_options(bundle: Bundle, wire: str | None) -> dict[str, Any]:
    """``sinks.wire_format`` with a click error."""
    from edgetok.sinks import wire_format

    try:
        return wire_format(bundle, wire)
    except ValueError as exc:
        raise click.UsageError(f"--wire: {exc}") from None


def connect(
    bundle: Bundle,
    url: str,
    token: str | None,
    retry_for_s: float = 30.0,
    wire: str | None = None,
) -> Sink:
    """A ``RemoteSink`` to ``url`` that keeps reconnecting for ``retry_for_s`` seconds, or
    a click error saying why there is none."""
    from edgetok.client import RemoteError
    from edgetok.protocol import wire_identity
    from edgetok.sinks import RemoteSink

    if not url.startswith(("ws://", "wss://")):
        raise click.UsageError(f"--server must be a ws:// or wss:// URL, got {url!r}")
    options = wire_options(bundle, wire)
    try:
        return RemoteSink(url, token, wire_identity(bundle), retry_for_s=retry_for_s, **options)
    except (RemoteError, ConnectionError, OSError, TimeoutError) as exc:
        raise click.ClickException(f"cannot use the server at {url}: {exc}") from None


def utterance_line(u: Utterance) -> str:
    """Time span, rates, latency and bytes of an utterance, on one line."""
    return (
        f"[{u.start_s:7.2f} - {u.end_s:7.2f} s] {u.tokens} tokens ({u.tokens_per_s:.1f}/s) -> "
        f"{u.segments} segments ({u.segments_per_s:.1f}/s), {u.traffic.segments} B; "
        f"end of speech -> text {u.latency_s * 1e3:.0f} ms "
        f"({u.finalize_s * 1e3:.0f} ms after the VAD)"
    )


def traffic_rows(utterances: Iterable[Utterance]) -> list[tuple[str, int, float]]:
    """(what, bytes, bytes per second of speech) for segments as sent, dense tokens, PCM
    and, where the bundle has them, segment codes and the token wire."""
    items = list(utterances)
    seconds = sum(u.duration_s for u in items)
    rows = []
    for name, attr in (
        ("compressed segments", "segments"),
        ("dense tokens", "dense"),
        ("raw PCM (16-bit)", "pcm"),
        ("segment codes (--wire codes)", "codes"),
        ("token ids (--wire tokens)", "tokens"),
    ):
        counts = [getattr(u.traffic, attr) for u in items]
        if items and None in counts:  # a bundle without segment codes or token reader
            continue
        total = sum(counts)
        rows.append((name, total, total / seconds if seconds else 0.0))
    return rows
