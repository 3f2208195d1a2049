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
from edgetok.bench.ratios import format_ratios, ratios
from edgetok.bench.suite import main


def _config(name: str, family: str, rtf: float, stage_ms: float, e2e: float = 0.1) -> dict:
    target, backend, precision = name.split(" ")[0].split("/")
    stages = {s: {"ms_per_audio_s": stage_ms} for s in ("tokenizer", "entropy_lm", "aggregator")}
    return {
        "name": name,
        "target": target,
        "backend": backend,
        "precision": precision,
        "available": True,
        "rtf": {"device": {"p50": rtf}, "end_to_end": {"p50": e2e}},
        "stages": stages,
        "provenance": {"bundle": {"family": family}},
    }


def test_ratios_compare_like_for_like() -> None:
    """Only builds of one bundle (one family) are compared, every pair kept; pocketsphinx
    against the end-to-end RTF."""
    report = {
        "configs": [
            _config("default/onnxruntime/fp32", "A", 0.02, 4.0, e2e=0.4),
            _config("default/onnxruntime/fp32 (other)", "A", 0.025, 5.0),
            _config("x86-cpu/onnxruntime/int8", "A", 0.01, 2.0),
            _config("x86-cpu/onnxruntime/int8 (old bundle)", "B", 0.005, 1.0),
            _config("x86-cpu/openvino/fp32", "A", 0.03, 6.0),
            _config("x86-cpu/openvino/int8", "A", 0.015, 3.0),
            {"name": "jetson/tensorrt", "available": False, "reason": "no TensorRT"},
        ],
        "baselines": {"pocketsphinx": {"rtf": {"p50": 0.2}}},
    }
    found = ratios(report)
    pairs = {(p["first"], p["second"]): p for p in found["fp32_over_int8"]}
    assert set(pairs) == {
        ("default/onnxruntime/fp32", "x86-cpu/onnxruntime/int8"),
        ("default/onnxruntime/fp32 (other)", "x86-cpu/onnxruntime/int8"),
        ("x86-cpu/openvino/fp32", "x86-cpu/openvino/int8"),
    }
    first = pairs[("default/onnxruntime/fp32", "x86-cpu/onnxruntime/int8")]
    assert first["device_rtf"] == pytest.approx(2.0) and first["tokenizer"] == pytest.approx(2.0)
    other = pairs[("default/onnxruntime/fp32 (other)", "x86-cpu/onnxruntime/int8")]
    assert other["device_rtf"] == pytest.approx(2.5)  # its own entry, not an overwrite
    backends = {
        (p["first"], p["second"]): p["device_rtf"] for p in found["onnxruntime_over_backend"]
    }
    assert backends[("x86-cpu/onnxruntime/int8", "x86-cpu/openvino/int8")] == pytest.approx(2 / 3)
    assert backends[("default/onnxruntime/fp32", "x86-cpu/openvino/fp32")] == pytest.approx(2 / 3)
    assert not any("old bundle" in a or "old bundle" in b for a, b in [*pairs, *backends])
    sphinx = found["pocketsphinx_over_end_to_end"]
    assert sphinx["default/onnxruntime/fp32"] == pytest.approx(0.5)  # 0.2 / 0.4, not / 0.02
    text = format_ratios(found)
    assert "default/onnxruntime/fp32 / x86-cpu/onnxruntime/int8: device RTF 2.00x" in text
    assert "pocketsphinx / default/onnxruntime/fp32, end to end: 0.5x" in text


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
    ratio = report["ratios"]["pocketsphinx_over_end_to_end"]["x86-cpu/onnxruntime/fp32"]
    assert np.isfinite(ratio) and ratio > 0
    text = report_path.with_suffix(".txt").read_text()
    assert text.startswith("$ python -m edgetok.bench.suite")
