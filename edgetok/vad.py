"""Voice activity detection: silero-vad's ONNX model in onnxruntime, no torch.

``SileroModel`` scores 512-sample chunks (32 ms at 16 kHz) with the model's recurrent
state and 64-sample context carried from chunk to chunk. ``VoiceDetector`` turns those
scores into utterances with hysteresis, and hands them out as ``VadEvent``s through a
bounded queue (``accept_waveform``, then ``empty``/``front``/``pop``)::

    start  the first audio of an utterance (with ``pad_s`` of pre-roll)
    speech more audio of the open utterance
    end    its last audio (up to ``pad_s`` past the last voiced chunk)

The audio of one utterance's events, concatenated, is the utterance from its padded start
to its padded end. The model file ships with edgetok: ``edgetok/data/silero_vad.onnx``,
silero VAD v6.2 (https://github.com/snakers4/silero-vad, MIT, its license beside it in
``silero_vad.LICENSE``), byte for byte the file of the silero-vad 6.2.3 wheel; its sha256
is checked before it is opened.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edgetok.runtime import Session, SessionOptions, open_session

__all__ = [
    "CHUNK",
    "SileroModel",
    "VadConfig",
    "VadEvent",
    "VadOverflow",
    "VoiceDetector",
    "silero_model_path",
]

SAMPLE_RATE = 16000
CHUNK = 512
"""Samples per model call at 16 kHz."""
_CONTEXT = 64
_MODEL_PATH = Path(__file__).parent / "data" / "silero_vad.onnx"
#: silero VAD v6.2's ONNX model (silero-vad 6.2.3's ``silero_vad/data/silero_vad.onnx``).
_MODEL_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"


def silero_model_path(path: Path = _MODEL_PATH) -> Path:
    """The silero VAD ONNX file shipped with edgetok (or ``path``), its sha256 checked
    (FileNotFoundError when it is missing, ValueError when it is another model)."""
    if not path.is_file():
        raise FileNotFoundError(f"the silero VAD model {path} is missing: reinstall edgetok")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != _MODEL_SHA256:
        raise ValueError(f"{path} has sha256 {digest}, not silero VAD v6.2's {_MODEL_SHA256}")
    return path


class SileroModel:
    """Speech probability of each 512-sample chunk of a 16 kHz stream."""

    def __init__(self, path: str | Path | None = None, options: SessionOptions | None = None):
        self.session: Session = open_session(path or silero_model_path(), options=options)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Start a new stream: zero recurrent state and context."""
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(_CONTEXT, np.float32)

    def __call__(self, chunk: np.ndarray) -> float:
        """Probability in [0, 1] that float32 ``chunk`` [512] is speech."""
        if chunk.shape != (CHUNK,):
            raise ValueError(f"silero-vad takes chunks of {CHUNK} samples, got {chunk.shape}")
        x = np.concatenate([self._context, chunk]).astype(np.float32, copy=False)[None]
        out = self.session.run({"input": x, "state": self._state, "sr": self._sr})
        self._state = out["stateN"]
        self._context = x[0, -_CONTEXT:].copy()
        return float(out["output"][0, 0])


@dataclass(frozen=True)
class VadConfig:
    """Hysteresis and timing of ``VoiceDetector`` (silero-vad's usual defaults)."""

    threshold: float = 0.5
    """A chunk is voiced when its probability is >= this."""
    neg_threshold: float | None = None
    """A chunk is silent below this (default ``threshold - 0.15``); between: no change."""
    min_speech_s: float = 0.25
    """Voiced time before an utterance starts; shorter bursts are ignored."""
    min_silence_s: float = 0.3
    """Hangover: silence that ends an utterance."""
    pad_s: float = 0.1
    """Audio kept before the first and after the last voiced chunk (<= ``min_silence_s``)."""
    max_speech_s: float = 30.0
    """An utterance this long is ended, and the next one starts at once (in a pause
    shorter than ``min_silence_s``, when the pause ends: an utterance is always shorter
    than ``max_speech_s + min_silence_s`` and one chunk)."""
    max_events: int = 64
    """Capacity of the event queue: ``accept_waveform`` raises ``VadOverflow`` when full."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.negative <= self.threshold:
            raise ValueError(f"neg_threshold must be in [0, threshold], got {self.negative}")
        if not 0.0 <= self.pad_s <= self.min_silence_s:
            raise ValueError("pad_s must be in [0, min_silence_s]")
        if self.min_speech_s < 0 or self.max_speech_s <= self.min_speech_s:
            raise ValueError("need 0 <= min_speech_s < max_speech_s")
        if self.max_events < 4:
            raise ValueError("max_events must be >= 4")

    @property
    def negative(self) -> float:
        return max(0.0, self.threshold - 0.15) if self.neg_threshold is None else self.neg_threshold


@dataclass(frozen=True)
class VadEvent:
    """One step of an utterance; ``audio`` continues the previous event's audio."""

    kind: Literal["start", "speech", "end"]
    utterance: int
    """Index of the utterance in the stream, from 0."""
    sample: int
    """Stream position of ``audio[0]``."""
    audio: np.ndarray
    speech_end: int | None = None
    """``end`` only: where the last voiced chunk ends (the end of speech)."""

    @property
    def stop(self) -> int:
        """Stream position just after ``audio``."""
        return self.sample + len(self.audio)


