"""ONNX weight storage: large float32 weights as float16, cast back at load; one weight
kept out of the file as external data.

Each float32 initializer with at least ``min_elements`` values is replaced by a float16
copy and a ``Cast`` to float32 under the original name, so every node still reads
float32: onnxruntime folds the casts once when the session starts, and the model runs
in float32 at half the file size. The values change by float16 rounding only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["externalize_initializer", "store_weights_fp16"]


def store_weights_fp16(path: str | Path, out: str | Path, min_elements: int = 1024) -> int:
    """Rewrite ``path`` to ``out`` with float16 weight storage; returns how many moved."""
    model = onnx.load(str(path))
    graph = model.graph
    kept, casts, moved = [], [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16))
        half.name = f"{init.name}__fp16"
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
        moved += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*casts, *nodes])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return moved


def externalize_initializer(path: str | Path, name: str, file: str) -> bytes:
    """Move initializer ``name`` of the model at ``path`` into ``file`` (ONNX external data
    beside the model, offset 0) and return its raw bytes."""
    from onnx.external_data_helper import set_external_data

    path = Path(path)
    model = onnx.load(str(path))
    tensor = next((t for t in model.graph.initializer if t.name == name), None)
    if tensor is None:
        raise ValueError(f"{path}: no initializer {name!r}")
    data = numpy_helper.to_array(tensor).tobytes()
    (path.parent / file).write_bytes(data)
    set_external_data(tensor, location=file, offset=0, length=len(data))
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    onnx.save(model, str(path))
    return data
