"""ONNX weight storage: large float32 weights as float16, cast back at load; weights kept
out of the file as external data.

Each float32 initializer with at least ``min_elements`` values is replaced by a float16
copy and a ``Cast`` to float32 under the original name, so every node still reads
float32: onnxruntime folds the casts once when the session starts, and the model runs
in float32 at half the file size. The values change by float16 rounding only.

A table that is both gathered from and projected onto (a tied embedding and output head,
``Gather`` and ``Transpose`` -> ``MatMul``) would be folded into two float32 copies, one of
them transposed. ``share_tied_tables`` makes the ``Gather`` read the float16 rows and the
head a ``Gemm`` with ``transB``, so onnxruntime holds the table once in float32 (the
decoder's 51,864 x 384 table: 77 MiB less per session), with the same values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "externalize_initializers",
    "initializers_equal_to",
    "share_tied_tables",
    "store_weights_fp16",
]


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
    share_tied_tables(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return moved


def share_tied_tables(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every float16-stored table (``Cast`` of an initializer
    ``<name>__fp16`` to ``<name>``) read by one ``Gather`` on axis 0 and by one
    ``Transpose`` (perm 1, 0) feeding a ``MatMul``'s second input: the ``Gather`` reads the
    float16 table and casts its rows; the ``MatMul`` becomes ``Reshape`` -> ``Gemm``
    (``transB``) -> ``Reshape``. Returns how many tables it rewrote."""
    graph = model.graph
    half_names = {init.name for init in graph.initializer if init.data_type == TensorProto.FLOAT16}
    rewritten = 0
    for cast in [n for n in graph.node if n.op_type == "Cast" and n.input[0] in half_names]:
        table = cast.output[0]
        readers = [n for n in graph.node if table in n.input]
        gathers = [n for n in readers if n.op_type == "Gather" and _axis(n) == 0]
        heads = [n for n in readers if n.op_type == "Transpose" and _perm(n) == [1, 0]]
        if len(readers) != 2 or len(gathers) != 1 or len(heads) != 1:
            continue
        matmuls = [n for n in graph.node if heads[0].output[0] in n.input]
        if (
            len(matmuls) != 1
            or matmuls[0].op_type != "MatMul"
            or matmuls[0].input[1] != heads[0].output[0]
        ):
            continue
        _gather_half(graph, gathers[0], cast.input[0])
        _gemm_head(graph, heads[0], matmuls[0], table, cast.input[0])
        rewritten += 1
    return rewritten


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _gather_half(graph: onnx.GraphProto, gather: onnx.NodeProto, half_name: str) -> None:
    """``gather`` reads the float16 table; a ``Cast`` after it gives its old float32 output."""
    rows = gather.output[0]
    gather.input[0] = half_name
    gather.output[0] = f"{rows}__fp16"
    cast = helper.make_node(
        "Cast", [gather.output[0]], [rows], to=TensorProto.FLOAT, name=f"{gather.name}_cast"
    )
    nodes = list(graph.node)
    graph.node.insert(nodes.index(gather) + 1, cast)


def _gemm_head(
    graph: onnx.GraphProto,
    transpose: onnx.NodeProto,
    matmul: onnx.NodeProto,
    table: str,
    half_name: str,
) -> None:
    """``x @ table.T`` (``x`` [..., D]) as ``Gemm(x.reshape(-1, D), table, transB=1)``
    reshaped back to [..., V]: the table is read untransposed."""
    x, out = matmul.input[0], matmul.output[0]
    name = matmul.name or out
    table_init = next(init for init in graph.initializer if init.name == half_name)
    vocab, dim = (int(d) for d in table_init.dims)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1, dim], np.int64), f"{name}_rows_shape"),
            numpy_helper.from_array(np.array([vocab], np.int64), f"{name}_vocab"),
        ]
    )
    nodes = [
        helper.make_node(
            "Reshape", [x, f"{name}_rows_shape"], [f"{name}_rows"], name=f"{name}_rows"
        ),
        helper.make_node(
            "Gemm", [f"{name}_rows", table], [f"{name}_gemm"], transB=1, name=f"{name}_gemm"
        ),
        helper.make_node("Shape", [x], [f"{name}_lead"], end=-1, name=f"{name}_lead"),
        helper.make_node(
            "Concat",
            [f"{name}_lead", f"{name}_vocab"],
            [f"{name}_shape"],
            axis=0,
            name=f"{name}_shape",
        ),
        helper.make_node("Reshape", [f"{name}_gemm", f"{name}_shape"], [out], name=f"{name}_out"),
    ]
    old = list(graph.node)
    at = old.index(matmul)
    kept = [n for n in old[:at] if n != transpose] + nodes + old[at + 1 :]
    del graph.node[:]
    graph.node.extend(kept)


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
