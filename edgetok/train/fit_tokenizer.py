"""Stage 1: the tokenizer encoder (character CTC), its k-means codebook, corpus tokens.

``train_tokenizer`` trains the encoder on log-mel of the train split; ``fit_codebook``
clusters the ``token_layer`` features of a sample of train utterances into K centroids;
``tokenize_corpus`` turns every split into token ids with the device's
``nearest_centroid`` and caches them for the entropy LM and the decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgetok.codebook import nearest_centroid
from edgetok.train.batching import bucketed_batches, pad_stack
from edgetok.train.featcache import FeatureSet, build_feature_cache
from edgetok.train.features import SpecAugment
from edgetok.train.loop import LoopConfig, TrainingRun
from edgetok.train.models import CODEBOOK_SIZE, CTC_BLANK, TokenizerEncoder
from edgetok.train.paths import features_dir
from edgetok.train.text import decode_ids, encode_text
from edgetok.train.tokenset import save_tokens, tokens_path

CODEBOOK_FILE = "codebook.npy"


def load_features(corpus_dir: Path, split: str, jobs: int = 2) -> FeatureSet:
    """The split's log-mel cache, built on first use."""
    return build_feature_cache(corpus_dir, split, features_dir(corpus_dir, split), jobs=jobs)


def normalization_stats(feats: FeatureSet, max_utterances: int = 2000) -> tuple[np.ndarray, ...]:
    """Per-bin log-mel mean and std over (a sample of) the split."""
    rng = np.random.default_rng(0)
    pick = rng.choice(len(feats), size=min(max_utterances, len(feats)), replace=False)
    frames = np.concatenate([feats.utterance(int(i)) for i in pick]).astype(np.float64)
    return frames.mean(axis=0), frames.std(axis=0)


def mel_batch(feats: FeatureSet, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded log-mel [B, T, F] and frame lengths [B]."""
    mel, lengths = pad_stack([feats.utterance(i) for i in idx])
    return torch.from_numpy(mel), torch.from_numpy(lengths)


def ctc_greedy(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best-path CTC decoding: argmax, collapse repeats, drop blanks."""
    best = logits.argmax(dim=-1)
    out = []
    for row, n in zip(best.tolist(), lengths.tolist(), strict=True):
        ids, prev = [], None
        for i in row[:n]:
            if i != prev and i != CTC_BLANK:
                ids.append(i)
            prev = i
        out.append(ids)
    return out


def character_error_rate(refs: list[str], hyps: list[str]) -> float:
    """CER over a set of utterances (edit distance / reference characters)."""
    import jiwer

    return float(jiwer.cer(refs, hyps))


def subset_hours(feats: FeatureSet, hours: float, seed: int = 0) -> FeatureSet:
    """A deterministic random subset of about ``hours`` of audio (100 frames per second)."""
    order = np.random.default_rng(seed).permutation(len(feats))
    keep = order[np.cumsum(feats.lengths[order]) <= hours * 3600 * 100]
    keep.sort()
    return FeatureSet(
        mel=feats.mel,
        offsets=feats.offsets[keep],
        lengths=feats.lengths[keep],
        records=[feats.records[i] for i in keep],
    )


def load_encoder(run_dir: Path) -> TokenizerEncoder:
    """The encoder of a tokenizer run, in eval mode."""
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    encoder = TokenizerEncoder()
    encoder.load_state_dict(state["model"])
    return encoder.eval()


def train_tokenizer(
    corpus_dir: Path,
    run_dir: Path,
    loop: LoopConfig,
    *,
    max_frames: int = 12_000,
    dev_utterances: int = 300,
) -> None:
    """Train (or resume) the CTC tokenizer encoder in ``run_dir``."""
    train = load_features(corpus_dir, "train", loop.threads)
    dev = load_features(corpus_dir, "dev", loop.threads)
    encoder = TokenizerEncoder()
    mean, std = normalization_stats(train)
    encoder.set_normalization(torch.from_numpy(mean), torch.from_numpy(std))
    run = TrainingRun(run_dir, encoder, loop)
    targets = [encode_text(r["text"]) for r in train.records]
    spec_augment = SpecAugment()

    def loss_fn(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        mel, lengths = mel_batch(train, idx)
        mel = spec_augment(mel, lengths)
        text, text_lengths = pad_stack([np.asarray(targets[i], dtype=np.int64) for i in idx])
        loss = encoder.ctc_loss(
            mel, lengths, torch.from_numpy(text), torch.from_numpy(text_lengths)
        )
        return loss, {"frames": float(lengths.sum())}

    dev_idx = list(range(min(dev_utterances, len(dev))))

    def evaluate() -> dict[str, float]:
        refs, hyps = [], []
        for start in range(0, len(dev_idx), 32):
            idx = dev_idx[start : start + 32]
            mel, lengths = mel_batch(dev, idx)
            out = encoder(mel, lengths)
            hyps += [decode_ids(h) for h in ctc_greedy(out["ctc_logits"], out["lengths"])]
            refs += [dev.records[i]["text"] for i in idx]
        return {"dev_cer": character_error_rate(refs, hyps)}

    batches = bucketed_batches(train.lengths, max_frames=max_frames, seed=loop.seed + run.step)
    run.train(batches, loss_fn, evaluate=evaluate, desc="tokenizer")


@torch.no_grad()
def encode_features(
    encoder: TokenizerEncoder, feats: FeatureSet, idx: list[int]
) -> list[np.ndarray]:
    """``token_layer`` features [T2, D] of the utterances ``idx`` (batched, padding masked).

    Runs only the blocks up to ``token_layer`` (what the exported tokenizer runs), in fp32
    so that training tokens match the device's.
    """
    x, lengths = encoder.stem(*mel_batch(feats, idx))
    mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None])[:, None, None]
    for block in encoder.blocks[: encoder.cfg.token_layer]:
        x = block(x, mask)
    return [f[:n].numpy() for f, n in zip(x, lengths.tolist(), strict=True)]


