"""numpy frontend: known values, frame counts, streaming == batch, input checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgetok.frontend import (
    FrontendConfig,
    LogMelStream,
    hann_window,
    log_mel,
    mel_filterbank,
    n_frames,
)

CFG = FrontendConfig()


def _hz_to_mel(f: float) -> float:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def test_defaults_are_the_contract() -> None:
    assert (CFG.sample_rate, CFG.n_fft, CFG.win_length, CFG.hop_length) == (16000, 400, 400, 160)
    assert (CFG.n_mels, CFG.f_min, CFG.f_max, CFG.log_floor) == (80, 20.0, 8000.0, 1e-10)


def test_hann_window_is_periodic() -> None:
    w = hann_window()
    assert w.dtype == np.float32 and w.shape == (400,)
    assert w[0] == 0.0 and w[200] == pytest.approx(1.0)
    np.testing.assert_allclose(w[1:200], w[399:200:-1], atol=1e-7)  # symmetric about 200


def test_mel_filterbank_shape_and_peaks() -> None:
    fb = mel_filterbank()
    assert fb.dtype == np.float32 and fb.shape == (201, 80)
    assert fb.min() >= 0.0 and fb.max() <= 1.0
    assert np.all(fb.max(axis=0) > 0.0), "every filter covers at least one FFT bin"
    freqs = np.arange(201) * 40.0
    centers = freqs[fb.argmax(axis=0)]
    assert np.all(np.diff(centers) >= 0)
    assert fb[0].sum() == 0.0  # DC is below f_min
    # Each filter rises linearly from its left edge to 1 at its centre and falls to its right
    # edge; edges and centres are equally spaced on the HTK mel scale from 20 to 8000 Hz.
    mel_pts = np.linspace(_hz_to_mel(20.0), _hz_to_mel(8000.0), 82)
    f_pts = 700.0 * (10 ** (mel_pts / 2595.0) - 1.0)
    for m in (0, 10, 40, 79):
        lo, mid, hi = f_pts[m : m + 3]
        for k, f in enumerate(freqs):
            want = (f - lo) / (mid - lo) if f <= mid else (hi - f) / (hi - mid)
            assert fb[k, m] == pytest.approx(max(want, 0.0), abs=1e-6)


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 0), (1, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)]
)
def test_n_frames(n: int, expected: int) -> None:
    assert n_frames(n) == expected
    assert log_mel(np.zeros(n, dtype=np.float32)).shape == (expected, 80)


def test_n_frames_rejects_negative() -> None:
    with pytest.raises(ValueError, match="n_samples"):
        n_frames(-1)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0, 6000.0])
def test_sine_peaks_in_its_mel_bin(freq: float) -> None:
    t = np.arange(16000) / 16000.0
    feats = log_mel((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
    fb = mel_filterbank()
    expected = int(np.argmax(fb[int(round(freq / 40.0))]))
    assert np.all(feats.argmax(axis=1) == expected)


def test_known_value_of_a_dc_free_frame() -> None:
    # A bin-centred cosine of amplitude a: |rfft(w x)|^2 at its bin is (a * sum(w) / 2)^2.
    k = 25  # 1000 Hz
    a = 0.25
    x = a * np.cos(2 * np.pi * k * np.arange(400) / 400)
    fb = mel_filterbank().astype(np.float64)
    power_at_k = (a * hann_window().astype(np.float64).sum() / 2) ** 2
    # Periodic Hann leaks into bins k +- 1 with a quarter of the amplitude.
    expected = power_at_k * (fb[k] + fb[k - 1] / 4 + fb[k + 1] / 4)
    got = log_mel(x.astype(np.float32))[0]
    mask = expected > 1e-3
    np.testing.assert_allclose(got[mask], np.log(expected[mask]), atol=1e-4)


def test_silence_hits_the_floor() -> None:
    out = log_mel(np.zeros(800, dtype=np.float32))
    np.testing.assert_array_equal(out, np.float32(np.log(1e-10)))


def test_dtype_and_float64_input() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 4000)
    out32 = log_mel(x.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(log_mel(x), out32, atol=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_stream_equals_batch(seed: int) -> None:
    rng = np.random.default_rng(seed)
    audio = rng.uniform(-1, 1, int(rng.integers(0, 6000))).astype(np.float32)
    cuts = np.sort(rng.integers(0, audio.size + 1, int(rng.integers(0, 12))))
    stream = LogMelStream()
    parts = []
    for chunk in np.split(audio, cuts):
        parts.append(stream.push(chunk))
        assert stream._buffer.size < CFG.n_fft
    streamed = np.concatenate(parts)
    np.testing.assert_array_equal(streamed, log_mel(audio))
    assert stream.frames_emitted == streamed.shape[0]


def test_stream_single_samples_and_reset() -> None:
    audio = np.random.default_rng(1).uniform(-1, 1, 1000).astype(np.float32)
    stream = LogMelStream()
    out = np.concatenate([stream.push(audio[i : i + 1]) for i in range(audio.size)])
    np.testing.assert_array_equal(out, log_mel(audio))
    stream.reset()
    assert stream.frames_emitted == 0
    np.testing.assert_array_equal(stream.push(audio[:560]), log_mel(audio[:560]))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((2, 400), dtype=np.float32), "1-D"),
        (np.zeros(400, dtype=np.int16), "floating-point"),
        (np.array([0.0, np.nan, 0.0], dtype=np.float32), "finite.*sample 1"),
        (np.array([np.inf], dtype=np.float64), "finite"),
    ],
)
def test_bad_input(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        log_mel(bad)
    with pytest.raises(ValueError, match=match):
        LogMelStream().push(bad)


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="win_length"):
        FrontendConfig(win_length=500)
    with pytest.raises(ValueError, match="f_max"):
        FrontendConfig(f_max=9000.0)


def test_frontend_never_imports_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; import edgetok.frontend"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_slaney_filterbank_is_whispers() -> None:
    """Slaney filters from 0 to 8 kHz are the ones Whisper's feature extractor uses."""
    extractor = pytest.importorskip("faster_whisper.feature_extractor")
    ref = extractor.FeatureExtractor.get_mel_filters(16000, 400, n_mels=80)
    ours = mel_filterbank(FrontendConfig(f_min=0.0, mel_scale="slaney"))
    np.testing.assert_allclose(ours, ref.T, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="mel_scale"):
        FrontendConfig(mel_scale="bark")
