"""OpenVINO static INT8 through NNCF: ``nncf.quantize`` with the transformer model type and
the mixed preset (symmetric weights, asymmetric activations); the recipe's float nodes
(by their ONNX names, which OpenVINO keeps) are an ignored scope."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nncf
import numpy as np
import onnx
import openvino as ov

from quantize import float_onnx_nodes


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
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(data),
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        )
