"""The server side of the token wire (issue 19): v2 token ids -> encoder frames.

A device that sends its FSQ token ids (10 bits each, or fewer entropy-coded) sends less
than any segment code, and loses nothing the device itself has; but the v2 aggregator
reads encoder frames, which the server does not have. ``TokenReader`` rebuilds them: each
token's FSQ grid point (plus a learned per-id vector that starts at zero) goes through a
bidirectional transformer over the utterance and out to the encoder's width. The first
blocks can start from the semantic run's CTC post-net, which already reads these codes in
context. The default aggregator and decoder then read the rebuilt frames as they read the
real ones, so a bundle adds one small graph and keeps one decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgetok.train.models import Block, Rotary, init_weights

__all__ = ["TokenReader", "TokenReaderConfig"]


@dataclass(frozen=True)
class TokenReaderConfig:
    dim: int = 256
    layers: int = 4
    heads: int = 4
    frame_dim: int = 384  # the frozen encoder's width
    dropout: float = 0.1


class TokenReader(nn.Module):
    """Token ids [B, T] -> estimated encoder frames [B, T, frame_dim]."""

    def __init__(self, codebook: np.ndarray, cfg: TokenReaderConfig = TokenReaderConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        grid = torch.from_numpy(np.asarray(codebook, np.float32))
        self.register_buffer("grid", grid)
        self.up = nn.Linear(grid.shape[1], cfg.dim)
        self.embed = nn.Embedding(grid.shape[0], cfg.dim)
        self.rotary = Rotary(cfg.dim // cfg.heads)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, 4 * cfg.dim, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.frame_dim)
        # The output is in units of the frames' spread around their mean (set_frame_stats):
        # Whisper's frames reach |13| in a few dims, far for an optimiser taking ~lr a step.
        self.register_buffer("frame_mean", torch.zeros(cfg.frame_dim))
        self.register_buffer("frame_std", torch.ones(cfg.frame_dim))
        init_weights(self)
        nn.init.zeros_(self.embed.weight)

    @property
    def vocab_size(self) -> int:
        return int(self.grid.shape[0])

    def set_frame_stats(self, frames: np.ndarray) -> None:
        """The mean and spread per dim of real encoder frames [N, frame_dim]."""
        frames = np.asarray(frames, np.float32)
        self.frame_mean.copy_(torch.from_numpy(frames.mean(0)))
        self.frame_std.copy_(torch.from_numpy(frames.std(0) + 1e-3))

    def warm_start(self, bottleneck: nn.Module) -> None:
        """Take ``up`` and the first blocks from a ``SemanticBottleneck``'s CTC post-net
        (same width and heads): they already read these codes in context."""
        self.up.load_state_dict(bottleneck.up.state_dict())
        for mine, theirs in zip(self.blocks, bottleneck.post, strict=False):
            mine.load_state_dict(theirs.state_dict())

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """tokens int64 [B, T] (< vocab_size), lengths [B] (None: every row is whole)."""
        t = tokens.shape[1]
        x = self.up(self.grid[tokens]) + self.embed(tokens)
        mask = None
        if lengths is not None:
            valid = torch.arange(t, device=tokens.device)[None] < lengths[:, None]
            mask = valid[:, None, None, :]
        rope = self.rotary(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x, mask, rope)
        return self.frame_mean + self.frame_std * self.out(self.norm(x))
