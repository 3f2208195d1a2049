"""The participants of a bench run: a configuration's real device pipeline talking to a
real ``edgetok serve`` on 127.0.0.1 (with stopwatches), and pocketsphinx on the same
audio. Each ``run_once`` streams the whole audio once and returns its timings."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from edgetok.beam import DEFAULT_BEAM
from edgetok.bench.configs import Config
from edgetok.bundle import Bundle, load_bundle
from edgetok.runtime import SessionOptions
from edgetok.stages import bundle_compression

if TYPE_CHECKING:
    from edgetok.pipeline import Utterance
    from edgetok.stages import Transcriber

__all__ = [
    "CLOCKS",
    "Participant",
    "PipelineRunner",
    "PocketSphinxRunner",
    "device_transcriber",
]

CLOCKS: Final = {"wall": time.perf_counter, "cpu": time.process_time}


def device_transcriber(bundle: Bundle, options: SessionOptions) -> Transcriber:
    """A ``Transcriber`` with the device's models only: no decoder is loaded (the
    pipeline sends segments to a sink and never calls the pack's decoder)."""
    from edgetok.stages import AggregatorStage, DecoderPack, Transcriber

    aggregator = AggregatorStage(bundle.open("aggregator", options=options))
    pack = DecoderPack(bundle_compression(bundle), aggregator, None)  # type: ignore[arg-type]
    return Transcriber(bundle, options=options, pack=pack)


