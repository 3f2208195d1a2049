"""Where an utterance's segments go: a local decoder, a decoding server, or a .jsonl file.

A sink takes the segments of one whole utterance (``submit``, returning a handle) and
gives its final text (``result``). ``wire_bytes`` is what the segments cost on the wire
(docs/protocol.md) in a sink's wire format (``dtype``, with ``codes`` for protocol 2's
segment codes or ``tokens`` for its token wire), so every sink reports the same byte
counts. On the token wire a sink sends the segments' token ids (``submit``'s
``tokens``), not their vectors.
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgetok.protocol import (
    HELLO_DTYPES,
    Identity,
    encode_frame,
    encode_tokens_frame,
    frame_bytes,
)
from edgetok.segment_codes import SegmentCodes
from edgetok.stages import DecoderStage
from edgetok.token_wire import TokenWire

if TYPE_CHECKING:
    from edgetok.bundle import Bundle

__all__ = [
    "SEGMENTS_PER_FRAME",
    "JsonlSink",
    "LocalSink",
    "RemoteSink",
    "Sink",
    "frames_bytes",
    "utterance_frames",
    "wire_bytes",
    "wire_format",
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


def _token_slices(lengths: np.ndarray, parts: list[slice]) -> list[slice]:
    """Each frame's token ids: the ids of its segments (contiguous), by position."""
    ends = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    return [slice(int(ends[part.start]), int(ends[min(part.stop, len(lengths))])) for part in parts]


def utterance_frames(
    starts: np.ndarray,
    lengths: np.ndarray,
    vectors: np.ndarray,
    dtype: str = "fp16",
    codes: SegmentCodes | None = None,
    *,
    tokens: np.ndarray | None = None,
    token_wire: TokenWire | None = None,
    seq: int = 0,
    utterance: int = 0,
) -> list[bytes]:
    """One utterance's frames as a client sends them: ``SEGMENTS_PER_FRAME`` segments
    each (one, maybe empty, at least), numbered from ``seq``, the last with END. The
    token wire (dtype tokens, ``token_wire``) sends ``tokens``, the segments' ids."""
    parts = _slices(len(starts))
    if dtype == "tokens":
        if token_wire is None or tokens is None:
            raise ValueError("dtype tokens needs the token wire and the segments' token ids")
        return [
            encode_tokens_frame(
                seq + i,
                utterance,
                starts[part],
                lengths[part],
                tokens[ids],
                token_wire.vocab_size,
                end=i == len(parts) - 1,
            )
            for i, (part, ids) in enumerate(zip(parts, _token_slices(lengths, parts), strict=True))
        ]
    return [
        encode_frame(
            seq + i,
            utterance,
            starts[part],
            lengths[part],
            vectors[part],
            dtype=dtype,
            codes=codes,
            end=i == len(parts) - 1,
        )
        for i, part in enumerate(parts)
    ]


def wire_bytes(
    starts: np.ndarray,
    lengths: np.ndarray,
    vectors: np.ndarray,
    dtype: str = "fp16",
    codes: SegmentCodes | None = None,
    *,
    tokens: np.ndarray | None = None,
    token_wire: TokenWire | None = None,
) -> int:
    """Bytes of the frames that carry one utterance's segments, as encoded (seq and
    utterance 0: a varint frame's header may take a byte or two more on a long session)."""
    if dtype in ("fp16", "int8"):
        return frames_bytes(len(starts), vectors.shape[1], dtype)
    frames = utterance_frames(
        starts, lengths, vectors, dtype, codes, tokens=tokens, token_wire=token_wire
    )
    return sum(len(f) for f in frames)


def wire_format(bundle: Bundle, wire: str | None = None) -> dict[str, Any]:
    """A sink's ``dtype``, ``codes`` and ``tokens`` for ``wire`` (fp16, int8, codes or
    tokens; None: fp16, which every server decodes at the float path's WER; codes and
    tokens cost far fewer bytes, at a WER measured in docs/architecture.md "Wire v2")."""
    wire = wire or "fp16"
    if wire not in HELLO_DTYPES:
        raise ValueError(f"wire format {wire!r} is not one of {', '.join(HELLO_DTYPES)}")
    codes = SegmentCodes.of_bundle(bundle) if wire == "codes" else None
    tokens = TokenWire.of_bundle(bundle) if wire == "tokens" else None
    if wire == "codes" and codes is None:
        raise ValueError(f"bundle {bundle.meta.name!r} has no [segment_codes]: send fp16 or int8")
    if wire == "tokens" and tokens is None:
        raise ValueError(f"bundle {bundle.meta.name!r} has no token_reader: send fp16 or int8")
    return {"dtype": wire, "codes": codes, "tokens": tokens}


