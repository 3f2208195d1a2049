"""Wire v2 (issue 19): teach a ``TokenReader`` to stand in for the encoder frames.

The device's token ids are the cheapest thing it can send (10 bits each before entropy
coding), and exact. ``TokenWhisper`` puts a ``TokenReader`` in front of a trained
``whisper-decoder`` run, whose aggregator and decoder stay frozen: the server keeps one
decoder for float frames, codes and tokens. The reader learns from three losses, all on
the cached encoder features of the same utterances: the decoder's text cross-entropy
through the rebuilt frames (what matters), and two relative squared errors that keep it
near what the frozen models know (the rebuilt frames against the real ones, and the
segment vectors the aggregator makes of each).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetok.evaluate import normalize
from edgetok.pretrained import whisper_dir
from edgetok.segment import segments_to_padded
from edgetok.train.batching import bucketed_batches
from edgetok.train.fit_decoder import COMPRESSION_FILE, error_rates
from edgetok.train.fit_semantic import DEFAULT_TRAIN_HOURS, ENCODER, load_semantic, whisper_features
from edgetok.train.fit_whisper_decoder import (
    BpeText,
    SegmentedFeatures,
    SegmentWhisper,
    load_whisper_decoder,
)
from edgetok.train.loop import LoopConfig, TrainingRun
from edgetok.train.token_reader import TokenReader, TokenReaderConfig
from edgetok.train.tokenset import load_tokens

__all__ = ["TokenWhisper", "load_token_reader", "train_token_reader"]

#: Weights of the two squared errors next to the text loss.
FRAME_WEIGHT = 0.5
VECTOR_WEIGHT = 1.0
READER_FILE = "reader.json"


def _cut(
    frames: torch.Tensor, starts: np.ndarray, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``segment.frames_to_padded`` in torch (gradients kept): [T, D] -> [S, L, D], mask."""
    index, mask = segments_to_padded(np.arange(frames.shape[0]), starts, max_len)
    mask_t = torch.from_numpy(mask)
    return frames[torch.from_numpy(index)] * mask_t[..., None], mask_t