class Participant:
    name: str

    def run_once(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what it holds."""


class _BenchSink:
    """A ``RemoteSink`` with stopwatches: ``serialize`` (the wire frames of the
    utterance, encoded as the client encodes them), ``send`` (submit until the server
    acknowledged every frame), ``round_trip`` (submit until the final text), and when
    the first text event (partial or final) arrived."""

    timing = "sink"

    def __init__(
        self, url: str, token: str, identity: Any, clock: Callable[[], float], **wire: Any
    ) -> None:
        from edgetok.sinks import RemoteSink

        self.clock = clock
        self._first: dict[int, float] = {}
        self.remote = RemoteSink(url, token, identity, on_transcript=self._on_text, **wire)
        self.dtype, self.codes, self.tokens = (
            self.remote.dtype,
            self.remote.codes,
            self.remote.tokens,
        )
        self.parts: list[dict[str, float]] = []
        self._submitted: dict[int, tuple[float, float, float]] = {}
        self._lock = threading.Lock()

    def _on_text(self, event: Any) -> None:
        with self._lock:
            self._first.setdefault(event.utterance, time.monotonic())

    def submit(
        self,
        starts: np.ndarray,
        lengths: np.ndarray,
        vectors: np.ndarray,
        tokens: np.ndarray | None = None,
    ) -> int:
        from edgetok.sinks import utterance_frames

        started = self.clock()
        utterance_frames(
            starts, lengths, vectors, self.dtype, self.codes, tokens=tokens, token_wire=self.tokens
        )
        serialize = self.clock() - started
        sent = self.clock()
        handle = self.remote.submit(starts, lengths, vectors, tokens)
        self.remote.remote.flush(self.remote.timeout_s)
        send = self.clock() - sent
        self._submitted[handle] = (sent, serialize, send)
        return handle

    def result(self, handle: int, timeout: float | None = None) -> str:
        text = self.remote.result(handle, timeout)
        done, done_monotonic = self.clock(), time.monotonic()
        sent, serialize, send = self._submitted.pop(handle)
        with self._lock:
            first = self._first.pop(handle, done_monotonic)
        self.parts.append(
            {
                "serialize": serialize,
                "send": send,
                "round_trip": done - sent,
                "final_after_first_s": done_monotonic - first,
            }
        )
        return text

    def close(self) -> None:
        self.remote.close()


def _timed_vad(options: SessionOptions, clock: Callable[[], float]) -> Any:
    from edgetok.vad import SileroModel

    class _TimedVad(SileroModel):
        """The silero model, counting its seconds over the whole stream."""

        seconds = 0.0

        def __call__(self, chunk: np.ndarray) -> float:
            started = clock()
            try:
                return super().__call__(chunk)
            finally:
                self.seconds += clock() - started

    return _TimedVad(options=options)


class PipelineRunner(Participant):
    """One configuration: its pipeline, a server on 127.0.0.1 (decoding with ``beam``) and
    a client to it."""

    def __init__(
        self,
        config: Config,
        audio_path: Path,
        audio_s: float,
        threads: int,
        clock: str,
        beam: int = DEFAULT_BEAM,
    ) -> None:
        from edgetok.protocol import wire_identity
        from edgetok.segment_codes import SegmentCodes
        from edgetok.server import start_server
        from edgetok.sinks import wire_format
        from edgetok.stages import server_decoder

        assert config.bundle is not None
        self.config, self.name = config, config.name
        self.audio_path, self.audio_s = audio_path, audio_s
        self.clock_name, self.clock = clock, CLOCKS[clock]
        self.bundle = load_bundle(config.bundle)
        options = SessionOptions(threads=threads)
        self.transcriber = device_transcriber(self.bundle, options)
        self.vad = _timed_vad(options, self.clock)
        decoder = server_decoder(self.bundle, options, beam=beam)
        self.decodes: list[float] = []

        def decode(vectors: np.ndarray) -> str:
            started = self.clock()
            try:
                return decoder(vectors)
            finally:
                self.decodes.append(self.clock() - started)

        token = secrets.token_urlsafe(16)
        wire = wire_format(self.bundle)  # fp16, the default
        codes = SegmentCodes.of_bundle(self.bundle)
        self.server = start_server(decode, wire_identity(self.bundle), token=token, codes=codes)
        try:
            url = f"ws://127.0.0.1:{self.server.port}/"
            self.sink = _BenchSink(url, token, wire_identity(self.bundle), self.clock, **wire)
        except BaseException:
            self.server.close()
            raise

    def run_once(self) -> dict[str, Any]:
        from edgetok.audio import FileSource
        from edgetok.pipeline import Pipeline

        self.vad.seconds = 0.0
        self.sink.parts.clear()
        decodes = len(self.decodes)
        pipeline = Pipeline(self.transcriber, self.sink, vad_model=self.vad, clock=self.clock)
        started = self.clock()
        utterances = list(pipeline.run(FileSource(self.audio_path)))
        wall = self.clock() - started
        if len(self.sink.parts) != len(utterances):
            raise RuntimeError(f"{self.name}: {len(utterances)} utterances, sink saw another count")
        return {
            "audio_s": self.audio_s,
            "run_s": wall,
            "vad_total_s": self.vad.seconds,
            "utterances": [
                _utterance_record(u, parts, self.clock_name)
                for u, parts in zip(utterances, self.sink.parts, strict=True)
            ],
            "server_decode_s": self.decodes[decodes:],
            "text": " ".join(u.text.strip() for u in utterances).strip(),
        }

    def close(self) -> None:
        try:
            self.sink.close()
        finally:
            self.server.close()


#: The stages between the VAD's end-of-utterance decision and the final text.
_AFTER_END: Final = ("tokenizer", "entropy_lm", "segmenter", "aggregator", "round_trip")


def _utterance_record(u: Utterance, parts: dict[str, float], clock: str) -> dict[str, Any]:
    timings = {k: v for k, v in u.timings.items() if k != _BenchSink.timing}
    timings.update({k: parts[k] for k in ("serialize", "send", "round_trip")})
    # wall: the pipeline's own end-of-speech -> final-text latency; cpu: the work after
    # the end decision (the gap between first and final text is on the wall clock).
    eos = u.latency_s if clock == "wall" else sum(timings.get(k, 0.0) for k in _AFTER_END)
    return {
        "duration_s": u.duration_s,
        "tokens": u.tokens,
        "segments": u.segments,
        "bytes": vars(u.traffic),
        "timings": timings,
        "eos_to_final_s": eos,
        "first_result_s": max(0.0, eos - parts["final_after_first_s"]),
    }


class PocketSphinxRunner(Participant):
    """pocketsphinx 5 (its packaged US English model) on the same audio, one thread."""

    name = "pocketsphinx"

    def __init__(self, audio: np.ndarray, sample_rate: int, clock: str) -> None:
        from edgetok.evaluate import PocketSphinx

        self.audio, self.audio_s = audio, len(audio) / sample_rate
        self.clock = CLOCKS[clock]
        self.decoder = PocketSphinx()

    def run_once(self) -> dict[str, Any]:
        started = self.clock()
        text = self.decoder(self.audio)
        return {"audio_s": self.audio_s, "run_s": self.clock() - started, "text": text}
