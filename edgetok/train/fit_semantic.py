"""Stage 1 of v2: Whisper encoder features (cached) -> FSQ bottleneck trained with CTC.

``whisper_feature_dir`` names the cache of a split; ``train_semantic`` trains (or resumes)
the ``SemanticBottleneck`` on it and reports, on the dev split, the greedy CTC character
error rate through the quantized tokens and how many of the codes are in use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgetok.pretrained import whisper_dir
from edgetok.train.batching import bucketed_batches, pad_stack
from edgetok.train.fit_tokenizer import character_error_rate, ctc_greedy
from edgetok.train.loop import LoopConfig, TrainingRun
from edgetok.train.paths import cache_dir
from edgetok.train.semantic import BottleneckConfig, SemanticBottleneck, bypass_schedule
from edgetok.train.text import decode_ids, encode_text
from edgetok.train.whisper import load_whisper
from edgetok.train.whisper_features import EncoderFeatures, build_encoder_cache

__all__ = ["whisper_features", "train_semantic"]

#: The pretrained model under the v2 tokenizer.
ENCODER = "tiny.en"
#: Train hours encoded for the bottleneck (the decoder stage encodes the rest later).
DEFAULT_TRAIN_HOURS = 12.0


def whisper_feature_dir(corpus_dir: Path, split: str, hours: float | None) -> Path:
    suffix = "" if hours is None else f"-{hours:g}h"
    return cache_dir() / "whisper-features" / ENCODER / corpus_dir.name / f"{split}{suffix}"


def whisper_features(
    corpus_dir: Path, split: str, hours: float | None = None, threads: int = 2
) -> EncoderFeatures:
    """The split's cached encoder features (built on first use, resumable)."""
    torch.set_num_threads(threads)

    def encoder() -> torch.nn.Module:
        return load_whisper(whisper_dir(ENCODER) / "model.bin")[0]

    out = whisper_feature_dir(corpus_dir, split, hours)
    return build_encoder_cache(corpus_dir, split, out, encoder, hours=hours)


