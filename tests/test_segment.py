"""Tests for edgetok.segment: exact cases, a pure-Python reference, streaming == batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgetok.segment import (
    Segmenter,
    boundaries,
    frames_to_padded,
    segment_lengths,
    segment_rate,
    segments_to_padded,
    threshold_for_rate,
    warmup,
)

# ------------------------------------------------------------------ reference model


def reference_boundaries(
    h, global_threshold=None, relative_threshold=None, min_len=1, max_len=None
):
    """The obvious loop over Python floats, written from the documented rules."""
    starts = []
    cur = 0  # length of the open segment
    for t, x in enumerate(float(v) for v in h):
        if t == 0:
            cut = True
        else:
            fired = (global_threshold is not None and x > global_threshold) or (
                relative_threshold is not None and x - float(h[t - 1]) > relative_threshold
            )
            cut = (max_len is not None and cur >= max_len) or (fired and cur >= min_len)
        if cut:
            starts.append(t)
            cur = 1
        else:
            cur += 1
    return starts


def reference_rate(seqs, token_rate, **kw):
    n = sum(len(s) for s in seqs)
    return sum(len(reference_boundaries(s, **kw)) for s in seqs) * token_rate / n


# ------------------------------------------------------------------- exact examples

H = np.array([0.5, 2.0, 0.1, 3.0, 3.5, 0.2, 0.1, 0.1, 4.0])
# diffs (t=1..8): 1.5, -1.9, 2.9, 0.5, -3.3, -0.1, 0.0, 3.9


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [0]),  # no rule, no max: one segment
        ({"global_threshold": 1.0}, [0, 1, 3, 4, 8]),
        ({"global_threshold": 3.0}, [0, 4, 8]),  # strict: H[3] == 3.0 does not cut
        ({"global_threshold": 0.1}, [0, 1, 3, 4, 5, 8]),  # H == 0.1 does not cut
        ({"relative_threshold": 1.0}, [0, 1, 3, 8]),
        ({"relative_threshold": 0.0}, [0, 1, 3, 4, 8]),  # 0.0 diff at t=7 does not cut
        ({"relative_threshold": 3.0}, [0, 8]),
        ({"global_threshold": 3.2, "relative_threshold": 2.0}, [0, 3, 4, 8]),  # either
        ({"global_threshold": 1.0, "min_len": 2}, [0, 3, 8]),  # t=1 (L=1), t=4 (L=1) dropped
        ({"global_threshold": 1.0, "min_len": 3}, [0, 3, 8]),
        ({"global_threshold": 1.0, "min_len": 4}, [0, 4, 8]),  # t=3 has L=3 < 4
        ({"max_len": 3}, [0, 3, 6]),
        ({"max_len": 1}, list(range(9))),
        ({"global_threshold": 1.0, "max_len": 2}, [0, 1, 3, 4, 6, 8]),  # forced cut at t=6
        ({"global_threshold": 1.0, "min_len": 2, "max_len": 2}, [0, 2, 4, 6, 8]),
        ({"relative_threshold": 1.0, "min_len": 2, "max_len": 4}, [0, 3, 7]),
        ({"global_threshold": -math.inf}, list(range(9))),
        ({"global_threshold": math.inf, "relative_threshold": math.inf}, [0]),
    ],
)
def test_exact_boundaries(kwargs, expected):
    got = boundaries(H, **kwargs)
    assert got.dtype == np.int64
    assert got.tolist() == expected
    assert reference_boundaries(H, **kwargs) == expected


def test_min_len_drops_rather_than_postpones():
    # fires only at t=1; min_len=3 drops it, and nothing fires later
    assert boundaries(np.array([0.0, 9.0, 0.0, 0.0, 0.0]), 1.0, min_len=3).tolist() == [0]


def test_relative_rule_uses_previous_token_not_segment_start():
    # 0 -> 1 -> 2 -> 3: each step +1 > 0.5, so every token cuts
    assert boundaries(np.array([0.0, 1.0, 2.0, 3.0]), None, 0.5).tolist() == [0, 1, 2, 3]


def test_empty_and_single():
    assert boundaries(np.zeros(0)).tolist() == []
    assert boundaries(np.zeros(0)).dtype == np.int64
    assert boundaries(np.array([7.0]), 1.0, 1.0).tolist() == [0]


def test_float32_difference_is_taken_in_float64():
    # the rule compares float64(H[t]) - float64(H[t-1]), here exactly float64(0.1f)
    h = np.array([0.0, 0.1], np.float32)
    theta = float(np.float64(np.float32(0.1)))  # exact float64 value of H[1]
    assert boundaries(h, None, np.nextafter(theta, -1)).tolist() == [0, 1]
    assert boundaries(h, None, theta).tolist() == [0]
    assert boundaries(h.astype(np.float16), None, 0.09).tolist() == [0, 1]


def test_accepts_lists_and_noncontiguous():
    h = np.repeat(H, 2)[::2]
    assert not h.flags.c_contiguous
    assert boundaries(h, 1.0).tolist() == [0, 1, 3, 4, 8]
    assert boundaries(H.tolist(), 1.0).tolist() == [0, 1, 3, 4, 8]
    assert boundaries(H.astype(">f8"), 1.0).tolist() == [0, 1, 3, 4, 8]


# ---------------------------------------------------------------- property tests

# Values from a small grid give ties with the thresholds (tests strict '>');
# wide floats test everything else.
grid_values = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
wide_values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
entropy_lists = st.one_of(st.lists(grid_values, max_size=80), st.lists(wide_values, max_size=80))
thresholds = st.one_of(
    st.none(),
    st.sampled_from([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0]),
    st.floats(-1e6, 1e6, allow_nan=False),
)


@st.composite
def settings_strategy(draw):
    min_len = draw(st.integers(1, 6))
    max_len = draw(st.one_of(st.none(), st.integers(min_len, 10)))
    return {
        "global_threshold": draw(thresholds),
        "relative_threshold": draw(thresholds),
        "min_len": min_len,
        "max_len": max_len,
    }


@settings(max_examples=400, deadline=None)
@given(values=entropy_lists, kw=settings_strategy(), f32=st.booleans())
def test_kernel_matches_reference(values, kw, f32):
    h = np.array(values, np.float32 if f32 else np.float64)
    got = boundaries(h, **kw)
    assert got.tolist() == reference_boundaries(h, **kw)
    # documented invariants
    lengths = segment_lengths(got, len(h))
    if kw["max_len"] is not None:
        assert lengths.max(initial=0) <= kw["max_len"]
    assert (lengths[:-1] >= kw["min_len"]).all()


@settings(max_examples=400, deadline=None)
@given(values=entropy_lists, kw=settings_strategy(), data=st.data())
def test_streaming_equals_batch(values, kw, data):
    h = np.array(values, np.float64)
    n = len(h)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=12)))  # repeats = empty chunks
    chunks = np.split(h, cuts)
    s = Segmenter(**kw)
    pieces = [s.push(c) for c in chunks]
    assert all(p.dtype == np.int64 for p in pieces)
    streamed = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    assert streamed.tolist() == boundaries(h, **kw).tolist()
    assert s.position == n
    # reset() starts over: a second pass over the same chunks gives the same answer
    s.reset()
    again = np.concatenate([s.push(c) for c in chunks])
    assert again.tolist() == streamed.tolist()


def test_segmenter_bad_chunk_leaves_carry_unchanged():
    s = Segmenter(global_threshold=1.0, min_len=2)
    assert s.push(H[:4]).tolist() == [0, 3]
    with pytest.raises(ValueError, match=r"non-finite .* index 1 \(absolute 5\)"):
        s.push(np.array([0.2, np.nan]))
    assert s.position == 4
    assert s.push(H[4:]).tolist() == [8]


def test_warmup_compiles_both_dtypes():
    from edgetok.segment import _segment_kernel

    assert warmup() >= 0.0
    kinds = {str(sig[0].dtype) for sig in _segment_kernel.signatures}
    assert {"float32", "float64"} <= kinds


def test_only_two_kernel_variants_are_compiled():
    from edgetok.segment import _segment_kernel

    ro = H.copy()
    ro.flags.writeable = False
    odd = [ro, H[::2], H.astype(">f4"), H.astype(np.float16), H.tolist()]
    for h in odd:
        boundaries(h, 1.0)
        Segmenter(1.0).push(h)
    for sig in _segment_kernel.signatures:
        arr = sig[0]
        assert arr.layout == "C" and arr.mutable and str(arr.dtype) in ("float32", "float64")


def test_segmenter_chunk_types():
    s = Segmenter(global_threshold=1.0)
    out = [s.push(H[:2].tolist()), s.push(H[2:5].astype(np.float32)), s.push(H[5:][::1])]
    assert np.concatenate(out).tolist() == [0, 1, 3, 4, 8]


# --------------------------------------------------------------- threshold_for_rate


def _random_seqs(seed, n_seq=20):
    rng = np.random.default_rng(seed)
    return [rng.gamma(2.0, 1.0, rng.integers(50, 400)) for _ in range(n_seq)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("rule", "min_len", "max_len", "target"),
    [
        ("global", 1, None, 15.0),
        ("global", 2, 10, 15.0),
        ("global", 1, None, 3.0),
        ("relative", 1, None, 15.0),
        ("relative", 2, 8, 12.0),
    ],
)
def test_threshold_for_rate_hits_target(seed, rule, min_len, max_len, target):
    seqs = _random_seqs(seed)
    theta = threshold_for_rate(
        seqs, 50.0, target, rule=rule, min_len=min_len, max_len=max_len, tol=0.01
    )
    kw = {"global_threshold": theta} if rule == "global" else {"relative_threshold": theta}
    rate = segment_rate(seqs, 50.0, min_len=min_len, max_len=max_len, **kw)
    assert abs(rate - target) <= 0.01
    assert rate == pytest.approx(reference_rate(seqs, 50.0, min_len=min_len, max_len=max_len, **kw))


def test_threshold_for_rate_exact():
    h = np.arange(10.0)  # 10 tokens at 10 tokens/s = 1 s
    # 5 segments: 4 cuts among t >= 1 -> values 6..9 fire -> theta in [5, 6): midpoint
    assert threshold_for_rate(h, 10.0, 5.0, tol=0) == 5.5
    assert threshold_for_rate(h, 10.0, 2.0, tol=0) == 8.5  # only 9 fires
    assert threshold_for_rate(h, 10.0, 1.0, tol=0) == 9.0  # nothing fires: the top value
    assert threshold_for_rate(h, 10.0, 10.0, tol=0) < 1.0  # everything fires
    # min_len=2: theta in [3, 4) -> starts 0 4 6 8; [4, 5) -> 0 5 7 9; [5, 6) -> 0 6 8;
    # [6, 7) -> 0 7 9; [7, 8) -> 0 8
    assert threshold_for_rate(h, 10.0, 4.0, min_len=2, tol=0) in (3.5, 4.5)
    assert threshold_for_rate(h, 10.0, 3.0, min_len=2, tol=0) in (5.5, 6.5)
    assert threshold_for_rate(h, 10.0, 2.0, min_len=2, tol=0) in (7.5, 8.5)
    # relative: every difference is 1.0, so the rate is 10 Hz below 1.0 and 1 Hz from 1.0
    assert threshold_for_rate(h, 10.0, 1.0, rule="relative", tol=0) == 1.0
    assert threshold_for_rate(h, 10.0, 9.0, rule="relative", tol=0) < 1.0
    # tol: 5.5 Hz is 0.5 from both 5 and 6 Hz; with tol 0.5 the first probe within wins
    assert threshold_for_rate(h, 10.0, 5.5, tol=0.5) in (4.5, 5.5)


def test_threshold_for_rate_with_other_rule_fixed():
    seqs = _random_seqs(5)
    theta = threshold_for_rate(seqs, 50.0, 15.0, relative_threshold=2.0)
    rate = segment_rate(seqs, 50.0, global_threshold=theta, relative_threshold=2.0)
    assert abs(rate - 15.0) <= 0.01


@settings(max_examples=150, deadline=None)
@given(
    seqs=st.lists(
        st.lists(grid_values | wide_values, min_size=1, max_size=25), min_size=1, max_size=4
    ),
    rule=st.sampled_from(["global", "relative"]),
    kw=settings_strategy(),
    frac=st.floats(0.0, 1.0),
)
def test_threshold_for_rate_is_nearest_reachable(seqs, rule, kw, frac):
    arrays = [np.array(s) for s in seqs]
    lengths = {"min_len": kw["min_len"], "max_len": kw["max_len"]}
    # every distinct fire set, by brute force over the candidate values
    if rule == "global":
        cands = sorted({float(v) for a in arrays for v in a})
    else:
        cands = sorted({float(d) for a in arrays for d in np.diff(a)})
    probes = [-math.inf] + cands
    key = "global_threshold" if rule == "global" else "relative_threshold"
    rates = [reference_rate(arrays, 50.0, **{key: p}, **lengths) for p in probes]
    lo, hi = min(rates), max(rates)
    assert rates == sorted(rates, reverse=True)  # monotone, as the solver assumes
    target = lo + frac * (hi - lo)
    assume(target > 0)
    theta = threshold_for_rate(arrays, 50.0, target, rule=rule, tol=1e-9, **lengths)
    got = reference_rate(arrays, 50.0, **{key: theta}, **lengths)
    best = min(abs(r - target) for r in rates)
    assert abs(got - target) <= best + 1e-9


def test_threshold_for_rate_unreachable():
    seqs = _random_seqs(3)
    # min_len=3 caps the rate at 50/3 Hz
    with pytest.raises(ValueError, match=r"cannot be reached.*reachable range is \[.*\] Hz"):
        threshold_for_rate(seqs, 50.0, 20.0, min_len=3)
    # max_len=5 floors it at ~10 Hz
    with pytest.raises(ValueError, match="min_len=1, max_len=5: reachable range"):
        threshold_for_rate(seqs, 50.0, 2.0, max_len=5)
    with pytest.raises(ValueError, match="cannot be reached"):
        threshold_for_rate(seqs, 50.0, 60.0, rule="relative")


def test_threshold_for_rate_bad_input():
    seqs = _random_seqs(4, 2)
    with pytest.raises(ValueError, match="rule"):
        threshold_for_rate(seqs, 50.0, 15.0, rule="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_hz"):
        threshold_for_rate(seqs, 50.0, 0.0)
    with pytest.raises(ValueError, match="token_rate_hz"):
        threshold_for_rate(seqs, -50.0, 15.0)
    with pytest.raises(ValueError, match="tol"):
        threshold_for_rate(seqs, 50.0, 15.0, tol=float("nan"))
    with pytest.raises(ValueError, match="what rule='global' solves"):
        threshold_for_rate(seqs, 50.0, 15.0, global_threshold=1.0)
    with pytest.raises(ValueError, match="no tokens"):
        threshold_for_rate([np.zeros(0)], 50.0, 15.0)
    with pytest.raises(ValueError, match=r"entropies\[1\] contains a non-finite"):
        threshold_for_rate([np.ones(3), np.array([1.0, np.inf])], 50.0, 15.0)
    with pytest.raises(ValueError, match="shape"):
        threshold_for_rate(np.ones((2, 3)), 50.0, 15.0)


def test_single_array_is_one_sequence():
    h = _random_seqs(6, 1)[0]
    assert segment_rate(h, 50.0, 2.0) == segment_rate([h], 50.0, 2.0)
    expected = len(reference_boundaries(h, 2.0)) * 50.0 / len(h)
    assert segment_rate(h, 50.0, 2.0) == pytest.approx(expected)


# ------------------------------------------------------------ baselines and helpers


def test_segment_lengths():
    assert segment_lengths(np.array([0, 3, 4]), 9).tolist() == [3, 1, 5]
    assert segment_lengths(np.zeros(0, np.int64), 0).tolist() == []


def test_segments_to_padded():
    tokens = np.array([5, 5, 6, 7, 7, 7])
    padded, mask = segments_to_padded(tokens, np.array([0, 2, 3]), 4)
    assert padded.dtype == np.int64 and mask.dtype == bool
    assert padded.tolist() == [[5, 5, 0, 0], [6, 0, 0, 0], [7, 7, 7, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]]
    # round trip: the real tokens in row order are the sequence
    assert padded[mask].tolist() == tokens.tolist()
    with pytest.raises(ValueError, match=r"segment 2 \(start 3\) has 3 tokens > max_len=2"):
        segments_to_padded(tokens, np.array([0, 2, 3]), 2)
    p0, m0 = segments_to_padded(np.zeros(0, np.int64), np.zeros(0, np.int64), 3)
    assert p0.shape == (0, 3) and m0.shape == (0, 3)


@pytest.mark.parametrize(
    ("starts", "match"),
    [
        ([1, 2], r"starts\[0\] must be 0"),
        ([0, 2, 2], "strictly increasing"),
        ([0, 6], "out of range"),
        ([], "empty"),
        ([0.0, 2.0], "integer dtype"),
        ([[0, 1]], "1-D"),
    ],
)
def test_bad_starts(starts, match):
    with pytest.raises(ValueError, match=match):
        segments_to_padded(np.arange(6), np.array(starts), 4)
    with pytest.raises(ValueError, match=match):
        frames_to_padded(np.zeros((6, 2)), np.array(starts), 4)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("entropy", "kwargs", "match"),
    [
        (np.array([1.0, np.nan, 2.0]), {}, r"non-finite value \(.*nan.*\) at index 1"),
        (np.array([1.0, 2.0, np.inf]), {}, "non-finite value .* at index 2"),
        (np.array([-np.inf]), {"global_threshold": 1.0}, "index 0"),
        (np.array([1, 2, 3]), {}, "float dtype, got int64"),
        (np.array([True]), {}, "float dtype"),
        (np.array([1 + 2j]), {}, "float dtype"),
        (np.zeros((2, 3)), {}, r"1-D array, got shape \(2, 3\)"),
        (np.float64(1.0), {}, "1-D array"),
        (np.ones(3), {"min_len": 0}, "min_len must be >= 1"),
        (np.ones(3), {"min_len": 3, "max_len": 2}, r"min_len \(3\) must be <= max_len \(2\)"),
        (np.ones(3), {"max_len": 0}, "max_len must be >= 1"),
        (np.ones(3), {"max_len": -2}, "max_len must be >= 1"),
        (np.ones(3), {"min_len": 1.5}, "min_len must be an integer"),
        (np.ones(3), {"max_len": True}, "max_len must be an integer"),
        (np.ones(3), {"global_threshold": float("nan")}, "global_threshold must not be NaN"),
        (np.ones(3), {"relative_threshold": np.nan}, "relative_threshold must not be NaN"),
        (np.ones(3), {"global_threshold": "high"}, "global_threshold must be a number"),
    ],
)
def test_value_errors(entropy, kwargs, match):
    with pytest.raises(ValueError, match=match):
        boundaries(entropy, **kwargs)
    # settings fail in the constructor, data in push()
    with pytest.raises(ValueError, match=match):
        Segmenter(**kwargs).push(entropy)


def test_frames_to_padded_cuts_frames_where_tokens_are_cut():
    frames = np.arange(20 * 3, dtype=np.float32).reshape(20, 3) + 1
    starts = np.array([0, 4, 9, 15])
    padded, mask = frames_to_padded(frames, starts, 6)
    index, token_mask = segments_to_padded(np.arange(20), starts, 6)
    assert padded.shape == (4, 6, 3) and padded.dtype == np.float32
    np.testing.assert_array_equal(mask, token_mask)
    np.testing.assert_array_equal(padded[mask], frames[index[mask]])
    assert not padded[~mask].any()
    with pytest.raises(ValueError, match=r"\[T, D\]"):
        frames_to_padded(np.arange(5), np.array([0]), 6)
    with pytest.raises(ValueError, match="max_len"):
        frames_to_padded(frames, starts, 5)
