"""edgetok.runtime.openvino: real OpenVINO sessions on the tiny models, against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "openvino", reason="OpenVINO is in the build extra (pip install 'edgetok[build]')"
)

from edgetok.runtime import Session, SessionOptions, open_session  # noqa: E402

ROLES = ("tokenizer", "entropy_lm", "aggregator", "decoder")


def _inputs(role: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if role == "tokenizer":
        return {"mel": rng.normal(size=(1, 37, 80)).astype(np.float32)}
    if role == "entropy_lm":
        return {"tokens": rng.integers(0, 16, (1, 23))}
    if role == "aggregator":
        return {"tokens": rng.integers(0, 16, (4, 6)), "mask": rng.random((4, 6)) < 0.7}
    return {
        "prefix": rng.normal(size=(1, 5, 8)).astype(np.float32),
        "text": rng.integers(0, 31, (1, 9)),
    }


@pytest.mark.parametrize("role", ROLES)
def test_same_io_and_outputs_as_onnxruntime(tiny_bundle: Path, role: str) -> None:
    path = tiny_bundle / f"{role}.onnx"
    ov_session = open_session(path, "openvino", options=SessionOptions(precision="fp32"))
    ort_session = open_session(path)
    assert isinstance(ov_session, Session)
    assert [s.name for s in ov_session.inputs] == [s.name for s in ort_session.inputs]
    assert [s.dtype for s in ov_session.outputs] == [s.dtype for s in ort_session.outputs]
    for seed in range(2):
        inputs = _inputs(role, np.random.default_rng(seed))
        got, want = ov_session.run(inputs), ort_session.run(inputs)
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-4)


def test_fp32_is_pinned_to_f32(tiny_bundle: Path) -> None:
    session = open_session(tiny_bundle / "tokenizer.onnx", "openvino")
    compiled = session._request.get_compiled_model()
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")


def test_bad_inputs_and_options(tiny_bundle: Path) -> None:
    path = tiny_bundle / "entropy_lm.onnx"
    session = open_session(path, "openvino")
    with pytest.raises(ValueError, match="input 'tokens' has dtype int32"):
        session.run({"tokens": np.zeros((1, 3), np.int32)})
    with pytest.raises(ValueError, match="unknown option"):
        open_session(path, "openvino", options=SessionOptions(extra={"providers": []}))