class VadOverflow(RuntimeError):
    """The event queue is full: events were not popped."""


class VoiceDetector:
    """Streaming utterance detection over ``SileroModel`` scores (any chunk size in)."""

    def __init__(self, model: SileroModel, config: VadConfig | None = None) -> None:
        self.model = model
        self.config = config or VadConfig()
        c = self.config
        self._pad = round(c.pad_s * SAMPLE_RATE)
        self._min_speech = round(c.min_speech_s * SAMPLE_RATE)
        self._min_silence = round(c.min_silence_s * SAMPLE_RATE)
        self._max_speech = round(c.max_speech_s * SAMPLE_RATE)
        self._keep = self._pad + self._min_speech + CHUNK
        """History kept for the pre-roll of an utterance that starts."""
        self._events: deque[VadEvent] = deque()
        self.reset()

    def reset(self) -> None:
        """Forget the stream (the queue too); the next sample is position 0."""
        self.model.reset()
        self._events.clear()
        self._pending = np.zeros(0, np.float32)
        self._history = np.zeros(0, np.float32)
        self._history_start = 0
        self._position = 0
        """Samples scored so far."""
        self._utterances = 0
        self._voiced_since: int | None = None
        """Candidate start: first voiced chunk of a burst not yet an utterance."""
        self._open: int | None = None
        """Padded start of the open utterance."""
        self._sent = 0
        """End of the audio handed out for the open utterance."""
        self._silence_since: int | None = None
        self._last_end = 0

    @property
    def position(self) -> int:
        """Samples scored so far (a partial chunk waits for more samples)."""
        return self._position

    @property
    def in_speech(self) -> bool:
        return self._open is not None

    def accept_waveform(self, samples: np.ndarray) -> None:
        """Score float32 16 kHz ``samples`` and queue the events they complete."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"samples must be 1-D, got shape {samples.shape}")
        buffer = np.concatenate([self._pending, samples])
        whole = len(buffer) - len(buffer) % CHUNK
        for offset in range(0, whole, CHUNK):
            self._step(buffer[offset : offset + CHUNK])
        self._pending = buffer[whole:].copy()
        if self._open is not None and self._silence_since is None:
            self._emit_audio("speech", self._position)

    def flush(self) -> None:
        """End of stream: end the open utterance at the last scored sample."""
        if self._open is not None:
            end = self._position if self._silence_since is None else self._silence_since
            self._end(min(self._position, end + self._pad), end)
        self._voiced_since = None

    def empty(self) -> bool:
        return not self._events

    @property
    def front(self) -> VadEvent:
        """The oldest event (IndexError when empty)."""
        return self._events[0]

    def pop(self) -> VadEvent:
        return self._events.popleft()

    def _step(self, chunk: np.ndarray) -> None:
        """Score one chunk and move the state machine past it."""
        start = self._position
        probability = self.model(chunk)
        self._remember(chunk)
        self._position += CHUNK
        voiced = probability >= self.config.threshold
        silent = probability < self.config.negative
        if self._open is None:
            if voiced and self._voiced_since is None:
                self._voiced_since = start
            elif silent:
                self._voiced_since = None
            if self._voiced_since is not None and self._position - self._voiced_since >= max(
                self._min_speech, CHUNK
            ):
                self._start(self._voiced_since)
            return
        if voiced:
            self._silence_since = None
        elif silent and self._silence_since is None:
            self._silence_since = start
        if self._silence_since is not None:
            if self._position - self._silence_since >= self._min_silence:
                self._end(self._silence_since + self._pad, self._silence_since)
        elif self._position - self._open >= self._max_speech:
            self._end(self._position, self._position)
            self._start(self._position)

    def _remember(self, chunk: np.ndarray) -> None:
        """Keep the last ``_keep`` samples (and all of an open utterance not yet sent)."""
        history = np.concatenate([self._history, chunk])
        keep_from = self._position + CHUNK - self._keep
        if self._open is not None:
            keep_from = min(keep_from, self._sent)
        drop = max(0, keep_from - self._history_start)
        self._history = history[drop:]
        self._history_start += drop

    def _audio(self, begin: int, end: int) -> np.ndarray:
        lo = begin - self._history_start
        return self._history[lo : end - self._history_start].copy()

    def _start(self, voiced_since: int) -> None:
        begin = max(voiced_since - self._pad, self._last_end, self._history_start)
        self._open = self._sent = begin
        self._voiced_since = None
        self._silence_since = None
        self._emit_audio("start", self._position)

    def _end(self, end: int, speech_end: int) -> None:
        assert self._open is not None
        self._push(
            VadEvent("end", self._utterances, self._sent, self._audio(self._sent, end), speech_end)
        )
        self._utterances += 1
        self._last_end = end
        self._open = None
        self._silence_since = None

    def _emit_audio(self, kind: Literal["start", "speech"], end: int) -> None:
        if kind == "speech" and end <= self._sent:
            return
        self._push(VadEvent(kind, self._utterances, self._sent, self._audio(self._sent, end)))
        self._sent = end

    def _push(self, event: VadEvent) -> None:
        if len(self._events) >= self.config.max_events:
            raise VadOverflow(
                f"{len(self._events)} VAD events waiting: pop them after accept_waveform"
            )
        self._events.append(event)
