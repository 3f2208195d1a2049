"""Whisper's encoder and decoder as PyTorch modules, loaded from a CTranslate2 model file.

The modules follow the original architecture (pre-LN blocks, exact GELU, sinusoidal
encoder positions, learned decoder positions, output projection tied to the token
embedding). Unlike the original they run at any input length: the encoder slices its
positional encodings to the number of frames it is given, and both take optional
length masks so a batch can mix lengths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgetok.ct2 import CT2Model, read_ct2

__all__ = [
    "WhisperDims",
    "WhisperDecoder",
    "WhisperEncoder",
    "greedy",
    "load_whisper",
]


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of one Whisper model, read from its weights."""

    n_mels: int
    dim: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    vocab: int
    max_frames: int  # encoder positions (after the stride-2 conv)
    max_text: int  # decoder positions

    @classmethod
    def of(cls, model: CT2Model) -> WhisperDims:
        def layers(prefix: str) -> int:
            found = (re.match(rf"{prefix}/layer_(\d+)/", k) for k in model.variables)
            return len({m.group(1) for m in found if m})

        conv1 = model["encoder/conv1/weight"]
        embed = model["decoder/embeddings/weight"]
        return cls(
            n_mels=conv1.shape[1],
            dim=conv1.shape[0],
            heads=model.scalar("encoder/num_heads"),
            encoder_layers=layers("encoder"),
            decoder_layers=layers("decoder"),
            vocab=embed.shape[0],
            max_frames=model["encoder/position_encodings/encodings"].shape[0],
            max_text=model["decoder/position_encodings/encodings"].shape[0],
        )


class MultiHeadAttention(nn.Module):
    """Whisper attention: q, k, v projections (k without bias), then the output."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """x [B, T, D] over itself or ``context`` [B, S, D]; ``mask`` bool, True = attend."""
        ctx = x if context is None else context
        q, k, v = self.split(self.query(x)), self.split(self.key(ctx)), self.split(self.value(ctx))
        return self.attend(q, k, v, mask, is_causal)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Heads [B, H, T, hd] attended and merged back to [B, T, D]."""
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.mlp_ln = nn.LayerNorm(dim)
        self.mlp = _mlp(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), mask=mask)
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """log-mel [B, T, n_mels] (Whisper's scaling) -> features [B, ceil(T / 2), dim]."""

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, dims.dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dims.dim, dims.dim, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(dims.max_frames, dims.dim))
        self.blocks = nn.ModuleList(
            EncoderBlock(dims.dim, dims.heads) for _ in range(dims.encoder_layers)
        )
        self.ln_post = nn.LayerNorm(dims.dim)

    @staticmethod
    def out_lengths(lengths: torch.Tensor) -> torch.Tensor:
        """Frames after the stride-2 convolution for ``lengths`` mel frames."""
        return (lengths - 1) // 2 + 1

    def forward(
        self, mel: torch.Tensor, lengths: torch.Tensor | None = None, layers: int | None = None
    ) -> torch.Tensor:
        """The output of the first ``layers`` blocks (all, then ``ln_post``, by default).

        ``lengths`` [B] (mel frames) masks padded frames out of attention; rows past a
        length hold values that the caller must ignore.
        """
        x = mel.transpose(1, 2)
        if lengths is not None:  # padded frames are zero before each conv, as past the end
            frames = torch.arange(x.shape[2], device=x.device)[None] < lengths[:, None]
            x = F.gelu(self.conv1(x * frames[:, None])) * frames[:, None]
        else:
            x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        t = x.shape[1]
        if t > self.dims.max_frames:
            raise ValueError(f"{t} encoder frames exceed Whisper's {self.dims.max_frames}")
        x = x + self.positions[:t]
        mask = None
        if lengths is not None:
            valid = torch.arange(t, device=x.device)[None] < self.out_lengths(lengths)[:, None]
            mask = valid[:, None, None, :]
        n = len(self.blocks) if layers is None else layers
        for block in self.blocks[:n]:
            x = block(x, mask)
        return self.ln_post(x) if n == len(self.blocks) else x


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.cross_attn_ln = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, heads)
        self.mlp_ln = nn.LayerNorm(dim)
        self.mlp = _mlp(dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), is_causal=True)
        x = x + self.cross_attn(self.cross_attn_ln(x), context, context_mask)
        return x + self.mlp(self.mlp_ln(x))

    def cross_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values [B, H, S, hd] of ``context`` [B, S, D]."""
        attn = self.cross_attn
        return attn.split(attn.key(context)), attn.split(attn.value(context))

    def step(
        self,
        x: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` (eval) for new positions x [B, U, D] after P cached ones: returns
        (y, self-attention keys and values [B, H, P + U, hd])."""
        h = self.attn_ln(x)
        attn = self.attn
        k = torch.cat([past_k, attn.split(attn.key(h))], dim=2)
        v = torch.cat([past_v, attn.split(attn.value(h))], dim=2)
        total, new = k.shape[2], x.shape[1]
        mask = torch.arange(total)[None, :] <= (torch.arange(new) + (total - new))[:, None]
        x = x + attn.attend(attn.split(attn.query(h)), k, v, mask)
        cross = self.cross_attn
        x = x + cross.attend(cross.split(cross.query(self.cross_attn_ln(x))), cross_k, cross_v)
        return x + self.mlp(self.mlp_ln(x)), k, v


