"""``edgetok bench``: real stages of the tiny bundle, a real loopback server, real ONNX graphs.

Timings are never compared with thresholds; the tests check what the report must hold:
its keys, every stage, ordered percentiles, counts that follow from the audio and the
models, cold-start marks in order, MACs that follow from the tiny models' shapes, and
targets that cannot run here listed with their reason.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from edgetok.audio import load_audio
from edgetok.bench import machine
from edgetok.bench.configs import find_configs
from edgetok.bench.flops import count_macs
from edgetok.bench.profile import SCHEMA, choose_clock, profile
from edgetok.bench.provenance import family, model_bytes
from edgetok.bench.stats import DEVICE_STAGES, STAGES, percentiles
from edgetok.bench.table import format_report
from edgetok.bundle import load_bundle
from edgetok.cli import main
from edgetok.runtime import available_backends
from edgetok.stages import DecoderPack, bundle_compression

RUNS = 2


def _built(tiny: Path, build_dir: Path, name: str, target: str, backend: str | None = None) -> Path:
    """A copy of the tiny bundle as if ``edgetok build --target target`` had written it."""
    out = build_dir / name
    shutil.copytree(tiny, out)
    manifest = out / "bundle.toml"
    text = manifest.read_text().replace('target = "default"', f'target = "{target}"')
    if backend is not None:
        text = text.replace('backend = "onnxruntime"', f'backend = "{backend}"')
    manifest.write_text(text)
    return out


@pytest.fixture(scope="module")
def two_utterances(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hello, 1 s of silence, fox, 0.5 s of silence: two utterances for the VAD."""
    hello, fox = (load_audio(speech_dir / name) for name in ("hello.wav", "fox.wav"))
    audio = np.concatenate([hello, np.zeros(16000, np.float32), fox, np.zeros(8000, np.float32)])
    path = tmp_path_factory.mktemp("bench-audio") / "two.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def report(tiny_bundle: Path, two_utterances: Path, tmp_path_factory: pytest.TempPathFactory):
    build_dir = tmp_path_factory.mktemp("build")
    configs = find_configs(["default", "jetson"], bundle=tiny_bundle, build_dir=build_dir)
    return profile(configs, audio=two_utterances, runs=RUNS, warmup=1, threads=1)


def test_report_has_every_stage_with_ordered_percentiles(report: dict[str, Any]) -> None:
    assert report["schema"] == SCHEMA
    config = report["configs"][0]
    assert config["available"] and config["reason"] is None
    assert config["runs"] == RUNS
    utterances = config["utterances_per_run"]
    assert utterances == 2
    assert set(config["stages"]) == {*STAGES, "server_decode"}
    for stage, values in config["stages"].items():
        ms = values["ms"]
        assert ms["n"] == (RUNS * utterances if stage != "server_decode" else RUNS * utterances)
        assert 0 <= ms["min"] <= ms["p50"] <= ms["p90"] <= ms["p99"] <= ms["max"], stage
        assert values["ms_per_audio_s"] >= 0
    device = config["rtf"]["device"]
    assert 0 < device["p50"] <= device["p90"] <= device["p99"]
    # the whole run includes every device stage
    assert config["rtf"]["end_to_end"]["min"] >= 0.99 * device["min"]
    summed = sum(config["stages"][s]["ms_per_audio_s"] for s in DEVICE_STAGES) / 1e3
    assert math.isclose(summed, device["mean"], rel_tol=1e-6)
    latency = config["latency_ms"]
    assert latency["first_result"]["n"] == latency["eos_to_final"]["n"] == RUNS * utterances
    assert latency["first_result"]["p50"] <= latency["eos_to_final"]["p50"]
    json.dumps(report)  # JSON-ready


