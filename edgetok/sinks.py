"""Where an utterance's segments go: a local decoder, a decoding server, or a .jsonl file.

A sink takes the segments of one whole utterance (``submit``, returning a handle) and
gives its final text (``result``). ``frames_bytes`` is what the segments cost on the wire
(docs/protocol.md), so every sink reports the same byte counts.
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgetok.protocol import Identity, encode_frame, frame_bytes
from edgetok.stages import DecoderStage

__all__ = [
    "SEGMENTS_PER_FRAME",
    "JsonlSink",
    "LocalSink",
    "RemoteSink",
    "Sink",
    "frames_bytes",
]

SEGMENTS_PER_FRAME = 256
"""Segments per wire frame (~130 KB at D = 256 fp16, within the server's 256 KiB)."""


def frames_bytes(count: int, dim: int, dtype: str = "fp16") -> int:
    """Bytes of the frames carrying ``count`` segments (an empty END frame when 0)."""
    full, rest = divmod(count, SEGMENTS_PER_FRAME)
    size = full * frame_bytes(SEGMENTS_PER_FRAME, dim, dtype)
    return size + (frame_bytes(rest, dim, dtype) if rest or not full else 0)


def _slices(count: int) -> list[slice]:
    """The frames of an utterance of ``count`` segments (one, maybe empty, at least)."""
    return [slice(i, i + SEGMENTS_PER_FRAME) for i in range(0, max(count, 1), SEGMENTS_PER_FRAME)]


class Sink(Protocol):
    timing: str
    """The stage name under which the pipeline records the sink's time."""
    dtype: str
    """The wire dtype of the vectors (for byte counts)."""

    def submit(self, starts: np.ndarray, lengths: np.ndarray, vectors: np.ndarray) -> int: ...

    def result(self, handle: int, timeout: float | None = None) -> str: ...

    def close(self) -> None: ...


class _Handles:
    """Thread-safe utterance handles, counted from 0."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next - 1


class LocalSink:
    """Decoding on this machine with a ``DecoderStage`` (float32 vectors)."""

    timing = "decoder"
    dtype = "fp16"

    def __init__(self, decoder: DecoderStage) -> None:
        self.decoder = decoder
        self._handles = _Handles()
        self._waiting: dict[int, np.ndarray] = {}

    def submit(self, starts: np.ndarray, lengths: np.ndarray, vectors: np.ndarray) -> int:
        handle = self._handles.take()
        self._waiting[handle] = vectors
        return handle

    def result(self, handle: int, timeout: float | None = None) -> str:
        return self.decoder(self._waiting.pop(handle))

    def close(self) -> None:
        self._waiting.clear()


class RemoteSink:
    """An ``edgetok serve`` server through a ``RemoteDecoder`` (one session).

    It keeps an utterance's segments until its text is taken, and sends them again (up
    to ``resends`` times) when the server lost them with the session, as a restarted
    server does.
    """

    timing = "remote"

    def __init__(
        self,
        url: str,
        token: str | None,
        identity: Identity,
        *,
        dtype: str = "fp16",
        timeout_s: float = 30.0,
        resends: int = 3,
        **options: Any,
    ) -> None:
        from edgetok.client import RemoteDecoder

        self.dtype, self.timeout_s, self.resends = dtype, timeout_s, resends
        self.remote = RemoteDecoder(url, token, identity, dtype=dtype, **options)
        self._handles = _Handles()
        self._segments: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        """Handle -> segments of each utterance whose text was not taken yet."""
        self.resent = 0
        """Utterances sent again after a session loss."""

    def submit(self, starts: np.ndarray, lengths: np.ndarray, vectors: np.ndarray) -> int:
        handle, segments = self._handles.take(), (starts, lengths, vectors)
        self._send(handle, segments)
        self._segments[handle] = segments
        return handle

    def result(self, handle: int, timeout: float | None = None) -> str:
        from edgetok.client import RemoteError

        segments = self._segments.pop(handle)
        resends = 0
        while True:
            try:
                return self.remote.result(handle, timeout or self.timeout_s)
            except RemoteError as exc:
                if exc.code != "session_lost" or resends == self.resends:
                    raise
            resends += 1
            self.resent += 1
            handle = self._handles.take()
            self._send(handle, segments)

    def _send(self, handle: int, segments: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Send ``segments`` in frames as utterance ``handle``; a session lost meanwhile
        is left for ``result`` to find."""
        from edgetok.client import RemoteError

        starts, lengths, vectors = segments
        parts = _slices(len(starts))
        for i, part in enumerate(parts):
            try:
                self.remote.submit(
                    handle,
                    starts[part],
                    lengths[part],
                    vectors[part],
                    final=i == len(parts) - 1,
                    timeout=self.timeout_s,
                )
            except RemoteError as exc:
                if exc.code != "session_lost":
                    raise
                return

    def close(self) -> None:
        self.remote.close()


class JsonlSink:
    """One JSON line per utterance: ``{"utterance", "dtype", "frames"}``, each frame the
    base64 of its wire encoding (``edgetok.protocol.decode_frame`` reads it back)."""

    timing = "file"

    def __init__(self, path: str | Path, *, dtype: str = "fp16") -> None:
        self.path, self.dtype = Path(path), dtype
        self._file = self.path.open("w", encoding="utf-8")
        self._handles = _Handles()
        self._seq = 0

    def submit(self, starts: np.ndarray, lengths: np.ndarray, vectors: np.ndarray) -> int:
        handle = self._handles.take()
        frames = []
        parts = _slices(len(starts))
        for i, part in enumerate(parts):
            data = encode_frame(
                self._seq,
                handle,
                starts[part],
                lengths[part],
                vectors[part],
                dtype=self.dtype,
                end=i == len(parts) - 1,
            )
            frames.append(base64.b64encode(data).decode("ascii"))
            self._seq += 1
        line = {"utterance": handle, "dtype": self.dtype, "frames": frames}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        return handle

    def result(self, handle: int, timeout: float | None = None) -> str:
        return ""

    def close(self) -> None:
        self._file.close()
