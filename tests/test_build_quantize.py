"""Rebuilding torch modules from exported ONNX, and the INT8 recipe's float nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures import build_fixtures

torch = pytest.importorskip("torch", reason="rebuilding models needs the train extra (torch)")
onnx = pytest.importorskip("onnx")

from edgetok.bundle import V1_ROLES  # noqa: E402
from edgetok.quantize import float_onnx_nodes, get_quantizer  # noqa: E402
from edgetok.runtime import open_session  # noqa: E402
from edgetok.train.from_onnx import example_inputs, rebuild  # noqa: E402

exported_bundle = build_fixtures.exported_bundle


@pytest.mark.parametrize("role", V1_ROLES)
def test_rebuilt_module_reproduces_onnx(exported_bundle: Path, role: str) -> None:
    path = exported_bundle / f"{role}.onnx"
    module = rebuild(path, role)
    feeds = example_inputs(role, module, seed=3)
    with torch.no_grad():
        got = module(*(torch.from_numpy(v) for v in feeds.values()))
    got = got if isinstance(got, tuple) else (got,)
    want = open_session(path).run(feeds)
    for value, name in zip(got, want, strict=True):
        np.testing.assert_allclose(value.numpy(), want[name], rtol=1e-4, atol=1e-5)


def test_rebuild_rejects_the_wrong_role(exported_bundle: Path) -> None:
    with pytest.raises(ValueError, match="not a tokenizer model"):
        rebuild(exported_bundle / "decoder.onnx", "tokenizer")
    with pytest.raises(ValueError, match="unknown model role 'vocoder'"):
        rebuild(exported_bundle / "decoder.onnx", "vocoder")


def test_recipe_keeps_heads_attention_and_entropy_in_float(exported_bundle: Path) -> None:
    model = onnx.load(str(exported_bundle / "entropy_lm.onnx"))
    kept = set(float_onnx_nodes(model, "entropy_lm"))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {"LogSoftmax", "Exp", "ReduceSum", "Neg"} <= {ops[n] for n in kept}
    weights = {i.name for i in model.graph.initializer}
    attention = [
        n.name for n in model.graph.node if n.op_type == "MatMul" and not weights & set(n.input)
    ]
    assert attention and set(attention) <= kept
    tokenizer = onnx.load(str(exported_bundle / "tokenizer.onnx"))
    conv1 = [n.name for n in tokenizer.graph.node if "stem.conv1.weight" in n.input]
    assert conv1 and set(conv1) <= set(float_onnx_nodes(tokenizer, "tokenizer"))


def test_onnxruntime_int8_keeps_the_head_float(exported_bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = [{"tokens": rng.integers(0, 16, (1, n))} for n in (5, 9, 20)]
    out = get_quantizer("onnxruntime").quantize(
        exported_bundle / "entropy_lm.onnx", "entropy_lm", data, work_dir=tmp_path
    )
    model = onnx.load(str(out))
    producers = {o: n for n in model.graph.node for o in n.output}
    logits = producers["logits"]
    matmul = next(producers[i] for i in logits.input if i in producers)
    assert matmul.op_type == "MatMul"
    assert all(producers[i].op_type != "DequantizeLinear" for i in matmul.input if i in producers)
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 0
    got = open_session(out).run(data[2])
    want = open_session(exported_bundle / "entropy_lm.onnx").run(data[2])
    np.testing.assert_allclose(got["entropy"], want["entropy"], atol=0.05)