def test_rates_and_bytes_follow_from_the_models(report: dict[str, Any], tiny_bundle: Path) -> None:
    config = report["configs"][0]
    rates = config["rates"]
    # the tiny tokenizer keeps every second 10 ms frame: 50 tokens per second of speech
    assert rates["tokens_per_s"] == pytest.approx(50, abs=2)
    assert 0 < rates["segments_per_s"] <= rates["tokens_per_s"]
    b = rates["bytes_per_s"]
    assert 0 < b["segments"] <= b["dense"]
    assert b["pcm"] == pytest.approx(32000, rel=0.01)  # 16-bit PCM at 16 kHz
    sizes = config["model_bytes"]
    bundle = load_bundle(tiny_bundle)
    for role in bundle.models:
        assert sizes[role] == bundle.path_of(role).stat().st_size
    assert sizes == model_bytes(bundle)
    assert config["transcript"] == config["transcript"].strip()


def test_cold_start_marks_and_memory(report: dict[str, Any]) -> None:
    cold = report["configs"][0]["cold_start"]
    order = ["python_started", "imported", "loaded", "first_token", "streamed"]
    for key in ("warm_cache", "empty_cache"):
        run = cold[key]
        assert "error" not in run, run
        assert run["numba_cache"] == key.split("_")[0]
        for marks in (run["marks_s"], run["cpu_marks_s"]):
            values = [marks[m] for m in order]
            assert values == sorted(values) and values[0] >= 0
        assert run["first_token_s"] > 0
        assert run["first_tokens"] == 49  # one second: 98 log-mel frames, every second kept
        assert run["utterances"] == 2
        assert run["peak_rss_mb"] > 0
    assert report["configs"][0]["peak_rss_mb"]["device"] == cold["warm_cache"]["peak_rss_mb"]


def test_flops_of_the_tiny_models(report: dict[str, Any], tiny_bundle: Path) -> None:
    flops = report["configs"][0]["flops"]
    assert flops["available"]
    shapes = flops["shapes"]
    # tokenizer: features = mel[:, ::2] @ W [80, 8], then the codebook search [16, 8]
    per_utterance = math.ceil(shapes["frames"] / 2) * 80 * 8 + shapes["tokens"] * 16 * 8
    tokenizer = flops["models"]["tokenizer"]
    duration = per_utterance / tokenizer["macs_per_speech_s"]
    assert 0.5 < duration < 5  # the median utterance's seconds
    assert set(flops["models"]) == {"tokenizer", "entropy_lm", "aggregator"}
    for values in flops["models"].values():
        assert values["achieved_gflops"] is None or values["achieved_gflops"] >= 0
        assert values["kind"] == "fp32"  # each model against its own precision's rate
    gemm = report["machine"]["gemm"]
    assert gemm["fp32_gflops"] > 0 and gemm["int8_gops"] > 0
    assert flops["gemm_gflops"] == {"fp32": gemm["fp32_gflops"], "int8": gemm["int8_gops"]}


