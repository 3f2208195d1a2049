"""OpenVINO static INT8 through NNCF: ``nncf.quantize`` with the transformer model type,
the performance preset (symmetric INT8 weights and activations; the entropy LM: the mixed
preset, asymmetric activations, ``PRESETS``) and SmoothQuant off; the recipe's float
nodes are an ignored scope. OpenVINO keeps the ONNX node names but splits
some ops (a Conv with bias becomes ``node_conv1d/WithoutBiases`` + an Add named
``node_conv1d``), so each name is a pattern that also matches ``<name>/...``; exact names
alone missed the tokenizer's stem convolutions, which then ran in INT8.

Chosen by measurement (dev bundle tokenizer, 12 held-out utterances, token agreement
with FP32): mixed preset + SmoothQuant (NNCF's transformer default) 92.2 %, mixed
without SmoothQuant 93.6 %, performance + SmoothQuant 94.5 %, performance without
95.7 %; without the transformer model type 91.0 %. (Those were measured before the
ignored scope matched the split stem convolutions.) With it, on 40 held-out utterances
(CPU time, one thread): stem float 99.2 % at 1.95x faster than FP32; stem conv2
quantized 97.1 % at 2.07x.

The entropy LM (v2 bundle, its FP32 tokens of 40 held-out utterances, 6197 tokens):
performance preset entropy MAE 0.0056 nats, boundary F1 0.9910, 1.50x faster than FP32;
mixed 0.0046, 0.9962, 1.47x (SmoothQuant 0.5: 0.0046, 0.9901; the last block or the
feed-forward outputs float: F1 0.991 at 1.22x). End to end, the performance preset's
one moved boundary cost 3 of 344 words (WER +0.87 points), the mixed preset's none. On
the v1 default bundle mixed is closer in entropy (0.0043 vs 0.0049) but not in boundaries
(0.9901 vs 0.9924) and slower (1.36x vs 1.55x).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import nncf
import numpy as np
import onnx
import openvino as ov
from nncf.quantization.advanced_parameters import (
    AdvancedQuantizationParameters,
    AdvancedSmoothQuantParameters,
)

from edgetok.quantize import float_onnx_nodes

#: NNCF presets that differ from ``PERFORMANCE``, per role (measured above).
PRESETS: Final = {"entropy_lm": nncf.QuantizationPreset.MIXED}


class OpenVinoQuantizer:
    """(FP32 ONNX path, its ``openvino.Model``) -> INT8 ``openvino.Model``."""

    backend = "openvino"

    def quantize(
        self,
        model: tuple[Path, ov.Model],
        role: str,
        data: Sequence[dict[str, np.ndarray]],
        *,
        work_dir: Path,
    ) -> ov.Model:
        source, ov_model = model
        ignored = float_onnx_nodes(onnx.load(str(source)), role)
        return nncf.quantize(
            ov_model,
            nncf.Dataset(list(data)),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=PRESETS.get(role, nncf.QuantizationPreset.PERFORMANCE),
            subset_size=len(data),
            advanced_parameters=AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)  # -1: off
            ),
            # OpenVINO keeps ONNX node names, splitting some ops: ``node_conv1d/WithoutBiases``.
            ignored_scope=nncf.IgnoredScope(
                patterns=[f"{re.escape(name)}(/.*)?$" for name in ignored], validate=False
            ),
        )
