"""ONNX weight storage: large float32 weights as float16, cast back at load; weights kept
out of the file as external data.

Each float32 initializer with at least ``min_elements`` values is replaced by a float16
copy and a ``Cast`` to float32 under the original name, so every node still reads
float32: onnxruntime folds the casts once when the session starts, and the model runs
in float32 at half the file size. The values change by float16 rounding only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["externalize_initializers", "initializers_equal_to", "store_weights_fp16"]


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


def initializers_equal_to(path: str | Path, arrays: Iterable[np.ndarray]) -> list[str]:
    """Names of the initializers of the model at ``path`` whose values equal one of
    ``arrays`` or its transpose (the exporter stores a linear layer's weight transposed)."""
    wanted = set()
    for array in arrays:
        for view in (array, array.T):
            wanted.add((view.dtype.str, view.shape, np.ascontiguousarray(view).tobytes()))
    model = onnx.load(str(path))
    names = []
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if (value.dtype.str, value.shape, value.tobytes()) in wanted:
            names.append(init.name)
    return names


def externalize_initializers(path: str | Path, names: Sequence[str], file: str) -> bytes:
    """Move initializers ``names`` of the model at ``path`` into ``file`` (ONNX external
    data beside the model, one after another in graph order) and return its bytes."""
    from onnx.external_data_helper import set_external_data

    path = Path(path)
    model = onnx.load(str(path))
    by_name = {t.name: t for t in model.graph.initializer}
    missing = sorted(set(names) - set(by_name))
    if missing:
        raise ValueError(f"{path}: no initializer {', '.join(map(repr, missing))}")
    chosen = set(names)
    chunks: list[bytes] = []
    offset = 0
    for tensor in model.graph.initializer:
        if tensor.name not in chosen:
            continue
        data = numpy_helper.to_array(tensor).tobytes()
        set_external_data(tensor, location=file, offset=offset, length=len(data))
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        chunks.append(data)
        offset += len(data)
    blob = b"".join(chunks)
    (path.parent / file).write_bytes(blob)
    onnx.save(model, str(path))
    return blob
