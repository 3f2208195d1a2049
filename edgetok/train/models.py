"""The four models of the contract (docs/architecture.md) and their export wrappers.

All transformer stacks reuse one pre-LN ``Block``. Attention goes through
``scaled_dot_product_attention`` with explicit boolean masks (True = may attend), and
positions are computed from the sequence length on the fly (conv positional embedding in
the tokenizer, rotary in the entropy LM and decoder), so every model exports with a
dynamic time axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgetok.train.text import BOS, EOS, PAD, VOCAB

CHAR_VOCAB_SIZE = len(VOCAB)
#: CTC reuses the character ids; the never-emitted pad id 0 is the CTC blank.
CTC_BLANK = PAD
#: Codebook size K of the semantic tokens.
CODEBOOK_SIZE = 512
#: Exported parameter budgets per model role (contract).
BUDGETS = {
    "tokenizer": 3_600_000,
    "entropy_lm": 2_200_000,
    "aggregator": 800_000,
    "decoder": 3_300_000,
}


def count_parameters(module: nn.Module) -> int:
    """Number of (distinct) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def init_weights(module: nn.Module) -> None:
    """GPT-style init: N(0, 0.02) for Linear and Embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def causal_mask(n: int, device: torch.device) -> torch.Tensor:
    """[n, n] bool, True where query i may attend key j (j <= i)."""
    idx = torch.arange(n, device=device)
    return idx[:, None] >= idx[None, :]


class Rotary(nn.Module):
    """Rotary position embedding computed on the fly for any length."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] or [B, T] -> (cos, sin), broadcastable to [B, H, T, head_dim]."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        if positions.dim() == 2:
            emb = emb[:, None]
        return emb.cos(), emb.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Multi-head attention (self, or cross when ``context`` is given)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x [B, T, D], context [B, S, D], mask bool broadcastable to [B, H, T, S]."""
        b, _, d = x.shape
        head_dim = d // self.heads
        ctx = x if context is None else context
        q = self.q(x).view(b, -1, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(ctx).view(b, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _apply_rotary(q, *rope), _apply_rotary(k, *rope)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, -1, d))

    def cached(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention of new positions x [B, N, D] over past keys/values [B, H, P, hd]
        (rotated) and their own; returns (y [B, N, D], keys and values [B, H, P + N, hd])."""
        b, _, d = x.shape
        head_dim = d // self.heads
        q = self.q(x).view(b, -1, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k = _apply_rotary(q, *rope), _apply_rotary(k, *rope)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, -1, d)), k, v


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(LN(x))``, then ``x + FFN(LN(x))``."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``context`` (already normalised) turns self-attention into cross-attention."""
        x = x + self.drop(self.attn(self.norm1(x), context, mask, rope))
        return x + self.drop(self.ff(self.norm2(x)))

    def cached(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` (eval) for new positions with a key/value cache (``Attention.cached``)."""
        y, k, v = self.attn.cached(self.norm1(x), past_k, past_v, mask, rope)
        x = x + y
        return x + self.ff(self.norm2(x)), k, v


# ----------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class TokenizerConfig:
    n_mels: int = 80
    dim: int = 256
    layers: int = 6
    heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    pos_kernel: int = 31  # conv positional embedding, odd; 0.62 s at 50 Hz
    pos_groups: int = 16
    token_layer: int = 4  # 1-based: output of this block are the k-means features
    ctc_vocab: int = CHAR_VOCAB_SIZE


class ConvStem(nn.Module):
    """Per-bin normalisation, conv subsampling 100 -> 50 Hz and conv positional embedding."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.dim, 3, padding=1)
        self.conv2 = nn.Conv1d(cfg.dim, cfg.dim, 3, stride=2, padding=1)
        self.pos_conv = nn.Conv1d(
            cfg.dim, cfg.dim, cfg.pos_kernel, padding=cfg.pos_kernel // 2, groups=cfg.pos_groups
        )

    def forward(
        self, mel: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """mel [B, T, n_mels] -> ([B, ceil(T/2), dim], lengths at 50 Hz or None).

        With ``lengths``, padded frames are zeroed before every conv, so each item's
        valid output is what it would be alone.
        """
        x = ((mel - self.mel_mean) / self.mel_std).transpose(1, 2)
        valid = None if lengths is None else _valid(lengths, x.shape[2])
        x = F.gelu(self.conv1(_masked(x, valid)))
        x = F.gelu(self.conv2(_masked(x, valid)))
        if lengths is not None:
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
            valid = _valid(lengths, x.shape[2])
        x = _masked(x, valid)
        x = x + F.gelu(self.pos_conv(x))
        return _masked(x, valid).transpose(1, 2), lengths


def _valid(lengths: torch.Tensor, n: int) -> torch.Tensor:
    return torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]


def _masked(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Zero padded time steps of x [B, C, T]."""
    return x if valid is None else x * valid[:, None, :].to(x.dtype)


class TokenizerEncoder(nn.Module):
    """Conv stem + transformer encoder over log-mel, with a character CTC head."""

    def __init__(self, cfg: TokenizerConfig = TokenizerConfig()) -> None:
        super().__init__()
        if not 1 <= cfg.token_layer <= cfg.layers:
            raise ValueError(f"token_layer must be in [1, {cfg.layers}], got {cfg.token_layer}")
        self.cfg = cfg
        self.stem = ConvStem(cfg)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.ctc_head = nn.Linear(cfg.dim, cfg.ctc_vocab)
        init_weights(self)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the per-bin log-mel mean and std (from training data); std floored at 1e-5."""
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        shape = (self.cfg.n_mels,)
        if mean.shape != shape or std.shape != shape:
            raise ValueError(f"mean and std must have shape {shape}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("mean and std must be finite")
        self.stem.mel_mean.copy_(mean)
        self.stem.mel_std.copy_(std.clamp(min=1e-5))

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> dict:
        """mel [B, T, n_mels], lengths [B] frames -> dict with

        ``layers`` (each block's output [B, T2, dim], T2 = ceil(T/2)), ``features``
        (block ``token_layer``), ``ctc_logits`` [B, T2, ctc_vocab], ``lengths`` [B] at 50 Hz.
        """
        x, out_lengths = self.stem(mel, lengths)
        mask = None if out_lengths is None else _valid(out_lengths, x.shape[1])[:, None, None]
        layers = []
        for block in self.blocks:
            x = block(x, mask)
            layers.append(x)
        if out_lengths is None:
            out_lengths = torch.full((x.shape[0],), x.shape[1], device=x.device)
        return {
            "layers": layers,
            "features": layers[self.cfg.token_layer - 1],
            "ctc_logits": self.ctc_head(self.norm(x)),
            "lengths": out_lengths,
        }

    def ctc_loss(
        self,
        mel: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Mean CTC loss; targets [B, S] character ids (no pad/bos/eos), blank = 0."""
        out = self(mel, lengths)
        log_probs = F.log_softmax(out["ctc_logits"].float(), dim=-1).transpose(0, 1)
        return F.ctc_loss(
            log_probs,
            targets,
            out["lengths"],
            target_lengths,
            blank=CTC_BLANK,
            zero_infinity=True,
        )


class TokenizerExport(nn.Module):
    """The exported tokenizer: stem and blocks up to ``token_layer``; mel -> features."""

    def __init__(self, enc: TokenizerEncoder) -> None:
        super().__init__()
        self.stem = enc.stem
        self.blocks = nn.ModuleList(list(enc.blocks)[: enc.cfg.token_layer])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x, _ = self.stem(mel)
        for block in self.blocks:
            x = block(x)
        return x


# ---------------------------------------------------------------------------- entropy LM


@dataclass(frozen=True)
class EntropyLMConfig:
    vocab_size: int = CODEBOOK_SIZE  # BOS is id vocab_size
    dim: int = 192
    layers: int = 4
    heads: int = 4
    ff_dim: int = 768
    dropout: float = 0.1
    rope_base: float = 10000.0


class EntropyLM(nn.Module):
    """Causal transformer over semantic tokens with rotary positions (any length)."""

    def __init__(self, cfg: EntropyLMConfig = EntropyLMConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size + 1, cfg.dim)
        self.rotary = Rotary(cfg.dim // cfg.heads, cfg.rope_base)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)
        init_weights(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, K]; logits[:, t] predicts tokens[:, t] from
        tokens[:, :t] (BOS is prepended here)."""
        bos = torch.full_like(tokens[:, :1], self.cfg.vocab_size)
        x = self.embed(torch.cat([bos, tokens], dim=1)[:, :-1])
        n = x.shape[1]
        rope = self.rotary(torch.arange(n, device=x.device))
        mask = causal_mask(n, x.device)
        for block in self.blocks:
            x = block(x, mask, rope)
        return self.head(self.norm(x))

    @staticmethod
    def entropy(logits: torch.Tensor) -> torch.Tensor:
        """Entropy in nats of each next-token distribution, float32 [B, T]."""
        logp = F.log_softmax(logits.float(), dim=-1)
        return -(logp.exp() * logp).sum(dim=-1)

    def loss(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) over the first ``lengths`` tokens of each row."""
        logits = self(tokens)
        nll = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")
        if lengths is None:
            return nll.mean()
        valid = _valid(lengths, tokens.shape[1]).to(nll.dtype)
        return (nll * valid).sum() / valid.sum().clamp(min=1)


class EntropyLMExport(nn.Module):
    """The exported entropy LM: tokens -> (entropy [B, T], logits [B, T, K])."""

    def __init__(self, lm: EntropyLM) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.lm(tokens)
        return EntropyLM.entropy(logits), logits


# ---------------------------------------------------------------------------- aggregator


@dataclass(frozen=True)
class AggregatorConfig:
    vocab_size: int = CODEBOOK_SIZE
    dim: int = 256
    heads: int = 4
    ff_dim: int = 512
    max_len: int = 32  # longest segment (learned in-segment positions)
    n_queries: int = 1
    out_dim: int = 256
    dropout: float = 0.1


class Aggregator(nn.Module):
    """One vector per segment: learned queries cross-attend over the segment's tokens."""

    def __init__(self, cfg: AggregatorConfig = AggregatorConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.queries = nn.Parameter(torch.zeros(cfg.n_queries, cfg.dim))
        self.context_norm = nn.LayerNorm(cfg.dim)
        self.block = Block(cfg.dim, cfg.heads, cfg.ff_dim, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.dim)
        self.proj = nn.Linear(cfg.n_queries * cfg.dim, cfg.out_dim)
        init_weights(self)
        nn.init.normal_(self.queries, std=0.02)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens [N, L] int64 (L <= max_len), mask [N, L] bool (True = real token)
        -> vectors [N, out_dim]. Padded positions have no effect; a row with no real
        token gives a finite, meaningless vector."""
        n, length = tokens.shape
        pos = torch.arange(length, device=tokens.device)
        context = self.context_norm(self.embed(tokens) + self.pos(pos))
        empty = ~mask.any(dim=1, keepdim=True)
        keep = mask | (empty & (pos == 0))
        q = self.queries.expand(n, -1, -1)
        h = self.block(q, keep[:, None, None, :], context=context)
        return self.proj(self.norm(h).flatten(1))


@dataclass(frozen=True)
class FeatureAggregatorConfig:
    feature_dim: int = 384  # the frozen encoder's width, and the vector's
    dim: int = 256
    heads: int = 4
    ff_dim: int = 256
    max_len: int = 8  # longest segment (learned in-segment positions)
    dropout: float = 0.1


class FeatureAggregator(nn.Module):
    """v2: one vector per segment of encoder frames: their mean, plus what a query made
    from that mean reads from the frames by cross-attention. The correction starts at
    zero, so a fresh aggregator gives the segment's mean frame, which the pretrained
    Whisper decoder already reads."""

    def __init__(self, cfg: FeatureAggregatorConfig = FeatureAggregatorConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.frames = nn.Linear(cfg.feature_dim, cfg.dim)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.context_norm = nn.LayerNorm(cfg.dim)
        self.query = nn.Linear(cfg.feature_dim, cfg.dim)
        self.block = Block(cfg.dim, cfg.heads, cfg.ff_dim, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.dim)
        self.correction = nn.Linear(cfg.dim, cfg.feature_dim)
        init_weights(self)
        nn.init.zeros_(self.correction.weight)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames [N, L, feature_dim] (L <= max_len), mask [N, L] bool (True = real frame)
        -> vectors [N, feature_dim]. Padded frames have no effect; a row with no real
        frame gives a finite, meaningless vector."""
        pos = torch.arange(frames.shape[1], device=frames.device)
        weight = mask.to(frames.dtype)[..., None]
        mean = (frames * weight).sum(1) / weight.sum(1).clamp(min=1.0)
        # A lookup, not a slice of the table: the export keeps L free of max_len.
        context = self.context_norm(self.frames(frames) + self.pos(pos))
        keep = mask | (~mask.any(dim=1, keepdim=True) & (pos == 0))
        h = self.block(self.query(mean)[:, None], keep[:, None, None, :], context=context)
        return mean + self.correction(self.norm(h[:, 0]))


# ------------------------------------------------------------------------------- decoder


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = CHAR_VOCAB_SIZE
    prefix_dim: int = 256
    dim: int = 256
    layers: int = 4
    heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    rope_base: float = 10000.0


class Decoder(nn.Module):
    """Decoder-only transformer: projected segment vectors as a prefix, then characters."""

    def __init__(self, cfg: DecoderConfig = DecoderConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.prefix_proj = nn.Linear(cfg.prefix_dim, cfg.dim)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.rotary = Rotary(cfg.dim // cfg.heads, cfg.rope_base)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)
        init_weights(self)

    def forward(
        self,
        prefix: torch.Tensor,
        text: torch.Tensor,
        prefix_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """prefix [B, S, prefix_dim], text [B, U] (BOS first) -> logits [B, U, V].

        logits[:, u] predicts text[:, u + 1]. With ``prefix_lengths`` the prefix is
        right-padded: padded vectors are masked out and text positions start right after
        each item's real prefix, so every item is computed as it would be alone.
        """
        s = prefix.shape[1]
        x = torch.cat([self.prefix_proj(prefix), self.embed(text)], dim=1)
        idx = torch.arange(x.shape[1], device=x.device)
        mask = causal_mask(x.shape[1], x.device)
        if prefix_lengths is None:
            pos = idx
        else:
            pos = torch.where(idx < s, idx, idx - s + prefix_lengths[:, None])
            key_ok = (idx >= s) | (idx < prefix_lengths[:, None])
            # Each position may attend to itself, so padded rows stay finite.
            # (Not torch.eye: its decomposition makes a uint16 arange LiteRT cannot lower.)
            self_ok = idx[:, None] == idx[None, :]
            mask = ((mask & key_ok[:, None, :]) | self_ok)[:, None]
        rope = self.rotary(pos)
        for block in self.blocks:
            x = block(x, mask, rope)
        return self.head(self.norm(x[:, s:]))

    def step(
        self,
        prefix: torch.Tensor,
        text: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` continued from a key/value cache (no ``prefix_lengths``; eval).

        prefix [B, S, prefix_dim] (S may be 0), text [B, U], past_keys/values
        [layers, B, heads, P, head_dim] (P may be 0) -> logits [B, U, V] of the text
        positions, keys/values [layers, B, heads, P + S + U, head_dim]. Greedy decoding
        calls it once with the prefix and BOS on an empty cache, then once per character
        with S = 0: the logits equal ``forward``'s on the whole sequence.
        """
        s = prefix.shape[1]
        past = past_keys.shape[3]
        x = torch.cat([self.prefix_proj(prefix), self.embed(text)], dim=1)
        idx = torch.arange(x.shape[1], device=x.device)
        keys = torch.arange(past + x.shape[1], device=x.device)
        mask = keys[None, :] <= idx[:, None] + past
        rope = self.rotary(idx + past)
        new_keys, new_values = [], []
        for layer, block in enumerate(self.blocks):
            x, k, v = block.cached(x, past_keys[layer], past_values[layer], mask, rope)
            new_keys.append(k)
            new_values.append(v)
        logits = self.head(self.norm(x[:, s:]))
        return logits, torch.stack(new_keys), torch.stack(new_values)

    def empty_cache(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value caches with no position: [layers, batch, heads, 0, head_dim]."""
        cfg = self.cfg
        shape = (cfg.layers, batch, cfg.heads, 0, cfg.dim // cfg.heads)
        return torch.zeros(shape), torch.zeros(shape)

    def loss(
        self,
        prefix: torch.Tensor,
        text: torch.Tensor,
        prefix_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy; text [B, U] is BOS, chars, EOS, then PAD."""
        logits = self(prefix, text[:, :-1], prefix_lengths)
        return F.cross_entropy(logits.float().transpose(1, 2), text[:, 1:], ignore_index=PAD)


@torch.no_grad()
def greedy_decode(
    decoder: Decoder,
    prefix: torch.Tensor,
    prefix_lengths: torch.Tensor | None = None,
    max_len: int = 200,
) -> list[list[int]]:
    """Greedy character ids per item (without BOS/EOS), stopping at EOS or ``max_len``."""
    was_training = decoder.training
    decoder.eval()
    try:
        b = prefix.shape[0]
        text = torch.full((b, 1), BOS, dtype=torch.long, device=prefix.device)
        done = torch.zeros(b, dtype=torch.bool, device=prefix.device)
        for _ in range(max_len):
            nxt = decoder(prefix, text, prefix_lengths)[:, -1].argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            text = torch.cat([text, nxt[:, None]], dim=1)
            done |= nxt == EOS
            if bool(done.all()):
                break
    finally:
        decoder.train(was_training)
    out = []
    for row in text[:, 1:].tolist():
        row = row[: row.index(EOS)] if EOS in row else row
        out.append([i for i in row if i != PAD])
    return out


class DecoderExport(Decoder):
    """The bundle's ``decoder`` graph: ``Decoder.step`` as ``forward``, one copy of the weights.

    One ONNX model does both greedy-decoding phases: prefill (the segment vectors and BOS
    on an empty cache, P = 0) and incremental steps (one character on the cache, S = 0).
    With P = 0 and the whole text it is the full decoder (teacher forcing: parity,
    calibration). Same parameter names as ``Decoder``, so ``from_onnx`` rebuilds it.
    """

    @classmethod
    def of(cls, decoder: Decoder) -> DecoderExport:
        """An eval-mode copy of ``decoder`` whose ``forward`` is ``step``."""
        export = cls(decoder.cfg)
        export.load_state_dict(decoder.state_dict())
        return export.eval()

    def forward(  # type: ignore[override]
        self,
        prefix: torch.Tensor,
        text: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.step(prefix, text, past_keys, past_values)

    def full(
        self,
        prefix: torch.Tensor,
        text: torch.Tensor,
        prefix_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``Decoder.forward``: the whole sequence without a cache (fixed windows)."""
        return Decoder.forward(self, prefix, text, prefix_lengths)


def parameter_counts() -> dict[str, int]:
    """Exported parameters of each model role at its default config."""
    return {
        "tokenizer": count_parameters(TokenizerExport(TokenizerEncoder())),
        "entropy_lm": count_parameters(EntropyLM()),
        "aggregator": count_parameters(Aggregator()),
        "decoder": count_parameters(Decoder()),
    }


if __name__ == "__main__":
    for role, count in parameter_counts().items():
        print(f"{role:<11} {count:>10,d} / {BUDGETS[role]:>10,d}")
