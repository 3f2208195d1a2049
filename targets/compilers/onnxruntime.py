"""ONNX Runtime: an offline-optimized FP32 ONNX (portable basic-level graph rewrites, in
one file: external data is taken in), or the QDQ INT8 ONNX of ``edgetok.quantize.onnxruntime``."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetok.bundle import Bundle
from edgetok.targets.compilers import Artifact, Compiler, require

INSTALL = "install it with: pip install onnxruntime onnx"


class OnnxRuntimeCompiler(Compiler):
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
            from edgetok.quantize import get_quantizer

            quantized = get_quantizer(self.backend).quantize(
                source, role, calib or [], work_dir=work_dir
            )
            shutil.move(quantized, out)
            return Artifact(out.name, "int8")
        from edgetok.quantize import single_file

        optimize(single_file(source, work_dir), out)
        return Artifact(out.name, "fp32")


def optimize(source: Path, out: Path) -> None:
    """Write ``source`` after ONNX Runtime's basic (provider-independent) graph rewrites.

    Constant folding is left to the session that loads it: it would turn weights stored
    as float16 (a ``Cast`` to float32, ``edgetok.train.onnx_fp16``) into float32 ones and
    double the file (v2 tokenizer: 40 instead of 20 MB)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(
        str(source),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=["ConstantFolding"],
    )
