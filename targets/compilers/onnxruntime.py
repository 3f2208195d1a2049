"""ONNX Runtime: an offline-optimized FP32 ONNX (portable basic-level graph rewrites), or
the QDQ INT8 ONNX of ``quantize.onnxruntime``."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetok.bundle import Bundle
from targets.compilers import Artifact, require

INSTALL = "install it with: pip install onnxruntime onnx"


class OnnxRuntimeCompiler:
    backend = "onnxruntime"

    def check(self) -> None:
        require("onnxruntime", "onnx", install=INSTALL)

    def compile(
        self,
        bundle: Bundle,
        role: str,
        out_dir: Path,
        *,
        int8: bool,
        calib: Sequence[dict[str, np.ndarray]] | None,
        work_dir: Path,
    ) -> Artifact:
        source = bundle.path_of(role)
        out = out_dir / f"{role}.onnx"
        if int8:
            from quantize import get_quantizer

            quantized = get_quantizer(self.backend).quantize(
                source, role, calib or [], work_dir=work_dir
            )
            shutil.move(quantized, out)
            return Artifact(out.name, "int8")
        optimize(source, out)
        return Artifact(out.name, "fp32")


def optimize(source: Path, out: Path) -> None:
    """Write ``source`` after ONNX Runtime's basic (provider-independent) graph rewrites."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
