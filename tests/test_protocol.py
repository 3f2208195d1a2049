"""edgetok.protocol: frame round trips within the dtype error bounds, strict decoding."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgetok.protocol import (
    CLOSE_CODES,
    HEADER_BYTES,
    MAX_DIM,
    MAX_SEGMENTS,
    MAX_UTTERANCE_S,
    Ack,
    Error,
    Final,
    Frame,
    Hello,
    Partial,
    ProtocolError,
    Ready,
    decode_frame,
    encode_frame,
    frame_bytes,
    max_utterance_segments,
    parse_message,
)

F32_MAX = float(np.finfo(np.float32).max)


@st.composite
def segments(draw: st.DrawFn, *, fp16: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Valid ``starts``, ``lengths``, float32 ``vectors`` and the end flag."""
    count = draw(st.integers(0, 24))
    dim = draw(st.integers(1, 16))
    lengths = np.array(draw(st.lists(st.integers(1, 0xFFFF), min_size=count, max_size=count)))
    gaps = np.array(draw(st.lists(st.integers(0, 1000), min_size=count, max_size=count)))
    first = draw(st.integers(0, 2**32 - 1 - int(lengths.sum() + gaps.sum())))
    starts = first + np.cumsum(gaps) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    bound = 65504.0 if fp16 else F32_MAX
    elements = st.floats(-bound, bound, width=32, allow_nan=False)
    vectors = draw(hnp.arrays(np.float32, (count, dim), elements=elements))
    end = count == 0 or draw(st.booleans())
    return starts.astype(np.int64), lengths.astype(np.int64), vectors, end


u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=80, deadline=None)
@given(seq=u32, utterance=u32, data=segments(fp16=True))
def test_fp16_round_trip(seq: int, utterance: int, data) -> None:
    starts, lengths, vectors, end = data
    encoded = encode_frame(seq, utterance, starts, lengths, vectors, dtype="fp16", end=end)
    assert len(encoded) == frame_bytes(len(vectors), vectors.shape[1], "fp16")
    frame = decode_frame(encoded, dim=vectors.shape[1], dtype="fp16")
    assert (frame.seq, frame.utterance, frame.end, frame.dtype) == (seq, utterance, end, "fp16")
    np.testing.assert_array_equal(frame.starts, starts)
    np.testing.assert_array_equal(frame.lengths, lengths)
    assert frame.vectors.dtype == np.float32 and frame.vectors.shape == vectors.shape
    # Round to nearest: half an ulp, 2**-11 relative for normal values, 2**-25 below.
    error = np.abs(frame.vectors.astype(np.float64) - vectors)
    assert np.all(error <= np.abs(vectors.astype(np.float64)) * 2.0**-11 + 2.0**-25)


@settings(max_examples=80, deadline=None)
@given(seq=u32, utterance=u32, data=segments(fp16=False))
def test_int8_round_trip(seq: int, utterance: int, data) -> None:
    starts, lengths, vectors, end = data
    encoded = encode_frame(seq, utterance, starts, lengths, vectors, dtype="int8", end=end)
    assert len(encoded) == frame_bytes(len(vectors), vectors.shape[1], "int8")
    frame = decode_frame(encoded, dim=vectors.shape[1], dtype="int8")
    assert (frame.seq, frame.utterance, frame.end, frame.dtype) == (seq, utterance, end, "int8")
    np.testing.assert_array_equal(frame.starts, starts)
    np.testing.assert_array_equal(frame.lengths, lengths)
    # Half a quantisation step (max|v| / 127 per vector), plus float32 rounding; a
    # subnormal scale is stored to within half of 2**-149, which |q| <= 127 multiplies.
    peak = np.abs(vectors.astype(np.float64)).max(axis=1, initial=0.0)[:, None]
    error = np.abs(frame.vectors.astype(np.float64) - vectors)
    assert np.all(error <= peak / 254 * (1 + 2.0**-20) + peak * 2.0**-23 + 128 * 2.0**-149)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except ProtocolError as exc:
        assert exc.code == "bad_frame" and str(exc)
    else:
        assert isinstance(frame, Frame) and np.all(np.isfinite(frame.vectors))


@settings(max_examples=100, deadline=None)
@given(
    data=segments(fp16=True),
    dtype=st.sampled_from(["fp16", "int8"]),
    position=st.integers(0, 10**6),
    byte=st.integers(0, 255),
)
def test_corrupted_frames_decode_or_raise_protocol_error(data, dtype, position, byte) -> None:
    starts, lengths, vectors, end = data
    frame = bytearray(encode_frame(1, 2, starts, lengths, vectors, dtype=dtype, end=end))
    frame[position % len(frame)] = byte
    try:
        decoded = decode_frame(bytes(frame))
    except ProtocolError as exc:
        assert exc.code == "bad_frame"
    else:
        assert np.all(np.isfinite(decoded.vectors))


