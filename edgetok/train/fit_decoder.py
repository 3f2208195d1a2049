"""Stage 3: aggregator + decoder, trained jointly for ASR over compressed token sequences.

The same code trains the three systems the paper compares, differing only in the
``Compression``: entropy segments (threshold solved for a target rate), fixed-rate
pooling at the same rate, and dense 50 Hz tokens (segments of one token).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetok.compress import Compression
from edgetok.segment import segment_rate, segments_to_padded, threshold_for_rate
from edgetok.train.batching import bucketed_batches, pad_stack
from edgetok.train.loop import LoopConfig, TrainingRun
from edgetok.train.models import Aggregator, Decoder, greedy_decode
from edgetok.train.text import BOS, EOS, PAD, decode_ids, encode_text
from edgetok.train.tokenset import TokenSet, load_tokens

TOKEN_RATE_HZ = 50.0
COMPRESSION_FILE = "compression.json"


class SpeechToText(nn.Module):
    """Aggregator and decoder as one module, so one optimizer and checkpoint hold both."""

    def __init__(self) -> None:
        super().__init__()
        self.aggregator = Aggregator()
        self.decoder = Decoder()


def embed_codebook(aggregator: Aggregator, codebook: np.ndarray, std: float = 0.1) -> None:
    """Start the aggregator's token embeddings at the codebook centroids (standardised per
    dimension to ``std``): tokens begin where the tokenizer put them, near ones alike,
    instead of at random, which shortens the decoder's search for the alignment."""
    weight = aggregator.embed.weight
    if codebook.shape != tuple(weight.shape):
        raise ValueError(f"codebook {codebook.shape} does not fit embeddings {tuple(weight.shape)}")
    centred = codebook - codebook.mean(axis=0)
    scaled = centred / (centred.std(axis=0) + 1e-6) * std
    with torch.no_grad():
        weight.copy_(torch.from_numpy(scaled.astype(np.float32)))


def solve_compression(
    train: TokenSet, mode: str, *, target_hz: float, min_len: int, max_len: int
) -> Compression:
    """The compression of ``mode``; entropy thresholds and fixed rates from the train split."""
    if mode == "dense":
        return Compression(mode="dense", max_len=1)
    entropies = train.entropies()
    theta = threshold_for_rate(
        entropies, TOKEN_RATE_HZ, target_hz, rule="global", min_len=min_len, max_len=max_len
    )
    if mode == "entropy":
        return Compression(
            mode="entropy",
            max_len=max_len,
            global_threshold=theta,
            min_len=min_len,
            target_hz=target_hz,
        )
    # Fixed-rate pooling at the rate the entropy segmenter really reaches.
    rate = segment_rate(
        entropies, TOKEN_RATE_HZ, global_threshold=theta, min_len=min_len, max_len=max_len
    )
    return Compression(
        mode="fixed",
        max_len=int(np.ceil(TOKEN_RATE_HZ / rate)),
        rate_hz=float(rate),
        target_hz=target_hz,
    )


def _character_target(text: str) -> np.ndarray:
    return np.array([BOS, *encode_text(text), EOS], dtype=np.int64)


def run_compression(
    run_dir: Path, train: TokenSet, mode: str, *, target_hz: float, min_len: int, max_len: int
) -> Compression:
    """The run's compression: the one it recorded, else solved on ``train`` and recorded
    (a resumed run keeps the rule it started with)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / COMPRESSION_FILE
    if path.exists():
        return Compression.from_dict(json.loads(path.read_text()))
    compression = solve_compression(
        train, mode, target_hz=target_hz, min_len=min_len, max_len=max_len
    )
    path.write_text(json.dumps(compression.to_dict(), indent=2))
    return compression


@dataclass
class SegmentedSet:
    """Every utterance's padded segments [S_i, L] + masks, and its target ids."""

    segments: list[np.ndarray]
    masks: list[np.ndarray]
    targets: list[np.ndarray]
    texts: list[str]
    voices: list[str]

    @classmethod
    def build(
        cls,
        tokens: TokenSet,
        compression: Compression,
        encode: Callable[[str], np.ndarray] | None = None,
    ) -> SegmentedSet:
        """Segments of every utterance and its targets: ``encode(text)`` (default: BOS,
        characters, EOS)."""
        segments, masks = [], []
        for i in range(len(tokens)):
            ids = tokens.utterance(i)
            entropy = tokens.utterance_entropy(i) if compression.mode == "entropy" else None
            padded, mask = segments_to_padded(
                ids, compression.starts(ids, entropy), compression.max_len
            )
            segments.append(padded.astype(np.int16))
            masks.append(mask)
        encode = encode or _character_target
        targets = [encode(t) for t in tokens.texts]
        return cls(segments, masks, targets, list(tokens.texts), list(tokens.voices))

    def lengths(self) -> np.ndarray:
        """Decoder positions per utterance (prefix + text)."""
        return np.array([len(s) + len(t) for s, t in zip(self.segments, self.targets, strict=True)])

    def segments_per_second(self) -> float:
        frames = sum(int(m.sum()) for m in self.masks)
        return sum(len(s) for s in self.segments) * TOKEN_RATE_HZ / max(1, frames)


