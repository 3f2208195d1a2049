"""Step graphs whose cross-attention inputs broadcast over the batch.

A beam search scores every hypothesis of one utterance in one step run, and each
hypothesis attends over the same cross-attention keys and values. The exporter takes the
batch size from whichever input it meets first, sometimes ``cross_values``, so the graph
needs them copied once per hypothesis (beam 4 on 751 segments: 37 MB per decode).
``broadcast_cross_batch`` takes the batch size from ``text`` instead and names the cross
inputs' batch axis ``CROSS_BATCH``: a batch of 1 there is then broadcast by the
attention's ``MatMul`` over every row of ``text``, with the same values.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from edgetok.whisper_decoding import CROSS_BATCH

__all__ = ["broadcast_cross_batch"]


def broadcast_cross_batch(
    model: onnx.ModelProto,
    *,
    batch_input: str = "text",
    shared: Sequence[str] = ("cross_keys", "cross_values"),
    axis: int = 1,
) -> int:
    """Rewrite ``model`` in place: every ``Shape`` that reads ``axis`` (the batch) of an
    input in ``shared`` reads axis 0 of ``batch_input``; the shared inputs' batch axis is
    named ``CROSS_BATCH``. Returns how many ``Shape`` nodes it redirected."""
    graph = model.graph
    inputs = {value.name: value for value in graph.input}
    missing = [name for name in (batch_input, *shared) if name not in inputs]
    if missing:
        raise ValueError(f"the graph has no input {', '.join(map(repr, missing))}")
    redirected = 0
    for node in graph.node:
        if node.op_type != "Shape" or node.input[0] not in shared:
            continue
        bounds = {a.name: a for a in node.attribute}
        if "start" not in bounds or "end" not in bounds:
            raise ValueError(f"{node.name}: a whole-shape read of {node.input[0]} cannot broadcast")
        if (bounds["start"].i, bounds["end"].i) != (axis, axis + 1):
            raise ValueError(f"{node.name}: reads axes other than the batch of {node.input[0]}")
        node.input[0] = batch_input
        bounds["start"].i, bounds["end"].i = 0, 1
        redirected += 1
    for name in shared:
        dims = inputs[name].type.tensor_type.shape.dim
        dims[axis].ClearField("dim_value")
        dims[axis].dim_param = CROSS_BATCH
    return redirected
