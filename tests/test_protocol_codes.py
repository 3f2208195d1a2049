"""Protocol version 2 (issue 19): codes frames, the hello's negotiation, and a real
server on loopback that decodes codes from v2 clients and floats from v1 clients."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from fixtures.make_tiny_bundle import D, make_tiny_bundle
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from edgetok.bundle import load_bundle
from edgetok.client import Client, RemoteError
from edgetok.protocol import (
    CODES_TAG,
    Hello,
    Identity,
    ProtocolError,
    Ready,
    decode_frame,
    encode_frame,
    parse_message,
    wire_identity,
)
from edgetok.segment_codes import SegmentCodes, code_bits
from edgetok.server import serve
from edgetok.stages import DecoderStage

TOKEN = "codes-token"
SHA = "ab" * 32


def _codes(stages: int = 3, size: int = 16, seed: int = 0) -> SegmentCodes:
    books = np.random.default_rng(seed).normal(size=(stages, size, D)).astype(np.float32)
    return SegmentCodes(books, sha256=SHA)


CODES = _codes()


def _segments(count: int, seed: int = 1, first: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, count)
    starts = first + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return starts[:count], lengths, rng.normal(size=(count, D)).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(0, 40),
    first=st.integers(0, 2**20),
    seq=st.integers(0, 2**32 - 1),
    utterance=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**16),
    max_length=st.sampled_from([1, 2, 8, 9, 300]),
)
def test_a_codes_frame_round_trips_exactly(count, first, seq, utterance, seed, max_length):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, count)
    starts = first + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)[:count]
    vectors = rng.normal(size=(count, D)).astype(np.float32)
    data = encode_frame(
        seq, utterance, starts, lengths, vectors, dtype="codes", codes=CODES, end=count == 0
    )
    frame = decode_frame(data, dtype="codes", codes=CODES, dim=D)
    assert (frame.seq, frame.utterance, frame.end, frame.dtype) == (
        seq,
        utterance,
        count == 0,
        "codes",
    )
    np.testing.assert_array_equal(frame.starts, starts)
    np.testing.assert_array_equal(frame.lengths, lengths)
    # The vectors are exactly the dequantized codes, the sum of the chosen rows.
    np.testing.assert_array_equal(frame.vectors, CODES.decode(CODES.encode(vectors)))
    # The size is the header (tag, flags, varints) and the bits, nothing else.
    width = max(1, int(lengths.max() - 1).bit_length()) if count else 1
    bits = count * (width + CODES.stages * code_bits(CODES.size))
    varints = sum(
        len(_leb128(v)) for v in [seq, utterance, count] + ([int(first)] if count else [])
    )
    assert len(data) == 2 + varints + (bits + 7) // 8


def _leb128(value: int) -> bytes:
    out = []
    while True:
        out.append((value & 0x7F) | (0x80 if value >> 7 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def test_codes_frames_are_small() -> None:
    """15 segments of 1024 x 4 codes, lengths 2..8: 85 bytes for about a second."""
    books = np.zeros((4, 1024, D), np.float32)
    codes = SegmentCodes(books, sha256=SHA)
    starts, lengths, vectors = _segments(15)
    lengths = np.clip(lengths, 2, 8)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    data = encode_frame(300, 12, starts, lengths, vectors, dtype="codes", codes=codes, end=True)
    assert len(data) == 2 + 2 + 1 + 1 + 1 + (15 * (3 + 40) + 7) // 8


def _frame(count: int = 4, **changes) -> bytes:
    starts, lengths, vectors = _segments(count)
    return encode_frame(5, 9, starts, lengths, vectors, dtype="codes", codes=CODES, **changes)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "not a codes frame"),
        (bytes([CODES_TAG, 0, 0, 0]), "ends inside count"),
        (b"ETOK" + _frame()[4:], "not a codes frame"),
        (bytes([CODES_TAG, 0x02]) + _frame()[2:], "unknown flags"),
        (_frame() + b"\x00", "need"),
        (_frame()[:-1], "need"),
        (bytes([CODES_TAG, 0x01, 0x85, 0x00, 0, 0]), "redundant last byte"),
        (bytes([CODES_TAG, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0, 0]), "not a u32"),
        (bytes([CODES_TAG, 0x01]) + b"\xff" * 6, "longer than 5 bytes"),
        (bytes([CODES_TAG, 0x00, 0, 0, 0]), "must end the utterance"),
        (bytes([CODES_TAG, 0x01, 0, 0, 0x81, 0x08, 0]), "at most 1024"),
        (bytes([CODES_TAG, 0x01, 0, 0]), "ends inside count"),
    ],
)
def test_malformed_codes_frames_name_the_problem(data: bytes, expected: str) -> None:
    with pytest.raises(ProtocolError, match=expected) as error:
        decode_frame(data, dtype="codes", codes=CODES)
    assert error.value.code == "bad_frame"


def test_padding_bits_must_be_zero() -> None:
    data = bytearray(_frame(3))  # 3 x (3 + 12) bits = 45: three padding bits
    data[-1] |= 0x80
    with pytest.raises(ProtocolError, match="padding bits"):
        decode_frame(bytes(data), dtype="codes", codes=CODES)


def test_float_and_codes_frames_are_not_mixed_up() -> None:
    with pytest.raises(ProtocolError, match="a codes frame, but the hello said fp16"):
        decode_frame(_frame(), dtype="fp16")
    starts, lengths, vectors = _segments(2)
    with pytest.raises(ProtocolError, match="not a codes frame"):
        decode_frame(encode_frame(0, 0, starts, lengths, vectors), dtype="codes", codes=CODES)


def test_codes_frames_carry_contiguous_segments_only() -> None:
    starts, lengths, vectors = _segments(3)
    starts = starts + np.array([0, 0, 1])
    with pytest.raises(ProtocolError, match="contiguous"):
        encode_frame(0, 0, starts, lengths, vectors, dtype="codes", codes=CODES)


def _hello(**changes) -> Hello:
    values = dict(
        version=2,
        session="s",
        bundle="b",
        aggregator_sha256="cd" * 32,
        dim=D,
        dtype="codes",
        seq=0,
        codes_sha256=SHA,
    )
    return Hello(**(values | changes))


def test_hellos_negotiate_the_version() -> None:
    v2 = _hello()
    assert parse_message(v2.to_json()) == v2
    v1 = _hello(version=1, dtype="fp16", codes_sha256="")
    assert "codes_sha256" not in json.loads(v1.to_json())  # a version 1 server reads it
    assert parse_message(v1.to_json()) == v1
    cases = [
        (_hello(version=1).to_json(), "bad_message", "needs protocol version 2"),
        (_hello(codes_sha256="").to_json(), "bad_message", "codes_sha256 goes with dtype"),
        (_hello(dtype="fp16").to_json(), "bad_message", "codes_sha256 goes with dtype"),
        (_hello(codes_sha256="XY" * 32).to_json(), "bad_message", "not a sha256"),
        (
            json.dumps({**json.loads(v1.to_json()), "codes_sha256": ""}),
            "bad_message",
            "unknown field 'codes_sha256' in version 1",
        ),
    ]
    for text, code, expected in cases:
        with pytest.raises(ProtocolError, match=expected) as error:
            parse_message(text)
        assert error.value.code == code
    # A version 1 side refuses a version 2 message.
    with pytest.raises(ProtocolError, match="speaks 1") as error:
        parse_message(v2.to_json(), (1,))
    assert error.value.code == "version"


# A real server on loopback


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def stage(tiny: Path) -> DecoderStage:
    return DecoderStage(load_bundle(tiny).open("decoder"))


@pytest.fixture(scope="module")
def identity(tiny: Path) -> Identity:
    return wire_identity(load_bundle(tiny))


def _run(main) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_server_decodes_codes_and_floats_alike(stage: DecoderStage, identity: Identity) -> None:
    """A v2 client's codes decode to the dequantized vectors' text; a v1 (float) client on
    the same server still gets its text."""
    starts, lengths, vectors = _segments(6)

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, codes=CODES) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with Client(url, TOKEN, identity, dtype="codes", codes=CODES) as coded:
                await coded.send(1, starts, lengths, vectors, end=True)
                assert await coded.result(1) == stage(CODES.decode(CODES.encode(vectors)))
            async with Client(url, TOKEN, identity, dtype="fp16") as floats:
                assert floats.version == 1
                await floats.send(1, starts, lengths, vectors, end=True)
                expected = decode_frame(encode_frame(0, 0, starts, lengths, vectors)).vectors
                assert await floats.result(1) == stage(expected)
            sent = encode_frame(
                0, 1, starts, lengths, vectors, dtype="codes", codes=CODES, end=True
            )
            assert coded.stats.payload_bytes == len(sent) < floats.stats.payload_bytes

    _run(main)


def test_a_server_answers_in_the_hellos_version(identity: Identity, stage: DecoderStage) -> None:
    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, codes=CODES) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            v1 = Hello(version=1, session="old", dtype="fp16", seq=0, **vars(identity))
            async with connect(url, additional_headers=headers) as ws:
                await ws.send(v1.to_json())
                ready = parse_message(await ws.recv(), (1,))  # what a v1 client parses
                assert isinstance(ready, Ready) and ready.version == 1

    _run(main)


@pytest.mark.parametrize(
    ("server_codes", "expected"),
    [
        (None, "has no segment codes"),
        (_codes(seed=1).__class__(_codes(seed=1).codebooks, sha256="ef" * 32), "codebooks are"),
    ],
)
def test_codes_from_other_codebooks_are_refused(
    identity: Identity, stage: DecoderStage, server_codes, expected: str
) -> None:
    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, codes=server_codes) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            client = Client(url, TOKEN, identity, dtype="codes", codes=CODES)
            with pytest.raises(RemoteError, match=expected) as error:
                await client.start()
            assert error.value.code == "identity"
            await client.close(flush=False)

    _run(main)
