"""``python -m edgetok.bench.suite``: the comparison run with pocketsphinx, and the kept results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from edgetok.audio import load_audio
from edgetok.bench.suite import comparisons, format_comparisons, main


def _config(backend: str, precision: str, rtf: float, stage_ms: float) -> dict:
    stages = {s: {"ms_per_audio_s": stage_ms} for s in ("tokenizer", "entropy_lm", "aggregator")}
    return {
        "name": f"x86-cpu/{backend}/{precision}",
        "target": "x86-cpu",
        "backend": backend,
        "precision": precision,
        "available": True,
        "rtf": {"device": {"p50": rtf}},
        "stages": stages,
    }


def test_comparisons_are_ratios_of_this_run() -> None:
    report = {
        "configs": [
            _config("onnxruntime", "fp32", 0.02, 4.0),
            _config("onnxruntime", "int8", 0.01, 2.0),
            _config("openvino", "int8", 0.008, 1.0),
            {"name": "jetson/tensorrt", "available": False, "reason": "no TensorRT"},
        ],
        "ratios": {"pocketsphinx_over_device": {"x86-cpu/onnxruntime/int8": 20.0}},
    }
    found = comparisons(report)
    assert found["int8_vs_fp32"]["onnxruntime"]["device_rtf"] == pytest.approx(2.0)
    assert found["int8_vs_fp32"]["onnxruntime"]["tokenizer"] == pytest.approx(2.0)
    assert "openvino" not in found["int8_vs_fp32"]  # no OpenVINO FP32 ran
    pair = found["backends"]["int8"]["onnxruntime/openvino"]
    assert pair["device_rtf"] == pytest.approx(1.25) and pair["entropy_lm"] == pytest.approx(2)
    text = format_comparisons(found)
    assert "onnxruntime FP32 / INT8: device RTF 2.00x" in text
    assert "pocketsphinx / x86-cpu/onnxruntime/int8: 20.0x" in text


def test_suite_runs_targets_with_pocketsphinx_and_keeps_results(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pocketsphinx")
    build = tmp_path / "build"
    built = build / "x86-cpu-onnxruntime"
    shutil.copytree(tiny_bundle, built)
    manifest = built / "bundle.toml"
    manifest.write_text(manifest.read_text().replace('target = "default"', 'target = "x86-cpu"'))
    audio = tmp_path / "fox.wav"
    sf.write(audio, load_audio(speech_dir / "fox.wav"), 16000)
    results = tmp_path / "results"
    result = CliRunner().invoke(
        main,
        [
            "--targets",
            "x86-cpu,jetson",
            "--build-dir",
            str(build),
            "--audio",
            str(audio),
            "--runs",
            "1",
            "--warmup",
            "0",
            "--no-cold-start",
            "--results",
            str(results),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "pocketsphinx" in result.output and "ratios measured in this run" in result.output
    assert "jetson/tensorrt: unavailable: " in result.output
    kept = {p.suffix for p in results.iterdir()}
    assert {".json", ".txt"} <= kept <= {".json", ".txt", ".png"}
    (report_path,) = results.glob("*.json")
    report = json.loads(report_path.read_text())
    assert report["machine"]["cpu"]["logical_cpus"] >= 1
    assert report["baselines"]["pocketsphinx"]["rtf"]["n"] == 1
    ratio = report["comparisons"]["pocketsphinx"]["x86-cpu/onnxruntime/fp32"]
    assert np.isfinite(ratio) and ratio > 0
    text = report_path.with_suffix(".txt").read_text()
    assert text.startswith("$ python -m edgetok.bench.suite")