def kmeans(
    x: torch.Tensor, k: int, *, iters: int = 30, seed: int = 0, chunk: int = 65536
) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding on a subsample; returns centroids [k, D]."""
    gen = torch.Generator().manual_seed(seed)
    seed_pool = x[torch.randperm(len(x), generator=gen)[: min(len(x), 20 * k)]]
    centroids = seed_pool[torch.randint(len(seed_pool), (1,), generator=gen)]
    closest = torch.cdist(seed_pool, centroids).squeeze(1) ** 2
    for _ in range(k - 1):
        pick = torch.multinomial(closest / closest.sum(), 1, generator=gen)
        centroids = torch.cat([centroids, seed_pool[pick]])
        closest = torch.minimum(closest, ((seed_pool - seed_pool[pick]) ** 2).sum(dim=1))
    for _ in tqdm(range(iters), desc="k-means", unit="iter"):
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(k)
        for start in range(0, len(x), chunk):
            part = x[start : start + chunk]
            assign = torch.cdist(part, centroids).argmin(dim=1)
            sums.index_add_(0, assign, part)
            counts += torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():  # re-seed empty clusters on random points
            centroids[empty] = x[torch.randint(len(x), (int(empty.sum()),), generator=gen)]
    return centroids


def fit_codebook(
    corpus_dir: Path,
    run_dir: Path,
    *,
    k: int = CODEBOOK_SIZE,
    sample_frames: int = 300_000,
    seed: int = 0,
) -> np.ndarray:
    """Cluster ``token_layer`` features of random train utterances; writes ``codebook.npy``."""
    train = load_features(corpus_dir, "train")
    encoder = load_encoder(run_dir)
    order = np.random.default_rng(seed).permutation(len(train)).tolist()
    chunks, total = [], 0
    with tqdm(total=sample_frames, desc="features for k-means", unit="frame") as bar:
        for start in range(0, len(order), 32):
            feats = encode_features(encoder, train, order[start : start + 32])
            chunks += feats
            added = sum(len(f) for f in feats)
            total += added
            bar.update(added)
            if total >= sample_frames:
                break
    x = torch.from_numpy(np.concatenate(chunks)[:sample_frames])
    codebook = kmeans(x, k, seed=seed).numpy().astype(np.float32)
    np.save(run_dir / CODEBOOK_FILE, codebook)
    return codebook


#: Token ids of the utterances ``idx`` of a feature set, one int array each.
TokenizeFn = Callable[[FeatureSet, list[int]], list[np.ndarray]]


def run_tokenizer(run_dir: Path) -> TokenizeFn:
    """Tokenize with a tokenizer run's torch encoder (batched) and its codebook."""
    encoder = load_encoder(run_dir)
    codebook = np.load(run_dir / CODEBOOK_FILE)

    def tokenize(feats: FeatureSet, idx: list[int]) -> list[np.ndarray]:
        return [nearest_centroid(f, codebook) for f in encode_features(encoder, feats, idx)]

    return tokenize


def bundle_tokenizer(bundle_dir: Path) -> TokenizeFn:
    """Tokenize with a bundle's FP32 ONNX tokenizer and codebook in onnxruntime, as the
    device does: retraining the later stages needs no tokenizer checkpoint."""
    from edgetok.bundle import load_bundle
    from edgetok.stages import TokenizerStage

    stage = TokenizerStage.from_bundle(load_bundle(bundle_dir))

    def tokenize(feats: FeatureSet, idx: list[int]) -> list[np.ndarray]:
        return [stage.from_mel(feats.utterance(i)) for i in idx]

    return tokenize


def tokenize_corpus(
    corpus_dir: Path,
    tokenize: TokenizeFn,
    source: Path,
    splits: tuple[str, ...] = ("train", "dev", "test"),
    *,
    train_hours: float | None = None,
) -> None:
    """Token ids of every utterance of ``splits``, cached at :func:`tokens_path`.

    ``tokenize`` comes from :func:`run_tokenizer` or :func:`bundle_tokenizer`; ``source``
    (the run or bundle) is recorded beside the cache. ``train_hours`` keeps a deterministic
    random subset of the train split of about that many hours (the LM and the decoder then
    train on it).
    """
    for split in splits:
        feats = load_features(corpus_dir, split)
        if split == "train" and train_hours is not None:
            feats = subset_hours(feats, train_hours)
        order = np.argsort(feats.lengths)  # similar lengths together, little padding
        ids: list[np.ndarray] = [np.empty(0, dtype=np.int16)] * len(feats)
        for start in tqdm(range(0, len(order), 32), desc=f"tokenize {split}", unit="batch"):
            idx = order[start : start + 32].tolist()
            for i, t in zip(idx, tokenize(feats, idx), strict=True):
                ids[i] = t.astype(np.int16)
        save_tokens(
            tokens_path(corpus_dir, split), ids, feats.records, {"codebook_run": str(source)}
        )