def _frame(count: int = 2, dim: int = 4, dtype: str = "fp16", end: bool = False) -> bytes:
    vectors = np.arange(count * dim, dtype=np.float32).reshape(count, dim) - 3
    starts = np.arange(count) * 5
    return encode_frame(7, 3, starts, np.full(count, 2), vectors, dtype=dtype, end=end)


def _patched(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


FP16 = _frame()
INT8 = _frame(dtype="int8")
# Offsets in a 2-segment frame: starts at 20, (int8: scales at 28,) then lengths, values.
MALFORMED = {
    "short": (FP16[:10], "the header is 20"),
    "bad magic": (b"XTOK" + FP16[4:], "magic"),
    "bad version": (_patched(FP16, 4, "<B", 2), "float frame version 2"),
    "unknown flag": (_patched(FP16, 5, "<B", 2), "unknown flags"),
    "reserved byte": (_patched(FP16, 7, "<B", 1), "reserved"),
    "unknown dtype": (_patched(FP16, 6, "<B", 9), "dtype code 9"),
    "zero dim": (_patched(FP16, 18, "<H", 0), "dim 0"),
    "too many segments": (_patched(FP16, 16, "<H", MAX_SEGMENTS + 1), "at most"),
    "count beyond data": (_patched(FP16, 16, "<H", 3), "needs"),
    "truncated": (FP16[:-1], "needs"),
    "trailing bytes": (FP16 + b"\0", "needs"),
    "empty, not end": (_patched(_frame(count=0, end=True), 5, "<B", 0), "must end"),
    "zero length": (_patched(FP16, 28, "<H", 0), "length 0"),
    "overlap": (_patched(FP16, 24, "<I", 1), "before segment 0 ends"),
    "fp16 NaN": (_patched(FP16, 32, "<e", float("nan")), "NaN"),
    "fp16 inf": (_patched(FP16, 32, "<e", float("inf")), "NaN or infinity"),
    "int8 negative scale": (_patched(INT8, 28, "<f", -1.0), "scales"),
    "int8 NaN scale": (_patched(INT8, 32, "<f", float("nan")), "scales"),
    "int8 overflow": (_patched(INT8, 28, "<f", 1e37), "overflow"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_frames_name_the_problem(name: str) -> None:
    data, expected = MALFORMED[name]
    with pytest.raises(ProtocolError, match=expected) as info:
        decode_frame(data)
    assert info.value.code == "bad_frame"


def test_limits_and_expectations() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(FP16, max_bytes=len(FP16) - 1)
    assert info.value.code == "too_large" and CLOSE_CODES["too_large"] == 1009
    assert decode_frame(FP16, max_bytes=len(FP16)).seq == 7
    with pytest.raises(ProtocolError, match="dim 4; expected 8"):
        decode_frame(FP16, dim=8)
    with pytest.raises(ProtocolError, match="the hello said int8"):
        decode_frame(FP16, dtype="int8")


def test_end_frame_may_be_empty() -> None:
    frame = decode_frame(_frame(count=0, end=True))
    assert frame.end and frame.vectors.shape == (0, 4) and len(frame.starts) == 0
    assert len(_frame(count=0, end=True)) == HEADER_BYTES


def test_int8_zero_vector_and_extremes() -> None:
    vectors = np.array([[0, 0, 0], [F32_MAX, -F32_MAX, 1e-45]], dtype=np.float32)
    frame = decode_frame(encode_frame(0, 0, [0, 1], [1, 1], vectors, dtype="int8"))
    np.testing.assert_array_equal(frame.vectors[0], 0)
    assert np.all(np.isfinite(frame.vectors)) and frame.vectors[1, 0] == pytest.approx(F32_MAX)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"vectors": [[np.nan, 0]]}, "NaN"),
        ({"vectors": [[7e4, 0]]}, "fp16's range"),
        ({"starts": [0, 1]}, "2 starts"),
        ({"lengths": [0]}, "length 0"),
        ({"lengths": [70000]}, "u16"),
        ({"starts": [-1]}, "u32"),
        ({"seq": 2**32}, "seq"),
        ({"vectors": np.zeros((1, MAX_DIM + 1))}, "D <="),
        ({"dtype": "bf16"}, "dtype"),
    ],
)
def test_encode_refuses_what_decode_would(kwargs: dict, expected: str) -> None:
    args = {"seq": 0, "utterance": 0, "starts": [0], "lengths": [1], "vectors": [[1.0, 2.0]]}
    args.update(kwargs)
    with pytest.raises(ProtocolError, match=expected):
        encode_frame(**args)


