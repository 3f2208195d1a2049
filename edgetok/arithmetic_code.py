"""Arithmetic coding of a symbol sequence under per-position probabilities (issue 19's
entropy-coded token stream: token ids under the entropy LM's own next-token
probabilities).

``frequencies`` turns each position's logits into integer frequencies that sum to exactly
``2**precision``, every symbol at least 1, so any symbol stays codable. ``encode`` /
``decode`` are the classic binary arithmetic coder (Witten, Neal and Cleary, 1987) on a
32-bit interval with pending ("underflow") bits: a sequence under the same frequency
table decodes exactly, and its code is 2 bits above the table's ideal length, plus what
the 32-bit interval rounds off (under 0.023 bits a symbol, and far less for all but the
least likely), rounded up to whole bytes. Both sides must hold the same integer table: a decoder
rebuilds it position by position from the symbols it has decoded so far, which a causal
model such as the entropy LM allows. numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PRECISION", "decode", "encode", "frequencies", "ideal_bits"]

#: Bits of the frequency total: 2**24 leaves every symbol of a 65536-symbol alphabet >= 1.
PRECISION = 24
_BITS = 32
_TOP = (1 << _BITS) - 1
_HALF = 1 << (_BITS - 1)
_QUARTER = 1 << (_BITS - 2)


def frequencies(logits: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Integer frequencies int64 [T, V] of logits [T, V]: each >= 1, each row summing to
    ``2**precision`` (the remainder of flooring goes to the row's most likely symbol)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [T, V] with V >= 2, got shape {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite")
    total, vocab = 1 << precision, logits.shape[1]
    if not 2 <= precision <= _BITS - 2 or vocab > total // 2:
        raise ValueError(
            f"precision {precision} is out of 2..{_BITS - 2} or too small for V={vocab}"
        )
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    freqs = np.floor(probs * (total - vocab)).astype(np.int64) + 1
    rows = np.arange(len(freqs))
    freqs[rows, probs.argmax(axis=1)] += total - freqs.sum(axis=1)
    return freqs


def ideal_bits(symbols: np.ndarray, freqs: np.ndarray) -> float:
    """The ideal code length in bits of ``symbols`` [T] under ``freqs`` [T, V]."""
    symbols = _check(symbols, freqs)
    chosen = freqs[np.arange(len(symbols)), symbols]
    return float(-np.log2(chosen / freqs.sum(axis=1)).sum())


def _check(symbols: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    symbols = np.asarray(symbols).reshape(-1)
    if freqs.ndim != 2 or len(freqs) != len(symbols):
        raise ValueError(
            f"{len(symbols)} symbols need frequencies [T={len(symbols)}, V], got {freqs.shape}"
        )
    if symbols.size and (
        symbols.dtype.kind not in "iu" or symbols.min() < 0 or symbols.max() >= freqs.shape[1]
    ):
        raise ValueError(f"symbols must be integers in 0..{freqs.shape[1] - 1}")
    if freqs.size and (freqs.min() < 1 or len(set(freqs.sum(axis=1).tolist())) != 1):
        raise ValueError("frequencies must be >= 1 with one total for every position")
    return symbols.astype(np.int64)


def _narrow(
    low: int, high: int, cumulative: np.ndarray, symbol: int, total: int
) -> tuple[int, int]:
    """The part of [low, high] that ``symbol`` takes under one position's cumulative
    frequencies (the encoder's and the decoder's one step)."""
    upper = int(cumulative[symbol])
    lower = int(cumulative[symbol - 1]) if symbol else 0
    span = high - low + 1
    return low + span * lower // total, low + span * upper // total - 1


def encode(symbols: np.ndarray, freqs: np.ndarray) -> bytes:
    """The arithmetic code of ``symbols`` [T] under ``freqs`` [T, V] (from
    ``frequencies``), zero-padded to whole bytes; an empty sequence codes to no bytes."""
    symbols = _check(symbols, freqs)
    if not len(symbols):
        return b""
    cumulative = np.cumsum(freqs, axis=1)
    total = int(cumulative[0, -1])
    bits: list[int] = []
    pending = 0

    def emit(bit: int) -> None:
        nonlocal pending
        bits.append(bit)
        bits.extend([1 - bit] * pending)
        pending = 0

    low, high = 0, _TOP
    for t, symbol in enumerate(symbols.tolist()):
        low, high = _narrow(low, high, cumulative[t], symbol, total)
        while True:
            if high < _HALF:
                emit(0)
            elif low >= _HALF:
                emit(1)
                low, high = low - _HALF, high - _HALF
            elif low >= _QUARTER and high < _HALF + _QUARTER:
                pending += 1
                low, high = low - _QUARTER, high - _QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
    # Two more bits name a point inside [low, high] whatever zeros follow them.
    pending += 1
    emit(0 if low < _QUARTER else 1)
    return np.packbits(np.array(bits, np.uint8)).tobytes()


def decode(data: bytes, freqs: np.ndarray) -> np.ndarray:
    """The ``len(freqs)`` symbols int64 coded in ``data`` under ``freqs`` [T, V]. Bits past
    the end read as zeros; data that no encoder under these frequencies wrote decodes to
    some sequence or raises ``ValueError``, never loops."""
    if freqs.ndim != 2:
        raise ValueError(f"frequencies must be [T, V], got shape {freqs.shape}")
    _check(np.zeros(len(freqs), np.int64), freqs)
    steps = len(freqs)
    if not steps:
        return np.zeros(0, np.int64)
    cumulative = np.cumsum(freqs, axis=1)
    total = int(cumulative[0, -1])
    stream = np.unpackbits(np.frombuffer(data, np.uint8)).tolist()
    position = 0

    def next_bit() -> int:
        nonlocal position
        position += 1
        return stream[position - 1] if position <= len(stream) else 0

    value = 0
    for _ in range(_BITS):
        value = 2 * value + next_bit()
    low, high = 0, _TOP
    out = np.empty(steps, np.int64)
    for t in range(steps):
        span = high - low + 1
        target = ((value - low + 1) * total - 1) // span
        symbol = int(np.searchsorted(cumulative[t], target, side="right"))
        if symbol >= freqs.shape[1]:
            raise ValueError(f"arithmetic code out of range at symbol {t}")
        out[t] = symbol
        low, high = _narrow(low, high, cumulative[t], symbol, total)
        while True:
            if high < _HALF:
                pass
            elif low >= _HALF:
                low, high, value = low - _HALF, high - _HALF, value - _HALF
            elif low >= _QUARTER and high < _HALF + _QUARTER:
                low, high, value = low - _QUARTER, high - _QUARTER, value - _QUARTER
            else:
                break
            low, high, value = 2 * low, 2 * high + 1, 2 * value + next_bit()
    return out