def prefix_batch(
    aggregator: Aggregator, data: SegmentedSet, idx: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment vectors of utterances ``idx``: prefix [B, S_max, D] and lengths [B]."""
    counts = [len(data.segments[i]) for i in idx]
    tokens = torch.from_numpy(np.concatenate([data.segments[i] for i in idx]).astype(np.int64))
    mask = torch.from_numpy(np.concatenate([data.masks[i] for i in idx]))
    vectors = aggregator(tokens, mask)
    rows = torch.split(vectors, counts)
    prefix = nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
    return prefix, torch.tensor(counts)


def transcribe(
    model: SpeechToText, data: SegmentedSet, idx: list[int], batch: int = 32
) -> list[str]:
    """Greedy transcripts of utterances ``idx``."""
    out = []
    for start in range(0, len(idx), batch):
        part = idx[start : start + batch]
        prefix, lengths = prefix_batch(model.aggregator, data, part)
        out += [decode_ids(ids) for ids in greedy_decode(model.decoder, prefix, lengths)]
    return out


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus WER and CER."""
    import jiwer

    hyps = [h if h.strip() else "<empty>" for h in hyps]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def load_speech_to_text(run_dir: Path) -> tuple[SpeechToText, Compression]:
    """The model and compression of a decoder run, in eval mode."""
    model = SpeechToText()
    model.load_state_dict(torch.load(run_dir / "last.pt", map_location="cpu")["model"])
    compression = Compression.from_dict(json.loads((run_dir / COMPRESSION_FILE).read_text()))
    return model.eval(), compression


def train_decoder(
    corpus_dir: Path,
    run_dir: Path,
    loop: LoopConfig,
    *,
    mode: str = "entropy",
    target_hz: float = 15.0,
    min_len: int = 1,
    max_len: int = 8,
    max_positions: int = 8_000,
    dev_utterances: int = 200,
    codebook: np.ndarray | None = None,
) -> None:
    """Train (or resume) aggregator + decoder over ``mode`` segments in ``run_dir``;
    a fresh run starts its token embeddings at ``codebook`` when given."""
    train_tokens = load_tokens(corpus_dir, "train")
    compression = run_compression(
        run_dir, train_tokens, mode, target_hz=target_hz, min_len=min_len, max_len=max_len
    )
    train = SegmentedSet.build(train_tokens, compression)
    dev = SegmentedSet.build(load_tokens(corpus_dir, "dev"), compression)
    print(f"{mode}: {train.segments_per_second():.2f} segments/s on train, {compression}")

    model = SpeechToText()
    if codebook is not None:
        embed_codebook(model.aggregator, codebook)
    run = TrainingRun(run_dir, model, loop)  # a checkpoint, when there is one, wins

    def loss_fn(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        prefix, lengths = prefix_batch(model.aggregator, train, idx)
        text, _ = pad_stack([train.targets[i] for i in idx], pad_value=PAD)
        return model.decoder.loss(prefix, torch.from_numpy(text), lengths), {}

    dev_idx = list(range(min(dev_utterances, len(dev.texts))))

    def evaluate() -> dict[str, float]:
        rates = error_rates([dev.texts[i] for i in dev_idx], transcribe(model, dev, dev_idx))
        return {f"dev_{k}": v for k, v in rates.items()}

    batches = bucketed_batches(train.lengths(), max_frames=max_positions, seed=loop.seed + run.step)
    run.train(batches, loss_fn, evaluate=evaluate, desc=f"decoder-{mode}")
