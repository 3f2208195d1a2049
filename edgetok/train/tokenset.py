"""Cached token ids of a corpus split, with their texts and voices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetok.train.paths import cache_dir


def tokens_path(corpus_dir: Path, split: str) -> Path:
    """Token cache of one split (written by ``fit_tokenizer.tokenize_corpus``)."""
    return cache_dir() / "tokens" / corpus_dir.name / f"{split}.npz"


def entropy_path(corpus_dir: Path, split: str) -> Path:
    """Entropy cache of one split, aligned with the token cache (``fit_lm.score_corpus``)."""
    return cache_dir() / "tokens" / corpus_dir.name / f"{split}.entropy.npy"


@dataclass(frozen=True)
class TokenSet:
    """Utterance ``i`` is ``tokens[offsets[i] : offsets[i] + lengths[i]]``."""

    tokens: np.ndarray  # int16 [total]
    offsets: np.ndarray  # int64 [N]
    lengths: np.ndarray  # int64 [N]
    texts: list[str]
    voices: list[str]
    entropy: np.ndarray | None  # float32 [total], once the entropy LM has scored the split

    def __len__(self) -> int:
        return len(self.texts)

    def utterance(self, i: int) -> np.ndarray:
        """int64 token ids of utterance ``i``."""
        start = int(self.offsets[i])
        return self.tokens[start : start + int(self.lengths[i])].astype(np.int64)

    def utterance_entropy(self, i: int) -> np.ndarray:
        """float32 entropies of utterance ``i`` (needs a scored split)."""
        if self.entropy is None:
            raise ValueError("this split has not been scored by the entropy LM yet")
        start = int(self.offsets[i])
        return self.entropy[start : start + int(self.lengths[i])]

    def entropies(self) -> list[np.ndarray]:
        """Every utterance's entropies."""
        return [self.utterance_entropy(i) for i in range(len(self))]


def load_tokens(corpus_dir: Path, split: str) -> TokenSet:
    """The split's token cache, with its entropies when they exist."""
    data = np.load(tokens_path(corpus_dir, split))
    ent = entropy_path(corpus_dir, split)
    return TokenSet(
        tokens=data["tokens"],
        offsets=data["offsets"],
        lengths=data["lengths"],
        texts=data["texts"].tolist(),
        voices=data["voices"].tolist(),
        entropy=np.load(ent) if ent.exists() else None,
    )
