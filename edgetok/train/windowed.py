"""Torch modules for fixed windows (``edgetok.windows``): the exported models, taking the
real length of each masked axis as an extra ``<AXIS>_valid`` int32 [1] input.

Their outputs on the real part of a padded window equal the exported model's outputs on
the unpadded input; ``window_module`` wraps a rebuilt model of any role, and
``window_inputs`` makes the padded keyword inputs for one window.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from edgetok.train.fit_semantic import SemanticTokenizerExport
from edgetok.train.models import Decoder, TokenizerExport, _valid
from edgetok.windows import SCHEMES, Window, pad_inputs, valid_input

__all__ = ["window_inputs", "window_module"]


class WindowedTokenizer(nn.Module):
    """``mel`` [1, W, 80], ``T_valid`` [1] -> ``features`` [1, W/2, D]; padding masked."""

    def __init__(self, tokenizer: TokenizerExport) -> None:
        super().__init__()
        self.stem = tokenizer.stem
        self.blocks = tokenizer.blocks

    def forward(self, mel: torch.Tensor, T_valid: torch.Tensor) -> torch.Tensor:  # noqa: N803
        x, lengths = self.stem(mel, T_valid.to(torch.int64))
        mask = _valid(lengths, x.shape[1])[:, None, None]
        for block in self.blocks:
            x = block(x, mask)
        return x


class WindowedSemanticTokenizer(nn.Module):
    """v2: ``mel`` [1, W, 80], ``T_valid`` [1] -> ``features`` [1, W/2, d] and ``frames``
    [1, W/2, 384]; padded mel frames are zeroed before each conv and masked out of the
    encoder's and the bottleneck block's attention."""

    def __init__(self, tokenizer: SemanticTokenizerExport) -> None:
        super().__init__()
        self.scale = tokenizer.scale
        self.encoder = tokenizer.encoder
        self.bottleneck = tokenizer.bottleneck

    def forward(
        self,
        mel: torch.Tensor,
        T_valid: torch.Tensor,  # noqa: N803
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = T_valid.to(torch.int64)
        frames = self.encoder(self.scale(mel), lengths)
        mask = _valid(self.encoder.out_lengths(lengths), frames.shape[1])[:, None, None]
        return self.bottleneck.bounded(frames, mask), frames


class WindowedDecoder(nn.Module):
    """``prefix`` [1, S, P], ``text`` [1, U], ``S_valid`` [1] -> ``logits`` [1, U, V].

    The whole sequence without a key/value cache, also for a rebuilt cached decoder
    (``DecoderExport``): a fixed window cannot grow a cache, so each character reruns it.
    """

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(
        self,
        prefix: torch.Tensor,
        text: torch.Tensor,
        S_valid: torch.Tensor,  # noqa: N803
    ) -> torch.Tensor:
        return Decoder.forward(self.decoder, prefix, text, S_valid.to(torch.int64))


def window_module(role: str, module: nn.Module) -> nn.Module:
    """The fixed-window form of a rebuilt ``role`` model (causal or row-wise models as is)."""
    if isinstance(module, SemanticTokenizerExport):
        return WindowedSemanticTokenizer(module).eval()
    if role == "tokenizer":
        return WindowedTokenizer(module).eval()
    if role == "decoder":
        return WindowedDecoder(module).eval()
    return module.eval()


def window_inputs(
    role: str, inputs: Mapping[str, np.ndarray], window: Window | None = None
) -> dict[str, torch.Tensor]:
    """Keyword tensors of ``inputs`` padded to ``window`` (default: their own lengths),
    with the ``<AXIS>_valid`` inputs. Inputs the window scheme does not name (the
    decoder's empty ``past_keys``/``past_values``) are left out: windows run uncached."""
    scheme = SCHEMES[role]
    lengths = {
        axis: int(inputs[name].shape[dim])
        for name, dims in scheme.inputs.items()
        if name in inputs
        for dim, axis in dims.items()
    }
    feeds = pad_inputs(scheme, inputs, window or lengths, lengths)
    order = [*(n for n in inputs if n in scheme.inputs), *map(valid_input, scheme.valid)]
    return {name: torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in order}
