"""edgetok.runtime.tensorrt: the engine adapter runs only where TensorRT and a GPU are
(a Jetson with JetPack); here it must fail as one clear ImportError."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edgetok.runtime import available_backends, open_session


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_missing_tensorrt_names_what_to_install(tiny_bundle: Path) -> None:
    with pytest.raises(ImportError, match="backend 'tensorrt' cannot be imported here.*JetPack"):
        open_session(tiny_bundle / "tokenizer.onnx", "tensorrt")
    assert "JetPack" in (available_backends()["tensorrt"] or "")


def test_engine_runs_like_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip(
        "tensorrt",
        reason="TensorRT comes with JetPack and cannot be installed from PyPI here; "
        "run on a Jetson or a GPU machine",
    )
    pytest.importorskip("cuda", reason="cuda-python is needed for device memory")
    from edgetok.targets.compilers import ToolchainError, get_compiler

    try:
        get_compiler("tensorrt").check()
    except ToolchainError as exc:
        pytest.skip(str(exc))
    import numpy as np
    from fixtures.make_tiny_bundle import make_tiny_bundle

    from edgetok.bundle import load_bundle

    bundle = load_bundle(make_tiny_bundle(tmp_path / "tiny"))
    artifact = get_compiler("tensorrt").compile(
        bundle, "tokenizer", tmp_path, int8=False, calib=None, work_dir=tmp_path / "work"
    )
    mel = np.random.default_rng(0).normal(size=(1, 40, 80)).astype(np.float32)
    got = open_session(tmp_path / artifact.file, "tensorrt").run({"mel": mel})
    want = open_session(bundle.path_of("tokenizer")).run({"mel": mel})
    np.testing.assert_allclose(got["features"], want["features"], rtol=1e-3, atol=1e-3)
