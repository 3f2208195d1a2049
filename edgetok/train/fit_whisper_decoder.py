"""Stage 3 of v2: the aggregator and the pretrained Whisper decoder reading segment vectors.

The v2 tokens decide where segments are cut (entropy, or the fixed-rate and dense
baselines on the same tokens, ``fit_decoder.solve_compression``); what each segment says
is read from the frozen encoder's frames it spans. ``SegmentWhisper``: the
``FeatureAggregator`` fuses a segment's frames into one vector of the decoder's width
(their mean plus a learned correction), and the Whisper tiny.en decoder cross-attends to
those vectors and writes BPE after ``<|startoftranscript|><|notimestamps|>``. A fresh
model already reads the mean frames (Whisper's encoder output, pooled), so fine-tuning
starts from a decoder that half works. The token embedding (tied to the output head) and
positions stay frozen; the blocks train at ``DECODER_LR_SCALE`` times the aggregator's
rate.

Wire codes (issue 19): ``codes=`` fine-tunes a trained run through the wire's residual
VQ (``edgetok.segment_codes``), codebooks initialised by k-means on its vectors: the
aggregator learns vectors that survive the codes, the codebooks follow them (VQ-VAE
losses, straight-through gradients), the decoder learns to read them. A ``float_share``
of the utterances skip the codes, so that the same models still serve float (v1)
clients. (Fine-tuning the decoder alone, the aggregator frozen, left dev WER at 63 %
after 500 steps: the codes of a frozen aggregator lose what the text needs.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgetok.compress import Compression
from edgetok.evaluate import normalize
from edgetok.pretrained import whisper_dir
from edgetok.segment import frames_to_padded
from edgetok.train.batching import bucketed_batches, pad_stack
from edgetok.train.fit_decoder import (
    COMPRESSION_FILE,
    TOKEN_RATE_HZ,
    error_rates,
    run_compression,
)
from edgetok.train.fit_semantic import DEFAULT_TRAIN_HOURS, ENCODER, whisper_features
from edgetok.train.loop import LoopConfig, TrainingRun
from edgetok.train.models import FeatureAggregator, FeatureAggregatorConfig
from edgetok.train.tokenset import TokenSet, load_tokens
from edgetok.train.whisper import WhisperDecoder, load_whisper
from edgetok.train.whisper_features import EncoderFeatures

__all__ = [
    "BpeText",
    "ResidualQuantizer",
    "SegmentWhisper",
    "SegmentedFeatures",
    "train_whisper_decoder",
]

#: The decoder's blocks learn at this fraction of the aggregator's rate.
DECODER_LR_SCALE = 0.1
IGNORE = -100

#: One utterance's segments: frames [S, L, D] float32 and mask [S, L] bool.
Segments = tuple[np.ndarray, np.ndarray]


@dataclass
class SegmentedFeatures:
    """A split's encoder features, every utterance's segment starts and its targets."""

    features: EncoderFeatures
    starts: list[np.ndarray]
    max_len: int
    targets: list[np.ndarray]
    texts: list[str]

    @classmethod
    def build(
        cls, features: EncoderFeatures, tokens: TokenSet, compression: Compression, encode
    ) -> SegmentedFeatures:
        """Cut each utterance where ``compression`` cuts its tokens (one per frame)."""
        if len(features) != len(tokens) or not np.array_equal(features.lengths, tokens.lengths):
            raise ValueError("the encoder features and the v2 tokens are not of the same split")
        starts = []
        for i in range(len(tokens)):
            entropy = tokens.utterance_entropy(i) if compression.mode == "entropy" else None
            starts.append(compression.starts(tokens.utterance(i), entropy))
        targets = [encode(t) for t in tokens.texts]
        return cls(features, starts, compression.max_len, targets, list(tokens.texts))

    def segments(self, i: int) -> Segments:
        return frames_to_padded(self.features.utterance(i), self.starts[i], self.max_len)

    def lengths(self) -> np.ndarray:
        """Decoder work per utterance: segments + text tokens."""
        return np.array([len(s) + len(t) for s, t in zip(self.starts, self.targets, strict=True)])

    def segments_per_second(self) -> float:
        frames = int(self.features.lengths.sum())
        return sum(len(s) for s in self.starts) * TOKEN_RATE_HZ / max(1, frames)


class BpeText:
    """Whisper's BPE for targets and transcripts (the ``tokenizers`` library)."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.eot = self._tok.token_to_id("<|endoftext|>")
        self.prompt = [
            self._tok.token_to_id("<|startoftranscript|>"),
            self._tok.token_to_id("<|notimestamps|>"),
        ]

    def target(self, text: str) -> np.ndarray:
        """prompt + BPE of `` text`` + end of text, int64."""
        ids = self._tok.encode(" " + text, add_special_tokens=False).ids
        return np.array([*self.prompt, *ids, self.eot], dtype=np.int64)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in ids if i < self.eot]).strip()