class Sink(Protocol):
    timing: str
    """The stage name under which the pipeline records the sink's time."""
    dtype: str
    """The wire dtype of the vectors (for byte counts)."""
    codes: SegmentCodes | None
    """The segment codes when ``dtype`` is codes."""
    tokens: TokenWire | None
    """The token wire when ``dtype`` is tokens."""

    def submit(
        self,
        starts: np.ndarray,
        lengths: np.ndarray,
        vectors: np.ndarray,
        tokens: np.ndarray | None = None,
    ) -> int:
        """One utterance's segments: their vectors and (for the token wire) token ids."""
        ...

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
    """Decoding on this machine with a ``DecoderStage``: float32 vectors, or with
    ``codes`` the vectors a codes server would decode (dequantized)."""

    timing = "decoder"

    def __init__(self, decoder: DecoderStage, codes: SegmentCodes | None = None) -> None:
        self.decoder, self.codes, self.tokens = decoder, codes, None
        self.dtype = "fp16" if codes is None else "codes"
        self._handles = _Handles()
        self._waiting: dict[int, np.ndarray] = {}

    def submit(
        self,
        starts: np.ndarray,
        lengths: np.ndarray,
        vectors: np.ndarray,
        tokens: np.ndarray | None = None,
    ) -> int:
        handle = self._handles.take()
        if self.codes is not None:
            vectors = self.codes.decode(self.codes.encode(vectors))
        self._waiting[handle] = vectors
        return handle

    def result(self, handle: int, timeout: float | None = None) -> str:
        return self.decoder(self._waiting.pop(handle))

    def close(self) -> None:
        self._waiting.clear()


#: An utterance's starts, lengths, vectors and (token wire) token ids, kept for resends.
_Segments = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


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
        codes: SegmentCodes | None = None,
        tokens: TokenWire | None = None,
        timeout_s: float = 30.0,
        resends: int = 3,
        **options: Any,
    ) -> None:
        from edgetok.client import RemoteDecoder

        self.dtype, self.codes, self.tokens = dtype, codes, tokens
        self.timeout_s, self.resends = timeout_s, resends
        self.remote = RemoteDecoder(
            url, token, identity, dtype=dtype, codes=codes, tokens=tokens, **options
        )
        self._handles = _Handles()
        self._segments: dict[int, _Segments] = {}
        """Handle -> segments of each utterance whose text was not taken yet."""
        self.resent = 0
        """Utterances sent again after a session loss."""

    def submit(
        self,
        starts: np.ndarray,
        lengths: np.ndarray,
        vectors: np.ndarray,
        tokens: np.ndarray | None = None,
    ) -> int:
        handle, segments = self._handles.take(), (starts, lengths, vectors, tokens)
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

    def _send(self, handle: int, segments: _Segments) -> None:
        """Send ``segments`` in frames as utterance ``handle``; a session lost meanwhile
        is left for ``result`` to find."""
        from edgetok.client import RemoteError

        starts, lengths, vectors, tokens = segments
        parts = _slices(len(starts))
        for i, (part, ids) in enumerate(zip(parts, _token_slices(lengths, parts), strict=True)):
            try:
                self.remote.submit(
                    handle,
                    starts[part],
                    lengths[part],
                    vectors[part],
                    final=i == len(parts) - 1,
                    tokens=tokens[ids] if tokens is not None else None,
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

    def __init__(
        self,
        path: str | Path,
        *,
        dtype: str = "fp16",
        codes: SegmentCodes | None = None,
        tokens: TokenWire | None = None,
    ) -> None:
        self.path, self.dtype, self.codes, self.tokens = Path(path), dtype, codes, tokens
        self._file = self.path.open("w", encoding="utf-8")
        self._handles = _Handles()
        self._seq = 0

    def submit(
        self,
        starts: np.ndarray,
        lengths: np.ndarray,
        vectors: np.ndarray,
        tokens: np.ndarray | None = None,
    ) -> int:
        handle = self._handles.take()
        encoded = utterance_frames(
            starts,
            lengths,
            vectors,
            self.dtype,
            self.codes,
            tokens=tokens,
            token_wire=self.tokens,
            seq=self._seq,
            utterance=handle,
        )
        frames = [base64.b64encode(data).decode("ascii") for data in encoded]
        self._seq += len(encoded)
        line = {"utterance": handle, "dtype": self.dtype, "frames": frames}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        return handle

    def result(self, handle: int, timeout: float | None = None) -> str:
        return ""

    def close(self) -> None:
        self._file.close()
