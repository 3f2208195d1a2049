"""Protocol version 2's tokens frame (issue 19): the segments' token ids, exact on the
wire, and every malformed frame refused with a clear ``bad_frame``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetok.protocol import (
    TOKENS_TAG,
    ProtocolError,
    decode_tokens_frame,
    encode_tokens_frame,
    token_bits,
)

VOCAB = 1000  # the v2 bundle's FSQ grid: 10 bits an id, 1000..1023 unused


def _segments(count: int, seed: int, first: int = 0, max_length: int = 8):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, count)
    starts = first + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tokens = rng.integers(0, VOCAB, int(lengths.sum()))
    return starts[:count], lengths, tokens


@settings(max_examples=80, deadline=None)
@given(
    count=st.integers(0, 60),
    first=st.integers(0, 2**20),
    seq=st.integers(0, 2**32 - 1),
    utterance=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**16),
    max_length=st.sampled_from([1, 2, 8, 9, 300]),
    end=st.booleans(),
)
def test_round_trip_is_exact_and_its_size_is_the_formula(
    count, first, seq, utterance, seed, max_length, end
) -> None:
    end = end or count == 0
    starts, lengths, tokens = _segments(count, seed, first, max_length)
    data = encode_tokens_frame(seq, utterance, starts, lengths, tokens, VOCAB, end=end)
    frame = decode_tokens_frame(data, VOCAB)
    assert (frame.seq, frame.utterance, frame.end, frame.dtype) == (seq, utterance, end, "tokens")
    np.testing.assert_array_equal(frame.starts, starts)
    np.testing.assert_array_equal(frame.lengths, lengths)
    np.testing.assert_array_equal(frame.tokens, tokens)
    assert frame.tokens.dtype == np.int64 and frame.vectors.shape == (count, 0)
    width = max(1, int(lengths.max() - 1).bit_length()) if count else 1
    varints = [seq, utterance, count] + ([first] if count else [])
    head = 2 + sum(max(1, math.ceil(v.bit_length() / 7)) for v in varints)
    assert len(data) == head + math.ceil((count * width + len(tokens) * 10) / 8)


def test_a_second_of_speech_is_about_75_bytes() -> None:
    """15 segments of 50 tokens (lengths 2..8): 3 bits each, then 50 ids of 10 bits."""
    lengths = np.array([4, 3, 2, 5, 3, 4, 3, 2, 4, 3, 4, 3, 3, 4, 3])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tokens = np.arange(50) * 19 % VOCAB
    data = encode_tokens_frame(7, 3, starts, lengths, tokens, VOCAB, end=True)
    assert len(data) == 2 + 4 + math.ceil((15 * 3 + 50 * 10) / 8)  # 75


def test_token_bits() -> None:
    assert [token_bits(v) for v in (2, 3, 1000, 1024, 1025, 65536)] == [1, 2, 10, 10, 11, 16]
    for bad in (1, 65537, 2.0, True):
        with pytest.raises(ValueError, match="vocab_size"):
            token_bits(bad)


def _frame() -> bytes:
    starts, lengths, tokens = _segments(5, seed=3)
    return encode_tokens_frame(1, 2, starts, lengths, tokens, VOCAB, end=True)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: bytes([0xEC]) + d[1:], "not a tokens frame"),
        (lambda d: d[:1] + bytes([d[1] | 0x02]) + d[2:], "unknown flags"),
        (lambda d: d[:-1], "tokens frame of"),
        (lambda d: d + b"\x00", "tokens frame of"),
        (lambda d: d[:4], "frame"),
        (lambda d: b"", "not a tokens frame"),
    ],
)
def test_malformed_frames_are_named(mutate, message) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_tokens_frame(mutate(_frame()), VOCAB)
    assert info.value.code == "bad_frame"


def test_ids_beyond_the_vocabulary_and_padding_bits_are_refused() -> None:
    starts, lengths = np.array([0]), np.array([1])
    # 1000 fits in 10 bits, as in a vocabulary of 1024, but this one stops at 999.
    forged = encode_tokens_frame(0, 0, starts, lengths, np.array([1000]), 1024, end=True)
    with pytest.raises(ProtocolError, match="token id 1000 beyond the vocabulary of 1000"):
        decode_tokens_frame(forged, VOCAB)
    data = encode_tokens_frame(0, 0, starts, lengths, np.array([999]), VOCAB, end=True)
    padded = data[:-1] + bytes([data[-1] | 0x80])
    with pytest.raises(ProtocolError, match="padding bits"):
        decode_tokens_frame(padded, VOCAB)


def test_frames_over_the_limit_are_too_large() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_tokens_frame(_frame(), VOCAB, max_bytes=4)
    assert info.value.code == "too_large"


@pytest.mark.parametrize(
    ("starts", "lengths", "tokens", "message"),
    [
        ([0, 3], [2, 2], [1, 2, 3, 4], "contiguous"),
        ([0], [2], [1, 2, 3], "3 token ids for segments of 2"),
        ([0], [2], [1, VOCAB], "token ids must be integers"),
        ([0], [2], [1, -1], "token ids must be integers"),
        ([0], [2], [0.5, 1.0], "token ids must be integers"),
        ([], [], [], "must end the utterance"),
    ],
)
def test_the_encoder_refuses_what_the_decoder_would(starts, lengths, tokens, message) -> None:
    with pytest.raises(ProtocolError, match=message):
        encode_tokens_frame(0, 0, np.array(starts), np.array(lengths), np.array(tokens), VOCAB)


def test_the_tag_is_not_a_float_or_codes_frame() -> None:
    assert _frame()[0] == TOKENS_TAG
