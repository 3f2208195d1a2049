"""The device -> server wire protocol, versions 1 and 2 (docs/protocol.md): pure, no I/O.

Binary frames carry numbered batches of segments of one utterance; JSON text messages
carry the handshake (``hello``/``ready``), acknowledgements and transcripts. Every decoder
here is strict: anything malformed raises ``ProtocolError`` whose ``code`` names the
error class (``CLOSE_CODES`` maps it to the websocket close code) and whose message names
the problem. The hello's ``version`` is the connection's; the server answers ``ready``
with the same one. Version 2 adds the ``codes`` dtype: segment vectors as residual VQ
codes (``edgetok.segment_codes``) of the bundle's ``[segment_codes]`` codebooks.

Float frame (fp16/int8, both versions; little-endian)::

    header  20 bytes   magic b"ETOK", version u8 (1), flags u8 (bit 0: end of utterance),
                       dtype u8 (1 fp16, 2 int8), reserved u8 (0), seq u32,
                       utterance u32, count u16 (S), dim u16 (D)
    starts  u32[S]     first token (50 Hz frame) of each segment in the utterance
    scales  f32[S]     int8 only: vector i is values[i] * scales[i]
    lengths u16[S]     tokens in each segment (>= 1)
    values  S*D fp16 or int8, row-major

Codes frame (dtype ``codes``, version 2; varints are unsigned LEB128, minimal)::

    tag     u8         0xEC
    flags   u8         bit 0: end of utterance; bits 4-7: length bits W - 1 (W 1..16)
    seq, utterance, count S: varints (u32; S <= 1024, 0 only with END)
    start   varint     first token of segment 0 (absent when S = 0); the segments are
                       contiguous: segment i starts where i - 1 ends
    bits    S x (W bits: length - 1), then S x M codes of log2(K) bits (row-major),
            each value's low bit first, zero-padded to a whole byte

Tokens frame (version 2; the segments' token ids, which a server with the bundle's
``token_reader`` reads): the codes frame's layout with tag 0xED, and after the lengths
sum(lengths) token ids of ceil(log2(V)) bits each (V: the bundle's ``[tokens]
vocab_size``).
"""

from __future__ import annotations

import json
import math
import re
import struct
import typing
from dataclasses import MISSING, asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, get_type_hints

import numpy as np

if TYPE_CHECKING:
    from edgetok.bundle import Bundle
    from edgetok.segment_codes import SegmentCodes

__all__ = [
    "CLOSE_CODES",
    "CODES_TAG",
    "DTYPES",
    "HEADER_BYTES",
    "HELLO_DTYPES",
    "MAGIC",
    "MAX_DIM",
    "MAX_PENDING",
    "MAX_SEGMENTS",
    "MAX_UTTERANCE_S",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSIONS",
    "RETRYABLE_ERRORS",
    "TOKENS_TAG",
    "Ack",
    "Error",
    "Final",
    "Frame",
    "Hello",
    "Identity",
    "Message",
    "Partial",
    "ProtocolError",
    "Ready",
    "decode_frame",
    "decode_tokens_frame",
    "encode_frame",
    "encode_tokens_frame",
    "frame_bytes",
    "max_utterance_segments",
    "max_utterance_tokens",
    "parse_message",
    "token_bits",
    "wire_identity",
    "ws_message_bytes",
]

PROTOCOL_VERSION: typing.Final = 2
"""The newest version; a server speaks every one of ``PROTOCOL_VERSIONS``."""
PROTOCOL_VERSIONS: typing.Final = (1, 2)
_FLOAT_FRAME_VERSION: typing.Final = 1
MAGIC: typing.Final = b"ETOK"
_HEADER = struct.Struct("<4sBBBBIIHH")
HEADER_BYTES: typing.Final = _HEADER.size
#: Wire dtypes of float frames and their header codes.
DTYPES: typing.Final = {"fp16": 1, "int8": 2}
_DTYPE_NAMES: typing.Final = {code: name for name, code in DTYPES.items()}
#: What a hello may announce: the float dtypes, and (version 2) segment codes or tokens.
HELLO_DTYPES: typing.Final = (*DTYPES, "codes", "tokens")
CODES_TAG: typing.Final = 0xEC
TOKENS_TAG: typing.Final = 0xED
_MAX_LENGTH_BITS: typing.Final = 16
_FLAG_END: typing.Final = 1
MAX_SEGMENTS: typing.Final = 1024
"""Segments in one frame."""
MAX_DIM: typing.Final = 4096
MAX_PENDING: typing.Final = 64
"""Utterances a ``hello`` may list as awaiting their ``final``."""
MAX_UTTERANCE_S: typing.Final = 30.0
"""The longest utterance a device sends, in seconds: the models' one pass (the v2
tokenizer, Whisper's encoder, has 1,500 positions at 50 tokens/s); a pipeline cuts longer
speech, so a server never sees more."""
_MAX_TEXT: typing.Final = 1 << 16
_MAX_ERROR: typing.Final = 300
_U32: typing.Final = 1 << 32
_FP16_MAX: typing.Final = 65504.0
_F32_MAX: typing.Final = float(np.finfo(np.float32).max)

