"""OpenVINO: the ONNX model converted to IR (``<role>.xml`` + ``<role>.bin``, FP32 weights),
quantized by NNCF (``edgetok.quantize.openvino``) for INT8."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetok.bundle import Bundle
from edgetok.targets.compilers import Artifact, Compiler, require

INSTALL = "install the build extra: pip install 'edgetok[build]' (openvino, nncf)"


class OpenVinoCompiler(Compiler):
    backend = "openvino"

    def check(self) -> None:
        require("openvino", "nncf", "onnx", install=INSTALL)

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
        import openvino as ov

        model = ov.convert_model(str(source))
        if int8:
            from edgetok.quantize import get_quantizer

            model = get_quantizer(self.backend).quantize(
                (source, model), role, calib or [], work_dir=work_dir
            )
        out = out_dir / f"{role}.xml"
        ov.save_model(model, str(out), compress_to_fp16=False)
        return Artifact(out.name, "int8" if int8 else "fp32")
