"""edgetok.beam: beam search against exhaustive search and greedy decoding on Markov
scorers (the next character's log-probabilities depend on the last character only)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetok.beam import beam_search, log_softmax

EOS = 0


class MarkovScorer:
    """log P(next | last) from a table [V + 1, V]; row V is the start."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = log_softmax(table)
        self.last = np.array([table.shape[0] - 1])
        self.calls: list[int] = []

    def start(self) -> np.ndarray:
        return self.table[self.last]

    def extend(self, parents: np.ndarray, ids: np.ndarray) -> np.ndarray:
        self.calls.append(len(ids))
        self.last = ids
        return self.table[ids]


def sequence_logp(table: np.ndarray, ids: list[int], ended: bool) -> float:
    """log P(ids, EOS), or log P(ids) for a sequence cut at the length limit."""
    logp = log_softmax(table)
    last, total = table.shape[0] - 1, 0.0
    for i in [*ids, EOS] if ended else ids:
        total += logp[last, i]
        last = i
    return total


def exhaustive(table: np.ndarray, max_chars: int, length_penalty: float) -> list[int]:
    """The best hypothesis over every sequence of up to ``max_chars`` characters."""
    chars = range(1, table.shape[1])
    best, best_score = [], -np.inf
    for n in range(max_chars + 1):
        for ids in itertools.product(chars, repeat=n):
            score = sequence_logp(table, list(ids), n < max_chars) / (n + 1) ** length_penalty
            if score > best_score:
                best, best_score = list(ids), score
    return best


def test_beam_finds_what_greedy_misses() -> None:
    # From the start: "a" 0.6, "b" 0.4. After "a": four characters at 0.25 each. After "b":
    # EOS, almost surely. Greedy takes "a" and then a coin; a beam of 2 finds "b".
    table = np.full((4, 4), -30.0)
    table[3, [1, 2]] = np.log([0.6, 0.4])
    table[1, :] = 0.0
    table[2, EOS] = 0.0
    greedy = beam_search(MarkovScorer(table), eos=EOS, beam=1, max_chars=5)
    assert greedy[0] == 1
    assert beam_search(MarkovScorer(table), eos=EOS, beam=2, max_chars=5) == [2]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    max_chars=st.integers(1, 4),
    length_penalty=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_a_wide_beam_is_exhaustive_search(seed: int, max_chars: int, length_penalty: float) -> None:
    table = np.random.default_rng(seed).normal(0, 2, (4, 3))  # EOS + 2 characters
    found = beam_search(
        MarkovScorer(table), eos=EOS, beam=64, max_chars=max_chars, length_penalty=length_penalty
    )
    assert found == exhaustive(table, max_chars, length_penalty)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), max_chars=st.integers(0, 12))
def test_a_beam_of_one_is_greedy(seed: int, max_chars: int) -> None:
    table = np.random.default_rng(seed).normal(0, 2, (6, 5))
    ids, last = [], 5
    for _ in range(max_chars):
        last = int(np.argmax(table[last]))
        if last == EOS:
            break
        ids.append(last)
    scorer = MarkovScorer(table)
    assert beam_search(scorer, eos=EOS, beam=1, max_chars=max_chars) == ids
    assert set(scorer.calls) <= {1}  # one hypothesis a step


def test_beam_width_bounds_the_hypotheses() -> None:
    scorer = MarkovScorer(np.random.default_rng(3).normal(0, 0.1, (9, 8)))
    beam_search(scorer, eos=EOS, beam=3, max_chars=20)
    assert scorer.calls and max(scorer.calls) <= 3


def test_beam_must_be_positive() -> None:
    with pytest.raises(ValueError, match="beam must be >= 1"):
        beam_search(MarkovScorer(np.zeros((3, 2))), eos=EOS, beam=0, max_chars=3)