class WhisperDecoder(nn.Module):
    """Text tokens [B, U] attending to ``context`` [B, S, dim] -> logits [B, U, vocab]."""

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.token_embedding = nn.Embedding(dims.vocab, dims.dim)
        self.positions = nn.Parameter(torch.zeros(dims.max_text, dims.dim))
        self.blocks = nn.ModuleList(
            DecoderBlock(dims.dim, dims.heads) for _ in range(dims.decoder_layers)
        )
        self.ln = nn.LayerNorm(dims.dim)

    def forward(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor,
        context_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        u = tokens.shape[1]
        if u > self.dims.max_text:
            raise ValueError(f"{u} text tokens exceed Whisper's {self.dims.max_text}")
        x = self.token_embedding(tokens) + self.positions[:u]
        mask = None
        if context_lengths is not None:
            s = context.shape[1]
            valid = torch.arange(s, device=context.device)[None] < context_lengths[:, None]
            mask = valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, context, mask)
        return self.ln(x) @ self.token_embedding.weight.T

    def cross_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's cross-attention keys and values [layers, B, H, S, hd]."""
        pairs = [block.cross_kv(context) for block in self.blocks]
        return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])

    def step(
        self,
        tokens: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits [B, U, vocab] of ``tokens`` [B, U] that follow P cached positions
        (``past_k``/``past_v`` [layers, B, H, P, hd], P may be 0), and the caches
        extended to P + U: one graph for the prompt and for each next token."""
        offset = past_k.shape[3]
        x = self.token_embedding(tokens) + self.positions[offset : offset + tokens.shape[1]]
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.step(x, cross_k[i], cross_v[i], past_k[i], past_v[i])
            keys.append(k)
            values.append(v)
        logits = self.ln(x) @ self.token_embedding.weight.T
        return logits, torch.stack(keys), torch.stack(values)


def _load_attention(
    attn: MultiHeadAttention, w: dict[str, torch.Tensor], prefix: str, fused_qkv: bool
) -> None:
    dim = attn.out.weight.shape[0]
    if fused_qkv:
        weight, bias = w[f"{prefix}/linear_0/weight"], w[f"{prefix}/linear_0/bias"]
        parts = [(weight[i * dim : (i + 1) * dim], bias[i * dim : (i + 1) * dim]) for i in range(3)]
        out = "linear_1"
    else:  # cross-attention: query, then fused key/value over the context
        kv_w, kv_b = w[f"{prefix}/linear_1/weight"], w[f"{prefix}/linear_1/bias"]
        parts = [
            (w[f"{prefix}/linear_0/weight"], w[f"{prefix}/linear_0/bias"]),
            (kv_w[:dim], kv_b[:dim]),
            (kv_w[dim:], kv_b[dim:]),
        ]
        out = "linear_2"
    (qw, qb), (kw, _), (vw, vb) = parts
    attn.query.weight.copy_(qw)
    attn.query.bias.copy_(qb)
    attn.key.weight.copy_(kw)
    attn.value.weight.copy_(vw)
    attn.value.bias.copy_(vb)
    attn.out.weight.copy_(w[f"{prefix}/{out}/weight"])
    attn.out.bias.copy_(w[f"{prefix}/{out}/bias"])


def _load_norm(norm: nn.LayerNorm, w: dict[str, torch.Tensor], prefix: str) -> None:
    norm.weight.copy_(w[f"{prefix}/gamma"])
    norm.bias.copy_(w[f"{prefix}/beta"])


def _load_mlp(mlp: nn.Sequential, w: dict[str, torch.Tensor], prefix: str) -> None:
    for index, name in ((0, "linear_0"), (2, "linear_1")):
        mlp[index].weight.copy_(w[f"{prefix}/{name}/weight"])
        mlp[index].bias.copy_(w[f"{prefix}/{name}/bias"])


def _load_self_attention_and_mlp(
    block: EncoderBlock | DecoderBlock, w: dict[str, torch.Tensor], prefix: str
) -> None:
    """The parts encoder and decoder blocks share: self-attention, MLP and their norms."""
    _load_norm(block.attn_ln, w, f"{prefix}/self_attention/layer_norm")
    _load_attention(block.attn, w, f"{prefix}/self_attention", fused_qkv=True)
    _load_norm(block.mlp_ln, w, f"{prefix}/ffn/layer_norm")
    _load_mlp(block.mlp, w, f"{prefix}/ffn")


@torch.no_grad()
def load_whisper(source: CT2Model | str | Path) -> tuple[WhisperEncoder, WhisperDecoder]:
    """Encoder and decoder (float32, eval mode) with the weights of a CTranslate2 Whisper."""
    model = source if isinstance(source, CT2Model) else read_ct2(source)
    if model.spec != "WhisperSpec":
        raise ValueError(f"not a Whisper model: spec {model.spec!r}")
    dims = WhisperDims.of(model)
    w = {
        k: torch.from_numpy(np.asarray(v, dtype=np.float32))
        for k, v in model.variables.items()
        if np.issubdtype(v.dtype, np.floating)
    }
    encoder, decoder = WhisperEncoder(dims), WhisperDecoder(dims)

    encoder.conv1.weight.copy_(w["encoder/conv1/weight"])
    encoder.conv1.bias.copy_(w["encoder/conv1/bias"])
    encoder.conv2.weight.copy_(w["encoder/conv2/weight"])
    encoder.conv2.bias.copy_(w["encoder/conv2/bias"])
    encoder.positions.copy_(w["encoder/position_encodings/encodings"])
    for i, block in enumerate(encoder.blocks):
        _load_self_attention_and_mlp(block, w, f"encoder/layer_{i}")
    _load_norm(encoder.ln_post, w, "encoder/layer_norm")

    decoder.token_embedding.weight.copy_(w["decoder/embeddings/weight"])
    decoder.positions.copy_(w["decoder/position_encodings/encodings"])
    for i, block in enumerate(decoder.blocks):
        p = f"decoder/layer_{i}"
        _load_self_attention_and_mlp(block, w, p)
        _load_norm(block.cross_attn_ln, w, f"{p}/attention/layer_norm")
        _load_attention(block.cross_attn, w, f"{p}/attention", fused_qkv=False)
    _load_norm(decoder.ln, w, "decoder/layer_norm")
    return encoder.eval(), decoder.eval()


@torch.no_grad()
def greedy(
    decoder: WhisperDecoder,
    context: torch.Tensor,
    prompt: list[int],
    eot: int,
    max_tokens: int = 224,
) -> list[int]:
    """Greedy decoding of one utterance: the token ids after ``prompt`` up to ``eot``.

    ``context`` [1, S, dim]; reruns the whole text per token (a reference, not fast)."""
    ids = list(prompt)
    for _ in range(max_tokens):
        step = decoder(torch.tensor([ids]), context)[0, -1]
        token = int(step.argmax())
        if token == eot:
            break
        ids.append(token)
    return ids[len(prompt) :]
