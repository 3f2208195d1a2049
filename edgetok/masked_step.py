"""A Whisper decoder step graph that batches utterances of different lengths.

The exported ``decoder_step`` attends over every cross-attention key it is given, so
utterances padded to one segment count would attend to the padding. ``with_cross_mask``
adds an input ``cross_mask`` [B, S] (float32) to the scores of each cross-attention
softmax: 0 keeps a segment, -1e9 makes its weight exactly 0. With a mask of zeros the
graph computes what the original does. Needs the ``onnx`` package (the ``serve`` extra);
the device and the plain server never import this module.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgetok.bundle import Bundle
from edgetok.runtime import Session, SessionOptions, open_session
from edgetok.whisper_decoding import CROSS_MASK

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto

__all__ = ["open_masked_step", "with_cross_mask"]


def _depends_on(graph: GraphProto, output: str, source: str) -> bool:
    """Whether tensor ``output`` of ``graph`` is computed from graph input ``source``
    other than through a layer norm (so through the residual stream of earlier layers)."""
    producer = {out: node for node in graph.node for out in node.output}
    seen, todo = set(), [output]
    while todo:
        name = todo.pop()
        if name == source:
            return True
        if name in seen or name not in producer:
            continue
        if producer[name].op_type == "LayerNormalization":
            continue
        seen.add(name)
        todo.extend(producer[name].input)
    return False


def with_cross_mask(model: ModelProto) -> ModelProto:
    """``model`` (an ``onnx.ModelProto`` of a step graph, weights loaded) with the
    ``cross_mask`` input added before each cross-attention softmax; raises ValueError
    if it has no ``cross_keys`` input or no softmax over them."""
    from onnx import TensorProto, helper

    graph = model.graph
    if not any(value.name == "cross_keys" for value in graph.input):
        raise ValueError("the step graph has no cross_keys input")
    softmaxes = [
        node
        for node in graph.node
        if node.op_type == "Softmax" and _depends_on(graph, node.input[0], "cross_keys")
    ]
    if not softmaxes:
        raise ValueError("the step graph has no softmax over cross_keys")
    graph.input.append(helper.make_tensor_value_info(CROSS_MASK, TensorProto.FLOAT, ["B", "S"]))
    axes = helper.make_tensor("cross_mask_axes", TensorProto.INT64, [2], [1, 2])
    graph.initializer.append(axes)
    bias = "cross_mask_bias"  # [B, 1, 1, S]: over heads and query positions
    nodes = [helper.make_node("Unsqueeze", [CROSS_MASK, axes.name], [bias])]
    for node in graph.node:  # each Add just before its softmax: still in topological order
        if any(node is softmax for softmax in softmaxes):
            masked = f"{node.input[0]}_masked"
            nodes.append(helper.make_node("Add", [node.input[0], bias], [masked]))
            node.input[0] = masked
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def open_masked_step(bundle: Bundle, options: SessionOptions | None = None) -> Session:
    """The bundle's ``decoder_step`` with a ``cross_mask`` input, as a session."""
    import onnx

    bundle.open("decoder_step", options=options)  # checks it, rebuilds external weights
    model = with_cross_mask(onnx.load(bundle.path_of("decoder_step")))
    with tempfile.TemporaryDirectory(prefix="edgetok-masked-") as directory:
        path = Path(directory) / "decoder_step_masked.onnx"
        onnx.save(model, path)
        return open_session(path, options=options)
