"""Entropy segmenter: cut a token stream where the entropy model is surprised.

Rules (per token ``t`` of one sequence, entropies ``H``; H in nats, any finite floats):

* global:   ``H[t] > global_threshold``
* relative: ``H[t] - H[t-1] > relative_threshold`` (the Byte Latent Transformer's
  monotonicity constraint; the difference is taken in float64 after converting each
  value to float64, whatever the input dtype; undefined at ``t = 0``)

A rule that is ``None`` (or ``+inf``) never fires; with both set, a rule *fires* at ``t``
when either fires. With ``L`` = the length of the current segment so far (tokens
``start .. t-1``), token ``t`` starts a new segment iff::

    t == 0                                  (the first token always starts one)
    or L >= max_len                         (forced cut: segments never exceed max_len)
    or (L >= min_len and a rule fires at t)

otherwise it extends the current segment (``L += 1``). So every segment has at most
``max_len`` tokens and every segment but the last at least ``min_len`` (the last one is
cut by the end of the input, which a stream cannot foresee). A fired cut inside the
first ``min_len`` tokens of a segment is dropped, not postponed. With no thresholds only
``max_len`` cuts (fixed-length segments); with neither, the whole input is one segment.

The decision at ``t`` needs only ``(t, H[t-1], L)``: that is the carry the streaming
:class:`Segmenter` keeps, so any chunking gives exactly the batch boundaries.

Also here: :func:`threshold_for_rate` (solve a threshold for a target segment rate),
and the helpers the aggregator uses: :func:`segment_lengths`, :func:`segments_to_padded`
(tokens) and :func:`frames_to_padded` (v2's encoder frames); :func:`warmup` loads the
kernels at start-up. The fixed-rate baseline is ``edgetok.compress.fixed_rate_starts``.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np

from edgetok.jit import njit

__all__ = [
    "Segmenter",
    "boundaries",
    "frames_to_padded",
    "segment_lengths",
    "segment_rate",
    "segments_to_padded",
    "threshold_for_rate",
    "warmup",
]

#: max_len=None is passed to the kernels as this (a segment never gets this long).
_NO_MAX = np.iinfo(np.int64).max
_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True)
def _segment_kernel(h, theta_g, theta_r, min_len, max_len, pos, prev, seg_len):  # pragma: no cover
    """Segment starts of ``h`` given the carry-in; one pass, no Python objects.

    h: float32/float64 [n] (C-contiguous). theta_g/theta_r: float64, ``+inf`` = rule off.
    min_len, max_len: int64 (``max_len`` = int64 max for none). Carry-in: ``pos`` absolute
    index of ``h[0]``; ``prev`` = float64 H of the token before ``h[0]``; ``seg_len`` =
    length of the open segment (0 = nothing seen yet).

    Returns ``(starts int64 [k] absolute, k, prev, seg_len)``; on a non-finite value at
    ``h[i]`` returns ``(empty, -1 - i, prev_in, seg_len_in)`` and the carry is unchanged.
    """
    n = h.shape[0]
    out = np.empty(n, np.int64)
    k = 0
    p = prev
    s = seg_len
    for i in range(n):
        x = np.float64(h[i])
        if not np.isfinite(x):
            return out[:0], -1 - i, prev, seg_len
        if s == 0 or s >= max_len or (s >= min_len and (x > theta_g or x - p > theta_r)):
            out[k] = pos + i
            k += 1
            s = 1
        else:
            s += 1
        p = x
    return out[:k], k, p, s


@njit(cache=True, nogil=True)
def _count_kernel(flat, offsets, theta_g, theta_r, min_len, max_len):  # pragma: no cover
    """Total number of segments over the sequences ``flat[offsets[j]:offsets[j+1]]``."""
    total = 0
    for j in range(offsets.shape[0] - 1):
        seq = flat[offsets[j] : offsets[j + 1]]
        _, k, _, _ = _segment_kernel(seq, theta_g, theta_r, min_len, max_len, 0, 0.0, 0)
        total += k
    return total


# ------------------------------------------------------------------------ validation


def _check_threshold(value: float | None, name: str) -> float:
    """Threshold as float64 for the kernel (``None`` -> ``+inf``, never fires)."""
    if value is None:
        return math.inf
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or None, got {value!r}") from None
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    return v


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_lengths(min_len: int, max_len: int | None) -> tuple[int, int]:
    """Validated ``(min_len, max_len)``; ``max_len=None`` becomes int64 max."""
    lo = _check_int(min_len, "min_len")
    if lo < 1:
        raise ValueError(f"min_len must be >= 1, got {lo}")
    if max_len is None:
        return lo, _NO_MAX
    hi = _check_int(max_len, "max_len")
    if hi < 1:
        raise ValueError(f"max_len must be >= 1 or None, got {hi}")
    if lo > hi:
        raise ValueError(f"min_len ({lo}) must be <= max_len ({hi})")
    return lo, hi


def _as_entropy(entropy: object, name: str = "entropy") -> np.ndarray:
    """1-D C-contiguous float32/float64 native-order view or copy of ``entropy``."""
    x = np.asarray(entropy)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must have a float dtype, got {x.dtype}")
    if x.dtype.itemsize < 4:  # float16: exact in float32
        x = x.astype(np.float32)
    elif x.dtype.itemsize > 8:  # longdouble: numba has no such type
        x = x.astype(np.float64)
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if not x.flags.writeable:  # numba would compile (and cache) a read-only variant
        return x.copy()
    return np.ascontiguousarray(x)


def _non_finite_error(x: np.ndarray, index: int, name: str, offset: int = 0) -> ValueError:
    where = f"index {index}" if offset == 0 else f"index {index} (absolute {offset + index})"
    return ValueError(f"{name} contains a non-finite value ({float(x[index])!r}) at {where}")


# ------------------------------------------------------------------------ public API


def boundaries(
    entropy: np.ndarray,
    global_threshold: float | None = None,
    relative_threshold: float | None = None,
    min_len: int = 1,
    max_len: int | None = None,
) -> np.ndarray:
    """Segment start indices of one sequence (see the module docstring for the rules).

    Args:
        entropy: float [T], finite (float16/32/64).
        global_threshold: cut where ``H[t] > global_threshold``; None = off.
        relative_threshold: cut where ``H[t] - H[t-1] > relative_threshold``; None = off.
        min_len: a fired cut is dropped while the open segment is shorter than this.
        max_len: a cut is forced once the open segment has this many tokens; None = no max.

    Returns:
        int64 [S], strictly increasing, ``starts[0] == 0`` when ``T > 0``; empty if ``T == 0``.
    """
    x = _as_entropy(entropy)
    tg = _check_threshold(global_threshold, "global_threshold")
    tr = _check_threshold(relative_threshold, "relative_threshold")
    lo, hi = _check_lengths(min_len, max_len)
    starts, k, _, _ = _segment_kernel(x, tg, tr, lo, hi, 0, 0.0, 0)
    if k < 0:
        raise _non_finite_error(x, -1 - k, "entropy")
    if 2 * k < x.shape[0]:  # do not keep the kernel's size-T buffer alive
        starts = starts.copy()
    return starts


class Segmenter:
    """Streaming :func:`boundaries`: feed entropy chunks, get new absolute segment starts.

    ``np.concatenate([seg.push(c) for c in chunks])`` equals
    ``boundaries(np.concatenate(chunks), ...)`` for any chunking, empty chunks included.
    The carry is ``(position, previous H, open segment length)``; a chunk with a bad value
    raises ValueError and leaves the carry unchanged.
    """

    __slots__ = ("_tg", "_tr", "_min", "_max", "_pos", "_prev", "_len", "_settings")

    def __init__(
        self,
        global_threshold: float | None = None,
        relative_threshold: float | None = None,
        min_len: int = 1,
        max_len: int | None = None,
    ) -> None:
        self._tg = _check_threshold(global_threshold, "global_threshold")
        self._tr = _check_threshold(relative_threshold, "relative_threshold")
        self._min, self._max = _check_lengths(min_len, max_len)
        self._settings = (global_threshold, relative_threshold, min_len, max_len)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next pushed token is index 0 and starts a segment."""
        self._pos = 0
        self._prev = 0.0
        self._len = 0

    @property
    def position(self) -> int:
        """Number of tokens pushed since construction or the last :meth:`reset`."""
        return self._pos

    def push(self, entropy_chunk: np.ndarray) -> np.ndarray:
        """Consume float [n] entropies; return int64 [k] absolute starts among them."""
        x = entropy_chunk
        # fast path: a writeable C-contiguous float32/float64 1-D array goes straight in
        if type(x) is not np.ndarray or x.ndim != 1 or (x.dtype != _F32 and x.dtype != _F64):
            x = _as_entropy(x, "entropy chunk")
        else:
            flags = x.flags
            if not (flags.c_contiguous and flags.writeable):
                x = _as_entropy(x, "entropy chunk")
        starts, k, prev, seg_len = _segment_kernel(
            x, self._tg, self._tr, self._min, self._max, self._pos, self._prev, self._len
        )
        if k < 0:
            raise _non_finite_error(x, -1 - k, "entropy chunk", self._pos)
        self._pos += x.shape[0]
        self._prev = prev
        self._len = seg_len
        return starts

    def __repr__(self) -> str:
        g, r, lo, hi = self._settings
        return (
            f"Segmenter(global_threshold={g!r}, relative_threshold={r!r}, min_len={lo!r}, "
            f"max_len={hi!r}; position={self._pos})"
        )


