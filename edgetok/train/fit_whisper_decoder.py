"""Stage 3 of v2: the aggregator and the pretrained Whisper decoder reading segment vectors.

``SegmentWhisper``: the aggregator fuses each segment's v2 tokens into one vector of the
decoder's width; the vector plus Whisper's encoder position of the segment's first token
(its 50 Hz frame, as the original encoder output would carry it), layer-normed, is what
the Whisper tiny.en decoder cross-attends to. The decoder writes Whisper BPE after the
prompt ``<|startoftranscript|><|notimestamps|>``. Its token embedding (tied to the output
head) and positions stay frozen; its blocks train at ``DECODER_LR_SCALE`` times the
aggregator's learning rate. The three compressions (entropy, fixed, dense) train the same
way on the same tokens (``fit_decoder.solve_compression``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgetok.compress import Compression
from edgetok.evaluate import normalize
from edgetok.pretrained import whisper_dir
from edgetok.train.batching import bucketed_batches, pad_stack
from edgetok.train.fit_decoder import (
    COMPRESSION_FILE,
    SegmentedSet,
    error_rates,
    prefix_batch,
    run_compression,
)
from edgetok.train.fit_lm import token_vocab
from edgetok.train.loop import LoopConfig, TrainingRun
from edgetok.train.models import Aggregator, AggregatorConfig
from edgetok.train.tokenset import load_tokens
from edgetok.train.whisper import WhisperDecoder, load_whisper

__all__ = ["BpeText", "SegmentWhisper", "train_whisper_decoder"]

#: The decoder's blocks learn at this fraction of the aggregator's rate.
DECODER_LR_SCALE = 0.1
IGNORE = -100


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


class SegmentWhisper(nn.Module):
    """Aggregator + position + layer norm -> the pretrained Whisper decoder."""

    def __init__(
        self, decoder: WhisperDecoder, positions: torch.Tensor, vocab_size: int, max_len: int
    ) -> None:
        super().__init__()
        dim = decoder.dims.dim
        self.aggregator = Aggregator(
            AggregatorConfig(vocab_size=vocab_size, max_len=max(max_len, 8), out_dim=dim)
        )
        self.context_norm = nn.LayerNorm(dim)
        self.register_buffer("positions", positions.clone(), persistent=False)
        self.decoder = decoder
        decoder.token_embedding.weight.requires_grad_(False)
        decoder.positions.requires_grad_(False)

    def param_groups(self, lr: float) -> list[dict]:
        """The aggregator and norm at ``lr``, the decoder's blocks slower (``TrainingRun``)."""
        mine = [*self.aggregator.parameters(), *self.context_norm.parameters()]
        theirs = [p for p in self.decoder.parameters() if p.requires_grad]
        return [{"params": mine, "lr": lr}, {"params": theirs, "lr": lr * DECODER_LR_SCALE}]

    def context(self, data: SegmentedSet, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Context [B, S_max, dim] of utterances ``idx`` and their segment counts [B]."""
        vectors, counts = prefix_batch(self.aggregator, data, idx)
        starts = [np.concatenate([[0], np.cumsum(data.masks[i].sum(axis=1))[:-1]]) for i in idx]
        frames = torch.from_numpy(pad_stack(starts)[0]).clamp(max=len(self.positions) - 1)
        return self.context_norm(vectors + self.positions[frames]), counts

    def loss(self, data: SegmentedSet, idx: list[int]) -> torch.Tensor:
        """Mean next-token cross-entropy over the text (prompt excluded)."""
        context, counts = self.context(data, idx)
        text, _ = pad_stack([data.targets[i] for i in idx], pad_value=IGNORE)
        text = torch.from_numpy(text)
        inputs = text[:, :-1].clamp(min=0)
        targets = text[:, 1:].clone()
        targets[:, 0] = IGNORE  # <|notimestamps|> is part of the prompt, given, not learned
        logits = self.decoder(inputs, context, counts)
        return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE)

    @torch.no_grad()
    def greedy(
        self, data: SegmentedSet, idx: list[int], prompt: list[int], eot: int, max_tokens: int
    ) -> list[list[int]]:
        """Greedy token ids after the prompt (the whole text rerun per token), at most
        ``max_tokens`` and never past the decoder's last position."""
        max_tokens = min(max_tokens, self.decoder.dims.max_text - len(prompt))
        context, counts = self.context(data, idx)
        ids = torch.tensor([prompt] * len(idx))
        done = torch.zeros(len(idx), dtype=torch.bool)
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


def new_model(vocab_size: int, max_len: int, encoder: str = "tiny.en") -> SegmentWhisper:
    """A fresh ``SegmentWhisper`` on the pinned pretrained weights."""
    whisper_encoder, decoder = load_whisper(whisper_dir(encoder) / "model.bin")
    return SegmentWhisper(decoder.train(), whisper_encoder.positions, vocab_size, max_len)


def train_whisper_decoder(
    corpus_dir: Path,
    run_dir: Path,
    loop: LoopConfig,
    *,
    mode: str = "entropy",
    target_hz: float = 15.0,
    min_len: int = 2,
    max_len: int = 8,
    max_positions: int = 6_000,
    dev_utterances: int = 120,
) -> SegmentWhisper:
    """Train (or resume) aggregator + Whisper decoder over ``mode`` segments of v2 tokens."""
    train_tokens = load_tokens(corpus_dir, "train", "v2")
    compression = run_compression(
        run_dir, train_tokens, mode, target_hz=target_hz, min_len=min_len, max_len=max_len
    )
    bpe = BpeText(whisper_dir("tiny.en"))
    train = SegmentedSet.build(train_tokens, compression, encode=bpe.target)
    dev = SegmentedSet.build(load_tokens(corpus_dir, "dev", "v2"), compression, encode=bpe.target)
    print(f"{mode}: {train.segments_per_second():.2f} segments/s on train, {compression}")

    model = new_model(token_vocab(corpus_dir, "v2"), compression.max_len)
    run = TrainingRun(run_dir, model, loop)
    dev_idx = list(range(min(dev_utterances, len(dev.texts))))

    def evaluate() -> dict[str, float]:
        hyps = []
        for start in range(0, len(dev_idx), 16):
            part = dev_idx[start : start + 16]
            for ids in model.greedy(dev, part, bpe.prompt, bpe.eot, max_tokens=96):
                hyps.append(bpe.decode(ids))
        refs = [dev.texts[i] for i in dev_idx]
        return {f"dev_{k}": v for k, v in error_rates(refs, [normalize(h) for h in hyps]).items()}

    batches = bucketed_batches(train.lengths(), max_frames=max_positions, seed=loop.seed + run.step)
    run.train(
        batches,
        lambda idx: (model.loss(train, idx), {}),
        evaluate=evaluate,
        desc=f"whisper-decoder-{mode}",
    )
    return model


def load_whisper_decoder(run_dir: Path) -> tuple[SegmentWhisper, Compression]:
    """The model and compression of a ``whisper-decoder`` run, in eval mode."""
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]
    compression = Compression.from_dict(json.loads((run_dir / COMPRESSION_FILE).read_text()))
    model = new_model(state["aggregator.embed.weight"].shape[0], compression.max_len)
    model.load_state_dict(state, strict=False)  # the encoder positions are not saved
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
    each run's segments -> aggregator -> Whisper decoder. A check of the trained models
    before they are exported, not the device's numbers (``edgetok eval`` gives those)."""
    import jiwer
    from tqdm import tqdm

    from edgetok.audio import load_audio
    from edgetok.codebook import nearest_centroid
    from edgetok.evaluate import read_manifest
    from edgetok.frontend import log_mel
    from edgetok.segment import segments_to_padded
    from edgetok.train.fit_lm import load_lm
    from edgetok.train.fit_semantic import ENCODER, load_semantic
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
        bounded = bottleneck.bounded(encoder(scale(mel)))[0].numpy()
        ids = nearest_centroid(bounded, codebook)
        entropy = EntropyLM.entropy(lm(torch.from_numpy(ids)[None]))[0].numpy()
        for name, (model, compression) in systems.items():
            starts = compression.starts(ids, entropy)
            padded, mask = segments_to_padded(ids, starts, compression.max_len)
            data = SegmentedSet([padded.astype(np.int16)], [mask], [], [], [])
            out = model.greedy(data, [0], bpe.prompt, bpe.eot, max_tokens=4 * len(starts) + 20)
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
    """Server graph 1, once per utterance: segment vectors ``prefix`` [B, S, dim] and their
    first tokens' frames ``starts`` [B, S] -> every decoder layer's cross-attention
    ``cross_keys``/``cross_values`` [layers, B, heads, S, head_dim]."""

    def __init__(self, model: SegmentWhisper) -> None:
        super().__init__()
        self.model = model

    def forward(self, prefix: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frames = starts.clamp(0, len(self.model.positions) - 1)
        context = self.model.context_norm(prefix + self.model.positions[frames])
        return self.model.decoder.cross_kv(context)


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
