"""Cached token ids of a corpus split, with their texts and voices."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetok.train.paths import cache_dir

#: The token sets: "v1" (the from-scratch tokenizer and k-means codebook) and "v2" (the
#: FSQ bottleneck on Whisper tiny.en, ``fit_semantic``).
TOKENIZERS = ("v1", "v2")


def _token_dir(corpus_dir: Path, tokenizer: str) -> Path:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown token set {tokenizer!r}; known: {TOKENIZERS}")
    name = corpus_dir.name if tokenizer == "v1" else f"{corpus_dir.name}-{tokenizer}"
    return cache_dir() / "tokens" / name


def tokens_path(corpus_dir: Path, split: str, tokenizer: str = "v1") -> Path:
    """Token cache of one split (written by ``save_tokens``)."""
    return _token_dir(corpus_dir, tokenizer) / f"{split}.npz"


def entropy_path(corpus_dir: Path, split: str, tokenizer: str = "v1") -> Path:
    """Entropy cache of one split, aligned with the token cache (``fit_lm.score_corpus``)."""
    return _token_dir(corpus_dir, tokenizer) / f"{split}.entropy.npy"


def save_tokens(path: Path, ids: list[np.ndarray], records: list[dict], meta: dict) -> None:
    """Write one split's token ids (in manifest order) and ``meta`` (``.json`` beside it)."""
    lengths = np.array([len(t) for t in ids], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez(
        partial,
        tokens=np.concatenate([t.astype(np.int16) for t in ids]),
        offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        lengths=lengths,
        ids=np.array([r["id"] for r in records]),
        texts=np.array([r["text"] for r in records]),
        voices=np.array([r["voice"] for r in records]),
    )
    partial.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta))


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


def load_tokens(corpus_dir: Path, split: str, tokenizer: str = "v1") -> TokenSet:
    """The split's token cache, with its entropies when they exist."""
    data = np.load(tokens_path(corpus_dir, split, tokenizer))
    ent = entropy_path(corpus_dir, split, tokenizer)
    return TokenSet(
        tokens=data["tokens"],
        offsets=data["offsets"],
        lengths=data["lengths"],
        texts=data["texts"].tolist(),
        voices=data["voices"].tolist(),
        entropy=np.load(ent) if ent.exists() else None,
    )
