"""Stage 2: the causal entropy LM over semantic tokens, and the entropies it gives.

``train_lm`` fits next-token prediction on the train split's tokens; ``score_corpus``
writes each split's per-token entropies (nats), the input of the segmenter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgetok.train.batching import bucketed_batches, pad_stack
from edgetok.train.loop import LoopConfig, TrainingRun
from edgetok.train.models import CODEBOOK_SIZE, EntropyLM, EntropyLMConfig
from edgetok.train.tokenset import TokenSet, entropy_path, load_tokens, tokens_path


def token_batch(tokens: TokenSet, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded token ids [B, T] and lengths [B]."""
    ids, lengths = pad_stack([tokens.utterance(i) for i in idx])
    return torch.from_numpy(ids), torch.from_numpy(lengths)


def load_lm(run_dir: Path) -> EntropyLM:
    """The LM of a run (its vocabulary read from the weights), in eval mode."""
    state = torch.load(run_dir / "last.pt", map_location="cpu")["model"]
    lm = EntropyLM(EntropyLMConfig(vocab_size=state["head.weight"].shape[0]))
    lm.load_state_dict(state)
    return lm.eval()


def train_lm(
    corpus_dir: Path,
    run_dir: Path,
    loop: LoopConfig,
    *,
    max_tokens: int = 16_000,
    tokenizer: str = "v1",
) -> None:
    """Train (or resume) the entropy LM in ``run_dir`` on the ``tokenizer`` token set."""
    train = load_tokens(corpus_dir, "train", tokenizer)
    dev = load_tokens(corpus_dir, "dev", tokenizer)
    lm = EntropyLM(EntropyLMConfig(vocab_size=token_vocab(corpus_dir, tokenizer)))
    run = TrainingRun(run_dir, lm, loop)

    def loss_fn(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        ids, lengths = token_batch(train, idx)
        return lm.loss(ids, lengths), {}

    def evaluate() -> dict[str, float]:
        losses, weights = [], []
        for start in range(0, min(len(dev), 512), 32):
            idx = list(range(start, min(start + 32, len(dev))))
            ids, lengths = token_batch(dev, idx)
            losses.append(float(lm.loss(ids, lengths)) * int(lengths.sum()))
            weights.append(int(lengths.sum()))
        nll = sum(losses) / sum(weights)
        return {"dev_nll": nll, "dev_ppl": float(np.exp(nll))}

    batches = bucketed_batches(train.lengths, max_frames=max_tokens, seed=loop.seed + run.step)
    run.train(batches, loss_fn, evaluate=evaluate, desc="entropy-lm")


def token_vocab(corpus_dir: Path, tokenizer: str) -> int:
    """Vocabulary size of a token set (v1 caches predate the record: the k-means K)."""
    meta = tokens_path(corpus_dir, "train", tokenizer).with_suffix(".json")
    return int(json.loads(meta.read_text()).get("vocab_size", CODEBOOK_SIZE))


#: Per-token entropies (nats) of the utterances ``idx`` of a token set, one array each.
EntropyFn = Callable[[TokenSet, list[int]], list[np.ndarray]]


def run_entropy(run_dir: Path) -> EntropyFn:
    """Entropies from an LM run's torch model (batched)."""
    lm = load_lm(run_dir)

    @torch.no_grad()
    def entropy(tokens: TokenSet, idx: list[int]) -> list[np.ndarray]:
        ids, lengths = token_batch(tokens, idx)
        h = EntropyLM.entropy(lm(ids)).numpy()
        return [row[:n] for row, n in zip(h, lengths.tolist(), strict=True)]

    return entropy


def bundle_entropy(bundle_dir: Path) -> EntropyFn:
    """Entropies from a bundle's FP32 ONNX entropy LM in onnxruntime, as the device has them."""
    from edgetok.bundle import load_bundle
    from edgetok.stages import EntropyStage

    stage = EntropyStage(load_bundle(bundle_dir).open("entropy_lm"))

    def entropy(tokens: TokenSet, idx: list[int]) -> list[np.ndarray]:
        return [stage(tokens.utterance(i)) for i in idx]

    return entropy


def score_corpus(
    corpus_dir: Path,
    entropy_of: EntropyFn,
    splits=("train", "dev", "test"),
    tokenizer: str = "v1",
) -> None:
    """Per-token entropies of every split (``entropy_of`` from :func:`run_entropy` or
    :func:`bundle_entropy`), saved beside the token cache (each file appears whole:
    written aside, then renamed, so a waiting stage never reads half)."""
    for split in splits:
        tokens = load_tokens(corpus_dir, split, tokenizer)
        entropy = np.zeros(len(tokens.tokens), dtype=np.float32)
        order = np.argsort(tokens.lengths)
        for start in tqdm(range(0, len(order), 64), desc=f"entropy {split}", unit="batch"):
            idx = order[start : start + 64].tolist()
            for i, h in zip(idx, entropy_of(tokens, idx), strict=True):
                begin = int(tokens.offsets[i])
                entropy[begin : begin + len(h)] = h
        path = entropy_path(corpus_dir, split, tokenizer)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as f:
            np.save(f, entropy)
        partial.replace(path)
