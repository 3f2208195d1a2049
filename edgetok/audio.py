"""Audio sources: float32 mono at the model's sample rate (16 kHz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = ["SAMPLE_RATE", "AudioError", "load_audio"]

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The audio file at ``path`` as float32 mono [n] at ``sample_rate``.

    Channels are averaged; other rates are resampled with soxr. Raises ``AudioError``
    for a missing, unreadable, non-audio or empty file and for NaN or infinite samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    if audio.size == 0:
        raise AudioError(f"{path}: holds no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{path}: holds NaN or infinite samples")
    mono = audio.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate).astype(np.float32, copy=False)
    return mono