def feature_batch(feats: EncoderFeatures, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded features [B, T, D] and lengths [B]."""
    x, lengths = pad_stack([feats.utterance(i) for i in idx])
    return torch.from_numpy(x), torch.from_numpy(lengths)


def _time_mask(x: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Zero two random spans of up to 10 frames per utterance (SpecAugment in time)."""
    x = x.clone()
    for row, n in enumerate(lengths.tolist()):
        for _ in range(2):
            width = int(torch.randint(0, 11, (1,), generator=gen))
            start = int(torch.randint(0, max(1, n - width), (1,), generator=gen))
            x[row, start : start + width] = 0
    return x


def train_semantic(
    corpus_dir: Path,
    run_dir: Path,
    loop: LoopConfig,
    *,
    cfg: BottleneckConfig | None = None,
    train_hours: float = DEFAULT_TRAIN_HOURS,
    max_frames: int = 6000,
    dev_utterances: int = 300,
    bypass_hold: int = 100,
) -> SemanticBottleneck:
    """Train (or resume) the FSQ bottleneck with CTC on frozen Whisper features."""
    dev = whisper_features(corpus_dir, "dev", threads=loop.threads)
    train = whisper_features(corpus_dir, "train", train_hours, threads=loop.threads)
    model = SemanticBottleneck(cfg or BottleneckConfig())
    run = TrainingRun(run_dir, model, loop)
    targets = [np.asarray(encode_text(r["text"]), dtype=np.int64) for r in train.records]
    gen = torch.Generator().manual_seed(loop.seed + run.step)

    def loss_fn(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        x, lengths = feature_batch(train, idx)
        text, text_lengths = pad_stack([targets[i] for i in idx])
        bypass = bypass_schedule(run.step, bypass_hold)
        loss, _ = model.ctc_loss(
            _time_mask(x, lengths, gen),
            lengths,
            torch.from_numpy(text),
            torch.from_numpy(text_lengths),
            bypass,
        )
        return loss, {"frames": float(lengths.sum()), "bypass": bypass}

    dev_idx = list(range(min(dev_utterances, len(dev))))

    def evaluate() -> dict[str, float]:
        refs, hyps, used = [], [], []
        for start in range(0, len(dev_idx), 32):
            idx = dev_idx[start : start + 32]
            x, lengths = feature_batch(dev, idx)
            out = model(x, lengths)
            hyps += [decode_ids(h) for h in ctc_greedy(out["ctc_logits"], lengths)]
            refs += [dev.records[i]["text"] for i in idx]
            used += [ids[:n] for ids, n in zip(out["ids"], lengths.tolist(), strict=True)]
        counts = np.bincount(torch.cat(used).numpy(), minlength=model.fsq.size)
        p = counts[counts > 0] / counts.sum()
        return {
            "dev_cer": character_error_rate(refs, hyps),
            "codes_used": float((counts > 0).sum()),
            "code_perplexity": float(np.exp(-(p * np.log(p)).sum())),
        }

    batches = bucketed_batches(train.lengths, max_frames=max_frames, seed=loop.seed + run.step)
    run.train(batches, loss_fn, evaluate=evaluate, desc="semantic tokenizer")
    return model


def load_semantic(run_dir: Path) -> SemanticBottleneck:
    """The bottleneck of a semantic run, in eval mode."""
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    model = SemanticBottleneck(BottleneckConfig())
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def probe_manifest(run_dir: Path, manifest: Path, threads: int = 2) -> dict[str, dict]:
    """Greedy CTC transcripts through the quantized tokens of ``run_dir`` on any manifest
    (audio files, e.g. the human set): WER and CER per voice and overall. A probe of what
    the tokens keep, not the kit's transcript (that is the decoder's)."""
    import jiwer

    from edgetok.audio import load_audio
    from edgetok.evaluate import normalize, read_manifest
    from edgetok.frontend import log_mel
    from edgetok.train.whisper_features import WHISPER_FRONTEND, WhisperInput

    torch.set_num_threads(threads)
    encoder, _ = load_whisper(whisper_dir(ENCODER) / "model.bin")
    model, scale = load_semantic(run_dir), WhisperInput()
    pairs: dict[str, tuple[list[str], list[str]]] = {}
    for utt in read_manifest(manifest):
        mel = log_mel(load_audio(utt.path, WHISPER_FRONTEND.sample_rate), WHISPER_FRONTEND)
        feats = encoder(scale(torch.from_numpy(mel)[None]))
        out = model(feats, torch.tensor([feats.shape[1]]))
        hyp = decode_ids(ctc_greedy(out["ctc_logits"], torch.tensor([feats.shape[1]]))[0])
        for key in (utt.voice, "all"):
            refs, hyps = pairs.setdefault(key, ([], []))
            refs.append(normalize(utt.text))
            hyps.append(normalize(hyp))
    return {
        key: {
            "utterances": len(refs),
            "wer": float(jiwer.wer(refs, hyps)),
            "cer": float(jiwer.cer(refs, hyps)),
        }
        for key, (refs, hyps) in pairs.items()
    }


@torch.no_grad()
def tokenize_semantic_corpus(
    corpus_dir: Path,
    run_dir: Path,
    splits: tuple[str, ...] = ("train", "dev", "test"),
    *,
    train_hours: float | None = DEFAULT_TRAIN_HOURS,
    threads: int = 2,
) -> None:
    """The v2 token ids of every split, from the cached encoder features and the run's
    bottleneck (the device computes the same: bounded codes -> nearest grid point)."""
    from tqdm import tqdm

    from edgetok.codebook import nearest_centroid
    from edgetok.train.tokenset import save_tokens, tokens_path

    model = load_semantic(run_dir)
    codebook = model.fsq.codebook()
    for split in splits:
        feats = whisper_features(
            corpus_dir, split, train_hours if split == "train" else None, threads
        )
        order = np.argsort(feats.lengths)
        ids: list[np.ndarray] = [np.empty(0, np.int16)] * len(feats)
        for start in tqdm(range(0, len(order), 32), desc=f"tokenize {split}", unit="batch"):
            idx = order[start : start + 32].tolist()
            x, lengths = feature_batch(feats, idx)
            mask = (torch.arange(x.shape[1])[None] < lengths[:, None])[:, None, None]
            bounded = model.bounded(x, mask).numpy()
            for row, i in enumerate(idx):
                ids[i] = nearest_centroid(bounded[row, : int(lengths[row])], codebook)
        meta = {"semantic_run": str(run_dir), "vocab_size": model.fsq.size, "encoder": ENCODER}
        save_tokens(tokens_path(corpus_dir, split, "v2"), ids, feats.records, meta)


class SemanticTokenizerExport(torch.nn.Module):
    """The exported v2 tokenizer: frontend log-mel [B, T, 80] -> Whisper scaling -> frozen
    encoder -> bottleneck -> bounded codes [B, ceil(T / 2), d] (``features``), which the
    device rounds to the grid with the bundle's codebook (``FSQ.codebook``), and the
    encoder's frames [B, ceil(T / 2), 384] (``frames``), which the aggregator reads."""

    def __init__(self, encoder: torch.nn.Module, bottleneck: SemanticBottleneck) -> None:
        super().__init__()
        from edgetok.train.whisper_features import WhisperInput

        self.scale = WhisperInput()
        self.encoder = encoder
        self.bottleneck = bottleneck

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.encoder(self.scale(mel))
        return self.bottleneck.bounded(frames), frames
