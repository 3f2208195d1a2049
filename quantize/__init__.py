"""Static INT8 post-training quantization: one ``Quantizer`` protocol, one module per backend.

A quantizer takes a backend's FP32 model (an ONNX path for ONNX Runtime and TensorRT,
an ``openvino.Model``, a torch module for LiteRT), the model role and its calibration
feeds (``calibration.CalibrationSet.reader(role)``), and returns the INT8 model in the
same form. Backends are imported lazily through ``get_quantizer``.

The recipe, the same for every backend: only convolutions and the matrix products with
a weight get INT8 weights and activations; normalisation, attention scores and softmax
(activation x activation products) and the entropy (log-softmax, exp, sum) stay in
float. So do each model's input and output layers (``KEEP_FLOAT``): they see the raw
ranges of what comes in (log-mel, the segment vectors from the wire) and make the
values the pipeline reads (the LM's logits, whose entropy cuts segments; the segment
vectors; the decoder's logits); for the tokenizer that is its whole conv stem.
Measured (ONNX Runtime, first-pass default bundle, 12 held-out utterances): token
agreement with FP32 is 95.4 % with only the first conv float, 97.3 % with conv1+conv2,
99.6 % with the whole stem (1.84x instead of 2.04x faster than FP32). Again on 40
held-out utterances, speed-up as the ratio of CPU times (one thread): whole stem float
99.6 % at 1.76x, conv1 + pos_conv 96.0 % at 1.88x, conv1 95.0 % at 1.99x, no float
stem 93.6 % at 2.06x. A quantized LM
head put LiteRT's logits off by 100 %; a quantized decoder input projection turns
LiteRT's ``prefix`` input into int8.
The codebook argmin runs in numpy and is not part of any model.
Only the device's hot path is quantized (``INT8_ROLES``: tokenizer and entropy LM). The
aggregator stays FP32: under 10 % of the device's time in FP32 (bench/results), and its
vectors are what crosses the wire. So does the decoder: it runs
on the server, and greedy decoding turns small INT8 differences into different text
(OpenVINO INT8 moved the WER by +2.6 points; on arm64, LiteRT's INT8 decoder changed
the sample's transcript while every token matched x86).

A v2 tokenizer (the Whisper tiny.en encoder + an FSQ bottleneck, which also gives the
encoder ``frames``) stays FP32 too (``int8_roles``): its 4 bounded features are rounded
to a grid of 1000 codes, and no INT8 part of it keeps token agreement >= 98 %. Measured
on the v2 bundle (40 held-out utterances, ONNX Runtime, CPU time, one thread): 52 % of
the tokens have a feature within 0.1 of a rounding boundary, and Gaussian noise of std
0.003 / 0.01 on the features (std 1.3-2.3) already flips 0.9 / 3.2 % of them. Quantized
alone, with the rest float: the whole model 67.5 % at 2.32x faster (its stem float
76.8 % at 2.29x), one encoder block 85-92 %, the bottleneck block 91.9 %, every block's
fc1 91.9 % at 1.20x, one layer (block 2's fc1, block 3's q/k/v) 96.5 %; the same with
OpenVINO/NNCF (whole model 69.4 % at 2.26x, one layer 96.5-96.7 %). Even weights alone
(per-channel INT8, float activations) give 88.9 %. (End to end the whole INT8 tokenizer
left the WER unchanged within noise, -1.5 points, but cut other segments: boundary F1
0.78.)
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

    from edgetok.bundle import Bundle

__all__ = [
    "INT8_ROLES",
    "KEEP_FLOAT",
    "Quantizer",
    "float_onnx_nodes",
    "get_quantizer",
    "int8_roles",
    "is_kept",
    "quantizers",
    "single_file",
]

#: Roles an INT8 build quantizes; the others are compiled in FP32.
INT8_ROLES: Final[tuple[str, ...]] = ("tokenizer", "entropy_lm")
#: Per role, modules (by name, matched as a suffix of the qualified name) kept in float.
KEEP_FLOAT: Final[dict[str, tuple[str, ...]]] = {
    "tokenizer": ("stem.conv1", "stem.conv2", "stem.pos_conv"),
    "entropy_lm": ("head",),
    "aggregator": ("proj",),
    "decoder": ("prefix_proj", "head"),
}
#: Outputs whose downstream computation (the entropy) stays in float, per role.
FLOAT_OUTPUTS_OF: Final[dict[str, tuple[str, ...]]] = {"entropy_lm": ("logits",)}

_QUANTIZERS: Final = {
    "onnxruntime": "edgetok.quantize.onnxruntime:OnnxRuntimeQuantizer",
    "openvino": "edgetok.quantize.openvino:OpenVinoQuantizer",
    "litert": "edgetok.quantize.litert:LiteRtQuantizer",
    "tensorrt": "edgetok.quantize.tensorrt:TensorRtQuantizer",
}


class Quantizer(Protocol):
    """Static INT8 quantization of one backend's model form."""

    backend: str

    def quantize(
        self, model: Any, role: str, data: Sequence[dict[str, np.ndarray]], *, work_dir: Path
    ) -> Any:
        """The INT8 form of ``model`` (role ``role``) calibrated on ``data``."""
        ...


