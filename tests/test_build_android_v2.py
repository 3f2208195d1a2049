"""``edgetok build --target android`` of the shipped default bundle (v2: Whisper tiny.en
encoder + FSQ tokenizer, entropy LM, frame aggregator) with LiteRT: the device models
rebuilt from their ONNX as torch modules, converted with fixed windows (the entropy LM in
INT8, the tokenizer and aggregator FP32), the server decoder graphs carried over, parity
measured; the build talking to a plain ``edgetok serve`` of the FP32 bundle; a 25 s
utterance through the build and the server decoder in one piece."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import wave
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import espeak
from test_cli_transcribe_batch import ENV, edgetok, server

from edgetok.bundle import BundleError, default_bundle_path, load_bundle, sha256_file
from edgetok.cli import main
from edgetok.windows import SCHEMES

pytest.importorskip("ai_edge_litert", reason="LiteRT is in the litert extra ('edgetok[litert]')")
pytest.importorskip("litert_torch", reason="litert-torch is in the build extra ('edgetok[build]')")

DEVICE = ("tokenizer", "entropy_lm", "aggregator")
SERVER = ("decoder_context", "decoder_step")
#: Only the largest window of each model: every utterance up to MAX_UTTERANCE_S fits,
#: and each model is converted once (the shipped windows are edgetok.windows.SCHEMES').
LARGEST = {
    role: {axis: (max(sizes),) for axis, sizes in SCHEMES[role].sizes.items()} for role in DEVICE
}
CALIBRATION = (
    ("en-us", "the cat sat on the mat"),
    ("en-us+f3", "seven green apples fell from the tree"),
    ("en-us+m3", "the weather is nice today"),
)
HELDOUT = (
    ("en-gb", "a quick brown fox jumps over the lazy dog"),
    ("en-gb-scotland", "we walked along the river after dinner"),
    ("en-us-nyc", "the train leaves the station at noon"),
    ("en-029", "my brother plays the guitar every evening"),
)
#: About 25 s of espeak-ng speech in one breath (commas, no sentence pauses).
LONG_TEXT = (
    "on monday morning the old fisherman walked slowly down to the harbour, checked the "
    "ropes of his small blue boat, filled the tank with fuel, packed some bread and cheese "
    "and a flask of hot tea, and sailed out past the white lighthouse, where the water was "
    "calm and green, while the gulls followed him all the way to the far rocks, and in the "
    "evening he came home with a basket full of silver fish, which his neighbours cooked "
    "over a big warm fire on the beach for the whole village"
)


@pytest.fixture(scope="module")
def v2_bundle() -> Path:
    """The shipped default bundle (do not modify it), its decoder graphs openable."""
    try:
        path = default_bundle_path()
        bundle = load_bundle(path)
        for role in SERVER:
            bundle.open(role)
    except BundleError as exc:
        pytest.skip(str(exc))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng speech with transcripts: train.jsonl (calibration), test.jsonl (held out)."""
    path = tmp_path_factory.mktemp("android-speech")
    (path / "audio").mkdir()
    for split, sentences in (("train", CALIBRATION), ("test", HELDOUT)):
        rows = []
        for i, (voice, text) in enumerate(sentences):
            wav = espeak(text, voice, path / "audio" / f"{split}{i}.wav")
            with wave.open(str(wav)) as f:
                duration = f.getnframes() / f.getframerate()
            rows.append({"path": f"audio/{wav.name}", "text": text, "duration": duration})
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def android(corpus: Path, v2_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(exit code, output, directory) of ``edgetok build --target android --int8``."""
    from edgetok.targets import latency

    out = tmp_path_factory.mktemp("android-build") / "android"
    with pytest.MonkeyPatch.context() as mp:
        for role, sizes in LARGEST.items():
            mp.setitem(SCHEMES, role, dataclasses.replace(SCHEMES[role], sizes=sizes))
        mp.setattr(latency, "WARMUP", 1)
        mp.setattr(latency, "tokenizer_latency", partial(latency.tokenizer_latency, repeats=3))
        result = CliRunner().invoke(
            main,
            ["build", "--target", "android", "--int8", "--bundle", str(v2_bundle)]
            + ["--calib", str(corpus), "--out", str(out)],
        )
    return result.exit_code, result.output, out


def test_int8_build_passes_parity(android: tuple, v2_bundle: Path) -> None:
    code, output, out = android
    assert code == 0, output
    assert "Traceback" not in output
    report = json.loads((out / "parity.json").read_text())
    assert list(report["checks"].values()) == [True] * 3, report["checks"]
    assert report["backend"] == "litert"
    assert report["precision"] == {"tokenizer": "fp32", "entropy_lm": "int8", "aggregator": "fp32"}
    assert report["utterances"] == report["pipeline"]["utterances_with_text"] == len(HELDOUT)
    # An FP32 tokenizer (quantize.int8_roles): padding a window changes no token.
    assert report["models"]["tokenizer"]["token_agreement"] == 1.0
    assert report["pipeline"]["token_agreement"] == 1.0
    assert report["models"]["aggregator"]["vector_rel_error"] < 1e-4
    assert report["models"]["entropy_lm"]["entropy_mae"] < 0.05
    assert report["pipeline"]["wer_fp32"] < 0.2 and report["pipeline"]["wer"] < 0.2

    source, built = load_bundle(v2_bundle), load_bundle(out)
    for role in DEVICE:
        entry = built.models[role]
        assert entry.file == f"{role}.tflite" and entry.backend == "litert"
        assert entry.source_sha256 == source.models[role].sha256
        assert entry.inputs == source.models[role].inputs
        assert entry.outputs == source.models[role].outputs
    for role in SERVER:
        assert built.models[role] == source.models[role]
        external = source.models[role].external_file
        if external is not None:
            assert sha256_file(out / external) == source.models[role].external_sha256
    lm = built.open("entropy_lm")
    tokens = np.random.default_rng(0).integers(0, 1000, (1, 300))
    want = source.open("entropy_lm").run({"tokens": tokens})["entropy"]
    assert np.abs(lm.run({"tokens": tokens})["entropy"] - want).mean() < 0.1


def _text(*args: str) -> list[dict]:
    """``edgetok transcribe --json`` in a child process: one object per file."""
    done = subprocess.run(
        edgetok("transcribe", "--json", *args), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return espeak(LONG_TEXT, "en-us", tmp_path_factory.mktemp("long") / "long.wav")


@pytest.fixture(scope="module")
def fp32_server(v2_bundle: Path) -> Iterator[str]:
    """A plain ``edgetok serve`` of the FP32 default bundle on loopback."""
    with server(v2_bundle) as (_, port):
        yield f"ws://127.0.0.1:{port}/"


def test_android_device_talks_to_the_fp32_server(
    android: tuple, fp32_server: str, long_speech: Path
) -> None:
    """The built device against a server of its source bundle: the same transcripts as
    decoding on the device, for the bundled sample and for 25 s of speech in one
    utterance (all of its tokens through the LiteRT windows, its last words in the text)."""
    code, output, out = android
    assert code == 0, output
    files = [str(out / "sample.wav"), str(long_speech)]
    # One utterance however the speaker breathes: the VAD waits 2 s of silence.
    options = ["--bundle", str(out), "--hangover", "2"]
    local = _text(*files, *options, "--local")
    remote = _text(*files, *options, "--server", fp32_server)
    assert [r["text"] for r in remote] == [r["text"] for r in local]
    assert local[0]["text"].strip()

    (utterance,) = local[1]["utterances"]
    assert utterance["end_s"] - utterance["start_s"] > 24
    assert utterance["tokens"] >= 50 * 24  # 50 tokens/s: every frame through the windows
    assert [u["tokens"] for u in remote[1]["utterances"]] == [utterance["tokens"]]
    text = local[1]["text"].lower()
    assert text.startswith("on monday morning") and text.endswith("the whole village"), text


@pytest.mark.parametrize("frames", [13, 2998])
def test_windowed_tokenizer_matches_onnx(android: tuple, v2_bundle: Path, frames: int) -> None:
    """The FP32 LiteRT tokenizer against the FP32 ONNX, from 13 mel frames to the 30 s that
    the VAD lets through, in the one 3000-frame window: features and encoder frames."""
    code, output, out = android
    assert code == 0, output
    mel = np.random.default_rng(frames).normal(-5, 3, (1, frames, 80)).astype(np.float32)
    got = load_bundle(out).open("tokenizer").run({"mel": mel})
    want = load_bundle(v2_bundle).open("tokenizer").run({"mel": mel})
    for name in ("features", "frames"):
        assert got[name].shape == want[name].shape == (1, (frames + 1) // 2, got[name].shape[2])
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-3)


def test_windowed_aggregator_matches_onnx(android: tuple, v2_bundle: Path) -> None:
    """From one segment to the most one utterance can have (max_utterance_segments)."""
    from edgetok.protocol import max_utterance_segments

    code, output, out = android
    assert code == 0, output
    source = load_bundle(v2_bundle)
    built, reference = load_bundle(out).open("aggregator"), source.open("aggregator")
    width = source.segmenter.max_len
    rng = np.random.default_rng(0)
    for segments in (1, max_utterance_segments(source)):
        feeds = {
            "frames": rng.normal(0, 1, (segments, width, 384)).astype(np.float32),
            "mask": np.arange(width)[None] < rng.integers(1, width + 1, (segments, 1)),
        }
        got, want = built.run(feeds)["vectors"], reference.run(feeds)["vectors"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