class ResidualQuantizer(nn.Module):
    """The wire's segment codes in torch, learned: greedy residual VQ as
    ``SegmentCodes.encode`` picks (same distance and ties) over trainable codebooks
    (initialised from k-means), straight-through gradients to the vectors, and the VQ-VAE
    losses (codebook rows pulled to what they code, vectors committed to their rows)."""

    def __init__(self, codebooks: np.ndarray, commitment: float = 0.25) -> None:
        super().__init__()
        self.codebooks = nn.Parameter(torch.from_numpy(np.array(codebooks, np.float32)))
        self.commitment = commitment

    def forward(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors as the server dequantizes them, gradients passed straight through;
        the VQ loss)."""
        residual, total = vectors, torch.zeros_like(vectors)
        loss = vectors.new_zeros(())
        for rows in self.codebooks:
            with torch.no_grad():
                norms = (rows * rows).sum(-1)
                index = (norms[None, :] - 2.0 * residual @ rows.T).argmin(dim=1)
            chosen = rows[index]
            loss = loss + F.mse_loss(chosen, residual.detach())
            loss = loss + self.commitment * F.mse_loss(residual, chosen.detach())
            residual = residual - chosen.detach()
            total = total + chosen.detach()
        return vectors + (total - vectors).detach(), loss / len(self.codebooks)


class SegmentWhisper(nn.Module):
    """Feature aggregator -> (the wire's codes) -> the pretrained Whisper decoder."""

    def __init__(
        self, decoder: WhisperDecoder, max_len: int, codes: ResidualQuantizer | None = None
    ) -> None:
        super().__init__()
        self.aggregator = FeatureAggregator(
            FeatureAggregatorConfig(feature_dim=decoder.dims.dim, max_len=max_len)
        )
        self.decoder = decoder
        self.codes = codes
        decoder.token_embedding.weight.requires_grad_(False)
        decoder.positions.requires_grad_(False)

    def param_groups(self, lr: float) -> list[dict]:
        """The aggregator at ``lr``, the decoder's blocks slower (``TrainingRun``)."""
        theirs = [p for p in self.decoder.parameters() if p.requires_grad]
        ours = list(self.aggregator.parameters())
        if self.codes is not None:
            ours += list(self.codes.parameters())
        return [
            {"params": ours, "lr": lr},
            {"params": theirs, "lr": lr * DECODER_LR_SCALE},
        ]

    def context(
        self, batch: list[Segments], coded: list[bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Segment vectors [B, S_max, dim] of a batch of utterances, their counts [B] and
        the VQ loss; ``coded[b]``: utterance b's vectors go through the wire's codes
        (default: all of them when the model has codes)."""
        counts = [len(mask) for _, mask in batch]
        frames = torch.from_numpy(np.concatenate([f for f, _ in batch]))
        mask = torch.from_numpy(np.concatenate([m for _, m in batch]))
        vectors = self.aggregator(frames, mask)
        vq_loss = vectors.new_zeros(())
        if self.codes is not None:
            coded = coded if coded is not None else [True] * len(batch)
            which = torch.from_numpy(np.repeat(np.array(coded, bool), counts))
            if which.any():
                quantized, vq_loss = self.codes(vectors[which])
                vectors = vectors.clone()
                vectors[which] = quantized
        rows = list(torch.split(vectors, counts))
        return (
            nn.utils.rnn.pad_sequence(rows, batch_first=True),
            torch.tensor(counts),
            vq_loss,
        )

    def loss(
        self, batch: list[Segments], targets: list[np.ndarray], coded: list[bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token cross-entropy over the text (prompt excluded), and the VQ loss."""
        context, counts, vq_loss = self.context(batch, coded)
        return self.text_loss(context, counts, targets), vq_loss

    def text_loss(
        self, context: torch.Tensor, counts: torch.Tensor, targets: list[np.ndarray]
    ) -> torch.Tensor:
        """The decoder's mean next-token cross-entropy over the text (prompt excluded),
        reading segment vectors ``context`` [B, S_max, dim] of ``counts`` [B] rows."""
        text = torch.from_numpy(pad_stack(targets, pad_value=IGNORE)[0])
        inputs = text[:, :-1].clamp(min=0)
        expected = text[:, 1:].clone()
        expected[:, 0] = IGNORE  # <|notimestamps|> is part of the prompt, given, not learned
        logits = self.decoder(inputs, context, counts)
        return F.cross_entropy(logits.transpose(1, 2), expected, ignore_index=IGNORE)

    @torch.no_grad()
    def greedy(
        self, batch: list[Segments], prompt: list[int], eot: int, max_tokens: int
    ) -> list[list[int]]:
        """Greedy token ids after the prompt (the whole text rerun per token), at most
        ``max_tokens`` and never past the decoder's last position."""
        context, counts, _ = self.context(batch)
        return self.greedy_context(context, counts, prompt, eot, max_tokens)

    @torch.no_grad()
    def greedy_context(
        self,
        context: torch.Tensor,
        counts: torch.Tensor,
        prompt: list[int],
        eot: int,
        max_tokens: int,
    ) -> list[list[int]]:
        """``greedy`` on segment vectors already made: context [B, S_max, dim], counts [B]."""
        max_tokens = min(max_tokens, self.decoder.dims.max_text - len(prompt))
        ids = torch.tensor([prompt] * len(context))
        done = torch.zeros(len(context), dtype=torch.bool)
        for _ in range(max_tokens):
            step = self.decoder(ids, context, counts)[:, -1].argmax(-1)
            step[done] = eot
            ids = torch.cat([ids, step[:, None]], dim=1)
            done |= step == eot
            if done.all():
                break
        out = []
        for row in ids[:, len(prompt) :].tolist():
            out.append(row[: row.index(eot)] if eot in row else row)
        return out


def new_model(max_len: int, codes: ResidualQuantizer | None = None) -> SegmentWhisper:
    """A fresh ``SegmentWhisper`` on the pinned pretrained tiny.en weights."""
    _, decoder = load_whisper(whisper_dir(ENCODER) / "model.bin")
    return SegmentWhisper(decoder.train(), max_len, codes)


def _start_from(run_dir: Path, init_run: Path) -> None:
    """A new run that fine-tunes ``init_run``: it takes over that run's compression (so
    it cuts where the aggregator it keeps was trained to)."""
    if not (init_run / "last.pt").exists():
        raise FileNotFoundError(f"{init_run}: no last.pt to fine-tune from")
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / COMPRESSION_FILE
    if not target.exists():
        target.write_text((init_run / COMPRESSION_FILE).read_text())


def train_whisper_decoder(
    corpus_dir: Path,
    run_dir: Path,
    loop: LoopConfig,
    *,
    mode: str = "entropy",
    target_hz: float = 15.0,
    min_len: int = 2,
    max_len: int = 8,
    max_positions: int = 1_000,
    train_hours: float | None = DEFAULT_TRAIN_HOURS,
    dev_utterances: int = 120,
    init_run: Path | None = None,
    codes: np.ndarray | None = None,
    float_share: float = 0.0,
) -> SegmentWhisper:
    """Train (or resume) aggregator + Whisper decoder over ``mode`` segments: cut where
    the v2 tokens say, read from the cached encoder features of the same utterances.

    ``init_run``: start from that run's weights and compression. ``codes`` (residual VQ
    codebooks [M, K, D], from k-means): the aggregator, the codebooks and the decoder
    learn together through the codes, for all but a random ``float_share`` of the
    utterances; dev WER is on codes."""
    if codes is not None and init_run is None:
        raise ValueError("codes fine-tune a trained run: give init_run")
    if not 0.0 <= float_share < 1.0:
        raise ValueError(f"float_share must be in [0, 1), got {float_share}")
    if init_run is not None:
        _start_from(run_dir, init_run)
    train_tokens = load_tokens(corpus_dir, "train", "v2")
    compression = run_compression(
        run_dir, train_tokens, mode, target_hz=target_hz, min_len=min_len, max_len=max_len
    )
    bpe = BpeText(whisper_dir(ENCODER))

    def split(name: str, tokens: TokenSet, hours: float | None) -> SegmentedFeatures:
        features = whisper_features(corpus_dir, name, hours, threads=loop.threads)
        return SegmentedFeatures.build(features, tokens, compression, bpe.target)

    train = split("train", train_tokens, train_hours)
    dev = split("dev", load_tokens(corpus_dir, "dev", "v2"), None)
    print(f"{mode}: {train.segments_per_second():.2f} segments/s on train, {compression}")

    model = new_model(compression.max_len, None if codes is None else ResidualQuantizer(codes))
    if init_run is not None and not (run_dir / "last.pt").exists():
        state = torch.load(init_run / "last.pt", map_location="cpu", weights_only=False)
        # The codebooks are new (k-means): everything else comes from init_run.
        missing = model.load_state_dict(state["model"], strict=False).missing_keys
        if any(not key.startswith("codes.") for key in missing):
            raise ValueError(f"{init_run}: its model lacks {missing}")
    run = TrainingRun(run_dir, model, loop)
    choose = np.random.default_rng(loop.seed + run.step)
    dev_idx = list(range(min(dev_utterances, len(dev.texts))))

    def evaluate() -> dict[str, float]:
        hyps = []
        for start in range(0, len(dev_idx), 16):
            batch = [dev.segments(i) for i in dev_idx[start : start + 16]]
            hyps += [bpe.decode(ids) for ids in model.greedy(batch, bpe.prompt, bpe.eot, 96)]
        refs = [dev.texts[i] for i in dev_idx]
        return {f"dev_{k}": v for k, v in error_rates(refs, [normalize(h) for h in hyps]).items()}

    def loss(idx: list[int]) -> tuple[torch.Tensor, dict]:
        batch = [train.segments(i) for i in idx]
        coded = (choose.random(len(idx)) >= float_share).tolist()
        text_loss, vq_loss = model.loss(batch, [train.targets[i] for i in idx], coded)
        return text_loss + vq_loss, {"text": text_loss.item(), "vq": vq_loss.item()}

    batches = bucketed_batches(train.lengths(), max_frames=max_positions, seed=loop.seed + run.step)
    run.train(batches, loss, evaluate=evaluate, desc=f"whisper-decoder-{mode}")
    return model


def load_whisper_decoder(run_dir: Path) -> tuple[SegmentWhisper, Compression]:
    """The model and compression of a ``whisper-decoder`` run, in eval mode."""
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]
    compression = Compression.from_dict(json.loads((run_dir / COMPRESSION_FILE).read_text()))
    books = state.get("codes.codebooks")  # a run trained through the wire's codes
    codes = ResidualQuantizer(books.numpy()) if books is not None else None
    model = new_model(compression.max_len, codes)
    model.load_state_dict(state)
    return model.eval(), compression


@torch.no_grad()
def evaluate_runs(
    manifest: Path,
    semantic_run: Path,
    lm_run: Path,
    decoder_runs: dict[str, Path],
    *,
    limit: int | None = None,
    threads: int = 2,
) -> dict:
    """WER and CER per system and voice of the v2 training checkpoints on any manifest,
    greedy, the whole chain in torch: audio -> encoder -> FSQ tokens -> entropy LM ->
    each run's segments of the encoder frames -> aggregator -> Whisper decoder. A check
    of the trained models before they are exported, not the device's numbers (``edgetok
    eval`` gives those)."""
    import jiwer
    from tqdm import tqdm

    from edgetok.audio import load_audio
    from edgetok.codebook import nearest_centroid
    from edgetok.evaluate import read_manifest
    from edgetok.frontend import log_mel
    from edgetok.train.fit_lm import load_lm
    from edgetok.train.fit_semantic import load_semantic
    from edgetok.train.models import EntropyLM
    from edgetok.train.whisper_features import WHISPER_FRONTEND, WhisperInput

    torch.set_num_threads(threads)
    encoder, _ = load_whisper(whisper_dir(ENCODER) / "model.bin")
    bottleneck, lm, scale = load_semantic(semantic_run), load_lm(lm_run), WhisperInput()
    codebook = bottleneck.fsq.codebook()
    systems = {name: load_whisper_decoder(run) for name, run in decoder_runs.items()}
    bpe = BpeText(whisper_dir(ENCODER))
    pairs: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    segments: dict[str, int] = dict.fromkeys(systems, 0)
    audio_s = 0.0
    for utt in tqdm(read_manifest(manifest, limit), desc="v2 eval", unit="utt"):
        audio = load_audio(utt.path, WHISPER_FRONTEND.sample_rate)
        audio_s += audio.size / WHISPER_FRONTEND.sample_rate
        mel = torch.from_numpy(log_mel(audio, WHISPER_FRONTEND))[None]
        features = encoder(scale(mel))
        ids = nearest_centroid(bottleneck.bounded(features)[0].numpy(), codebook)
        entropy = EntropyLM.entropy(lm(torch.from_numpy(ids)[None]))[0].numpy()
        for name, (model, compression) in systems.items():
            starts = compression.starts(ids, entropy)
            batch = [frames_to_padded(features[0].numpy(), starts, compression.max_len)]
            out = model.greedy(batch, bpe.prompt, bpe.eot, max_tokens=4 * len(starts) + 20)
            segments[name] += len(starts)
            for key in ((name, utt.voice), (name, "all")):
                refs, hyps = pairs.setdefault(key, ([], []))
                refs.append(normalize(utt.text))
                hyps.append(normalize(bpe.decode(out[0])) or "<empty>")
    result: dict = {"audio_s": audio_s, "systems": {}}
    for (name, voice), (refs, hyps) in pairs.items():
        row = {"utterances": len(refs), "wer": jiwer.wer(refs, hyps), "cer": jiwer.cer(refs, hyps)}
        system = result["systems"].setdefault(name, {"voices": {}})
        if voice == "all":
            system.update(row, segments_per_s=segments[name] / max(audio_s, 1e-9))
        else:
            system["voices"][voice] = row
    return result


class DecoderContextExport(nn.Module):
    """Server graph 1, once per utterance: segment ``vectors`` [B, S, dim] -> every decoder
    layer's cross-attention ``cross_keys``/``cross_values`` [layers, B, heads, S, head_dim]."""

    def __init__(self, model: SegmentWhisper) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, vectors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.decoder.cross_kv(vectors)


class DecoderStepExport(nn.Module):
    """Server graph 2, the prompt and then each token: ``WhisperDecoder.step``."""

    def __init__(self, model: SegmentWhisper) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(
        self,
        text: torch.Tensor,
        cross_keys: torch.Tensor,
        cross_values: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        return self.decoder.step(text, cross_keys, cross_values, past_keys, past_values)