def test_encode_refuses_too_many_or_no_segments() -> None:
    count = MAX_SEGMENTS + 1
    with pytest.raises(ProtocolError, match="at most"):
        encode_frame(0, 0, np.arange(count), np.ones(count), np.zeros((count, 2)))
    with pytest.raises(ProtocolError, match="end the utterance"):
        encode_frame(0, 0, [], [], np.zeros((0, 2)))


HELLO = Hello(
    session="s-1",
    bundle="tiny",
    aggregator_sha256="ab" * 32,
    dim=256,
    dtype="int8",
    seq=12,
    pending=(3, 4),
)
MESSAGES = [
    HELLO,
    Ready(
        session="s-1", resumed=True, max_frame_bytes=1024, max_frames_per_second=2.5, burst_frames=4
    ),
    Ack(seq=2**32 - 1),
    Partial(utterance=1, text="hel", segments=3),
    Final(utterance=1, text="hello world", segments=9),
    Error(code="bad_frame", message="magic"),
    Error(code="decode_failed", message="boom", utterance=5),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.TYPE)
def test_messages_round_trip(message) -> None:
    text = message.to_json()
    assert json.loads(text)["type"] == message.TYPE
    assert parse_message(text) == message


def _hello(**changes) -> str:
    data = json.loads(HELLO.to_json())
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not ...})


@pytest.mark.parametrize(
    ("text", "code", "expected"),
    [
        ("{", "bad_message", "not JSON"),
        ("[1, 2]", "bad_message", "unknown message type 'list'"),
        ('{"type": "bye"}', "bad_message", "unknown message type 'bye'"),
        ('{"type": "ack"}', "bad_message", "missing field 'seq'"),
        ('{"type": "ack", "seq": true}', "bad_message", "integer"),
        ('{"type": "ack", "seq": -1}', "bad_message", "integer"),
        ('{"type": "ack", "seq": 1, "x": 0}', "bad_message", "unknown field 'x'"),
        (_hello(version=3), "version", "protocol version 3"),
        (_hello(version=...), "bad_message", "missing field 'version'"),
        (_hello(session="a b"), "bad_message", "session"),
        (_hello(aggregator_sha256="AB" * 32), "bad_message", "sha256"),
        (_hello(dtype="fp32"), "bad_message", "dtype"),
        (_hello(dim=0), "bad_message", "dim 0"),
        (_hello(pending=list(range(65))), "bad_message", "at most 64"),
        (_hello(pending=[1.5]), "bad_message", "integer"),
        ('{"type": "final", "utterance": 1, "text": 5, "segments": 1}', "bad_message", "string"),
        (
            '{"type": "ready", "version": 1, "session": "a", "resumed": true, '
            '"max_frame_bytes": 1, "max_frames_per_second": NaN, "burst_frames": 1}',
            "bad_message",
            "finite",
        ),
    ],
)
def test_messages_are_parsed_strictly(text: str, code: str, expected: str) -> None:
    with pytest.raises(ProtocolError, match=expected) as info:
        parse_message(text)
    assert info.value.code == code


def test_error_messages_are_bounded() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(json.dumps({"type": "ack", "seq": "x" * 10_000}))
    assert len(str(info.value)) <= 300


@pytest.mark.parametrize(
    "text",
    [
        '{"type": []}',
        '{"type": {}}',
        '{"type": null}',
        "[1, 2]",
        '"hello"',
        '{"type": "hello", "version": [1]}',
        '{"type": "hello", "version": 1, "dim": ' + "9" * 400 + "}",
        '{"type": "ack", "seq": ' + "9" * 400 + ".5}",
    ],
)
def test_hostile_json_shapes_are_bad_messages(text: str) -> None:
    with pytest.raises(ProtocolError) as error:
        parse_message(text)
    assert error.value.code in ("bad_message", "version") and len(str(error.value)) < 200


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["hello", "ack", "ready", "error", "final", "partial", "x"]),
    fields=st.dictionaries(
        st.sampled_from(["version", "session", "seq", "dim", "dtype", "text", "utterance"]),
        _JSON,
    ),
)
def test_any_json_object_parses_or_is_a_protocol_error(kind: str, fields: dict) -> None:
    """Fuzzing: whatever JSON arrives, the parser answers with a message or a
    ProtocolError, never another exception (which would close with 1011)."""
    try:
        parse_message(json.dumps({"type": kind, **fields}))
    except ProtocolError:
        pass


def test_the_longest_utterance_bounds_its_segments(tiny_bundle: Path) -> None:
    """The tiny bundle (50 Hz, segments of >= 1 token) allows one segment per token of the
    longest utterance (30 s, which a pipeline cuts speech at) and the edge's."""
    from edgetok.bundle import load_bundle

    assert MAX_UTTERANCE_S == 30
    assert max_utterance_segments(load_bundle(tiny_bundle)) == 30 * 50 + 1
