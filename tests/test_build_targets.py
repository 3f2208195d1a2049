"""targets.build and ``edgetok build``: real builds of the tiny exported bundle on espeak
speech, their manifests, parity reports and toolchain errors."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures import build_fixtures

from edgetok.bundle import V1_ROLES, BundleError, load_bundle, sha256_file
from edgetok.cli import main
from edgetok.protocol import wire_identity
from edgetok.quantize import INT8_ROLES

pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime's quantization tools")

exported_bundle = build_fixtures.exported_bundle
speech_corpus = build_fixtures.speech_corpus


def _build(bundle: Path, corpus: Path, out: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main,
        ["build", "--bundle", str(bundle), "--calib", str(corpus), "--out", str(out), *args],
    )
    return result.exit_code, result.output


def report_precision(out: Path) -> dict[str, str]:
    return json.loads((out / "parity.json").read_text())["precision"]


def test_onnxruntime_int8_build(exported_bundle: Path, speech_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "x86-cpu-onnxruntime"
    code, output = _build(
        exported_bundle, speech_corpus, out, "--target", "x86-cpu", "--backend", "onnxruntime"
    )
    assert code == 0, output
    assert "tokenizer   token agreement" in output and "speed-up" in output
    built = load_bundle(out)
    assert built.meta.target == "x86-cpu"
    for role in V1_ROLES:
        entry = built.models[role]
        assert (entry.file, entry.backend, entry.precision) == (
            f"{role}.onnx",
            "onnxruntime",
            "int8" if role in INT8_ROLES else "fp32",
        )
    assert report_precision(out) == {r: built.models[r].precision for r in V1_ROLES}
    report = json.loads((out / "parity.json").read_text())
    assert report["utterances"] == 2 and report["calibration_utterances"] == 2
    assert 0.0 <= report["models"]["tokenizer"]["token_agreement"] <= 1.0
    assert report["pipeline"]["utterances_with_text"] == 2
    assert report["latency"]["tokenizer"]["speedup"] > 0
    assert set(report["checks"]) == {
        "token_agreement >= 0.98",
        "boundary_f1 >= 0.95",
        "wer_change <= 0.005",
    }
    assert built.eval["parity"]["target"] == "x86-cpu"
    import onnx

    def quantize_nodes(role: str) -> int:
        graph = onnx.load(str(out / f"{role}.onnx")).graph
        return sum(n.op_type == "QuantizeLinear" for n in graph.node)

    assert quantize_nodes("entropy_lm") > 0 and quantize_nodes("tokenizer") > 0
    assert quantize_nodes("aggregator") == 0 and quantize_nodes("decoder") == 0


def test_fp32_build_has_exact_parity(
    exported_bundle: Path, speech_corpus: Path, tmp_path: Path
) -> None:
    from edgetok.targets.build import build

    result = build(
        exported_bundle,
        "rpi",
        tmp_path / "rpi",
        int8=False,
        calib=speech_corpus,
        progress=lambda _: None,
    )
    report = result.report
    assert report["precision"] == dict.fromkeys(V1_ROLES, "fp32")
    assert report["models"]["tokenizer"]["token_agreement"] == 1.0
    assert report["models"]["entropy_lm"]["entropy_mae"] < 1e-5
    assert report["pipeline"]["boundary_f1"] == 1.0
    assert report["pipeline"]["wer_change"] == 0.0
    assert all(report["checks"].values()) and result.failed_checks == []
    # The built bundle's [eval] is what was measured on it, not the source's numbers.
    assert set(result.bundle.eval) == {"parity"}
    # Its vectors are the source's: a server running the FP32 bundle accepts the device.
    source = load_bundle(exported_bundle)
    assert result.bundle.models["aggregator"].sha256 != source.models["aggregator"].sha256
    assert wire_identity(result.bundle) == wire_identity(source)


def test_openvino_int8_build(exported_bundle: Path, speech_corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("nncf", reason="OpenVINO and NNCF are in the build extra")
    code, output = _build(exported_bundle, speech_corpus, tmp_path / "ov", "--target", "x86-cpu")
    assert code == 0, output
    built = load_bundle(tmp_path / "ov")
    assert {e.backend for e in built.models.values()} == {"openvino"}
    assert (tmp_path / "ov" / "tokenizer.bin").is_file()
    # The IR's weights are hashed too: a changed .bin is refused.
    for role in ("tokenizer", "entropy_lm", "aggregator"):
        entry = built.models[role]
        assert entry.external_file == f"{role}.bin" and entry.ships_external
        assert entry.external_sha256 == sha256_file(tmp_path / "ov" / entry.external_file)
    weights = tmp_path / "ov" / "aggregator.bin"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(BundleError, match="aggregator.bin"):
        load_bundle(tmp_path / "ov")
    weights.write_bytes(original)
    from edgetok.stages import Transcriber

    audio = np.zeros(16000, np.float32)
    assert isinstance(Transcriber(built)(audio).text, str)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is here")
def test_missing_toolchain_is_one_message(
    exported_bundle: Path, speech_corpus: Path, tmp_path: Path
) -> None:
    code, output = _build(exported_bundle, speech_corpus, tmp_path / "j", "--target", "jetson")
    assert code == 1
    assert "Error: tensorrt is not installed here" in output and "on the Jetson" in output
    assert "Traceback" not in output
    assert not (tmp_path / "j").exists()


def test_missing_openvino_is_one_message(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as in an env without the build extra
    out = tmp_path / "ov"
    result = CliRunner().invoke(
        main, ["build", "--bundle", str(tiny_bundle), "--target", "x86-cpu", "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "Error: openvino is not installed here" in result.output
    assert "pip install 'edgetok[build]'" in result.output
    assert "edgetok build --target x86-cpu --backend onnxruntime" in result.output
    assert "Traceback" not in result.output and not out.exists()


def _no_gpu_builder(logger: object) -> None:
    raise TypeError("pybind11::init(): factory function returned nullptr")


@pytest.mark.parametrize("builder", [lambda logger: None, _no_gpu_builder])
def test_tensorrt_without_a_gpu_is_one_message(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builder: object
) -> None:
    """TensorRT importable but no CUDA device: the builder is None or its constructor raises."""
    fake = types.ModuleType("tensorrt")
    fake.Logger = type("Logger", (), {"ERROR": 0, "WARNING": 1, "__init__": lambda self, _: None})
    fake.Builder = builder
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    out = tmp_path / "j"
    result = CliRunner().invoke(
        main, ["build", "--bundle", str(tiny_bundle), "--target", "jetson", "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "Error: TensorRT found no usable GPU here" in result.output
    assert "on the Jetson itself" in result.output and "--backend onnxruntime" in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "x86-cpu", "--backend", "litert"], "runs openvino, onnxruntime, not litert"),
        (["--target", "pi"], "unknown target 'pi'; known targets: android, jetson, rpi, x86-cpu"),
    ],
)
def test_bad_arguments(
    exported_bundle: Path, speech_corpus: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    code, output = _build(exported_bundle, speech_corpus, tmp_path / "o", *args)
    assert code == 1 and message in output and "Traceback" not in output


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(
    exported_bundle: Path,
    speech_corpus: Path,
    tmp_path: Path,
) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    code, output = _build(exported_bundle, speech_corpus, tmp_path, "--target", "rpi", "--fp32")
    assert code == 1 and "is not a built bundle" in output
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_fp32_reference_is_cached(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetok.calibration import read_source
    from edgetok.stages import Transcriber
    from edgetok.targets.parity import measure

    bundle = load_bundle(tiny_bundle)
    held = read_source(speech_dir)
    first = measure(bundle, bundle, held, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("ref-*.npz"))) == len(held) == 2
    assert first["models"]["tokenizer"]["token_agreement"] == 1.0

    def no_fp32_run(self: Transcriber, audio: np.ndarray) -> None:
        raise AssertionError("the FP32 pipeline ran again")

    monkeypatch.setattr(Transcriber, "encode", no_fp32_run)
    assert measure(bundle, bundle, held, cache_dir=tmp_path) == first


def test_replaces_an_unfinished_build(tmp_path: Path) -> None:
    from edgetok.targets.build import BUILD_MARKER, _prepare

    out = tmp_path / "out"
    _prepare(out)
    (out / "tokenizer.tflite").write_text("half-way")  # stopped before bundle.toml
    _prepare(out)
    assert [p.name for p in out.iterdir()] == [BUILD_MARKER]


def test_a_missed_parity_threshold_exits_3_and_bench_lists_the_build_as_failed(
    exported_bundle: Path, speech_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real FP32 build held to a bar no build can meet (token agreement above 1): the
    bundle and its parity.json are written, the command exits 3, bench does not run it."""
    from edgetok.bench.configs import find_configs
    from edgetok.targets import parity

    monkeypatch.setitem(parity.THRESHOLDS, "token_agreement", (">=", 1.01))
    out = tmp_path / "build" / "x86-cpu-onnxruntime"
    code, output = _build(
        exported_bundle,
        speech_corpus,
        out,
        "--target",
        "x86-cpu",
        "--backend",
        "onnxruntime",
        "--fp32",
    )
    assert code == 3, output
    assert "parity FAILED: token_agreement >= 1.01" in output
    assert load_bundle(out).meta.target == "x86-cpu"
    (config,) = find_configs(["x86-cpu"], build_dir=tmp_path / "build")
    assert not config.available and "token_agreement >= 1.01" in config.reason
