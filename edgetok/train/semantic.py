"""The v2 semantic bottleneck: finite scalar quantization (FSQ) on Whisper encoder features,
trained with a character CTC loss so the tokens keep what speech recognition needs.

``SemanticBottleneck``: features [B, T, 384] -> one trainable pre-LN block -> a linear map
to ``len(levels)`` dims, bounded per dim (``FSQ.bound``) and rounded to a grid of
``prod(levels)`` points (the token ids) -> a training-only post-net (linear up, two
blocks, CTC head). CTC through a 4-dim bottleneck does not leave its all-blank plateau
(measured: loss stuck at 2.9, codes collapsing to a few dozen, while without the
bottleneck it leaves it in 60-90 steps), so training starts with a bypass: the post-net
also reads ``bypass_weight`` x a linear map of the unquantized features, and the weight
falls from 1 to 0 early in training (``bypass_schedule``); from then on, and in every
evaluation, the tokens are the only path. Only the part up to ``bound`` is exported: the
device rounds with ``nearest_centroid`` against the grid (``FSQ.codebook``), which for a
Cartesian grid is per-dim rounding, so the device path of v1 (features -> nearest
centroid) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgetok.train.models import CHAR_VOCAB_SIZE, CTC_BLANK, Block, Rotary, init_weights

__all__ = ["FSQ", "BottleneckConfig", "SemanticBottleneck", "bypass_schedule"]


def bypass_schedule(step: int, hold: int) -> float:
    """The bypass weight at ``step``: 1 for ``hold`` steps, then down to 0 over ``2 hold``."""
    if step < hold:
        return 1.0
    return max(0.0, 1.0 - (step - hold) / (2 * hold))


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023) with ``levels`` values per dim."""

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        if any(n < 2 for n in levels):
            raise ValueError(f"every FSQ level must be >= 2, got {levels}")
        self.levels = tuple(levels)
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("half_width", (lv - 1) / 2, persistent=False)
        basis = np.concatenate([[1], np.cumprod(levels[:-1])]).astype(np.int64)
        self.register_buffer("basis", torch.from_numpy(basis), persistent=False)

    @property
    def size(self) -> int:
        return int(np.prod(self.levels))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., d] -> values in (-half, half) per dim; the code of each dim is the
        nearest of ``-half, -half + 1, ..., half`` (``levels`` values)."""
        return torch.tanh(z) * self.half_width

    def digits(self, bounded: torch.Tensor) -> torch.Tensor:
        """Per-dim code digits in ``0 .. levels - 1`` (float, no gradient)."""
        return torch.round(bounded + self.half_width)

    def grid(self, bounded: torch.Tensor) -> torch.Tensor:
        """The nearest grid point, with a straight-through gradient."""
        rounded = self.digits(bounded) - self.half_width
        return bounded + (rounded - bounded).detach()

    def ids(self, bounded: torch.Tensor) -> torch.Tensor:
        """Token ids int64 [...] of bounded values [..., d]."""
        return (self.digits(bounded).long() * self.basis).sum(-1)

    def codebook(self) -> np.ndarray:
        """float32 [size, d]: the grid point of every id (row i = code of id i)."""
        ids = np.arange(self.size)
        digits = (ids[:, None] // self.basis.numpy()[None]) % np.array(self.levels)[None]
        return (digits - self.half_width.numpy()[None]).astype(np.float32)


@dataclass(frozen=True)
class BottleneckConfig:
    in_dim: int = 384
    heads: int = 6
    levels: tuple[int, ...] = (8, 5, 5, 5)
    post_dim: int = 256
    post_layers: int = 2
    post_heads: int = 4
    dropout: float = 0.1
    ctc_vocab: int = CHAR_VOCAB_SIZE


class SemanticBottleneck(nn.Module):
    """Frozen-encoder features -> FSQ tokens -> (training only) character CTC."""

    def __init__(self, cfg: BottleneckConfig = BottleneckConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.pre = Block(cfg.in_dim, cfg.heads, 4 * cfg.in_dim, cfg.dropout)
        self.pre_norm = nn.LayerNorm(cfg.in_dim)
        self.down = nn.Linear(cfg.in_dim, len(cfg.levels))
        self.fsq = FSQ(cfg.levels)
        self.up = nn.Linear(len(cfg.levels), cfg.post_dim)
        self.bypass = nn.Linear(cfg.in_dim, cfg.post_dim)
        self.post = nn.ModuleList(
            Block(cfg.post_dim, cfg.post_heads, 4 * cfg.post_dim, cfg.dropout)
            for _ in range(cfg.post_layers)
        )
        self.rotary = Rotary(cfg.post_dim // cfg.post_heads)
        self.post_norm = nn.LayerNorm(cfg.post_dim)
        self.ctc_head = nn.Linear(cfg.post_dim, cfg.ctc_vocab)
        init_weights(self)

    def bounded(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features [B, T, in_dim] -> bounded codes [B, T, d] (what the device rounds)."""
        return self._bounded(self.pre(features, mask))

    def _bounded(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fsq.bound(self.down(self.pre_norm(hidden)))

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, bypass_weight: float = 0.0
    ) -> dict[str, torch.Tensor]:
        t = features.shape[1]
        valid = torch.arange(t, device=features.device)[None] < lengths[:, None]
        mask = valid[:, None, None, :]
        hidden = self.pre(features, mask)
        bounded = self._bounded(hidden)
        x = self.up(self.fsq.grid(bounded))
        if bypass_weight:
            x = x + bypass_weight * self.bypass(hidden)
        rope = self.rotary(torch.arange(t, device=features.device))
        for block in self.post:
            x = block(x, mask, rope)
        return {
            "ids": self.fsq.ids(bounded),
            "ctc_logits": self.ctc_head(self.post_norm(x)),
        }

    def ctc_loss(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        bypass_weight: float = 0.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self(features, lengths, bypass_weight)
        log_probs = F.log_softmax(out["ctc_logits"].float(), dim=-1).transpose(0, 1)
        loss = F.ctc_loss(
            log_probs, targets, lengths, target_lengths, blank=CTC_BLANK, zero_infinity=True
        )
        return loss, out
