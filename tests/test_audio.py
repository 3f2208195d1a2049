"""edgetok.audio.load_audio: float32 mono 16 kHz from files, clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgetok.audio import AudioError, load_audio


def test_espeak_wav_is_resampled_to_16k(speech_dir: Path) -> None:
    path = speech_dir / "hello.wav"
    raw, rate = sf.read(path, dtype="float32")
    assert rate == 22050 and raw.ndim == 1
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - len(raw) * 16000 / 22050) <= 1
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_16k_float_file_is_read_exactly(tmp_path: Path) -> None:
    samples = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    sf.write(tmp_path / "a.wav", samples, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav"), samples)


def test_stereo_is_averaged(tmp_path: Path) -> None:
    left = np.full(800, 0.5, np.float32)
    right = np.full(800, -0.25, np.float32)
    sf.write(tmp_path / "s.flac", np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "s.flac"), 0.125, atol=1e-4)


def test_other_target_rate(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    assert len(load_audio(tmp_path / "a.wav", sample_rate=8000)) == 8000


def _bad(path: Path) -> str:
    with pytest.raises(AudioError) as error:
        load_audio(path)
    return str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    assert _bad(tmp_path / "nope.wav") == f"{tmp_path / 'nope.wav'}: no such file"


def test_directory(tmp_path: Path) -> None:
    assert _bad(tmp_path) == f"{tmp_path}: not a file"


def test_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("not audio at all")
    assert _bad(path).startswith(f"{path}: not a readable audio file (")


def test_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    assert _bad(path) == f"{path}: holds no audio samples"


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite(tmp_path: Path, value: float) -> None:
    path = tmp_path / "bad.wav"
    samples = np.zeros(400, np.float32)
    samples[7] = value
    sf.write(path, samples, 16000, subtype="FLOAT")
    assert _bad(path) == f"{path}: holds NaN or infinite samples"


def test_audio_error_is_a_value_error() -> None:
    assert issubclass(AudioError, ValueError)
