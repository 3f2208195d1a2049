"""edgetok.audio: float32 mono 16 kHz from files, streams and pipes; clear errors for bad
input. (The microphone is tested through PulseAudio in test_mic.py.)"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgetok.audio import AudioError, FileSource, RawSource, load_audio


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


def _stream(source: FileSource | RawSource) -> np.ndarray:
    chunks = list(source)
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    return np.concatenate(chunks)


def test_file_source_at_16k_is_exact_in_any_chunking(tmp_path: Path) -> None:
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 5000).astype(np.float32)
    sf.write(tmp_path / "a.wav", samples, 16000, subtype="FLOAT")
    for chunk_s in (0.001, 0.032, 1.0):
        np.testing.assert_array_equal(
            _stream(FileSource(tmp_path / "a.wav", chunk_s=chunk_s)), samples
        )


def test_file_source_resamples_stereo_to_16k_mono(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "s.wav", np.stack([tone, tone], axis=1), 44100, subtype="FLOAT")
    streamed = _stream(FileSource(tmp_path / "s.wav"))
    assert abs(len(streamed) - 16000) <= 2
    np.testing.assert_allclose(
        streamed[100:-100], load_audio(tmp_path / "s.wav")[100:-100], atol=2e-3
    )


def test_realtime_file_source_is_live_and_paced(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(4000, np.float32), 16000)
    source = FileSource(tmp_path / "a.wav", realtime=True)
    assert source.live
    start = time.monotonic()
    assert len(_stream(source)) == 4000
    assert time.monotonic() - start >= 0.2


def test_file_source_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such file"):
        FileSource(tmp_path / "nope.wav")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        FileSource(tmp_path / "text.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="holds no audio samples"):
        FileSource(tmp_path / "empty.wav")
    samples = np.zeros(16000, np.float32)
    samples[12000] = np.nan
    sf.write(tmp_path / "nan.wav", samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"NaN or infinite sample at 0\.750 s"):
        _stream(FileSource(tmp_path / "nan.wav"))


def test_raw_s16le_and_f32le() -> None:
    pcm = np.array([0, 16384, -32768, 32767] * 300, "<i2")
    streamed = _stream(RawSource(io.BytesIO(pcm.tobytes()), format="s16le"))
    np.testing.assert_array_equal(streamed, pcm.astype(np.float32) / 32768)
    floats = np.linspace(-1, 1, 999, dtype="<f4")
    stereo = np.stack([floats, -floats], axis=1)
    raw = RawSource(io.BytesIO(stereo.tobytes()), format="f32le", channels=2)
    np.testing.assert_allclose(_stream(raw), 0.0, atol=1e-7)


def test_raw_other_rate_is_resampled() -> None:
    pcm = np.zeros(8000, "<i2").tobytes()
    assert abs(len(_stream(RawSource(io.BytesIO(pcm), rate=8000))) - 16000) <= 2


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"", "s16le", "holds no audio samples"),
        (b"\x00\x01\x02", "s16le", "ends 1 bytes into a sample frame of 2 bytes"),
        (np.array([0.0, np.nan], "<f4").tobytes(), "f32le", "NaN or infinite sample"),
    ],
)
def test_raw_errors(data: bytes, fmt: str, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        _stream(RawSource(io.BytesIO(data), format=fmt))  # type: ignore[arg-type]


def _cut(path: Path, out: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: round(len(data) * fraction)])
    return out


def test_a_truncated_wav_is_read_up_to_its_end_and_says_so(tmp_path: Path) -> None:
    samples = np.random.default_rng(1).uniform(-0.5, 0.5, 48000).astype(np.float32)
    sf.write(tmp_path / "whole.wav", samples, 16000, subtype="PCM_16")
    whole = FileSource(tmp_path / "whole.wav")
    assert len(_stream(whole)) == 48000 and whole.shortfall() is None
    cut = FileSource(_cut(tmp_path / "whole.wav", tmp_path / "cut.wav", 1 / 3))
    read = len(_stream(cut))
    assert read == (96044 // 3 - 44) // 2  # the 44-byte header, 2 bytes a sample
    assert cut.declared_frames == 48000
    assert cut.shortfall() == (
        f"{tmp_path / 'cut.wav'}: read {read / 16000:.2f} s of audio, its header declares "
        "3.00 s (truncated?)"
    )


def test_a_flac_that_fails_midway_keeps_what_was_read(tmp_path: Path) -> None:
    samples = np.random.default_rng(2).uniform(-0.5, 0.5, 48000).astype(np.float32)
    sf.write(tmp_path / "whole.flac", samples, 16000, subtype="PCM_16")
    cut = FileSource(_cut(tmp_path / "whole.flac", tmp_path / "cut.flac", 1 / 3))
    read = len(_stream(cut))
    assert 0 < read < 48000
    assert cut.shortfall().startswith(
        f"{tmp_path / 'cut.flac'}: read {read / 16000:.2f} s of audio, its header declares "
        "3.00 s (reading failed: "
    )


def test_a_source_closed_early_reports_no_shortfall(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    source = FileSource(tmp_path / "a.wav", chunk_s=0.1)
    for _ in source:
        source.close()
    assert source.frames_read == 1600 and source.shortfall() is None
