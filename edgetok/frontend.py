"""Log-mel frontend in numpy: the one recipe, shared with training (docs/architecture.md).

Frame ``i`` covers samples ``[hop * i, hop * i + n_fft)`` (no centering), windowed with a
periodic Hann window; power spectrum ``|rfft|^2``; triangular mel filters, either HTK's
(peak 1, no area normalisation; the v1 models) or Slaney's (librosa's default mel scale
and area normalisation, as Whisper's frontend uses); ``log(max(mel, log_floor))``.

Arithmetic runs in float64 and the result is cast to float32 once at the end. float64
keeps this the reference that the float32 torch version (``edgetok.train.features``) is
tested against, and makes each frame's value independent of how many frames are computed
together, so ``LogMelStream`` gives exactly the batch result.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "FrontendConfig",
    "LogMelStream",
    "hann_window",
    "log_mel",
    "mel_filterbank",
    "n_frames",
]


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel parameters; the defaults are the contract and what the models are trained on."""

    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 20.0
    f_max: float = 8000.0
    log_floor: float = 1e-10
    mel_scale: str = "htk"
    """``"htk"`` (peak-1 filters) or ``"slaney"`` (area-normalised, Whisper's)."""

    def __post_init__(self) -> None:
        if self.mel_scale not in MEL_SCALES:
            raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {self.mel_scale!r}")
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length must be in (0, n_fft], got {self.win_length}")
        if self.hop_length <= 0 or self.n_mels <= 0 or self.sample_rate <= 0:
            raise ValueError("sample_rate, hop_length and n_mels must be positive")
        if not 0.0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate / 2, got {self.f_min}, {self.f_max}"
            )
        if self.log_floor <= 0:
            raise ValueError(f"log_floor must be positive, got {self.log_floor}")


#: The mel scales ``FrontendConfig.mel_scale`` accepts.
MEL_SCALES = ("htk", "slaney")
# Slaney's scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_SLANEY_STEP = 200.0 / 3.0
_SLANEY_LOG_HZ = 1000.0
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(f: np.ndarray | float, scale: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    log_mel0 = _SLANEY_LOG_HZ / _SLANEY_STEP
    above = log_mel0 + np.log(np.maximum(f, _SLANEY_LOG_HZ) / _SLANEY_LOG_HZ) / _SLANEY_LOG_STEP
    return np.where(f >= _SLANEY_LOG_HZ, above, f / _SLANEY_STEP)


def _mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    log_mel0 = _SLANEY_LOG_HZ / _SLANEY_STEP
    above = _SLANEY_LOG_HZ * np.exp(_SLANEY_LOG_STEP * (m - log_mel0))
    return np.where(m >= log_mel0, above, m * _SLANEY_STEP)


@lru_cache(maxsize=8)
def _tables(cfg: FrontendConfig) -> tuple[np.ndarray, np.ndarray]:
    """(window [n_fft], filterbank [n_fft // 2 + 1, n_mels]) in float64, read-only."""
    n = np.arange(cfg.win_length, dtype=np.float64)
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.win_length)
    left = (cfg.n_fft - cfg.win_length) // 2
    window = np.zeros(cfg.n_fft, dtype=np.float64)
    window[left : left + cfg.win_length] = win

    freqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    scale = cfg.mel_scale
    mels = np.linspace(_hz_to_mel(cfg.f_min, scale), _hz_to_mel(cfg.f_max, scale), cfg.n_mels + 2)
    f_pts = _mel_to_hz(mels, scale)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fbank = np.maximum(0.0, np.minimum(down, up))
    if scale == "slaney":  # equal area: each filter scaled by 2 / its bandwidth
        fbank *= 2.0 / (f_pts[2:] - f_pts[:-2])

    window.flags.writeable = False
    fbank.flags.writeable = False
    return window, fbank


def hann_window(cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Periodic Hann window, zero-padded (centered) to ``n_fft``: float32 [n_fft]."""
    return _tables(cfg)[0].astype(np.float32)


def mel_filterbank(cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Triangular mel filters (``cfg.mel_scale``): float32 [n_fft//2+1, n_mels]."""
    return _tables(cfg)[1].astype(np.float32)


def n_frames(n_samples: int, cfg: FrontendConfig = FrontendConfig()) -> int:
    """Number of complete frames in ``n_samples`` samples (0 when shorter than ``n_fft``)."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if n_samples < cfg.n_fft:
        return 0
    return 1 + (n_samples - cfg.n_fft) // cfg.hop_length


def _check_audio(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {audio.dtype}")
    if not np.all(np.isfinite(audio)):
        bad = int(np.flatnonzero(~np.isfinite(audio))[0])
        raise ValueError(f"{name} must be finite, got {audio[bad]} at sample {bad}")
    return audio.astype(np.float64, copy=False)


def _log_mel(audio: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """log-mel of validated float64 audio."""
    count = n_frames(audio.shape[0], cfg)
    if count == 0:
        return np.zeros((0, cfg.n_mels), dtype=np.float32)
    window, fbank = _tables(cfg)
    frames = np.lib.stride_tricks.sliding_window_view(audio, cfg.n_fft)[:: cfg.hop_length]
    spec = np.fft.rfft(frames[:count] * window, axis=-1)
    power = spec.real**2 + spec.imag**2
    return np.log(np.maximum(power @ fbank, cfg.log_floor)).astype(np.float32)


def log_mel(audio: np.ndarray, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Log-mel of 1-D finite float audio: float32 [n_frames(len(audio)), n_mels]."""
    return _log_mel(_check_audio(audio), cfg)


class LogMelStream:
    """Streaming log-mel: push chunks of any size, get the frames they complete.

    The concatenation of everything ``push`` returns equals ``log_mel`` of the
    concatenated input, exactly. Between calls at most ``n_fft - 1`` samples are kept.
    """

    def __init__(self, cfg: FrontendConfig = FrontendConfig()) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        """Drop buffered samples and start a new stream."""
        self._buffer = np.zeros(0, dtype=np.float64)
        self.frames_emitted = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add samples; return the newly completed frames, float32 [k, n_mels] (k may be 0)."""
        buffer = np.concatenate([self._buffer, _check_audio(chunk, "chunk")])
        out = _log_mel(buffer, self.cfg)
        self._buffer = buffer[out.shape[0] * self.cfg.hop_length :].copy()
        self.frames_emitted += out.shape[0]
        return out