def warmup() -> float:
    """Load (or compile) the segment kernel for float32 and float64 input; seconds taken.

    The first call in a process pays numba's one-time initialisation (~0.1-0.2 s even
    with a warm on-disk cache); call this at start-up to keep it off the first chunk.
    """
    t0 = time.perf_counter()
    for dtype in (np.float32, np.float64):
        _segment_kernel(np.zeros(1, dtype), math.inf, math.inf, 1, _NO_MAX, 0, 0.0, 0)
    return time.perf_counter() - t0


def _as_sequences(entropies: object) -> list[np.ndarray]:
    """A 1-D array is one sequence; otherwise an iterable of 1-D arrays."""
    if isinstance(entropies, np.ndarray) and entropies.ndim == 1:
        seqs = [entropies]
    elif isinstance(entropies, np.ndarray):
        raise ValueError(
            f"entropies must be a 1-D array or a sequence of 1-D arrays, "
            f"got an array of shape {entropies.shape}"
        )
    else:
        seqs = list(entropies)  # type: ignore[call-overload]
    out = []
    for j, s in enumerate(seqs):
        x = _as_entropy(s, f"entropies[{j}]")
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            raise _non_finite_error(x, int(bad[0]), f"entropies[{j}]")
        out.append(x)
    return out


def _flatten(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """float64 concatenation and int64 offsets [len(seqs) + 1]."""
    offsets = np.zeros(len(seqs) + 1, np.int64)
    offsets[1:] = np.cumsum([s.shape[0] for s in seqs])
    flat = np.concatenate([s.astype(np.float64) for s in seqs]) if seqs else np.zeros(0)
    return flat, offsets


def _check_rate(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def segment_rate(
    entropies: np.ndarray | Sequence[np.ndarray],
    token_rate_hz: float,
    global_threshold: float | None = None,
    relative_threshold: float | None = None,
    min_len: int = 1,
    max_len: int | None = None,
) -> float:
    """Segments per second over sequences: total segments / (total tokens / token rate).

    ``entropies``: one float [T] array, or a sequence of them (each segmented on its own).
    """
    rate = _check_rate(token_rate_hz, "token_rate_hz")
    seqs = _as_sequences(entropies)
    tg = _check_threshold(global_threshold, "global_threshold")
    tr = _check_threshold(relative_threshold, "relative_threshold")
    lo, hi = _check_lengths(min_len, max_len)
    flat, offsets = _flatten(seqs)
    if flat.shape[0] == 0:
        raise ValueError("entropies hold no tokens: the segment rate is undefined")
    count = _count_kernel(flat, offsets, tg, tr, lo, hi)
    return count * rate / flat.shape[0]


def threshold_for_rate(
    entropies: np.ndarray | Sequence[np.ndarray],
    token_rate_hz: float,
    target_hz: float,
    *,
    rule: Literal["global", "relative"] = "global",
    min_len: int = 1,
    max_len: int | None = None,
    tol: float = 0.01,
    global_threshold: float | None = None,
    relative_threshold: float | None = None,
) -> float:
    """Solve the ``rule`` threshold whose segment rate over ``entropies`` is ``target_hz``.

    The rate (:func:`segment_rate`) is non-increasing in the threshold and only changes
    where the threshold crosses a candidate value (an entropy for ``"global"``, a
    difference ``H[t] - H[t-1]`` for ``"relative"``), so this bisects over the sorted
    distinct candidates. It stops as soon as a rate is within ``tol`` Hz of the target,
    else returns the threshold whose rate is nearest (the rate is a step function: with
    few tokens or many tied values it can jump over the target). The threshold returned
    lies midway between the two candidates bounding its step.

    The other rule's threshold may be held fixed (``relative_threshold`` when solving
    ``"global"``, ``global_threshold`` when solving ``"relative"``).

    Raises:
        ValueError: bad input, or ``target_hz`` more than ``tol`` outside the reachable
            range ``[rate with no rule cut, rate with every rule cut]`` for min/max_len.
    """
    if rule not in ("global", "relative"):
        raise ValueError(f"rule must be 'global' or 'relative', got {rule!r}")
    if rule == "global" and global_threshold is not None:
        raise ValueError("global_threshold is what rule='global' solves: do not pass it")
    if rule == "relative" and relative_threshold is not None:
        raise ValueError("relative_threshold is what rule='relative' solves: do not pass it")
    rate = _check_rate(token_rate_hz, "token_rate_hz")
    target = _check_rate(target_hz, "target_hz")
    tol_f = float(tol)
    if not (tol_f >= 0 and math.isfinite(tol_f)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    lo_len, hi_len = _check_lengths(min_len, max_len)
    seqs = _as_sequences(entropies)
    flat, offsets = _flatten(seqs)
    n_tokens = flat.shape[0]
    if n_tokens == 0:
        raise ValueError("entropies hold no tokens: cannot solve a threshold")
    fixed_g = _check_threshold(global_threshold, "global_threshold")
    fixed_r = _check_threshold(relative_threshold, "relative_threshold")

    if rule == "global":
        cand = np.unique(flat)
    else:
        diffs = [np.diff(flat[offsets[j] : offsets[j + 1]]) for j in range(len(seqs))]
        cand = np.unique(np.concatenate(diffs)) if diffs else np.zeros(0)

    # Threshold j in 0..m: j = 0 -> below every candidate (all fire), j -> cand[j-1].
    m = cand.shape[0]

    def threshold_at(j: int) -> float:
        if j == 0:
            return float(np.nextafter(cand[0], -np.inf)) if m else 0.0
        if j == m:
            return float(cand[m - 1])
        a, b = float(cand[j - 1]), float(cand[j])
        mid = a + (b - a) / 2
        return mid if a <= mid < b else a

    memo: dict[int, float] = {}

    def rate_at(j: int) -> float:
        if j not in memo:
            theta = threshold_at(j)
            tg, tr = (theta, fixed_r) if rule == "global" else (fixed_g, theta)
            count = _count_kernel(flat, offsets, tg, tr, lo_len, hi_len)
            memo[j] = count * rate / n_tokens
        return memo[j]

    r_max, r_min = rate_at(0), rate_at(m)
    max_desc = "none" if hi_len == _NO_MAX else str(hi_len)
    if target > r_max + tol_f or target < r_min - tol_f:
        raise ValueError(
            f"target_hz={target:g} cannot be reached with rule={rule!r}, min_len={lo_len}, "
            f"max_len={max_desc}: reachable range is [{r_min:.6g}, {r_max:.6g}] Hz "
            f"over {n_tokens} tokens at {rate:g} tokens/s"
        )
    # Invariant: rate_at(lo) >= target >= rate_at(hi) (clamped at the ends).
    lo, hi = 0, m
    if abs(r_max - target) <= tol_f or target >= r_max:
        return threshold_at(0)
    if abs(r_min - target) <= tol_f or target <= r_min:
        return threshold_at(m)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = rate_at(mid)
        if abs(r - target) <= tol_f:
            return threshold_at(mid)
        if r > target:
            lo = mid
        else:
            hi = mid
    best = lo if abs(rate_at(lo) - target) <= abs(rate_at(hi) - target) else hi
    return threshold_at(best)


# ----------------------------------------------------------------------------- helpers


def _as_starts(starts: object, n: int) -> np.ndarray:
    """Validate segment starts for a length-``n`` sequence; int64 [S]."""
    s = np.asarray(starts)
    if s.ndim != 1:
        raise ValueError(f"starts must be a 1-D array, got shape {s.shape}")
    if s.size == 0:
        if n > 0:
            raise ValueError(f"starts is empty but the sequence has {n} tokens")
        return np.zeros(0, np.int64)
    if s.dtype.kind not in "iu":
        raise ValueError(f"starts must have an integer dtype, got {s.dtype}")
    s = s.astype(np.int64, copy=False)
    if s[0] != 0:
        raise ValueError(f"starts[0] must be 0, got {int(s[0])}")
    if s.size > 1 and not np.all(s[1:] > s[:-1]):
        raise ValueError("starts must be strictly increasing")
    if s[-1] >= n:
        raise ValueError(f"starts[-1]={int(s[-1])} is out of range for {n} tokens")
    return s


def segment_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """Lengths int64 [S] of the segments ``[starts[i], starts[i+1])`` of ``n`` tokens."""
    n = _check_int(n, "n")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    s = _as_starts(starts, n)
    return np.diff(s, append=np.int64(n))


def segments_to_padded(
    tokens: np.ndarray, starts: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Aggregator input: ``tokens`` [T] cut at ``starts`` [S], one segment a row.

    Returns ``(padded int64 [S, max_len], mask bool [S, max_len])``; padding is 0 with
    mask False. A segment longer than ``max_len`` is a ValueError.
    """
    t = np.asarray(tokens)
    if t.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {t.shape}")
    if t.dtype.kind not in "iu":
        raise ValueError(f"tokens must have an integer dtype, got {t.dtype}")
    width = _check_int(max_len, "max_len")
    if width < 1:
        raise ValueError(f"max_len must be >= 1, got {width}")
    s = _as_starts(starts, t.size)
    lengths = np.diff(s, append=np.int64(t.size))
    too_long = np.flatnonzero(lengths > width)
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(
            f"segment {i} (start {int(s[i])}) has {int(lengths[i])} tokens > max_len={width}"
        )
    cols = np.arange(width, dtype=np.int64)
    mask = cols[None, :] < lengths[:, None]
    padded = np.zeros((s.size, width), np.int64)
    idx = (s[:, None] + cols[None, :])[mask]
    padded[mask] = t[idx]
    return padded, mask


def frames_to_padded(
    frames: np.ndarray, starts: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """The v2 aggregator's input: encoder frames [T, D] cut at ``starts`` [S].

    Returns ``(padded float32 [S, max_len, D], mask bool [S, max_len])``, zeros where the
    mask is False; the rules of ``segments_to_padded``, which it applies to frame indices.
    """
    x = np.asarray(frames)
    if x.ndim != 2:
        raise ValueError(f"frames must be a [T, D] array, got shape {x.shape}")
    index, mask = segments_to_padded(np.arange(x.shape[0]), starts, max_len)
    return (x[index] * mask[..., None]).astype(np.float32, copy=False), mask