def int8_roles(bundle: Bundle) -> tuple[str, ...]:
    """The roles an INT8 build of ``bundle`` quantizes: ``INT8_ROLES``, but not a v2 FSQ
    tokenizer (one that also gives ``frames``; see above)."""
    tokenizer = bundle.models.get("tokenizer")
    fsq = tokenizer is not None and any(spec.name == "frames" for spec in tokenizer.outputs)
    return tuple(role for role in INT8_ROLES if not (fsq and role == "tokenizer"))


def quantizers() -> tuple[str, ...]:
    """Backends that have a quantizer."""
    return tuple(_QUANTIZERS)


def get_quantizer(backend: str) -> Quantizer:
    """The quantizer of ``backend`` (its toolchain imported now)."""
    if backend not in _QUANTIZERS:
        raise ValueError(f"no quantizer for backend {backend!r}; known: {', '.join(_QUANTIZERS)}")
    module, attribute = _QUANTIZERS[backend].split(":")
    return getattr(importlib.import_module(module), attribute)()


def single_file(model: Path, work_dir: Path) -> Path:
    """``model``, or where it keeps weights as ONNX external data, a copy in ``work_dir``
    with them inside: tools that write a model elsewhere (ONNX Runtime's quantization
    pre-processing and its optimizer) leave references to data they did not copy."""
    import onnx

    header = onnx.load(str(model), load_external_data=False)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer):
        return model
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"{model.stem}.single.onnx"
    onnx.save(onnx.load(str(model)), str(out))
    return out


def is_kept(name: str, role: str) -> bool:
    """Whether the module named ``name`` (qualified) is kept in float for ``role``: it or
    a module it is part of is named by ``KEEP_FLOAT`` (a dotted path matched anywhere in
    ``name`` on whole parts: ``stem.conv1`` keeps ``tokenizer.stem.conv1``, ``encoder.blocks.3``
    keeps ``encoder.blocks.3.mlp.0``)."""
    dotted = f".{name}."
    return any(f".{k}." in dotted for k in KEEP_FLOAT[role])


def _constants(model: onnx.ModelProto) -> set[str]:
    """Names of the graph's constant tensors: initializers, and what ``Constant`` and
    ``Cast`` nodes make of constants (weights stored as float16 are a ``Cast`` to float32
    under the weight's name, ``edgetok.train.onnx_fp16``)."""
    constants = {init.name for init in model.graph.initializer}
    for node in model.graph.node:  # topological order
        if node.op_type in ("Constant", "Cast") and constants.issuperset(node.input):
            constants.update(node.output)
    return constants


def float_onnx_nodes(model: onnx.ModelProto, role: str) -> list[str]:
    """Names of the nodes of an exported ONNX model that the recipe keeps in float.

    Every MatMul of two activations (attention) is kept. A node belongs to a kept module
    by the exporter's name-scope metadata, else by the names of its parameters (a Conv's
    ``<module>.weight``, a Linear's MatMul added to ``<module>.bias``). The entropy is
    every node downstream of ``FLOAT_OUTPUTS_OF[role]``.
    """
    from edgetok.train.onnx_scope import module_scope

    producers = {out: node for node in model.graph.node for out in node.output}
    weights = _constants(model)
    kept: list[str] = []
    for node in model.graph.node:
        scope = module_scope(node)
        named = [i.rsplit(".", 1)[0] for i in node.input if i.endswith((".weight", ".bias"))]
        if node.op_type == "MatMul" and not weights.intersection(node.input):
            kept.append(node.name)  # attention: scores and softmax x values
        elif scope is not None and is_kept(scope, role):
            kept.append(node.name)
        elif scope is None and any(is_kept(name, role) for name in named):
            kept.append(node.name)
            if node.op_type == "Add":  # the Linear's MatMul before its bias
                kept += [producers[i].name for i in node.input if i in producers]
    tensors = set(FLOAT_OUTPUTS_OF.get(role, ()))
    for node in model.graph.node:  # topological order: descendants follow their inputs
        if tensors.intersection(node.input):
            kept.append(node.name)
            tensors.update(node.output)
    return kept
