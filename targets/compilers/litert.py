"""LiteRT: the ONNX model rebuilt as a torch module (``edgetok.train.from_onnx``), wrapped
for fixed windows (``edgetok.train.windowed``) and converted by litert-torch into one
``.tflite`` with a signature per window (``edgetok.windows``); PT2E INT8 through
``edgetok.quantize.litert``. FP32 models keep float32 weights, also where the ONNX source
stores them as float16 (v2): litert-torch's FP16 weight recipe also rounds the float32
biases and norms, and moved the v2 tokenizer's features by up to 0.004 (99.2-99.9 % of
the tokens kept; 24.5 MB instead of 43.2 MB)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetok.bundle import Bundle
from edgetok.targets.compilers import Artifact, Compiler, require

INSTALL = "install the build extra: pip install 'edgetok[build]' (torch, litert-torch)"


class LiteRtCompiler(Compiler):
    backend = "litert"

    def check(self) -> None:
        require("torch", "litert_torch", "ai_edge_litert", install=INSTALL)

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
        import litert_torch

        from edgetok.quantize.litert import LiteRtModel
        from edgetok.train.from_onnx import example_inputs, rebuild
        from edgetok.train.windowed import window_inputs, window_module
        from edgetok.windows import SCHEMES, signature_name

        module = rebuild(source, role)
        model = LiteRtModel(window_module(role, module))
        if int8:
            from edgetok.quantize import get_quantizer

            model = get_quantizer(self.backend).quantize(
                model, role, calib or [], work_dir=work_dir
            )
        # Shorter than every window; segments as wide as the bundle cuts them.
        example = example_inputs(role, module, segment_len=bundle.segmenter.max_len)
        converter = litert_torch
        for window in SCHEMES[role].windows():
            converter = converter.signature(
                signature_name(role, window),
                model.module,
                sample_kwargs=window_inputs(role, example, window),
            )
        out = out_dir / f"{role}.tflite"
        converter.convert(quant_config=model.quant_config).export(str(out))
        # Fixed windows run without the decoder's key/value cache (``WindowedDecoder``).
        entry = bundle.models[role]
        cache = {"past_keys", "past_values", "keys", "values"} if role == "decoder" else set()
        return Artifact(
            out.name,
            "int8" if int8 else "fp32",
            inputs=tuple(spec for spec in entry.inputs if spec.name not in cache),
            outputs=tuple(spec for spec in entry.outputs if spec.name not in cache),
        )