def test_count_macs_matmul_gemm_conv(tmp_path: Path, tiny_bundle: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    macs = count_macs(tiny_bundle / "tokenizer.onnx", {"mel": np.zeros((1, 101, 80), np.float32)})
    assert macs.macs == 51 * 80 * 8
    weight = numpy_helper.from_array(np.ones((6, 4, 3), np.float32), "w")
    gemm_b = numpy_helper.from_array(np.ones((5, 7), np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1]),
            helper.make_node("Gemm", ["g", "b"], ["z"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "T"]),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, ["M", 5]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
        initializer=[weight, gemm_b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, tmp_path / "m.onnx")
    feeds = {"x": np.zeros((1, 4, 10), np.float32), "g": np.zeros((3, 5), np.float32)}
    count = count_macs(tmp_path / "m.onnx", feeds)
    assert count.by_op == {"Conv": 6 * 10 * 4 * 3, "Gemm": 3 * 7 * 5}
    assert count.skipped == []


def test_unavailable_targets_are_listed_with_the_reason(
    report: dict[str, Any], tiny_bundle: Path, tmp_path: Path
) -> None:
    jetson = report["configs"][1]
    assert jetson["target"] == "jetson" and not jetson["available"]
    assert "not built" in jetson["reason"]
    assert "stages" not in jetson
    text = format_report(report)
    assert "jetson/tensorrt: unavailable: " in text
    # a built TensorRT bundle on a machine without TensorRT
    if available_backends()["tensorrt"] is None:
        pytest.skip("TensorRT is installed here")
    _built(tiny_bundle, tmp_path, "jetson", "jetson", backend="tensorrt")
    (config,) = find_configs(["jetson"], build_dir=tmp_path)
    assert not config.available
    assert config.backend == "tensorrt" and "tensorrt" in config.reason


def test_find_configs_finds_builds_once(tiny_bundle: Path, tmp_path: Path) -> None:
    _built(tiny_bundle, tmp_path, "x86-cpu-onnxruntime", "x86-cpu")
    _built(tiny_bundle, tmp_path, "x86-cpu-copy", "x86-cpu")  # the same models again
    _built(tiny_bundle, tmp_path, "x86-cpu-other", "rpi")  # built for another target
    configs = find_configs(["x86-cpu", "rpi", "android"], build_dir=tmp_path)
    assert [(c.target, c.available) for c in configs[:2]] == [("x86-cpu", True), ("rpi", True)]
    assert configs[0].name == "x86-cpu/onnxruntime/fp32"
    assert [c.target for c in configs].count("x86-cpu") == 1  # the copy is the same build
    assert configs[0].bundle in (tmp_path / "x86-cpu-onnxruntime", tmp_path / "x86-cpu-copy")
    assert configs[1].bundle == tmp_path / "x86-cpu-other"
    android = configs[2]
    assert not android.available and android.reason
    with pytest.raises(ValueError, match="unknown target"):
        find_configs(["nowhere"], build_dir=tmp_path)


def test_the_device_compression_is_the_packs(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert bundle_compression(bundle) == DecoderPack.from_bundle(bundle).compression


def test_table_and_plot(report: dict[str, Any], tmp_path: Path) -> None:
    text = format_report(report)
    for label in ("VAD", "frontend", "tokenizer", "entropy LM", "segmenter", "aggregator"):
        assert label in text
    for label in ("serialization", "send", "round trip", "device RTF", "cold start"):
        assert label in text
    assert report["configs"][0]["name"] in text
    pytest.importorskip("matplotlib")
    from edgetok.bench.plot import plot_report

    path = plot_report(report, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_json(tiny_bundle: Path, two_utterances: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--bundle",
            str(tiny_bundle),
            "--compare",
            "jetson",
            "--audio",
            str(two_utterances),
            "--runs",
            "1",
            "--warmup",
            "0",
            "--no-cold-start",
            "--no-flops",
            "--no-pocketsphinx",
            "--clock",
            "wall",
            "--build-dir",
            str(tmp_path),
            "--json",
            "--quiet",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == json.loads(out.read_text())
    assert report["settings"]["clock"] == "wall"
    assert [c["available"] for c in report["configs"]] == [True, False]
    assert report["configs"][0]["cold_start"] is None
    assert report["configs"][0]["flops"] == {"available": False, "reason": "not asked for"}


def test_cli_unknown_target_is_an_error() -> None:
    result = CliRunner().invoke(main, ["bench", "--target", "toaster"])
    assert result.exit_code != 0
    assert "unknown target 'toaster'" in result.output


def test_percentiles() -> None:
    p = percentiles([3.0, 1.0, 2.0], 1e3)
    assert (p["min"], p["p50"], p["max"], p["n"]) == (1e3, 2e3, 3e3, 3)
    assert percentiles([])["p50"] is None


def test_rows_carry_provenance(report: dict[str, Any], tiny_bundle: Path) -> None:
    """Like whisper.cpp's bench rows: commit, model sha256s, beam, segmenter, CPU, threads."""
    bundle = load_bundle(tiny_bundle)
    code = report["provenance"]
    assert code["commit"] is None or len(code["commit"]) == 40
    made = report["configs"][0]["provenance"]
    assert made["commit"] == code["commit"] and made["dirty"] == code["dirty"]
    assert made["beam"] == report["settings"]["beam"] == 4
    assert made["threads"] == 1 and made["clock"] == report["settings"]["clock"]
    assert made["cpu"] == report["machine"]["cpu"]["model"]
    rows = made["bundle"]["models"]
    assert {role: row["sha256"] for role, row in rows.items()} == {
        role: entry.sha256 for role, entry in bundle.models.items()
    }
    assert made["bundle"]["codebook_sha256"] == bundle.tokens.codebook_sha256
    assert made["bundle"]["segmenter"] == bundle.segmenter.to_dict()
    assert made["bundle"]["family"] == family(bundle)
    assert "family" in format_report(report)


def test_machine_description() -> None:
    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC\ncpu MHz\t\t: 2600.000\nphysical id\t: 0\ncore id\t\t: 0\n"
        "flags\t\t: fpu avx2 fma avx512f avx512_vnni\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\nphysical id\t: 0\ncore id\t\t: 1\n"
    )
    cpu = machine.cpu_info(text)
    assert cpu["model"] == "AMD EPYC" and cpu["family"] == 25
    assert cpu["flags"] == ["fma", "avx2", "avx512f", "avx512_vnni"]
    assert (cpu["logical_cpus"], cpu["physical_cores"]) == (2, 2)
    peak = machine.peak_per_core(cpu)
    assert peak["fp32_flop_per_cycle"] == 32  # Zen 4: AVX-512 on 256-bit halves
    assert peak["int8_op_per_cycle"] == 128
    assert peak["fp32_gflops"] == pytest.approx(83.2)
    described = machine.describe()
    assert described["cpu"]["logical_cpus"] >= 1 and "python" in described
    assert choose_clock("wall", described) == ("wall", "asked for")
    assert choose_clock("auto", described)[0] in ("wall", "cpu")


def test_a_build_that_failed_parity_is_listed_not_benchmarked(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    import json

    _built(tiny_bundle, tmp_path, "x86-cpu-onnxruntime", "x86-cpu")
    checks = {"token_agreement >= 0.99": False, "boundary_f1 >= 0.95": True}
    (tmp_path / "x86-cpu-onnxruntime" / "parity.json").write_text(json.dumps({"checks": checks}))
    (config,) = find_configs(["x86-cpu"], build_dir=tmp_path)
    assert not config.available
    assert config.reason == "its parity check failed (token_agreement >= 0.99)"


def test_a_bundle_compared_with_the_shipped_one_keeps_its_own_name(tiny_bundle: Path) -> None:
    """``bench --bundle DIR --compare default``: two FP32 ONNX bundles, told apart."""
    mine, shipped = find_configs(["default", "default"], bundle=tiny_bundle)
    assert mine.name != shipped.name
    assert mine.name.endswith(f"({tiny_bundle.name})") and mine.bundle == tiny_bundle


def test_a_build_is_of_its_sources_family(tiny_bundle: Path, tmp_path: Path) -> None:
    """A model rebuilt for a backend keeps its FP32 source's sha256: same family; other
    segmenter settings make another family."""
    source = load_bundle(tiny_bundle)
    built = _built(tiny_bundle, tmp_path, "x86-cpu-int8", "x86-cpu")
    manifest = built / "bundle.toml"
    sha = source.models["aggregator"].sha256
    text = manifest.read_text().replace(
        f'sha256 = "{sha}"', f'sha256 = "{"0" * 64}"\nsource_sha256 = "{sha}"', 1
    )
    manifest.write_text(text)
    rebuilt = load_bundle(built, verify=False)
    assert rebuilt.models["aggregator"].source_sha256 == sha
    assert family(rebuilt) == family(source)
    threshold = f"global_threshold = {source.segmenter.global_threshold!r}"
    assert threshold in text
    manifest.write_text(text.replace(threshold, "global_threshold = 0.5"))
    assert family(load_bundle(built, verify=False)) != family(source)