#: Error code -> websocket close code; an error code not here (``decode_failed``) is sent
#: without closing the connection.
CLOSE_CODES: typing.Final = {
    "too_large": 1009,
    "bad_message": 4001,
    "version": 4002,
    "identity": 4003,
    "bad_frame": 4004,
    "sequence": 4005,
    "rate_limited": 4006,
    "limit_exceeded": 4007,
    "superseded": 4008,
    "idle": 4009,
    "session_taken": 4010,
    "over_budget": 4011,
}
#: Errors after which a client may reconnect and resend (after a backoff).
RETRYABLE_ERRORS: typing.Final = frozenset({"rate_limited", "idle"})

_SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ProtocolError(ValueError):
    """A malformed frame or message; ``code`` is a key of ``CLOSE_CODES`` or another code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message[:_MAX_ERROR])  # messages may quote peer input: bounded
        self.code = code


# Binary frames


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame: ``S`` segments of utterance ``utterance``."""

    seq: int
    utterance: int
    starts: np.ndarray
    """int64 [S]: first token of each segment."""
    lengths: np.ndarray
    """int64 [S]: tokens in each segment."""
    vectors: np.ndarray
    """float32 [S, D]."""
    end: bool
    """The last frame of the utterance."""
    dtype: str
    """How the vectors travelled: fp16, int8 or codes (then ``vectors`` are dequantized),
    or tokens (then ``vectors`` is empty and ``tokens`` holds the segments' token ids)."""
    tokens: np.ndarray | None = None
    """int64 [sum(lengths)]: a tokens frame's token ids."""


def ws_message_bytes(size: int) -> int:
    """Bytes on the wire of one masked client websocket message of ``size`` bytes."""
    return size + 6 + (2 if size >= 126 else 0) + (6 if size >= 1 << 16 else 0)


def frame_bytes(count: int, dim: int, dtype: str) -> int:
    """Size of a frame of ``count`` segments of ``dim`` values."""
    per_segment = 6 + (dim * 2 if dtype == "fp16" else 4 + dim)
    return HEADER_BYTES + count * per_segment


def _check_segments(starts: np.ndarray, lengths: np.ndarray) -> None:
    """Lengths >= 1; segments in order and not overlapping; ends within u32."""
    if lengths.size and int(lengths.min()) < 1:
        i = int(np.argmin(lengths))
        raise ProtocolError("bad_frame", f"segment {i} has length {int(lengths[i])}, not >= 1")
    ends = starts + lengths
    if ends.size and int(ends.max()) > _U32 - 1:
        raise ProtocolError("bad_frame", "a segment ends beyond frame 2**32 - 1")
    overlap = np.flatnonzero(starts[1:] < ends[:-1])
    if overlap.size:
        i = int(overlap[0]) + 1
        raise ProtocolError(
            "bad_frame",
            f"segment {i} starts at {int(starts[i])}, before segment {i - 1} ends at "
            f"{int(ends[i - 1])}",
        )


def _segment_arrays(
    seq: int, utterance: int, starts: np.ndarray, lengths: np.ndarray, end: bool
) -> tuple[np.ndarray, np.ndarray]:
    """What every frame encoder checks first: u32 ids, as many starts as lengths, at most
    ``MAX_SEGMENTS`` segments, none only with END; starts and lengths as int64."""
    for name, value in (("seq", seq), ("utterance", utterance)):
        if not 0 <= value < _U32:
            raise ProtocolError("bad_frame", f"{name} {value} is not a u32")
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if len(starts) != len(lengths):
        raise ProtocolError("bad_frame", f"{len(starts)} starts, {len(lengths)} lengths")
    if len(starts) > MAX_SEGMENTS:
        raise ProtocolError("bad_frame", f"{len(starts)} segments; at most {MAX_SEGMENTS} a frame")
    if not len(starts) and not end:
        raise ProtocolError("bad_frame", "a frame without segments must end the utterance")
    return starts, lengths


