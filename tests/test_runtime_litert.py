"""edgetok.runtime.litert: fixed-window .tflite models built from the tiny exported bundle,
run at many lengths against the FP32 ONNX in ONNX Runtime."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from fixtures import build_fixtures

pytest.importorskip("ai_edge_litert", reason="LiteRT is in the litert extra ('edgetok[litert]')")
if build_fixtures.prebuilt("litert") is None:
    pytest.importorskip(
        "litert_torch", reason="litert-torch is in the build extra ('edgetok[build]')"
    )

from edgetok.runtime import Session, TensorSpec, open_session  # noqa: E402
from edgetok.windows import SCHEMES  # noqa: E402

exported_bundle = build_fixtures.exported_bundle

#: Small windows keep the conversions fast: role -> axis sizes.
WINDOWS = {"tokenizer": {"T": (32, 64)}, "entropy_lm": {"T": (16, 40)}}


def compile_windows(exported_bundle: Path, out: Path) -> None:
    """The tokenizer and entropy LM of ``exported_bundle`` as ``WINDOWS`` .tflite in ``out``."""
    from edgetok.bundle import load_bundle
    from edgetok.targets.compilers import get_compiler

    compiler = get_compiler("litert")
    with pytest.MonkeyPatch.context() as patch:
        for role, sizes in WINDOWS.items():
            patch.setitem(SCHEMES, role, dataclasses.replace(SCHEMES[role], sizes=sizes))
            compiler.compile(
                load_bundle(exported_bundle),
                role,
                out,
                int8=False,
                calib=None,
                work_dir=out / "work",
            )


@pytest.fixture(scope="module")
def tflite(exported_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    made = build_fixtures.prebuilt("litert")
    if made is not None:
        return made
    out = tmp_path_factory.mktemp("litert")
    compile_windows(exported_bundle, out)
    return out


def test_declares_the_onnx_io(tflite: Path) -> None:
    session = open_session(tflite / "tokenizer.tflite", "litert")
    assert isinstance(session, Session)
    assert session.inputs == [TensorSpec("mel", "float32", (1, "T", 80))]
    assert session.outputs == [TensorSpec("features", "float32", (1, "T", 16))]
    lm = open_session(tflite / "entropy_lm.tflite", "litert")
    assert lm.inputs == [TensorSpec("tokens", "int64", (1, "T"))]
    assert [s.name for s in lm.outputs] == ["entropy", "logits"]


@pytest.mark.parametrize("frames", [5, 31, 32, 33, 64])
def test_tokenizer_windows_match_onnx(tflite: Path, exported_bundle: Path, frames: int) -> None:
    mel = np.random.default_rng(frames).normal(-5, 3, (1, frames, 80)).astype(np.float32)
    got = open_session(tflite / "tokenizer.tflite", "litert").run({"mel": mel})["features"]
    want = open_session(exported_bundle / "tokenizer.onnx").run({"mel": mel})["features"]
    assert got.shape == want.shape == (1, (frames + 1) // 2, 16)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [1, 16, 17, 40])
def test_entropy_lm_windows_match_onnx(tflite: Path, exported_bundle: Path, length: int) -> None:
    tokens = np.random.default_rng(length).integers(0, 16, (1, length))
    got = open_session(tflite / "entropy_lm.tflite", "litert").run({"tokens": tokens})
    want = open_session(exported_bundle / "entropy_lm.onnx").run({"tokens": tokens})
    for name in ("entropy", "logits"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_longer_than_every_window(tflite: Path) -> None:
    session = open_session(tflite / "entropy_lm.tflite", "litert")
    with pytest.raises(ValueError, match=r"exceed the largest fixed window \{'T': 40\}"):
        session.run({"tokens": np.zeros((1, 41), np.int64)})
