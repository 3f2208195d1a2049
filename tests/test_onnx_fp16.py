"""float16 weight storage: a tied table (gathered and projected onto) is held once."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgetok.train.onnx_fp16 import share_tied_tables, store_weights_fp16  # noqa: E402

VOCAB, DIM = 3000, 16


def _tied_model(path) -> np.ndarray:
    """ids [B, U] -> logits [B, U, V] = tanh(table[ids]) @ table.T, float32 weights."""
    table = np.random.default_rng(0).standard_normal((VOCAB, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0, name="embed"),
            helper.make_node("Tanh", ["rows"], ["hidden"]),
            helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
            helper.make_node("MatMul", ["hidden", "table_t"], ["logits"], name="head"),
        ],
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "U"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "U", VOCAB])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return table


def _run(path, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})[0]


def test_tied_table_is_gathered_in_float16_and_projected_untransposed(tmp_path):
    table = _tied_model(tmp_path / "tied.onnx")
    store_weights_fp16(tmp_path / "tied.onnx", tmp_path / "half.onnx")
    graph = onnx.load(str(tmp_path / "half.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert "Transpose" not in ops and "MatMul" not in ops and "Gemm" in ops
    gather = next(node for node in graph.node if node.op_type == "Gather")
    assert gather.input[0] == "table__fp16"
    gemm = next(node for node in graph.node if node.op_type == "Gemm")
    assert gemm.input[1] == "table"
    assert next(a.i for a in gemm.attribute if a.name == "transB") == 1
    half = table.astype(np.float16).astype(np.float32)
    for shape in [(1, 1), (4, 3), (2, 7)]:
        ids = np.random.default_rng(sum(shape)).integers(0, VOCAB, shape)
        got = _run(tmp_path / "half.onnx", ids)
        assert got.shape == (*shape, VOCAB)
        np.testing.assert_allclose(got, np.tanh(half[ids]) @ half.T, rtol=1e-5, atol=1e-5)


def test_untied_tables_are_left_alone(tmp_path):
    _tied_model(tmp_path / "tied.onnx")
    model = onnx.load(str(tmp_path / "tied.onnx"))
    assert share_tied_tables(model) == 0  # float32 storage: no float16 table to share
    head = next(node for node in model.graph.node if node.op_type == "MatMul")
    head.input[0] = "rows"  # the table read three ways is not a tied pair
    model.graph.node.append(helper.make_node("Identity", ["table"], ["copy"]))
    store = tmp_path / "three.onnx"
    onnx.save(model, str(store))
    store_weights_fp16(store, store)
    ops = [node.op_type for node in onnx.load(str(store)).graph.node]
    assert "Transpose" in ops and "MatMul" in ops and "Gemm" not in ops
