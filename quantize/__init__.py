"""Static INT8 post-training quantization: one ``Quantizer`` protocol, one module per backend.

A quantizer takes a backend's FP32 model (an ONNX path for ONNX Runtime and TensorRT,
an ``openvino.Model``, a torch module for LiteRT), the model role and its calibration
feeds (``calibration.CalibrationSet.reader(role)``), and returns the INT8 model in the
same form. Backends are imported lazily through ``get_quantizer``.

The recipe, the same for every backend: only convolutions and matrix products get INT8
weights and activations; normalisation, softmax and the entropy (log-softmax, exp,
sum) stay in float; so do the modules in ``KEEP_FLOAT`` (the output projections whose
values the pipeline reads directly: the entropy LM's logits, the decoder's logits).
The codebook argmin runs in numpy and is not part of any model.
Build-time only: never imported by the device path.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = ["KEEP_FLOAT", "Quantizer", "float_onnx_nodes", "get_quantizer", "is_kept", "quantizers"]

#: Per role, modules (by name, matched as a suffix of the qualified name) kept in float.
KEEP_FLOAT: Final[dict[str, tuple[str, ...]]] = {
    "tokenizer": (),
    "entropy_lm": ("head",),
    "aggregator": (),
    "decoder": ("head",),
}
#: Outputs whose downstream computation (the entropy) stays in float, per role.
FLOAT_OUTPUTS_OF: Final[dict[str, tuple[str, ...]]] = {"entropy_lm": ("logits",)}

_QUANTIZERS: Final = {
    "onnxruntime": "quantize.onnxruntime:OnnxRuntimeQuantizer",
    "openvino": "quantize.openvino:OpenVinoQuantizer",
    "litert": "quantize.litert:LiteRtQuantizer",
    "tensorrt": "quantize.tensorrt:TensorRtQuantizer",
}


class Quantizer(Protocol):
    """Static INT8 quantization of one backend's model form."""

    backend: str

    def quantize(
        self, model: Any, role: str, data: Sequence[dict[str, np.ndarray]], *, work_dir: Path
    ) -> Any:
        """The INT8 form of ``model`` (role ``role``) calibrated on ``data``."""
        ...


def quantizers() -> tuple[str, ...]:
    """Backends that have a quantizer."""
    return tuple(_QUANTIZERS)


def get_quantizer(backend: str) -> Quantizer:
    """The quantizer of ``backend`` (its toolchain imported now)."""
    if backend not in _QUANTIZERS:
        raise ValueError(f"no quantizer for backend {backend!r}; known: {', '.join(_QUANTIZERS)}")
    module, attribute = _QUANTIZERS[backend].split(":")
    return getattr(importlib.import_module(module), attribute)()


def is_kept(name: str, role: str) -> bool:
    """Whether the module named ``name`` (qualified) is kept in float for ``role``."""
    return any(name == k or name.endswith("." + k) for k in KEEP_FLOAT[role])


def float_onnx_nodes(model: onnx.ModelProto, role: str) -> list[str]:
    """Names of the nodes of an exported ONNX model that the recipe keeps in float.

    A Linear is the MatMul whose output is added to ``<module>.bias``; the entropy is
    every node downstream of ``FLOAT_OUTPUTS_OF[role]``.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    kept: list[str] = []
    for node in model.graph.node:
        bias = next((i for i in node.input if i.endswith(".bias")), None)
        if node.op_type == "Add" and bias and is_kept(bias.removesuffix(".bias"), role):
            matmul = next((producers[i] for i in node.input if i in producers), None)
            kept += [node.name] + ([matmul.name] if matmul is not None else [])
    tensors = set(FLOAT_OUTPUTS_OF.get(role, ()))
    for node in model.graph.node:  # topological order: descendants follow their inputs
        if tensors.intersection(node.input):
            kept.append(node.name)
            tensors.update(node.output)
    return kept
