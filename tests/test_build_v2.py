"""``edgetok build`` of a v2 bundle (Whisper encoder + FSQ tokenizer, frame-reading
aggregator, Whisper decoder graphs), made by the tiny v2 chain of test_train_v2: the
device models compiled per backend, the server decoder carried over, INT8 through ONNX
Runtime and OpenVINO with the parity report, calibration feeds, and the backends that
cannot build it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_train_v2 import chain, v2_bundle  # noqa: F401 (fixtures: the tiny v2 chain)

from edgetok.bundle import load_bundle
from edgetok.cli import main

pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime's quantization tools")
pytestmark = pytest.mark.torch

Build = Callable[..., tuple[int, str, Path]]
DEVICE = ("tokenizer", "entropy_lm", "aggregator")
SERVER = ("decoder_context", "decoder_step")


@pytest.fixture(scope="module")
def build(chain, v2_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Build:  # noqa: F811
    """``build(name, *args)``: ``edgetok build`` of the v2 bundle calibrated on the chain's
    corpus (parity on its test split) into ``<tmp>/name``, run once per name: (exit
    code, output, directory). Builds share one parity cache, as targets built from one
    bundle do."""
    corpus, _ = chain
    root = tmp_path_factory.mktemp("v2-builds")
    done: dict[str, tuple[int, str]] = {}

    def run(name: str, *args: str) -> tuple[int, str, Path]:
        if name not in done:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("EDGETOK_CACHE", str(corpus.parent / "cache"))
                result = CliRunner().invoke(
                    main,
                    ["build", "--bundle", str(v2_bundle), "--calib", str(corpus)]
                    + ["--out", str(root / name), *args],
                )
            done[name] = (result.exit_code, result.output)
        return (*done[name], root / name)

    return run


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_build(build: Build, v2_bundle: Path, backend: str) -> None:  # noqa: F811
    """x86-cpu INT8: the device models compiled for the backend (the entropy LM in INT8;
    the FSQ tokenizer and the aggregator FP32), the server decoder graphs, vocabulary and
    the decoder's external data as they are in the source; parity measured end to end
    through the source's Whisper decoder."""
    if backend == "openvino":
        pytest.importorskip("nncf", reason="OpenVINO and NNCF are in the build extra")
    code, output, out = build(backend, "--target", "x86-cpu", "--int8", "--backend", backend)
    report = json.loads((out / "parity.json").read_text())
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert code == (3 if failed else 0), output
    assert "Traceback" not in output
    assert report["precision"] == {"tokenizer": "fp32", "entropy_lm": "int8", "aggregator": "fp32"}
    assert report["calibration_utterances"] > 0 and report["pipeline"]["utterances_with_text"]
    # The tokenizer is FP32 (quantize.int8_roles): its tokens are the source's.
    assert report["models"]["tokenizer"]["token_agreement"] == 1.0
    assert report["pipeline"]["token_agreement"] == 1.0
    assert report["models"]["aggregator"]["vector_rel_error"] < 1e-4
    assert report["models"]["entropy_lm"]["entropy_mae"] < 0.1
    assert report["models"]["decoder"]["next_char_agreement"] is None
    assert "next-char agreement          n/a" in output
    assert all(ok is not None for ok in report["checks"].values())

    source, built = load_bundle(v2_bundle), load_bundle(out)
    for role in DEVICE:
        entry = built.models[role]
        assert entry.backend == backend and entry.source_sha256 == source.models[role].sha256
        assert entry.external_file is None  # compiled into self-contained files
    for role in SERVER:
        assert built.models[role] == source.models[role]
        external = source.models[role].external_file
        if external is not None and (v2_bundle / external).is_file():
            assert (out / external).read_bytes() == (v2_bundle / external).read_bytes()
    assert built.text == source.text and built.vocabulary_path.is_file()
    if backend == "onnxruntime":
        import onnx

        def quantize_nodes(role: str) -> int:
            graph = onnx.load(str(out / f"{role}.onnx")).graph
            return sum(n.op_type == "QuantizeLinear" for n in graph.node)

        assert quantize_nodes("entropy_lm") > 0 and quantize_nodes("tokenizer") == 0

    from edgetok.audio import load_audio
    from edgetok.stages import Transcriber

    transcript = Transcriber(built, beam=1)(load_audio(out / "sample.wav", 16_000))
    assert isinstance(transcript.text, str) and transcript.vectors.shape[1] == 384


def test_fp32_build_has_exact_parity(build: Build, v2_bundle: Path) -> None:  # noqa: F811
    code, output, out = build("rpi", "--target", "rpi", "--fp32")
    assert code == 0, output
    report = json.loads((out / "parity.json").read_text())
    assert report["precision"] == dict.fromkeys(DEVICE, "fp32")
    assert report["models"]["entropy_lm"]["entropy_mae"] < 1e-5
    assert report["pipeline"]["boundary_f1"] == 1.0 and report["pipeline"]["wer_change"] == 0.0
    assert all(report["checks"].values())
    # Weights stored as float16 stay float16: the optimized tokenizer is no larger than
    # the source with its external data.
    source = load_bundle(v2_bundle).models["tokenizer"]
    size = (v2_bundle / source.file).stat().st_size
    if source.external_file is not None:
        size += (v2_bundle / source.external_file).stat().st_size
    assert (out / "tokenizer.onnx").stat().st_size < 1.05 * size


def test_calibration_feeds(chain, v2_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """The device models' inputs from the FP32 pipeline: the aggregator's are the
    tokenizer's encoder frames cut into segments; no decoder feeds."""
    from calibration import make_calibration, pick, read_source

    corpus, _ = chain
    bundle = load_bundle(v2_bundle)
    made = make_calibration(bundle, pick(read_source(corpus), 3), tmp_path)
    assert set(made.feeds) == set(DEVICE)
    max_len = bundle.segmenter.max_len
    for mel, tokens, segments in zip(*(made.reader(role) for role in DEVICE), strict=True):
        assert tokens["tokens"].shape[1] == -(-mel["mel"].shape[1] // 2)
        assert sorted(segments) == ["frames", "mask"]
        n = segments["mask"].shape[0]
        assert (
            segments["frames"].shape == (n, max_len, 384) and segments["frames"].dtype == np.float32
        )
        assert segments["mask"].sum() == tokens["tokens"].shape[1]


def test_litert_cannot_build_v2(v2_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """Before any toolchain check or work: one message naming why."""
    from targets.build import BuildError
    from targets.build import build as build_target

    with pytest.raises(BuildError, match=r"litert cannot build .*v2's Whisper-encoder tokenizer"):
        build_target(v2_bundle, "android", tmp_path / "android", progress=lambda _: None)
    assert not (tmp_path / "android").exists()


def test_tensorrt_profile_covers_the_frames(v2_bundle: Path) -> None:  # noqa: F811
    """The TensorRT engine's shapes (no GPU here: the ONNX side only): the aggregator's
    frames from 1 to 1024 segments of exactly max_len frames."""
    from targets.compilers.tensorrt import profile_shapes

    bundle = load_bundle(v2_bundle)
    shapes = profile_shapes(bundle.models["aggregator"], "aggregator", bundle.segmenter.max_len)
    width = bundle.segmenter.max_len
    assert shapes["frames"] == ([1, width, 384], [64, width, 384], [1024, width, 384])
    assert shapes["mask"] == ([1, width], [64, width], [1024, width])
