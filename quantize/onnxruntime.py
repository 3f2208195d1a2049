"""ONNX Runtime static INT8: ``quant_pre_process`` then ``quantize_static`` to QDQ.

Per-channel S8 weights, U8 activations, MinMax calibration (the histogram methods need
one fixed length; MinMax takes every utterance at its own length, shared/TOOLCHAIN.md),
only Conv/MatMul/Gemm quantized and the ``quantize`` recipe's float nodes excluded (its
attention products too: in QDQ mode ``MatMulConstBOnly`` is ignored, and a quantized
attention MatMul makes ONNX Runtime fuse the softmax into a slow ``QLinearSoftmax``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgetok.quantize import float_onnx_nodes, single_file

OP_TYPES = ["Conv", "MatMul", "Gemm"]


class _Reader(CalibrationDataReader):
    def __init__(self, data: Sequence[dict[str, np.ndarray]]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter(data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


class OnnxRuntimeQuantizer:
    """FP32 ONNX path -> QDQ INT8 ONNX path (in ``work_dir``)."""

    backend = "onnxruntime"
    activation_type = QuantType.QUInt8
    weight_type = QuantType.QInt8
    #: MatMul/Gemm outputs stay float: ORT then runs MatMulIntegerToFloat with the bias
    #: fused, faster and closer to FP32 than requantizing (2.1x vs 1.9x FP32 speed, 97.1 vs
    #: 96.8 % token agreement on the dev bundle's tokenizer).
    extra_options: dict[str, Any] = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}

    def quantize(
        self, model: Path, role: str, data: Sequence[dict[str, np.ndarray]], *, work_dir: Path
    ) -> Path:
        work_dir.mkdir(parents=True, exist_ok=True)
        prepared = work_dir / f"{role}.pre.onnx"
        out = work_dir / f"{role}.{self.backend}.int8.onnx"
        # Symbolic shape inference fails on the exporter's symbolic dims (T//2); ONNX's own
        # shape inference and ORT's optimizer still run.
        quant_pre_process(
            str(single_file(model, work_dir)), str(prepared), skip_symbolic_shape=True
        )
        quantize_static(
            str(prepared),
            str(out),
            _Reader(data),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=OP_TYPES,
            per_channel=True,
            activation_type=self.activation_type,
            weight_type=self.weight_type,
            calibrate_method=CalibrationMethod.MinMax,
            # Named on the exported model: pre-processing keeps node names, not the metadata.
            nodes_to_exclude=float_onnx_nodes(onnx.load(str(model)), role),
            extra_options={**OnnxRuntimeQuantizer.extra_options, **self.extra_options},
        )
        prepared.unlink()
        return out
