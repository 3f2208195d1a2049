"""LiteRT static INT8 through litert-torch's PT2E quantizer (torchao ``prepare_pt2e`` /
``convert_pt2e``): symmetric per-channel INT8 weights and INT8 activations on Linear and
Conv only (its full-graph recipe was slower than FP32, shared/TOOLCHAIN.md), the
recipe's float modules left out. The module is exported once with dynamic axes and
calibrated on every utterance at its own length (cut to the largest window); each fixed
window is cut from it at conversion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
from litert_torch.quantize.quant_config import QuantConfig
from torch import nn
from torchao.quantization.pt2e import move_exported_model_to_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from edgetok.quantize import is_kept
from edgetok.train.windowed import window_inputs
from edgetok.windows import SCHEMES, clip_inputs


@dataclass(frozen=True)
class LiteRtModel:
    """A fixed-window torch module and, once quantized, the config its conversion needs."""

    module: nn.Module
    quant_config: Any = None


def _dynamic_shapes(role: str, sample: dict[str, torch.Tensor]) -> dict[str, Any]:
    scheme = SCHEMES[role]
    dims = {
        axis: torch.export.Dim(axis, min=4, max=max(sizes)) for axis, sizes in scheme.sizes.items()
    }
    return {
        name: {dim: dims[axis] for dim, axis in scheme.inputs.get(name, {}).items()} or None
        for name in sample
    }


class _RecipeQuantizer(PT2EQuantizer):
    """Linear/Conv annotators only; nodes of the recipe's float modules left out."""

    STATIC_OPS = ["linear", "addmm", "conv"]

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.set_global(get_symmetric_quantization_config(is_per_channel=True))

    def _annotate_for_static_quantization_config(
        self, model: torch.fx.GraphModule
    ) -> torch.fx.GraphModule:
        self._annotate_all_static_patterns(model, self.global_config, self._quantized)
        return model

    def _quantized(self, node: torch.fx.Node) -> bool:
        # nn_module_stack values are (qualified module name, type name), outermost first.
        stack = node.meta.get("nn_module_stack", {}).values()
        return not any(is_kept(name, self.role) for name, _ in stack)


class LiteRtQuantizer:
    """``LiteRtModel`` (float) -> ``LiteRtModel`` (PT2E-converted module + quant config)."""

    backend = "litert"

    def quantize(
        self,
        model: LiteRtModel,
        role: str,
        data: Sequence[dict[str, np.ndarray]],
        *,
        work_dir: Path,
    ) -> LiteRtModel:
        scheme = SCHEMES[role]
        largest = {axis: max(sizes) for axis, sizes in scheme.sizes.items()}
        samples = [window_inputs(role, clip_inputs(scheme, feeds, largest)) for feeds in data]
        if not samples:
            raise ValueError(f"no calibration data for {role}")
        quantizer = _RecipeQuantizer(role)
        exported = torch.export.export(
            model.module, (), samples[0], dynamic_shapes=_dynamic_shapes(role, samples[0])
        ).module()
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for sample in samples:
                prepared(**sample)
        converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
        return LiteRtModel(converted, QuantConfig(pt2e_quantizer=quantizer))
