"""Frozen Whisper encoder features of a corpus split, cached as float16 shards.

The v2 tokenizer trains only a small bottleneck on top of the pretrained encoder, so
the encoder runs once per utterance here instead of once per epoch. Audio goes through
the device's numpy frontend (Slaney mel scale, ``WHISPER_FRONTEND``) and
``WhisperInput`` (Whisper's log10 scaling with a fixed floor) before the encoder, exactly
what the exported tokenizer will compute. Shards of ``SHARD`` utterances are written
atomically, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgetok.audio import load_audio
from edgetok.frontend import FrontendConfig, log_mel
from edgetok.manifest import read_rows
from edgetok.train.whisper import WhisperEncoder

__all__ = [
    "WHISPER_FRONTEND",
    "EncoderFeatures",
    "WhisperInput",
    "build_encoder_cache",
    "load_encoder_cache",
]

#: The device frontend recipe of the Whisper tokenizer: Whisper's window, hop and Slaney
#: mel filters (0-8 kHz), without centering so that streaming stays exact.
WHISPER_FRONTEND = FrontendConfig(f_min=0.0, f_max=8000.0, mel_scale="slaney")
#: log10 floor instead of Whisper's per-clip ``max - 8`` (which needs the whole clip):
#: the median clip maximum over corpus speech is about 0.8, so -7.2 matches it there.
LOG10_FLOOR = -7.2
SHARD = 2000
INDEX_FILE = "index.json"


class WhisperInput(nn.Module):
    """Natural-log mel (the frontend's) -> Whisper's input scaling: log10, floor, (x+4)/4."""

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(mel * (1.0 / math.log(10.0)), min=LOG10_FLOOR)
        return (x + 4.0) / 4.0


@dataclass(frozen=True)
class EncoderFeatures:
    """Encoder outputs of a split: utterance i is ``shards[s][offsets[i]:+lengths[i]]``."""

    shards: list[np.ndarray]  # float16 [frames, dim], memory-mapped
    shard_of: np.ndarray  # int64 [N]
    offsets: np.ndarray  # int64 [N]
    lengths: np.ndarray  # int64 [N]
    records: list[dict]

    def __len__(self) -> int:
        return len(self.records)

    def utterance(self, i: int) -> np.ndarray:
        """float32 [T, dim] encoder features of utterance ``i``."""
        shard, start = self.shards[int(self.shard_of[i])], int(self.offsets[i])
        return np.asarray(shard[start : start + int(self.lengths[i])], dtype=np.float32)

    def subset(self, keep: np.ndarray) -> EncoderFeatures:
        return EncoderFeatures(
            self.shards,
            self.shard_of[keep],
            self.offsets[keep],
            self.lengths[keep],
            [self.records[i] for i in keep],
        )


def _encode_shard(
    encoder: WhisperEncoder, paths: list[Path], layers: int | None, max_frames: int
) -> list[np.ndarray]:
    """Encoder features of each file, in batches of similar lengths."""
    scale = WhisperInput()
    mels = []
    for path in paths:
        mels.append(log_mel(load_audio(path, WHISPER_FRONTEND.sample_rate), WHISPER_FRONTEND))
    out: list[np.ndarray | None] = [None] * len(paths)
    order = sorted(range(len(paths)), key=lambda i: mels[i].shape[0])
    batch: list[int] = []

    def flush() -> None:
        if not batch:
            return
        lengths = torch.tensor([mels[i].shape[0] for i in batch])
        padded = torch.zeros(len(batch), int(lengths.max()), mels[batch[0]].shape[1])
        for row, i in enumerate(batch):
            padded[row, : mels[i].shape[0]] = torch.from_numpy(mels[i])
        with torch.no_grad():
            feats = encoder(scale(padded), lengths, layers=layers)
        for row, (i, n) in enumerate(zip(batch, encoder.out_lengths(lengths), strict=True)):
            out[i] = feats[row, : int(n)].numpy().astype(np.float16)
        batch.clear()

    for i in order:
        if batch and (len(batch) + 1) * mels[i].shape[0] > max_frames:
            flush()
        batch.append(i)
    flush()
    return out  # type: ignore[return-value]


def build_encoder_cache(
    corpus_dir: Path,
    split: str,
    out_dir: Path,
    load_encoder: Callable[[], WhisperEncoder],
    *,
    layers: int | None = None,
    hours: float | None = None,
    max_frames: int = 8000,
) -> EncoderFeatures:
    """Encode (or resume encoding) ``corpus_dir/<split>.jsonl`` into ``out_dir``.

    ``hours`` keeps a deterministic random subset of that much audio; ``layers`` stops
    after that many encoder blocks (default: all, with the final layer norm).
    ``load_encoder`` is called only when a shard has to be encoded.
    """
    records = read_rows(corpus_dir / f"{split}.jsonl")
    if hours is not None:
        order = np.random.default_rng(0).permutation(len(records))
        durations = np.array([records[i]["duration"] for i in order])
        records = [records[i] for i in np.sort(order[np.cumsum(durations) <= hours * 3600])]
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = {"split": split, "utterances": len(records), "hours": hours, "layers": layers}
    index_path = out_dir / INDEX_FILE
    if index_path.exists() and json.loads(index_path.read_text())["plan"] == plan:
        return load_encoder_cache(out_dir)
    encoder: WhisperEncoder | None = None
    shards = range(0, len(records), SHARD)
    bar = tqdm(total=len(records), desc=f"whisper encoder {split}", unit="utt")
    lengths: list[int] = []
    for number, start in enumerate(shards):
        chunk = records[start : start + SHARD]
        shard_path = out_dir / f"shard{number:04d}.npy"
        lengths_path = out_dir / f"shard{number:04d}.lengths.npy"
        if not (shard_path.exists() and lengths_path.exists()):
            paths = [corpus_dir / r["path"] for r in chunk]
            encoder = encoder or load_encoder().eval()
            feats = _encode_shard(encoder, paths, layers, max_frames)
            tmp = out_dir / f"shard{number:04d}.tmp.npy"
            np.save(tmp, np.concatenate(feats))
            np.save(lengths_path, np.array([f.shape[0] for f in feats], np.int64))
            tmp.replace(shard_path)
        lengths.extend(np.load(lengths_path).tolist())
        bar.update(len(chunk))
    bar.close()
    index = {"plan": plan, "lengths": lengths, "records": records}
    tmp_index = out_dir / (INDEX_FILE + ".tmp")
    tmp_index.write_text(json.dumps(index))
    tmp_index.replace(index_path)
    return load_encoder_cache(out_dir)


def load_encoder_cache(out_dir: Path) -> EncoderFeatures:
    """Open a cache written by :func:`build_encoder_cache`."""
    index = json.loads((out_dir / INDEX_FILE).read_text())
    lengths = np.asarray(index["lengths"], dtype=np.int64)
    count = len(lengths)
    shard_of = np.arange(count, dtype=np.int64) // SHARD
    offsets = np.zeros(count, dtype=np.int64)
    shards = []
    for number in range(int(shard_of[-1]) + 1 if count else 0):
        shards.append(np.load(out_dir / f"shard{number:04d}.npy", mmap_mode="r"))
        rows = shard_of == number
        offsets[rows] = np.concatenate([[0], np.cumsum(lengths[rows])[:-1]])
    return EncoderFeatures(shards, shard_of, offsets, lengths, index["records"])
