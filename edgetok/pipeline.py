"""Live transcription: audio source -> VAD -> per-utterance model stages -> sink.

``Pipeline.run(source)`` starts two threads. *Capture* reads the source into a bounded
queue; a live source (a microphone) is never blocked: a chunk that finds the queue full is
dropped and counted in ``PipelineStats`` (a file or a pipe just waits). *Worker* runs the
VAD; while an utterance lasts it feeds the streaming log-mel frontend, and when the VAD
ends it, runs tokenizer -> entropy LM -> segmenter -> aggregator -> sink and puts an
``Utterance`` (text, per-stage seconds, end-of-speech -> final-text latency, bytes) into a
bounded result queue that ``run`` yields from. The VAD ends an utterance before it holds
``MAX_UTTERANCE_S`` of audio, so memory stays flat however long the source runs.
``transcribe`` does the same for one whole utterance without the VAD.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgetok.audio import SAMPLE_RATE, AudioSource
from edgetok.frontend import LogMelStream, log_mel
from edgetok.protocol import MAX_UTTERANCE_S
from edgetok.segment import segment_lengths
from edgetok.segment_codes import SegmentCodes
from edgetok.sinks import Sink, frames_bytes, wire_bytes
from edgetok.stages import Transcriber
from edgetok.token_wire import TokenWire, segment_tokens
from edgetok.vad import CHUNK, SileroModel, VadConfig, VadEvent, VoiceDetector

__all__ = ["MAX_UTTERANCE_S", "Pipeline", "PipelineStats", "TokenArrays", "Traffic", "Utterance"]

PCM_BYTES = 2
"""Bytes per sample of raw 16-bit PCM, the baseline of the byte counts."""
_END = object()
_POLL_S = 0.1


@dataclass(frozen=True)
class Traffic:
    """Bytes one utterance costs to send, three ways (docs/protocol.md frame sizes)."""

    segments: int
    """The frames of its entropy segments: what the sink sends."""
    dense: int
    """The same frames with one vector per token (dense 50 Hz tokens)."""
    pcm: int
    """Its audio as 16-bit PCM."""
    codes: int | None = None
    """The frames of its segments as the bundle's segment codes (protocol 2), where it
    has them."""
    tokens: int | None = None
    """The frames of its segments' token ids (protocol 2's token wire), where the bundle
    has a token reader."""


@dataclass(frozen=True)
class TokenArrays:
    """What the device made of one utterance, kept when a pipeline is asked to."""

    ids: np.ndarray
    """Token ids int64 [T]."""
    entropy: np.ndarray
    """Entropy float32 [T] (nats per token)."""
    starts: np.ndarray
    """Segment starts int [S] (token indices)."""


@dataclass(frozen=True)
class Utterance:
    """One transcribed utterance."""

    index: int
    text: str
    start_s: float
    """Stream time of its first sample (VAD padding included)."""
    end_s: float
    tokens: int
    segments: int
    timings: dict[str, float]
    """Seconds per stage: vad, frontend, tokenizer, entropy_lm, segmenter, aggregator, and
    the sink's (decoder, remote or file)."""
    traffic: Traffic
    latency_s: float
    """From the capture of the end of speech to the final text (VAD hangover included)."""
    finalize_s: float
    """From the VAD's end-of-utterance decision to the final text."""
    arrays: TokenArrays | None = None
    """Its tokens, entropies and segment starts (``Pipeline(keep_tokens=True)``)."""

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.duration_s if self.duration_s else 0.0

    @property
    def segments_per_s(self) -> float:
        return self.segments / self.duration_s if self.duration_s else 0.0

    @property
    def rtf(self) -> float:
        """Processing time of all stages / audio time."""
        return sum(self.timings.values()) / self.duration_s if self.duration_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields and rates."""
        return {
            "utterance": self.index,
            "text": self.text,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "duration_s": self.duration_s,
            "tokens": self.tokens,
            "segments": self.segments,
            "tokens_per_s": self.tokens_per_s,
            "segments_per_s": self.segments_per_s,
            "rtf": self.rtf,
            "latency_s": self.latency_s,
            "finalize_s": self.finalize_s,
            "bytes": vars(self.traffic),
            "timings": self.timings,
        }


@dataclass
class PipelineStats:
    """Counters of one ``run``; nothing is dropped without being counted here."""

    chunks: int = 0
    samples: int = 0
    dropped_chunks: int = 0
    dropped_samples: int = 0
    """Samples of a live source lost because the worker fell behind (queue full)."""
    source_overruns: int = 0
    """Samples the source itself lost (e.g. the microphone's own queue)."""
    queue_peak: int = 0
    utterances: int = 0

    @property
    def overruns(self) -> int:
        """All samples lost."""
        return self.dropped_samples + self.source_overruns


def _capped(vad: VadConfig) -> VadConfig:
    """``vad`` with ``max_speech_s`` low enough that an utterance stays within
    ``MAX_UTTERANCE_S``: the VAD overshoots it by less than its hangover and a chunk."""
    longest = MAX_UTTERANCE_S - vad.min_silence_s - CHUNK / SAMPLE_RATE
    return vad if vad.max_speech_s <= longest else replace(vad, max_speech_s=longest)


@contextlib.contextmanager
def _stopwatch(
    timings: dict[str, float], stage: str, clock: Callable[[], float] = time.perf_counter
) -> Iterator[None]:
    """Add the block's time on ``clock`` (default: wall time) to ``timings[stage]``."""
    start = clock()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + clock() - start


@dataclass
class _Open:
    """An utterance the VAD has started and not yet ended."""

    index: int
    start: int
    frontend: LogMelStream
    mel: list[np.ndarray] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Utterances from an audio source, through a ``Transcriber``'s stages, to a ``Sink``.

    ``queue_chunks`` bounds the capture queue (about 16 s of 32 ms chunks by default),
    ``results`` the finished utterances not yet taken from ``run``. ``clock`` times the
    stages (default wall time; ``edgetok bench --clock cpu`` passes the process CPU time).
    The VAD's ``max_speech_s`` is lowered where needed so that no utterance, its padding
    included, exceeds ``MAX_UTTERANCE_S``. ``keep_tokens`` keeps each utterance's
    ``TokenArrays``.
    """

    def __init__(
        self,
        transcriber: Transcriber,
        sink: Sink,
        *,
        vad: VadConfig | None = None,
        vad_model: SileroModel | None = None,
        queue_chunks: int = 512,
        results: int = 16,
        result_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.perf_counter,
        keep_tokens: bool = False,
    ) -> None:
        self.transcriber = transcriber
        self.sink = sink
        self._codes = SegmentCodes.of_bundle(transcriber.bundle)
        self._token_wire = TokenWire.of_bundle(transcriber.bundle)
        self.sample_rate = transcriber.sample_rate
        self.vad, self._vad_model = _capped(vad or VadConfig()), vad_model
        self.keep_tokens = keep_tokens
        self.queue_chunks, self.results = queue_chunks, results
        self.result_timeout_s = result_timeout_s
        self.clock = clock
        self.stats = PipelineStats()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []

    def transcribe(self, audio: np.ndarray, start_s: float = 0.0) -> Utterance:
        """One whole utterance of float32 audio (no VAD); latency counts from the call."""
        called = time.monotonic()
        timings: dict[str, float] = {}
        with _stopwatch(timings, "frontend", self.clock):
            mel = log_mel(audio, self.transcriber.tokenizer.frontend)
        end_s = start_s + len(audio) / self.sample_rate
        return self._finish(0, start_s, end_s, mel, timings, called, called)

    def run(self, source: AudioSource) -> Iterator[Utterance]:
        """Transcribe ``source`` until it ends (or the iterator is closed); re-raises the
        first error of the source or of a stage after yielding what was finished."""
        if source.sample_rate != self.sample_rate:
            raise ValueError(
                f"the source gives {source.sample_rate} Hz, the bundle needs {self.sample_rate} Hz"
            )
        if self._vad_model is None:
            self._vad_model = SileroModel()
        self.stats = PipelineStats()
        self._stop = threading.Event()
        self._errors = []
        chunks: queue.Queue[Any] = queue.Queue(self.queue_chunks)
        results: queue.Queue[Any] = queue.Queue(self.results)
        threads = [
            threading.Thread(
                target=self._capture, args=(source, chunks), name="edgetok-capture", daemon=True
            ),
            threading.Thread(
                target=self._work,
                args=(source.live, chunks, results),
                name="edgetok-worker",
                daemon=True,
            ),
        ]
        for thread in threads:
            thread.start()
        try:
            while (item := results.get()) is not _END:
                yield item
            if self._errors:
                raise self._errors[0]
        finally:
            self._stop.set()
            source.close()
            for thread in threads:
                thread.join()

    def _put(self, target: queue.Queue[Any], item: Any) -> bool:
        """Blocking put that gives up when the run stops; True when put."""
        while not self._stop.is_set():
            try:
                target.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _capture(self, source: AudioSource, chunks: queue.Queue[Any]) -> None:
        stats = self.stats
        try:
            for chunk in source:
                if self._stop.is_set():
                    break
                item = (chunk, time.monotonic())
                stats.chunks += 1
                stats.samples += len(chunk)
                stats.source_overruns = source.overruns
                if not source.live:
                    if not self._put(chunks, item):
                        break
                else:
                    try:
                        chunks.put_nowait(item)
                    except queue.Full:
                        stats.dropped_chunks += 1
                        stats.dropped_samples += len(chunk)
                stats.queue_peak = max(stats.queue_peak, chunks.qsize())
        except BaseException as exc:
            self._errors.append(exc)
        finally:
            stats.source_overruns = source.overruns
            self._put(chunks, _END)

    def _work(self, live: bool, chunks: queue.Queue[Any], results: queue.Queue[Any]) -> None:
        assert self._vad_model is not None
        detector = VoiceDetector(self._vad_model, self.vad)
        config = detector.config
        keep = round((config.min_silence_s + config.pad_s + 1.0) * self.sample_rate)
        arrivals: deque[tuple[int, float]] = deque()
        """(stream position after a chunk, when it was captured), for the latency."""
        position = 0
        current: _Open | None = None
        try:
            while not self._stop.is_set():
                try:
                    item = chunks.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                vad_timings: dict[str, float] = {}
                with _stopwatch(vad_timings, "vad", self.clock):
                    if item is _END:
                        detector.flush()
                    else:
                        chunk, captured = item
                        position += len(chunk)
                        arrivals.append((position, captured if live else time.monotonic()))
                        while arrivals[0][0] < position - keep:
                            arrivals.popleft()
                        detector.accept_waveform(chunk)
                if current is not None:
                    current.timings["vad"] = current.timings.get("vad", 0.0) + vad_timings["vad"]
                while not detector.empty():
                    current = self._event(detector.pop(), current, arrivals, results)
                if item is _END:
                    break
        except BaseException as exc:
            self._errors.append(exc)
        finally:
            self._put(results, _END)
            self._stop.set()  # the capture thread too, when this one failed

    def _event(
        self,
        event: VadEvent,
        current: _Open | None,
        arrivals: deque[tuple[int, float]],
        results: queue.Queue[Any],
    ) -> _Open | None:
        """Apply one VAD event; returns the utterance still open."""
        if event.kind == "start":
            frontend = LogMelStream(self.transcriber.tokenizer.frontend)
            current = _Open(event.utterance, event.sample, frontend)
        assert current is not None and current.index == event.utterance
        with _stopwatch(current.timings, "frontend", self.clock):
            current.mel.append(current.frontend.push(event.audio))
        if event.kind != "end":
            return current
        decided = time.monotonic()
        assert event.speech_end is not None
        spoken = next((t for end, t in arrivals if end >= event.speech_end), decided)
        utterance = self._finish(
            current.index,
            current.start / self.sample_rate,
            event.stop / self.sample_rate,
            np.concatenate(current.mel),
            current.timings,
            spoken,
            decided,
        )
        self.stats.utterances += 1
        self._put(results, utterance)
        return None

    def _finish(
        self,
        index: int,
        start_s: float,
        end_s: float,
        mel: np.ndarray,
        timings: dict[str, float],
        spoken: float,
        decided: float,
    ) -> Utterance:
        """Tokens -> segments -> sink for one utterance's log-mel frames."""
        t = self.transcriber
        compression = t.pack.compression
        with _stopwatch(timings, "tokenizer", self.clock):
            tokens, frames = t.tokenizer.encode_mel(mel)
        with _stopwatch(timings, "entropy_lm", self.clock):
            entropy = t.entropy(tokens)
        with _stopwatch(timings, "segmenter", self.clock):
            starts = compression.starts(tokens, entropy)
        with _stopwatch(timings, "aggregator", self.clock):
            source = t.pack.aggregator.source(tokens, frames)
            vectors = t.pack.aggregator(source, starts, compression.max_len)
        lengths = segment_lengths(starts, len(tokens))
        ids = segment_tokens(tokens, starts, lengths)
        with _stopwatch(timings, self.sink.timing, self.clock):
            handle = self.sink.submit(starts, lengths, vectors, ids)
            text = self.sink.result(handle, self.result_timeout_s)
        done = time.monotonic()
        dim, dtype = vectors.shape[1], self.sink.dtype
        samples = round((end_s - start_s) * self.sample_rate)
        wire = self._token_wire
        # Each wire's frames are encoded once: the sink's own row reuses its count.
        codes = (
            None
            if self._codes is None
            else wire_bytes(starts, lengths, vectors, "codes", self._codes)
        )
        token_ids = (
            None
            if wire is None
            else wire_bytes(starts, lengths, vectors, "tokens", tokens=ids, token_wire=wire)
        )
        sent = {"codes": codes, "tokens": token_ids}.get(dtype)
        traffic = Traffic(
            segments=(
                sent
                if sent is not None
                else wire_bytes(
                    starts, lengths, vectors, dtype, self.sink.codes, tokens=ids, token_wire=wire
                )
            ),
            # Dense: every token's vector, in the float form (codes and tokens: fp16).
            dense=frames_bytes(len(tokens), dim, dtype if dtype in ("fp16", "int8") else "fp16"),
            pcm=samples * PCM_BYTES,
            codes=codes,
            tokens=token_ids,
        )
        return Utterance(
            index=index,
            text=text,
            start_s=start_s,
            end_s=end_s,
            tokens=len(tokens),
            segments=len(starts),
            timings=timings,
            traffic=traffic,
            latency_s=done - spoken,
            finalize_s=done - decided,
            arrays=TokenArrays(tokens, entropy, starts) if self.keep_tokens else None,
        )
