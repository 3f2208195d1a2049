"""SpecAugment for training (log-mel comes from ``edgetok.frontend``, cached per corpus)."""

from __future__ import annotations

import torch
from torch import nn


class SpecAugment(nn.Module):
    """Frequency and time masking (training mode only) of log-mel [B, T, F].

    Each example gets ``freq_masks`` bands of up to ``freq_width`` bins and ``time_masks``
    spans of up to ``min(time_width, time_fraction * length)`` frames, filled with the
    example's mean log-mel over its valid frames.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 15,
        time_masks: int = 2,
        time_width: int = 40,
        time_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        self.freq_masks = freq_masks
        self.freq_width = freq_width
        self.time_masks = time_masks
        self.time_width = time_width
        self.time_fraction = time_fraction

    @staticmethod
    def _bands(count: int, max_width: torch.Tensor, size: int) -> torch.Tensor:
        """[B, size] bool: ``count`` random spans per row, each < max_width[b] + 1 long."""
        b = max_width.shape[0]
        shape = (b, count)
        width = (torch.rand(shape, device=max_width.device) * (max_width[:, None] + 1)).long()
        width = width.clamp(max=size)
        start = (torch.rand(shape, device=max_width.device) * (size - width + 1)).long()
        idx = torch.arange(size, device=max_width.device)
        inside = (idx >= start[..., None]) & (idx < (start + width)[..., None])
        return inside.any(dim=1)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return mel
        b, t, f = mel.shape
        if lengths is None:
            lengths = torch.full((b,), t, device=mel.device)
        valid = torch.arange(t, device=mel.device)[None, :] < lengths[:, None]
        fill = (mel * valid[..., None]).sum(dim=(1, 2)) / (lengths.clamp(min=1) * f)
        t_max = torch.minimum(
            torch.full_like(lengths, self.time_width), (lengths * self.time_fraction).long()
        )
        f_max = torch.full_like(lengths, self.freq_width)
        mask = (
            self._bands(self.time_masks, t_max, t)[:, :, None]
            | self._bands(self.freq_masks, f_max, f)[:, None, :]
        )
        return torch.where(mask, fill[:, None, None].to(mel.dtype), mel)