class TokenWhisper(nn.Module):
    """TokenReader -> the frozen aggregator and decoder of a whisper-decoder run."""

    def __init__(self, reader: TokenReader, whisper: SegmentWhisper) -> None:
        super().__init__()
        self.reader = reader
        self.whisper = whisper
        for p in whisper.parameters():
            p.requires_grad_(False)
        whisper.eval()

    def train(self, mode: bool = True) -> TokenWhisper:
        super().train(mode)
        self.whisper.eval()  # frozen: no dropout either
        return self

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.reader.parameters()), "lr": lr}]

    def frames(self, ids: list[np.ndarray]) -> list[torch.Tensor]:
        """Rebuilt encoder frames [T_i, D] of each utterance's token ids [T_i]."""
        lengths = torch.tensor([len(i) for i in ids])
        padded = nn.utils.rnn.pad_sequence(
            [torch.from_numpy(i.astype(np.int64)) for i in ids], True
        )
        out = self.reader(padded, lengths)
        return [out[b, :n] for b, n in enumerate(lengths.tolist())]

    def vectors(self, frames: list[torch.Tensor], starts: list[np.ndarray]) -> torch.Tensor:
        """The aggregator's segment vectors [sum S_i, D] of each utterance's frames."""
        max_len = self.whisper.aggregator.cfg.max_len
        cut = [_cut(f, s, max_len) for f, s in zip(frames, starts, strict=True)]
        return self.whisper.aggregator(
            torch.cat([c for c, _ in cut]), torch.cat([m for _, m in cut])
        )

    @staticmethod
    def context(
        vectors: torch.Tensor, starts: list[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        counts = [len(s) for s in starts]
        rows = list(torch.split(vectors, counts))
        return nn.utils.rnn.pad_sequence(rows, batch_first=True), torch.tensor(counts)

    @torch.no_grad()
    def greedy(
        self,
        ids: list[np.ndarray],
        starts: list[np.ndarray],
        prompt: list[int],
        eot: int,
        max_tokens: int,
    ) -> list[list[int]]:
        context, counts = self.context(self.vectors(self.frames(ids), starts), starts)
        return self.whisper.greedy_context(context, counts, prompt, eot, max_tokens)


def _relative(error: torch.Tensor, scale: float) -> torch.Tensor:
    return error.pow(2).mean() / scale


def train_token_reader(
    corpus_dir: Path,
    run_dir: Path,
    loop: LoopConfig,
    *,
    decoder_run: Path,
    semantic_run: Path,
    config: TokenReaderConfig | None = None,
    max_positions: int = 1_000,
    train_hours: float | None = DEFAULT_TRAIN_HOURS,
    dev_utterances: int = 120,
) -> TokenWhisper:
    """Train (or resume) a TokenReader in front of ``decoder_run``'s frozen models, cut
    where that run cuts; its first blocks start from ``semantic_run``'s post-net."""
    config = config or TokenReaderConfig()
    whisper, compression = load_whisper_decoder(decoder_run)
    bottleneck = load_semantic(semantic_run)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / COMPRESSION_FILE).write_text(json.dumps(compression.to_dict(), indent=2))
    (run_dir / READER_FILE).write_text(
        json.dumps({"decoder_run": decoder_run.name, "config": config.__dict__}, indent=2)
    )
    reader = TokenReader(bottleneck.fsq.codebook(), config)
    reader.warm_start(bottleneck)
    model = TokenWhisper(reader, whisper)
    bpe = BpeText(whisper_dir(ENCODER))

    def split(name: str, hours: float | None) -> tuple[SegmentedFeatures, list[np.ndarray]]:
        tokens = load_tokens(corpus_dir, "train" if name == "train" else name, "v2")
        features = whisper_features(corpus_dir, name, hours, threads=loop.threads)
        cut = SegmentedFeatures.build(features, tokens, compression, bpe.target)
        return cut, [tokens.utterance(i) for i in range(len(tokens))]

    train, train_ids = split("train", train_hours)
    dev, dev_ids = split("dev", None)
    sample = np.concatenate([train.features.utterance(i) for i in range(500)]).astype(np.float32)
    reader.set_frame_stats(sample)
    mean = torch.from_numpy(sample.mean(0))
    scale = float(((sample - sample.mean(0)) ** 2).mean())
    run = TrainingRun(run_dir, model, loop)
    dev_idx = list(range(min(dev_utterances, len(dev.texts))))

    def true_frames(cut: SegmentedFeatures, i: int) -> torch.Tensor:
        return torch.from_numpy(cut.features.utterance(i).astype(np.float32))

    def evaluate() -> dict[str, float]:
        hyps, err, total = [], 0.0, 0.0
        for at in range(0, len(dev_idx), 16):
            idx = dev_idx[at : at + 16]
            ids, starts = [dev_ids[i] for i in idx], [dev.starts[i] for i in idx]
            out = model.greedy(ids, starts, bpe.prompt, bpe.eot, 96)
            hyps += [normalize(bpe.decode(o)) for o in out]
            for i, f in zip(idx, model.frames(ids), strict=True):
                real = true_frames(dev, i)
                err += float((f - real).pow(2).sum())
                total += float((real - mean).pow(2).sum())
        rates = error_rates([dev.texts[i] for i in dev_idx], hyps)
        return {**{f"dev_{k}": v for k, v in rates.items()}, "dev_frame_r2": 1.0 - err / total}

    def loss(idx: list[int]) -> tuple[torch.Tensor, dict]:
        starts = [train.starts[i] for i in idx]
        rebuilt = model.frames([train_ids[i] for i in idx])
        real = [true_frames(train, i) for i in idx]
        frame_loss = _relative(torch.cat(rebuilt) - torch.cat(real), scale)
        vectors = model.vectors(rebuilt, starts)
        with torch.no_grad():
            target = model.vectors(real, starts)
        vector_loss = _relative(vectors - target, scale)
        context, counts = model.context(vectors, starts)
        text_loss = model.whisper.text_loss(context, counts, [train.targets[i] for i in idx])
        total = text_loss + FRAME_WEIGHT * frame_loss + VECTOR_WEIGHT * vector_loss
        return total, {
            "text": text_loss.item(),
            "frame": frame_loss.item(),
            "vector": vector_loss.item(),
        }

    batches = bucketed_batches(train.lengths(), max_frames=max_positions, seed=loop.seed + run.step)
    run.train(batches, loss, evaluate=evaluate, desc="token-reader")
    return model


def load_token_reader(run_dir: Path, decoder_runs: Path) -> TokenWhisper:
    """A token-reader run's model (with the decoder run it was trained for), eval mode."""
    info = json.loads((run_dir / READER_FILE).read_text())
    whisper, _ = load_whisper_decoder(decoder_runs / info["decoder_run"])
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]
    grid = state["reader.grid"].numpy()
    model = TokenWhisper(TokenReader(grid, TokenReaderConfig(**info["config"])), whisper)
    model.load_state_dict(state)
    return model.eval()
