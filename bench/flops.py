"""Multiply-accumulates of an ONNX model on given inputs, from its MatMul/Gemm/Conv nodes.

``count_macs(path, feeds)`` runs the model once in ONNX Runtime (optimizations off) with
the inputs and outputs of every MatMul, Gemm and Conv (and their integer/QDQ forms)
added as graph outputs, so every shape is the real one, dynamic axes included, then
sums: MatMul ``prod(out) * K``; Gemm ``M * N * K``; Conv ``prod(out) * C_in / groups *
prod(kernel)``. Elementwise work, softmax and norms are not counted: on these models
they are a few percent of the MACs. Nodes inside control flow (If/Loop subgraphs, as in
silero-vad) are not counted; ``count_macs`` says so in ``skipped``.

Needs ``onnx`` (the train/dev extras); ``available()`` tells whether it is installed, so a
device install runs the bench without FLOPs.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = ["MacCount", "available", "count_macs"]

#: op type -> (index of the A input, index of the B/weight input)
_MATMUL_OPS: Final = {
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "MatMulIntegerToFloat": (0, 1),
    "QLinearMatMul": (0, 3),
    "FusedMatMul": (0, 1),
}
_GEMM_OPS: Final = {"Gemm": (0, 1)}
_CONV_OPS: Final = {
    "Conv": (0, 1),
    "ConvInteger": (0, 1),
    "QLinearConv": (0, 3),
    "FusedConv": (0, 1),
}
_CONTROL_FLOW: Final = ("If", "Loop", "Scan")


def available() -> bool:
    """Whether ``onnx`` is installed here (FLOPs are omitted where it is not)."""
    return importlib.util.find_spec("onnx") is not None


@dataclass
class MacCount:
    """MACs of one model run, by op type, and what could not be counted."""

    macs: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def add(self, op: str, macs: int) -> None:
        self.macs += macs
        self.by_op[op] = self.by_op.get(op, 0) + macs


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def count_macs(path: str | Path, feeds: dict[str, np.ndarray]) -> MacCount:
    """MACs of one run of the ONNX model at ``path`` on ``feeds`` (see the module doc)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: tuple(init.dims) for init in graph.initializer}
    counted = {**_MATMUL_OPS, **_GEMM_OPS, **_CONV_OPS}
    nodes = [node for node in graph.node if node.op_type in counted]
    result = MacCount()
    for node in graph.node:
        if node.op_type in _CONTROL_FLOW:
            result.skipped.append(f"{node.op_type} {node.name}: subgraph not counted")
    wanted = []
    for node in nodes:
        a, b = counted[node.op_type]
        wanted += [node.input[a], node.input[b], node.output[0]]
    known = {out.name for out in graph.output} | {inp.name for inp in graph.input}
    extra = [n for n in dict.fromkeys(wanted) if n and n not in initializers and n not in known]
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in extra)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = [out.name for out in session.get_outputs()]
    values = dict(zip(names, session.run(names, feeds), strict=True))
    shapes: dict[str, tuple[int, ...]] = {**initializers}
    shapes.update({name: tuple(np.shape(value)) for name, value in values.items()})
    shapes.update({name: tuple(value.shape) for name, value in feeds.items()})
    for node in nodes:
        a, b = counted[node.op_type]
        try:
            a_shape, b_shape = shapes[node.input[a]], shapes[node.input[b]]
            out_shape = shapes[node.output[0]]
        except KeyError as exc:
            result.skipped.append(f"{node.op_type} {node.name}: shape of {exc} unknown")
            continue
        if node.op_type in _MATMUL_OPS:
            k = a_shape[-1] if a_shape else 1
            macs = math.prod(out_shape) * k
        elif node.op_type in _GEMM_OPS:
            k = a_shape[0] if _attribute(node, "transA", 0) else a_shape[-1]
            macs = math.prod(out_shape) * k
        else:
            groups = _attribute(node, "group", 1)
            macs = math.prod(out_shape) * (b_shape[1] if len(b_shape) > 1 else 1)
            macs *= math.prod(b_shape[2:])
            del groups  # the weight's second axis is already C_in / groups
        result.add(node.op_type, int(macs))
    return result


def _gemm_model(int8: bool, m: int, k: int, n: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    if int8:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])
        b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "gemm", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def measure_gemm(
    threads: int = 1,
    clock: Any = None,
    *,
    m: int = 256,
    k: int = 1024,
    n: int = 1024,
    repeats: int = 7,
) -> dict[str, float]:
    """The attainable rate of this CPU: ONNX Runtime's own GEMM (MLAS) on [m, k] x [k, n],
    float32 ``MatMul`` and u8 x s8 ``MatMulInteger``, ``threads`` intra-op threads; the
    best of ``repeats`` runs on ``clock`` (default ``time.perf_counter``), in G(FL)OP/s
    (2 per multiply-accumulate)."""
    import time

    import onnxruntime as ort

    clock = clock or time.perf_counter
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    rng = np.random.default_rng(0)
    out = {}
    for name, int8 in (("fp32_gflops", False), ("int8_gops", True)):
        session = ort.InferenceSession(
            _gemm_model(int8, m, k, n), sess_options=options, providers=["CPUExecutionProvider"]
        )
        if int8:
            feeds = {
                "a": rng.integers(0, 255, (m, k), dtype=np.uint8),
                "b": rng.integers(-127, 127, (k, n), dtype=np.int8),
            }
        else:
            feeds = {
                "a": rng.standard_normal((m, k), dtype=np.float32),
                "b": rng.standard_normal((k, n), dtype=np.float32),
            }
        session.run(None, feeds)
        best = math.inf
        for _ in range(repeats):
            started = clock()
            session.run(None, feeds)
            best = min(best, clock() - started)
        out[name] = 2 * m * k * n / best / 1e9
    return out
