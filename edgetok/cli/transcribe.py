"""``edgetok transcribe``: audio files to text, decoded here or on an ``edgetok serve`` server."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgetok.cli._batch import GRACE_S, TERMINATED, Failures, Termination
from edgetok.cli._common import beam_option, bundle_option, open_transcriber, threads_option
from edgetok.cli._filetext import FileText, utterance_line
from edgetok.cli._live import connect, open_sink, server_options, vad_config, vad_options

if TYPE_CHECKING:
    from tqdm import tqdm

    from edgetok.pipeline import Pipeline
    from edgetok.sinks import Sink

CHUNK_S = 0.1
"""Seconds of audio read from a file at a time."""
QUEUE_CHUNKS = 16
"""Chunks read ahead of the VAD: what is left to finish after SIGTERM."""


class _ServerLost(Exception):
    """The server cannot be reached again: the files left are not transcribed."""


@click.command("transcribe")
@click.argument(
    "files", nargs=-1, required=True, metavar="FILE...", type=click.Path(path_type=Path)
)
@bundle_option
@server_options
@vad_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per file: file, text, duration_s, speech_s, tokens, "
    "segments, tokens_per_s and segments_per_s (per second of speech), rtf, timings "
    "(seconds per stage), utterances (start_s, end_s, text, tokens, segments; with "
    "--server also latency_s); with --server also bytes (compressed segments, dense "
    "tokens, raw PCM).",
)
@click.option(
    "--dump-tokens",
    is_flag=True,
    help="With --json: also token_ids, entropy (nats per token) and starts (segment "
    "starts, token indices), the file's utterances one after the other; for parity "
    "checks across machines and backends.",
)
@beam_option
@threads_option
def command(
    files: tuple[Path, ...],
    bundle_path: Path | None,
    server: str | None,
    token: str | None,
    retry_for: float,
    wire: str | None,
    local: bool,
    vad_threshold: float,
    min_speech: float,
    hangover: float,
    as_json: bool,
    dump_tokens: bool,
    threads: int,
    beam: int,
) -> None:
    """Transcribe each audio FILE (WAV, FLAC, OGG, ...; any rate, mixed to mono).

    The file is read block by block and the voice activity detector (silero-vad) cuts
    it into utterances of at most 30 s, so memory stays flat however long the file. Each
    utterance is printed with its time span as its text comes, then the file's token
    rate, segment rate after entropy compression, and real-time factor (processing time
    / audio time). With --server the segments go to a decoding server and the text
    comes back; the client rides out a server restart (--retry-for).

    A file that cannot be read or transcribed is reported and the batch goes on; the
    failures are listed at the end and the exit status is 1. A WAV shorter than its
    header says is transcribed with a warning. SIGTERM stops reading audio, lets the
    utterances in flight finish (up to 5 s) and exits with status 143.
    """
    from edgetok.pipeline import Pipeline
    from edgetok.vad import SileroModel

    if server is not None and local:
        raise click.UsageError("choose one of --server and --local")
    if dump_tokens and not as_json:
        raise click.UsageError("--dump-tokens needs --json")
    vad = vad_config(vad_threshold, min_speech, hangover)
    transcriber = open_transcriber(bundle_path, threads, beam, local=server is None)
    try:
        vad_model = SileroModel()
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    sink = open_sink(transcriber.bundle, transcriber, server, token, local, None, retry_for, wire)
    pipeline = Pipeline(
        transcriber,
        sink,
        vad=vad,
        vad_model=vad_model,
        queue_chunks=QUEUE_CHUNKS,
        keep_tokens=dump_tokens,
    )
    failures = Failures(len(files))
    try:
        with Termination(GRACE_S) as termination:
            batch = _Batch(pipeline, termination, failures, server, token, retry_for, wire, as_json)
            for index, path in enumerate(files):
                if termination.requested:
                    rest = len(files) - index
                    click.echo(f"stopped by SIGTERM: {rest} files not transcribed", err=True)
                    break
                try:
                    batch.file(path)
                except _ServerLost as exc:
                    for left in files[index + 1 :]:
                        failures.add(left, str(exc))
                    break
    finally:
        _close(pipeline.sink)
    failures.report()
    if termination.requested:
        raise SystemExit(TERMINATED)
    if failures.lines:
        raise SystemExit(1)


@dataclass
class _Batch:
    """Files through one pipeline, each printed when done or added to ``failures``."""

    pipeline: Pipeline
    termination: Termination
    failures: Failures
    server: str | None
    token: str | None
    retry_for_s: float
    wire: str | None
    as_json: bool

    def file(self, path: Path) -> None:
        """Transcribe ``path`` and print it (or record why not)."""
        from edgetok.audio import AudioError, FileSource
        from edgetok.client import RemoteError
        from edgetok.runtime import ModelError

        pipeline = self.pipeline
        try:
            source = FileSource(path, sample_rate=pipeline.sample_rate, chunk_s=CHUNK_S)
        except AudioError as exc:
            self.failures.add(path, str(exc))
            return
        self.termination.source = source
        text = FileText(path, source.duration_s, self.server is not None, pipeline.keep_tokens)
        if not self.as_json:
            click.echo(f"{path} ({source.duration_s:.2f} s)")
        started = time.perf_counter()
        try:
            with _progress(path, source.duration_s) as bar:
                for utterance in pipeline.run(source):
                    text.add(utterance)
                    bar.update(utterance.end_s - bar.n)
                    if not self.as_json:
                        bar.write(utterance_line(utterance), file=sys.stdout)
        except (AudioError, ModelError, RemoteError, TimeoutError, FutureTimeout) as exc:
            self.failures.add(path, str(exc) or "no text from the server in time")
            return
        except ConnectionError as exc:
            self.failures.add(path, f"the server failed: {exc}")
            self._reconnect()
            return
        finally:
            self.termination.source = None
        wall_s = time.perf_counter() - started
        text.duration_s = source.frames_read / source.rate
        if (shortfall := source.shortfall()) is not None:
            click.echo(f"warning: {shortfall}", err=True)
        if self.termination.requested:
            click.echo(
                f"{path}: stopped by SIGTERM after {text.duration_s:.2f} s of "
                f"{source.duration_s:.2f} s",
                err=True,
            )
        if self.as_json:
            click.echo(json.dumps(text.summary(wall_s)))
        else:
            click.echo(f"  {text.line(wall_s)}")

    def _reconnect(self) -> None:
        """A new connection for the next file after the last one failed for good, or
        ``_ServerLost`` when the server stays out of reach."""
        if self.server is None:
            return
        _close(self.pipeline.sink)
        try:
            bundle = self.pipeline.transcriber.bundle
            self.pipeline.sink = connect(
                bundle, self.server, self.token, self.retry_for_s, self.wire
            )
        except click.ClickException as exc:
            raise _ServerLost(exc.message) from None


def _progress(path: Path, duration_s: float) -> tqdm[None]:
    """A progress bar in seconds of audio on stderr (only where stderr is a terminal)."""
    from tqdm import tqdm

    return tqdm(
        total=round(duration_s, 2),
        desc=path.name,
        unit="s",
        leave=False,
        disable=None,
        file=sys.stderr,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio "
        "[{elapsed}<{remaining}]",
    )


def _close(sink: Sink) -> None:
    """Close ``sink``, saying how often a server connection was lost and re-established;
    a server that cannot take the last acknowledgements is a warning."""
    from edgetok.client import RemoteError
    from edgetok.sinks import RemoteSink

    if isinstance(sink, RemoteSink) and (sink.remote.stats.reconnects or sink.resent):
        click.echo(
            f"server reconnections: {sink.remote.stats.reconnects}; utterances sent again "
            f"after the server lost them: {sink.resent}",
            err=True,
        )
    try:
        sink.close()
    except (RemoteError, ConnectionError, TimeoutError) as exc:
        click.echo(f"warning: closing the connection: {exc}", err=True)
