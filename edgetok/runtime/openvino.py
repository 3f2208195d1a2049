"""OpenVINO adapter: an IR (``.xml`` + ``.bin``) or ``.onnx`` model compiled for the CPU.

``SessionOptions.threads`` sets ``INFERENCE_NUM_THREADS`` (one stream, latency hint).
The precision hint sets ``INFERENCE_PRECISION_HINT``: ``fp32`` and ``int8`` run their
float parts in f32 (OpenVINO's CPU plugin would otherwise pick bf16 on CPUs with
AMX/AVX-512-BF16, so an "FP32" model would silently run in bf16; shared/TOOLCHAIN.md),
``fp16`` in f16. ``SessionOptions.extra`` keys:

- ``device``: the OpenVINO device (default ``"CPU"``).
- ``inference_precision``: an explicit ``INFERENCE_PRECISION_HINT`` (``"f32"``,
  ``"bf16"``, ``"f16"``), to measure bf16 as its own precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import openvino as ov

from edgetok.runtime import SessionOptions, TensorSpec, check_inputs

_EXTRA_KEYS: Final = ("device", "inference_precision")
_PRECISION_HINTS: Final = {None: "f32", "fp32": "f32", "int8": "f32", "fp16": "f16"}


class OpenVinoSession:
    """One compiled model and its infer request; I/O declared by the model."""

    def __init__(self, path: Path, *, options: SessionOptions) -> None:
        unknown = [key for key in options.extra if key not in _EXTRA_KEYS]
        if unknown:
            raise ValueError(
                f"openvino: unknown option(s) {', '.join(unknown)} in SessionOptions.extra; "
                f"known: {', '.join(_EXTRA_KEYS)}"
            )
        precision = options.extra.get("inference_precision", _PRECISION_HINTS[options.precision])
        config = {
            "INFERENCE_NUM_THREADS": options.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
        }
        self.path = path
        core = ov.Core()
        model = core.read_model(str(path))
        compiled = core.compile_model(model, options.extra.get("device", "CPU"), config)
        self._request = compiled.create_infer_request()
        # Names from the model as read: compiling can fuse the ops next to an input into
        # it, and its port then also carries their names (``mel`` with ``sub``, ``div``).
        self.inputs = [
            _spec(*ports, path) for ports in zip(model.inputs, compiled.inputs, strict=True)
        ]
        self.outputs = [
            _spec(*ports, path) for ports in zip(model.outputs, compiled.outputs, strict=True)
        ]
        self._output_ports = list(compiled.outputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the model's, run, return every output by name."""
        check_inputs(inputs, self.inputs, model=self.path)
        results = self._request.infer(inputs)
        return {
            spec.name: np.array(results[port], copy=True)
            for spec, port in zip(self.outputs, self._output_ports, strict=True)
        }


def _spec(named: Any, port: Any, path: Path) -> TensorSpec:
    """``TensorSpec`` of a compiled model's ``port``, named as the read model's port
    ``named`` (dynamic dimensions as ``None``)."""
    shape = tuple(dim.get_length() if dim.is_static else None for dim in port.get_partial_shape())
    dtype = np.dtype(port.get_element_type().to_dtype()).name
    try:
        return TensorSpec(named.get_any_name(), dtype, shape)
    except ValueError as exc:
        raise ValueError(f"{path}: unsupported model I/O: {exc}") from None
