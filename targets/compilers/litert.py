"""LiteRT: the ONNX model rebuilt as a torch module (``edgetok.train.from_onnx``), wrapped
for fixed windows (``edgetok.train.windowed``) and converted by litert-torch into one
``.tflite`` with a signature per window (``edgetok.windows``); PT2E INT8 through
``quantize.litert``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetok.bundle import Bundle
from targets.compilers import Artifact, Compiler, require

INSTALL = "install the build extra: pip install 'edgetok[build]' (torch, litert-torch)"


class LiteRtCompiler(Compiler):
    backend = "litert"

    def check(self) -> None:
        require("torch", "litert_torch", "ai_edge_litert", install=INSTALL)

    def unsupported(self, bundle: Bundle) -> str | None:
        """v2 models: ``from_onnx`` rebuilds v1's architectures only, and ``windows``
        pads v1's I/O (a tokenizer without ``frames``, an aggregator over ``tokens``)."""
        tokenizer = bundle.models.get("tokenizer")
        if tokenizer is None or not any(s.name == "frames" for s in tokenizer.outputs):
            return None
        return (
            "LiteRT rebuilds each ONNX model as a torch module of a known architecture "
            "(edgetok/train/from_onnx.py) and pads v1's inputs to fixed windows "
            "(edgetok/windows.py); v2's Whisper-encoder tokenizer (output frames) and "
            "frame-reading aggregator are neither yet. Build this bundle for x86-cpu or "
            "rpi with ONNX Runtime (--backend onnxruntime)"
        )

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

        from edgetok.train.from_onnx import example_inputs, rebuild
        from edgetok.train.windowed import window_inputs, window_module
        from edgetok.windows import SCHEMES, signature_name
        from quantize.litert import LiteRtModel

        module = rebuild(source, role)
        model = LiteRtModel(window_module(role, module))
        if int8:
            from quantize import get_quantizer

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
