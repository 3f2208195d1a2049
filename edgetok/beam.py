"""Beam search over a character decoder, in numpy (greedy decoding is a beam of 1).

The decoder is seen through a ``Scorer``: the log-probabilities of the first character,
then, after hypotheses are extended, those of each hypothesis' next character.
Hypotheses end at EOS, or are cut at ``max_chars`` characters (scored without an EOS,
so no run is spent on it). Finished hypotheses are ranked by their summed
log-probability divided by ``(characters + 1) ** length_penalty``, so 0 ranks by total
probability and 1 by mean log-probability per step. The search stops once ``beam``
hypotheses have finished.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["DEFAULT_BEAM", "DEFAULT_LENGTH_PENALTY", "Scorer", "beam_search", "log_softmax"]

#: The beam width and length penalty edgetok decodes with unless told otherwise, chosen on
#: 60 dev utterances (first-pass default bundle, WER/CER): greedy 100.8/61.0 %; beam 4
#: with penalty 0.5 87.8/55.8, 1.0 88.2/55.5; beam 8 with 0, 0.5, 1.0 84.6/55.4,
#: 85.0/55.5, 85.6/56.2 at twice beam 4's decoding time. A beam of 1 is greedy decoding.
DEFAULT_BEAM = 4
DEFAULT_LENGTH_PENALTY = 0.5


class Scorer(Protocol):
    def start(self) -> np.ndarray:
        """Log-probabilities [1, V] of the first character."""
        ...

    def extend(self, parents: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Hypothesis i is now hypothesis ``parents[i]`` followed by ``ids[i]``; the
        log-probabilities [len(ids), V] of each one's next character."""
        ...


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _normalised(logp: float, length: int, length_penalty: float) -> float:
    """The rank of a hypothesis of ``length`` characters and summed log-probability ``logp``."""
    return float(logp) / (length + 1) ** length_penalty


def beam_search(
    scorer: Scorer, *, eos: int, beam: int, max_chars: int, length_penalty: float = 1.0
) -> list[int]:
    """The best hypothesis (ids without EOS) of a beam search of width ``beam``."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if max_chars == 0:
        return []
    logp = scorer.start()
    hypotheses: list[list[int]] = [[]]
    scores = np.zeros(1)
    finished: list[tuple[float, list[int]]] = []
    for length in range(max_chars):  # characters in each live hypothesis
        total = scores[:, None] + logp
        parents, ids, kept = [], [], []
        for flat in np.argsort(-total, axis=None, kind="stable"):
            row, char = divmod(int(flat), total.shape[1])
            if char == eos:
                finished.append(
                    (_normalised(total[row, char], length, length_penalty), hypotheses[row])
                )
            else:
                parents.append(row)
                ids.append(char)
                kept.append(total[row, char])
            if len(ids) == beam or len(finished) >= beam:
                break
        if len(finished) >= beam or not ids:
            break
        hypotheses = [[*hypotheses[p], i] for p, i in zip(parents, ids, strict=True)]
        scores = np.array(kept)
        if length + 1 == max_chars:  # the longest allowed: they end here, with no EOS
            finished += [
                (_normalised(score, max_chars, length_penalty), hypothesis)
                for score, hypothesis in zip(scores, hypotheses, strict=True)
            ]
            break
        logp = scorer.extend(np.array(parents), np.array(ids, dtype=np.int64))
    return max(finished, key=lambda item: item[0])[1]
