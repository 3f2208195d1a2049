"""The arithmetic coder of the entropy-coded token stream (issue 19): exact round trips,
code lengths at the ideal, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetok.arithmetic_code import PRECISION, decode, encode, frequencies, ideal_bits


@st.composite
def coded_sequences(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """(symbols [T], logits [T, V]): peaked, flat or extreme distributions, symbols
    drawn from them or against them."""
    steps = draw(st.integers(0, 300))
    vocab = draw(st.sampled_from([2, 3, 17, 1000, 4096]))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.0, 1.0, 5.0, 40.0]))
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(steps, vocab))
    if draw(st.booleans()):  # the likely symbols, as a good model sees its data
        symbols = logits.argmax(axis=1)
    else:  # any symbol, the unlikely ones included
        symbols = rng.integers(0, vocab, size=steps)
    return symbols, logits


@settings(max_examples=60, deadline=None)
@given(coded_sequences())
def test_round_trip_is_exact_and_near_the_ideal_length(case: tuple[np.ndarray, np.ndarray]) -> None:
    symbols, logits = case
    freqs = frequencies(logits)
    data = encode(symbols, freqs)
    assert np.array_equal(decode(data, freqs), symbols)
    ideal = ideal_bits(symbols, freqs)
    # 2 closing bits, the 32-bit interval's rounding (< 0.023 bits a symbol), whole bytes.
    assert ideal <= 8 * len(data) < ideal + 2 + 0.023 * len(symbols) + 8
    # Trailing bytes the decoder does not need change nothing (bits past the end are 0).
    assert np.array_equal(decode(data + b"\x00\x00", freqs), symbols)


def test_frequencies_sum_to_the_precision_and_keep_every_symbol() -> None:
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [80.0, -80.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    freqs = frequencies(logits)
    assert freqs.dtype == np.int64 and freqs.min() >= 1
    assert np.all(freqs.sum(axis=1) == 1 << PRECISION)
    assert freqs[0, 0] == freqs[0, 1] == freqs[0, 2]  # the flat row: equal but the remainder
    assert freqs[1, 0] > 0.99 * (1 << PRECISION)  # the peaked row: nearly all to its argmax
    assert list(np.argsort(freqs[2])) == [0, 1, 2, 3]


def test_a_confident_model_codes_in_few_bytes() -> None:
    # 1000 symbols at p ~ 0.99 each: ~14.5 bits ideal, so a handful of bytes.
    logits = np.zeros((1000, 1000))
    logits[:, 7] = np.log(0.99 * 999 / 0.01)
    symbols = np.full(1000, 7)
    freqs = frequencies(logits)
    data = encode(symbols, freqs)
    assert len(data) <= 4 and np.array_equal(decode(data, freqs), symbols)
    assert encode(np.zeros(0, np.int64), freqs[:0]) == b""


def test_decoding_under_other_frequencies_gives_other_symbols() -> None:
    rng = np.random.default_rng(1)
    symbols = rng.integers(0, 1000, size=200)
    data = encode(symbols, frequencies(rng.normal(size=(200, 1000))))
    assert not np.array_equal(decode(data, frequencies(rng.normal(size=(200, 1000)))), symbols)


@pytest.mark.parametrize(
    ("symbols", "logits", "problem"),
    [
        (np.array([0, 1]), np.zeros((3, 4)), "2 symbols need frequencies"),
        (np.array([0, 4]), np.zeros((2, 4)), "integers in 0..3"),
        (np.array([0.5, 1.0]), np.zeros((2, 4)), "integers in 0..3"),
        (np.array([-1, 1]), np.zeros((2, 4)), "integers in 0..3"),
    ],
)
def test_encode_refuses_symbols_its_table_cannot_code(
    symbols: np.ndarray, logits: np.ndarray, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        encode(symbols, frequencies(logits))


def test_bad_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        frequencies(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\[T, V\]"):
        frequencies(np.zeros(5))
    with pytest.raises(ValueError, match="too small"):
        frequencies(np.zeros((1, 300)), precision=8)
    with pytest.raises(ValueError, match="one total"):
        decode(b"\x00", np.array([[1, 2], [2, 2]]))
    with pytest.raises(ValueError, match=">= 1"):
        encode(np.array([0]), np.array([[0, 4]]))