def _frame_arrays(
    seq: int,
    utterance: int,
    starts: np.ndarray,
    lengths: np.ndarray,
    vectors: np.ndarray,
    end: bool,
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_segment_arrays``, and vectors [S, D] (D = ``dim`` when given, else 1..MAX_DIM),
    one a segment; the arrays as int64, int64, float32."""
    starts, lengths = _segment_arrays(seq, utterance, starts, lengths, end)
    vectors = np.asarray(vectors, dtype=np.float32)
    if dim is not None:
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise ProtocolError("bad_frame", f"vectors must be [S, {dim}] for these codes")
    elif vectors.ndim != 2 or not 0 < vectors.shape[1] <= MAX_DIM:
        raise ProtocolError("bad_frame", f"vectors must be [S, D] with 0 < D <= {MAX_DIM}")
    if len(vectors) != len(starts):
        raise ProtocolError("bad_frame", f"{len(starts)} segments, {len(vectors)} vectors")
    return starts, lengths, vectors


def encode_frame(
    seq: int,
    utterance: int,
    starts: np.ndarray,
    lengths: np.ndarray,
    vectors: np.ndarray,
    *,
    dtype: str = "fp16",
    end: bool = False,
    codes: SegmentCodes | None = None,
) -> bytes:
    """Encode ``S`` segments (``starts``, ``lengths`` [S], ``vectors`` float [S, D]).

    int8 stores ``round(v / scale)`` with ``scale = max|v| / 127`` per vector; ``codes``
    (with the codebooks ``codes``) a codes frame. Raises ``ProtocolError`` for input
    that ``decode_frame`` would refuse (non-finite values, values beyond fp16's range,
    bad segments, too many segments).
    """
    if dtype == "codes":
        if codes is None:
            raise ValueError("dtype codes needs the codebooks (codes=)")
        return _encode_codes_frame(seq, utterance, starts, lengths, vectors, codes, end)
    if dtype not in DTYPES:
        raise ProtocolError("bad_frame", f"dtype {dtype!r} is not one of {', '.join(HELLO_DTYPES)}")
    starts, lengths, vectors = _frame_arrays(seq, utterance, starts, lengths, vectors, end)
    count, dim = vectors.shape
    if np.any(starts < 0) or np.any(lengths > 0xFFFF):
        raise ProtocolError("bad_frame", "starts must be u32 and lengths u16")
    _check_segments(starts, lengths)
    if not np.all(np.isfinite(vectors)):
        raise ProtocolError("bad_frame", "vectors hold NaN or infinity")
    header = _HEADER.pack(
        MAGIC,
        _FLOAT_FRAME_VERSION,
        _FLAG_END if end else 0,
        DTYPES[dtype],
        0,
        seq,
        utterance,
        count,
        dim,
    )
    parts = [header, starts.astype("<u4").tobytes()]
    if dtype == "fp16":
        if vectors.size and float(np.abs(vectors).max()) > _FP16_MAX:
            raise ProtocolError("bad_frame", f"values beyond fp16's range ±{_FP16_MAX:g}; use int8")
        values = vectors.astype("<f2")
    else:
        peak = np.abs(vectors).max(axis=1, initial=0.0).astype(np.float64)
        scales = (peak / 127).astype("<f4")
        # Rounded up, 127 * scale could overflow float32 on decoding: round down instead.
        over = scales.astype(np.float64) * 127 > _F32_MAX
        scales[over] = np.nextafter(scales[over], np.float32(0))
        scale64 = scales.astype(np.float64)[:, None]
        quotient = np.zeros(vectors.shape, dtype=np.float64)
        np.divide(vectors, scale64, out=quotient, where=scale64 > 0)
        values = np.clip(np.rint(quotient), -127, 127).astype(np.int8)
        parts.append(scales.tobytes())
    parts += [lengths.astype("<u2").tobytes(), values.tobytes()]
    return b"".join(parts)


def decode_frame(
    data: bytes,
    *,
    max_bytes: int | None = None,
    dim: int | None = None,
    dtype: str | None = None,
    codes: SegmentCodes | None = None,
) -> Frame:
    """Decode and check one frame; ``dim``/``dtype``, when given, must match the header.
    A codes frame (``dtype`` codes) needs the codebooks ``codes``.

    Raises ``ProtocolError``: ``too_large`` beyond ``max_bytes``, else ``bad_frame``.
    """
    size = len(data)
    if max_bytes is not None and size > max_bytes:
        raise ProtocolError("too_large", f"frame of {size} bytes; the limit is {max_bytes}")
    if dtype == "codes":
        if codes is None:
            raise ValueError("dtype codes needs the codebooks (codes=)")
        if dim is not None and codes.dim != dim:
            raise ValueError(f"codebooks of D = {codes.dim} for vectors of D = {dim}")
        return _decode_codes_frame(data, codes)
    if size and data[0] in (CODES_TAG, TOKENS_TAG):
        kind = "codes" if data[0] == CODES_TAG else "tokens"
        raise ProtocolError("bad_frame", f"a {kind} frame, but the hello said {dtype}")
    if size < HEADER_BYTES:
        raise ProtocolError("bad_frame", f"frame of {size} bytes; the header is {HEADER_BYTES}")
    magic, version, flags, code, reserved, seq, utterance, count, width = _HEADER.unpack_from(data)
    problem = None
    if magic != MAGIC:
        problem = f"magic {magic!r}, expected {MAGIC!r}"
    elif version != _FLOAT_FRAME_VERSION:
        problem = f"float frame version {version}; this side reads {_FLOAT_FRAME_VERSION}"
    elif flags & ~_FLAG_END or reserved:
        problem = f"unknown flags {flags:#04x} or reserved byte {reserved}"
    elif code not in _DTYPE_NAMES:
        problem = f"dtype code {code}; known: {DTYPES}"
    elif dtype is not None and _DTYPE_NAMES[code] != dtype:
        problem = f"dtype {_DTYPE_NAMES[code]}, but the hello said {dtype}"
    elif not 0 < width <= MAX_DIM or (dim is not None and width != dim):
        problem = f"dim {width}; expected {dim or f'1..{MAX_DIM}'}"
    elif count > MAX_SEGMENTS:
        problem = f"{count} segments; at most {MAX_SEGMENTS} a frame"
    elif count == 0 and not flags & _FLAG_END:
        problem = "a frame without segments must end the utterance"
    elif size != (expected := frame_bytes(count, width, _DTYPE_NAMES[code])):
        problem = (
            f"frame of {size} bytes, but {count} x {width} {_DTYPE_NAMES[code]} needs {expected}"
        )
    if problem is not None:
        raise ProtocolError("bad_frame", problem)
    name = _DTYPE_NAMES[code]
    offset = HEADER_BYTES
    starts = np.frombuffer(data, "<u4", count, offset).astype(np.int64)
    offset += 4 * count
    if name == "int8":
        scales = np.frombuffer(data, "<f4", count, offset)
        offset += 4 * count
        if not np.all(np.isfinite(scales) & (scales >= 0)):
            raise ProtocolError("bad_frame", "int8 scales must be finite and >= 0")
    lengths = np.frombuffer(data, "<u2", count, offset).astype(np.int64)
    offset += 2 * count
    _check_segments(starts, lengths)
    if name == "fp16":
        vectors = np.frombuffer(data, "<f2", count * width, offset).astype(np.float32)
        if not np.all(np.isfinite(vectors)):
            raise ProtocolError("bad_frame", "vectors hold NaN or infinity")
    else:
        values = np.frombuffer(data, np.int8, count * width, offset).reshape(count, width)
        with np.errstate(over="ignore"):
            vectors = values.astype(np.float32) * scales[:, None]
        if not np.all(np.isfinite(vectors)):
            raise ProtocolError("bad_frame", "int8 values times their scale overflow float32")
    return Frame(
        seq=seq,
        utterance=utterance,
        starts=starts,
        lengths=lengths,
        vectors=vectors.reshape(count, width),
        end=bool(flags & _FLAG_END),
        dtype=name,
    )


def _varint(value: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, offset: int, name: str, what: str) -> tuple[int, int]:
    """A minimal LEB128 u32 at ``offset`` of a ``what`` frame: (value, next offset)."""
    value = 0
    for i in range(5):
        if offset + i >= len(data):
            raise ProtocolError("bad_frame", f"{what} frame ends inside {name}")
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and not byte:
                raise ProtocolError("bad_frame", f"{name}: a varint with a redundant last byte")
            if value >= _U32:
                raise ProtocolError("bad_frame", f"{name} {value} is not a u32")
            return value, offset + i + 1
    raise ProtocolError("bad_frame", f"{name}: a varint longer than 5 bytes")


def _check_contiguous(starts: np.ndarray, lengths: np.ndarray, what: str) -> None:
    """What a varint frame carries: segments of 1..65536 tokens, each starting where the
    one before ends, ending within u32."""
    if not len(starts):
        return
    if int(lengths.min()) < 1 or int(lengths.max()) > 1 << _MAX_LENGTH_BITS:
        raise ProtocolError("bad_frame", f"lengths must be in 1..{1 << _MAX_LENGTH_BITS}")
    if int(starts[0]) < 0 or np.any(starts[1:] != (starts + lengths)[:-1]):
        raise ProtocolError("bad_frame", f"a {what} frame carries contiguous segments only")
    if int(starts[-1] + lengths[-1]) > _U32 - 1:
        raise ProtocolError("bad_frame", "a segment ends beyond frame 2**32 - 1")


def _encode_varint_frame(
    tag: int,
    seq: int,
    utterance: int,
    starts: np.ndarray,
    lengths: np.ndarray,
    payload: np.ndarray,
    end: bool,
) -> bytes:
    """Tag, flags, the varints and the bits: the lengths - 1, then ``payload`` (bits)."""
    from edgetok.segment_codes import bits_of

    count = len(starts)
    width = max(1, int(lengths.max() - 1).bit_length()) if count else 1
    head = _varint(seq) + _varint(utterance) + _varint(count)
    if count:
        head += _varint(int(starts[0]))
    bits = np.concatenate([bits_of(lengths - 1, width), payload])
    flags = (1 if end else 0) | (width - 1) << 4
    return bytes([tag, flags]) + head + np.packbits(bits, bitorder="little").tobytes()


@dataclass(frozen=True)
class _VarintHead:
    """A varint frame up to its payload: the segments, and the payload's bits."""

    seq: int
    utterance: int
    starts: np.ndarray
    lengths: np.ndarray
    end: bool
    payload: np.ndarray


def _decode_varint_frame(
    data: bytes, tag: int, what: str, payload_bits: typing.Callable[[np.ndarray], int]
) -> _VarintHead:
    """Read a frame that ``_encode_varint_frame`` wrote; ``payload_bits(lengths)``: how
    many bits follow the lengths (the frame must hold exactly those, zero-padded)."""
    from edgetok.segment_codes import values_of

    if len(data) < 2 or data[0] != tag:
        raise ProtocolError(
            "bad_frame", f"not a {what} frame (tag {tag:#04x}, then flags and varints)"
        )
    flags = data[1]
    if flags & 0x0E:
        raise ProtocolError("bad_frame", f"unknown flags {flags:#04x}")
    end, width = bool(flags & 1), (flags >> 4) + 1
    seq, offset = _read_varint(data, 2, "seq", what)
    utterance, offset = _read_varint(data, offset, "utterance", what)
    count, offset = _read_varint(data, offset, "count", what)
    if count > MAX_SEGMENTS:
        raise ProtocolError("bad_frame", f"{count} segments; at most {MAX_SEGMENTS} a frame")
    if count == 0 and not end:
        raise ProtocolError("bad_frame", "a frame without segments must end the utterance")
    start = 0
    if count:
        start, offset = _read_varint(data, offset, "start", what)
    bit_array = np.unpackbits(np.frombuffer(data, np.uint8, offset=offset), bitorder="little")
    if len(bit_array) < count * width:
        raise ProtocolError("bad_frame", f"{what} frame ends inside its {count} lengths")
    lengths = values_of(bit_array[: count * width], width).astype(np.int64) + 1
    n = count * width + payload_bits(lengths)
    if len(data) - offset != (n + 7) // 8:
        raise ProtocolError(
            "bad_frame",
            f"{what} frame of {len(data)} bytes; {count} segments need "
            f"{offset + (n + 7) // 8} ({count} x {width} bits of lengths, then "
            f"{n - count * width} bits)",
        )
    if bit_array[n:].any():
        raise ProtocolError("bad_frame", f"{what} frame: padding bits must be zero")
    starts = start + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if count and int(starts[-1] + lengths[-1]) > _U32 - 1:
        raise ProtocolError("bad_frame", "a segment ends beyond frame 2**32 - 1")
    return _VarintHead(seq, utterance, starts[:count], lengths, end, bit_array[count * width : n])


def _encode_codes_frame(
    seq: int,
    utterance: int,
    starts: np.ndarray,
    lengths: np.ndarray,
    vectors: np.ndarray,
    codes: SegmentCodes,
    end: bool,
) -> bytes:
    from edgetok.segment_codes import bits_of, code_bits

    starts, lengths, vectors = _frame_arrays(
        seq, utterance, starts, lengths, vectors, end, dim=codes.dim
    )
    _check_contiguous(starts, lengths, "codes")
    if not np.all(np.isfinite(vectors)):
        raise ProtocolError("bad_frame", "vectors hold NaN or infinity")
    payload = bits_of(codes.encode(vectors), code_bits(codes.size))
    return _encode_varint_frame(CODES_TAG, seq, utterance, starts, lengths, payload, end)


def _decode_codes_frame(data: bytes, codes: SegmentCodes) -> Frame:
    from edgetok.segment_codes import code_bits, values_of

    bits = code_bits(codes.size)
    head = _decode_varint_frame(data, CODES_TAG, "codes", lambda n: len(n) * codes.stages * bits)
    values = values_of(head.payload, bits).reshape(len(head.starts), codes.stages)
    return Frame(
        seq=head.seq,
        utterance=head.utterance,
        starts=head.starts,
        lengths=head.lengths,
        vectors=codes.decode(values),
        end=head.end,
        dtype="codes",
    )


def token_bits(vocab_size: int) -> int:
    """Bits of one token id of a vocabulary of ``vocab_size`` (2..65536) in a tokens frame."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an integer, got {vocab_size!r}")
    if not 2 <= vocab_size <= 1 << 16:
        raise ValueError(f"vocab_size must be in 2..65536, got {vocab_size}")
    return (vocab_size - 1).bit_length()


def encode_tokens_frame(
    seq: int,
    utterance: int,
    starts: np.ndarray,
    lengths: np.ndarray,
    tokens: np.ndarray,
    vocab_size: int,
    *,
    end: bool = False,
) -> bytes:
    """A tokens frame (version 2): ``S`` contiguous segments and their ``sum(lengths)``
    token ids, ``token_bits(vocab_size)`` bits each. Raises ``ProtocolError`` for input
    ``decode_tokens_frame`` would refuse."""
    from edgetok.segment_codes import bits_of

    bits = token_bits(vocab_size)
    starts, lengths = _segment_arrays(seq, utterance, starts, lengths, end)
    tokens = np.asarray(tokens).reshape(-1)
    _check_contiguous(starts, lengths, "tokens")
    if len(tokens) != int(lengths.sum()):
        raise ProtocolError(
            "bad_frame", f"{len(tokens)} token ids for segments of {int(lengths.sum())} tokens"
        )
    if tokens.size and (
        tokens.dtype.kind not in "iu" or tokens.min() < 0 or tokens.max() >= vocab_size
    ):
        raise ProtocolError("bad_frame", f"token ids must be integers in 0..{vocab_size - 1}")
    payload = bits_of(tokens.astype(np.int64), bits)
    return _encode_varint_frame(TOKENS_TAG, seq, utterance, starts, lengths, payload, end)


def decode_tokens_frame(data: bytes, vocab_size: int, *, max_bytes: int | None = None) -> Frame:
    """Decode and check a tokens frame; ``Frame.tokens`` holds the ids int64 [sum lengths]
    and ``vectors`` is empty [S, 0] (the server rebuilds them: ``TokenReaderStage``).
    Raises ``ProtocolError``: ``too_large`` beyond ``max_bytes``, else ``bad_frame``."""
    from edgetok.segment_codes import values_of

    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError("too_large", f"frame of {len(data)} bytes; the limit is {max_bytes}")
    bits = token_bits(vocab_size)
    head = _decode_varint_frame(data, TOKENS_TAG, "tokens", lambda n: int(n.sum()) * bits)
    tokens = values_of(head.payload, bits).astype(np.int64)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ProtocolError(
            "bad_frame", f"token id {int(tokens.max())} beyond the vocabulary of {vocab_size}"
        )
    return Frame(
        seq=head.seq,
        utterance=head.utterance,
        starts=head.starts,
        lengths=head.lengths,
        vectors=np.zeros((len(head.starts), 0), np.float32),
        end=head.end,
        dtype="tokens",
        tokens=tokens,
    )


# JSON messages


@dataclass(frozen=True, kw_only=True)
class Identity:
    """What the vectors mean: the bundle, the aggregator that made them, their size."""

    bundle: str
    aggregator_sha256: str
    dim: int


def wire_identity(bundle: Bundle) -> Identity:
    """The identity of the vectors ``bundle``'s aggregator makes, which a device sends in
    its hello and a server serving ``bundle`` accepts: the bundle's name, the sha256 of
    the FP32 aggregator (the source's, for a build: INT8, LiteRT or OpenVINO devices talk
    to a server running the FP32 bundle) and the vector size."""
    entry = bundle.models["aggregator"]
    vectors = next(spec for spec in entry.outputs if spec.name == "vectors")
    dim = vectors.shape[-1]
    if not isinstance(dim, int):
        raise ValueError(f"bundle {bundle.meta.name!r}: aggregator {vectors} has no fixed D")
    sha256 = entry.source_sha256 or entry.sha256
    return Identity(bundle=bundle.meta.name, aggregator_sha256=sha256, dim=dim)


def max_utterance_tokens(bundle: Bundle) -> int:
    """The most tokens one utterance of ``bundle`` can have: ``MAX_UTTERANCE_S`` at its
    token rate, one more for the frame at the edge. A token-wire server refuses more."""
    return math.ceil(MAX_UTTERANCE_S * bundle.tokens.rate_hz) + 1


def max_utterance_segments(bundle: Bundle) -> int:
    """The most segments one utterance of ``bundle`` can have: its most tokens
    (``max_utterance_tokens``) cut by its segmenter into segments of at least ``min_len``
    tokens. A server for ``bundle`` refuses more."""
    return math.ceil(max_utterance_tokens(bundle) / bundle.segmenter.min_len)


@dataclass(frozen=True, kw_only=True)
class _Message:
    TYPE: ClassVar[str]

    def to_json(self) -> str:
        """The message as one JSON object with its ``type``."""
        return json.dumps({"type": self.TYPE, **asdict(self)}, separators=(",", ":"))

    def _validate(self) -> None:
        """Check values beyond their types; raise ``ProtocolError``."""


@dataclass(frozen=True, kw_only=True)
class Hello(_Message):
    """Client -> server, first message: who is sending and where to resume."""

    TYPE: ClassVar[str] = "hello"
    version: int = PROTOCOL_VERSION
    session: str
    """Client-chosen id (1-64 of ``[A-Za-z0-9_-]``); a reconnect reuses it."""
    bundle: str
    aggregator_sha256: str
    dim: int
    dtype: str
    """Wire dtype of every frame on this connection."""
    seq: int
    """The seq of the first frame this connection will carry."""
    pending: tuple[int, ...] = ()
    """Utterances whose ``final`` the client has not received."""
    resume_key: str = ""
    """The session's secret from the ``ready`` that opened it; required to resume it."""
    codes_sha256: str = ""
    """Version 2, dtype ``codes``: the sha256 of the bundle's codebooks file."""
    reader_sha256: str = ""
    """Version 2, dtype ``tokens``: the sha256 of the bundle's ``token_reader`` model
    (left out of the JSON otherwise)."""

    @property
    def identity(self) -> Identity:
        return Identity(bundle=self.bundle, aggregator_sha256=self.aggregator_sha256, dim=self.dim)

    def to_json(self) -> str:
        """Version 1 hellos leave out the field version 1 does not know."""
        data = {"type": self.TYPE, **asdict(self)}
        if self.version == 1:
            data.pop("codes_sha256")
        if not self.reader_sha256:
            data.pop("reader_sha256")
        return json.dumps(data, separators=(",", ":"))

    def _validate(self) -> None:
        if _SESSION.fullmatch(self.session) is None:
            raise ProtocolError("bad_message", "hello: session must be 1-64 of [A-Za-z0-9_-]")
        if _SHA256.fullmatch(self.aggregator_sha256) is None:
            raise ProtocolError("bad_message", "hello: aggregator_sha256 is not a sha256")
        if self.dtype not in HELLO_DTYPES or not 0 < self.dim <= MAX_DIM:
            raise ProtocolError("bad_message", f"hello: dtype {self.dtype!r}, dim {self.dim}")
        if self.dtype not in DTYPES and self.version < 2:
            raise ProtocolError(
                "bad_message", f"hello: dtype {self.dtype} needs protocol version 2"
            )
        for dtype, sha in (("codes", self.codes_sha256), ("tokens", self.reader_sha256)):
            name = "codes_sha256" if dtype == "codes" else "reader_sha256"
            if (self.dtype == dtype) != bool(sha):
                raise ProtocolError("bad_message", f"hello: {name} goes with dtype {dtype} only")
            if sha and _SHA256.fullmatch(sha) is None:
                raise ProtocolError("bad_message", f"hello: {name} is not a sha256")
        if len(self.pending) > MAX_PENDING:
            raise ProtocolError("bad_message", f"hello: more than {MAX_PENDING} pending")
        if self.resume_key and _SESSION.fullmatch(self.resume_key) is None:
            raise ProtocolError("bad_message", "hello: resume_key must be 1-64 of [A-Za-z0-9_-]")


@dataclass(frozen=True, kw_only=True)
class Ready(_Message):
    """Server -> client, the answer to an accepted ``hello``, with the server's limits."""

    TYPE: ClassVar[str] = "ready"
    version: int = PROTOCOL_VERSION
    session: str
    resumed: bool
    """False when the server holds no state for this session (new, expired or restarted)."""
    max_frame_bytes: int
    max_frames_per_second: float
    burst_frames: int
    resume_key: str = ""
    """The session's secret, sent only to the connection that owns it."""


@dataclass(frozen=True, kw_only=True)
class Ack(_Message):
    """Server -> client: every frame with sequence number <= ``seq`` has been applied."""

    TYPE: ClassVar[str] = "ack"
    seq: int


@dataclass(frozen=True, kw_only=True)
class Partial(_Message):
    """Server -> client: the transcript of the segments received so far."""

    TYPE: ClassVar[str] = "partial"
    utterance: int
    text: str
    segments: int


@dataclass(frozen=True, kw_only=True)
class Final(_Message):
    """Server -> client: the transcript of the whole utterance."""

    TYPE: ClassVar[str] = "final"
    utterance: int
    text: str
    segments: int


@dataclass(frozen=True, kw_only=True)
class Error(_Message):
    """Server -> client: ``code`` (see ``CLOSE_CODES``), for one utterance or the connection."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    utterance: int | None = None


Message = Hello | Ready | Ack | Partial | Final | Error
_TYPES: typing.Final = {cls.TYPE: cls for cls in (Hello, Ready, Ack, Partial, Final, Error)}


def _field(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against a field type: u32 int, finite float, str, bool, tuples."""
    if hint == int | None and value is None:
        return None
    if hint in (int, int | None):
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U32
        kind = "an integer in [0, 2**32)"
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            ok = ok and math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            ok = False
        kind = "a finite number"
    elif hint is str:
        ok, kind = isinstance(value, str) and len(value) <= _MAX_TEXT, "a string"
    elif hint is bool:
        ok, kind = isinstance(value, bool), "a boolean"
    else:  # tuple[int, ...]
        ok = isinstance(value, list) and len(value) <= MAX_PENDING
        ok = ok and all(_field(item, int, where) is not None for item in value)
        value, kind = tuple(value) if ok else value, f"a list of at most {MAX_PENDING} integers"
    if not ok:
        raise ProtocolError("bad_message", f"{where}: expected {kind}, got {_shown(value)}")
    return value


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def parse_message(text: str | bytes, versions: tuple[int, ...] = PROTOCOL_VERSIONS) -> Message:
    """Parse one JSON message strictly: known type, every field present and typed, no extra.

    A message of a protocol version not in ``versions`` raises ``ProtocolError`` with
    code ``version``.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_message", f"not JSON: {exc}") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if not isinstance(kind, str) or kind not in _TYPES:
        shown = _shown(kind) if isinstance(data, dict) else repr(type(data).__name__)
        raise ProtocolError("bad_message", f"unknown message type {shown}")
    cls = _TYPES[data.pop("type")]
    version = data.get("version")
    if "version" in data and not any(version == v and type(version) is int for v in versions):
        raise ProtocolError(
            "version",
            f"{cls.TYPE}: protocol version {_shown(version)}; this side speaks "
            f"{' and '.join(map(str, versions))}",
        )
    for key in ("codes_sha256", "reader_sha256"):
        if version == 1 and cls is Hello and key in data:
            raise ProtocolError("bad_message", f"hello: unknown field {key!r} in version 1")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise ProtocolError("bad_message", f"{cls.TYPE}: unknown field {key!r}")
    values = {}
    for f in fields(cls):
        if f.name in data:
            values[f.name] = _field(data[f.name], hints[f.name], f"{cls.TYPE} {f.name}")
        elif f.name == "version" or (f.default is MISSING and f.default_factory is MISSING):
            raise ProtocolError("bad_message", f"{cls.TYPE}: missing field {f.name!r}")
    message = cls(**values)
    message._validate()
    return message
