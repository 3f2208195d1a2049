"""edgetok.runtime: real onnxruntime sessions on the tiny models from fixtures/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fixtures import bad_models
from fixtures.make_tiny_bundle import N_MELS, D, K, V, make_tiny_bundle, weights

from edgetok import runtime
from edgetok.runtime import (
    ModelError,
    Session,
    SessionOptions,
    TensorSpec,
    available_backends,
    check_inputs,
    open_session,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny"))


def test_sessions_declare_production_io(models: Path) -> None:
    expected = {
        "tokenizer": (
            [TensorSpec("mel", "float32", ("B", "T", N_MELS))],
            [TensorSpec("features", "float32", ("B", "T2", D))],
        ),
        "entropy_lm": (
            [TensorSpec("tokens", "int64", ("B", "T"))],
            [
                TensorSpec("entropy", "float32", ("B", "T")),
                TensorSpec("logits", "float32", ("B", "T", K)),
            ],
        ),
        "aggregator": (
            [TensorSpec("tokens", "int64", ("N", "L")), TensorSpec("mask", "bool", ("N", "L"))],
            [TensorSpec("vectors", "float32", ("N", D))],
        ),
        "decoder": (
            [
                TensorSpec("prefix", "float32", ("B", "S", D)),
                TensorSpec("text", "int64", ("B", "U")),
            ],
            [TensorSpec("logits", "float32", ("B", "U", V))],
        ),
    }
    for role, (inputs, outputs) in expected.items():
        session = open_session(models / f"{role}.onnx")
        assert isinstance(session, Session)
        assert session.inputs == inputs
        assert session.outputs == outputs


def test_tokenizer_output_is_exact(models: Path) -> None:
    mel = np.random.default_rng(0).integers(-20, 5, (2, 7, N_MELS)).astype(np.float32)
    out = open_session(models / "tokenizer.onnx").run({"mel": mel})
    assert list(out) == ["features"]
    assert out["features"].shape == (2, 4, D)
    np.testing.assert_array_equal(out["features"], mel[:, ::2] @ weights()["W"])


def test_entropy_lm_prepends_bos_and_gives_entropy_in_nats(models: Path) -> None:
    tokens = np.array([[3, 0, 15, 7], [1, 1, 2, 9]], dtype=np.int64)
    out = open_session(models / "entropy_lm.onnx").run({"tokens": tokens})
    assert list(out) == ["entropy", "logits"]
    table = weights()["E"]
    previous = np.concatenate([np.full((2, 1), K), tokens[:, :-1]], axis=1)
    np.testing.assert_array_equal(out["logits"], table[previous])
    logits = table[previous].astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(out["entropy"], -(np.exp(logp) * logp).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(out["entropy"][:, 0], [np.log(K)] * 2, rtol=1e-6)


def test_aggregator_is_masked_mean(models: Path) -> None:
    tokens = np.array([[1, 2, 3, 0], [5, 5, 0, 0], [4, 0, 0, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    out = open_session(models / "aggregator.onnx").run({"tokens": tokens, "mask": mask})
    table = weights()["A"]
    expected = np.stack(
        [(table[1] + table[2] + table[3]) / np.float32(3), table[5], np.zeros(D, np.float32)]
    )
    np.testing.assert_array_equal(out["vectors"], expected)


def test_decoder_adds_prefix_context(models: Path) -> None:
    prefix = np.random.default_rng(1).integers(-3, 4, (2, 3, D)).astype(np.float32)
    text = np.array([[1, 4, 30], [2, 0, 0]], dtype=np.int64)
    out = open_session(models / "decoder.onnx").run({"prefix": prefix, "text": text})
    w = weights()
    expected = w["Tx"][text] + prefix.sum(axis=1, keepdims=True) @ w["P"]
    np.testing.assert_array_equal(out["logits"], expected)


def test_options_reach_onnxruntime(models: Path) -> None:
    options = SessionOptions(
        threads=2,
        extra={"providers": ["CPUExecutionProvider"], "graph_optimization_level": "disable"},
    )
    session = open_session(models / "decoder.onnx", options=options)
    applied = session._session.get_session_options()
    assert applied.intra_op_num_threads == 2
    assert applied.inter_op_num_threads == 1
    assert applied.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert session._session.get_providers() == ["CPUExecutionProvider"]
    assert applied.enable_mem_pattern and applied.enable_cpu_mem_arena
    default = open_session(models / "decoder.onnx")._session.get_session_options()
    assert default.intra_op_num_threads == 1


def test_memory_options_reach_onnxruntime(models: Path) -> None:
    extra = {"memory_pattern": False, "cpu_arena": False}
    session = open_session(models / "decoder.onnx", options=SessionOptions(extra=extra))
    applied = session._session.get_session_options()
    assert not applied.enable_mem_pattern and not applied.enable_cpu_mem_arena
    prefix = np.ones((1, 2, D), np.float32)
    text = np.array([[1, 4]], dtype=np.int64)
    w = weights()
    expected = w["Tx"][text] + prefix.sum(axis=1, keepdims=True) @ w["P"]
    np.testing.assert_array_equal(session.run({"prefix": prefix, "text": text})["logits"], expected)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"threads": 2}, "unknown option(s) threads in SessionOptions.extra"),
        ({"graph_optimization_level": "max"}, "graph_optimization_level 'max' is not one of"),
        ({"providers": ["CUDAExecutionProvider"]}, "'CUDAExecutionProvider' is not available"),
        ({"providers": []}, "providers must name at least one"),
        ({"cpu_arena": "no"}, "cpu_arena must be True or False, got 'no'"),
    ],
)
def test_bad_adapter_options(models: Path, extra: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_session(models / "tokenizer.onnx", options=SessionOptions(extra=extra))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threads": 0}, "threads must be an int >= 1, got 0"),
        ({"threads": True}, "threads must be an int >= 1, got True"),
        ({"precision": "int4"}, "precision must be one of fp32, fp16, int8 or None, got 'int4'"),
    ],
)
def test_bad_session_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SessionOptions(**kwargs)


def test_unknown_backend_lists_known_ones(models: Path) -> None:
    with pytest.raises(
        ValueError,
        match="unknown backend 'tflite'; known backends: onnxruntime, openvino, litert, tensorrt",
    ):
        open_session(models / "tokenizer.onnx", "tflite")


def test_missing_model_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(FileNotFoundError, match=f"model file {path} not found"):
        open_session(path)


def test_backend_not_installed_names_the_extra(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = runtime._Backend("edgetok_absent_engine:Session", "edgetok[absent]")
    monkeypatch.setitem(runtime._BACKENDS, "absent", fake)
    with pytest.raises(ImportError) as error:
        open_session(models / "tokenizer.onnx", "absent")
    assert str(error.value) == (
        "backend 'absent' cannot be imported here (No module named 'edgetok_absent_engine'); "
        "install it with: pip install 'edgetok[absent]'"
    )
    status = available_backends()
    assert status["onnxruntime"] is None
    assert status["absent"] == str(error.value)


def test_available_backends() -> None:
    status = available_backends()
    assert list(status) == ["onnxruntime", "openvino", "litert", "tensorrt"]
    assert status["onnxruntime"] is None
    for reason in status.values():  # importable here, or says what to install
        assert reason is None or "install it with: pip install" in reason


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input(s) tokens, mask"),
        (
            {"tokens": np.zeros((1, 2), np.int64), "mask": np.ones((1, 2), bool), "x": 1},
            "unexpected input(s) x",
        ),
        (
            {"tokens": np.zeros((1, 2), np.int32), "mask": np.ones((1, 2), bool)},
            "input 'tokens' has dtype int32, expected tokens int64 [N, L]",
        ),
        (
            {"tokens": np.zeros((1, 2), np.int64), "mask": np.ones((1, 2, 1), bool)},
            "input 'mask' has rank 3 (shape (1, 2, 1)), expected mask bool [N, L]",
        ),
        (
            {"tokens": [[1, 2]], "mask": np.ones((1, 2), bool)},
            "input 'tokens' must be a numpy array, got list",
        ),
    ],
)
def test_bad_inputs_name_model_and_input(models: Path, inputs: dict, message: str) -> None:
    path = models / "aggregator.onnx"
    session = open_session(path)
    with pytest.raises(ValueError) as error:
        session.run(inputs)
    assert str(error.value).startswith(f"{path}: {message}")


def test_fixed_dimension_is_checked(models: Path) -> None:
    path = models / "tokenizer.onnx"
    with pytest.raises(ValueError) as error:
        open_session(path).run({"mel": np.zeros((1, 4, 40), np.float32)})
    assert str(error.value) == (
        f"{path}: input 'mel' has size 40 on axis 2 (shape (1, 4, 40)), "
        "expected mel float32 [B, T, 80]"
    )


def test_check_inputs_accepts_matching_arrays() -> None:
    specs = [TensorSpec("x", "float16", (None, 3))]
    check_inputs({"x": np.zeros((5, 3), np.float16)}, specs, model="m.onnx")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("x", "complex64", (1,)), "tensor 'x': dtype 'complex64' is not one of"),
        (("x", "float32", (-1,)), "tensor 'x': dimension -1 is not an int >= 0"),
        (("x", "float32", (2.0,)), "tensor 'x': dimension 2.0 is not an int >= 0"),
    ],
)
def test_tensor_spec_validates(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TensorSpec(*args)


def test_tensor_spec_str() -> None:
    assert str(TensorSpec("mel", "float32", ("B", None, 80))) == "mel float32 [B, ?, 80]"


@pytest.mark.parametrize("spoil", [bad_models.truncated, bad_models.garbage])
def test_a_model_that_does_not_parse_is_one_line_naming_the_file(
    models: Path, tmp_path: Path, spoil
) -> None:
    path = tmp_path / "tokenizer.onnx"
    path.write_bytes(spoil((models / "tokenizer.onnx").read_bytes()))
    with pytest.raises(ModelError) as error:
        open_session(path)
    message = str(error.value)
    assert message.startswith(f"{path}: onnxruntime cannot load the model: ")
    assert "\n" not in message


def test_a_model_that_fails_to_run_names_the_file(models: Path, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.onnx"
    path.write_bytes(bad_models.fails_to_run((models / "tokenizer.onnx").read_bytes()))
    session = open_session(path)
    features = session.run({"mel": np.zeros((1, 14, N_MELS), np.float32)})["features"]
    assert features.shape == (1, 7, D)  # 7 frames: loads and runs
    with pytest.raises(ModelError) as error:
        session.run({"mel": np.zeros((1, 8, N_MELS), np.float32)})
    message = str(error.value)
    assert message.startswith(f"{path}: the model failed to run: ")
    assert "\n" not in message
