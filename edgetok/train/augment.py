"""Waveform augmentations (numpy, 16 kHz mono float32) for the synthetic corpus.

Parameters are drawn first (``sample_augment``: a JSON-able dict for the manifest) and
applied second (``apply_augment``), so a manifest line can be rebuilt without audio.
An empty dict means a clean utterance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SR = 16000
P_CLEAN = 0.2
NOISE_KINDS: tuple[str, ...] = ("white", "pink", "brown", "babble")
_NOISE_P = (0.15, 0.3, 0.15, 0.4)
_SNR_DB = {"white": (10.0, 40.0), "pink": (5.0, 35.0), "brown": (5.0, 35.0), "babble": (5.0, 25.0)}
_PEAK = 0.99


def speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Speed perturbation: play ``factor`` times faster (tempo and pitch), len / factor."""
    import soxr

    return soxr.resample(audio, SR * factor, SR, quality="HQ").astype(np.float32)


def _stft(audio: np.ndarray, n_fft: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    padded = np.pad(audio, (n_fft, n_fft + hop))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    return np.fft.rfft(frames * window, axis=1), window


def _istft(spec: np.ndarray, window: np.ndarray, hop: int, length: int) -> np.ndarray:
    n_fft = window.size
    frames = np.fft.irfft(spec, n=n_fft, axis=1) * window
    total = (len(frames) - 1) * hop + n_fft
    out = np.zeros(total, np.float64)
    norm = np.zeros(total, np.float64)
    for i, frame in enumerate(frames):
        out[i * hop : i * hop + n_fft] += frame
        norm[i * hop : i * hop + n_fft] += window**2
    out /= np.maximum(norm, 1e-8)
    return out[n_fft : n_fft + length].astype(np.float32)


def vtlp(audio: np.ndarray, alpha: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Vocal-tract-length warping: the cepstral spectral envelope of each frame is warped
    by ``alpha`` along frequency (> 1: formants up, a shorter tract); pitch and length
    are kept."""
    spec, window = _stft(audio, n_fft, hop)
    log_mag = np.log(np.abs(spec) + 1e-6)
    cep = np.fft.irfft(log_mag, n=n_fft, axis=1)
    cep[:, 24 : n_fft - 23] = 0.0  # lifter (1.5 ms): keep the envelope, drop the harmonics
    env = np.fft.rfft(cep, axis=1).real
    bins = np.arange(spec.shape[1], dtype=np.float64)
    src = np.minimum(bins / alpha, bins[-1])
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, bins.size - 1)
    frac = src - lo
    warped = env[:, lo] * (1 - frac) + env[:, hi] * frac
    gain = np.exp(np.clip(warped - env, -4.0, 4.0))
    return _istft(spec * gain, window, hop, audio.size)


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink (1/f) or brown (1/f^2) noise."""
    white = rng.standard_normal(n)
    if kind != "white":
        spec = np.fft.rfft(white)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0
        spec /= f ** (0.5 if kind == "pink" else 1.0)
        spec[0] = 0.0
        white = np.fft.irfft(spec, n=n)
    return (white / (np.sqrt(np.mean(white**2)) + 1e-12)).astype(np.float32)


def babble_noise(n: int, talkers: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS sum of other utterances, each looped to ``n`` from a random offset."""
    out = np.zeros(n, np.float64)
    for t in talkers:
        t = t / (np.sqrt(np.mean(t**2)) + 1e-12)
        reps = -(-(n + t.size) // t.size)
        start = int(rng.integers(t.size))
        out += np.tile(t, reps)[start : start + n]
    return (out / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix unit-RMS ``noise`` at ``snr_db`` relative to the mean power of ``audio``."""
    power = float(np.mean(audio.astype(np.float64) ** 2))
    return (audio + noise * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


def reverb(audio: np.ndarray, rt60: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic RIR: a direct impulse plus exponentially decaying noise
    (60 dB down at ``rt60`` s) whose energy is ``drr_db`` below the direct path. Keeps
    length and RMS."""
    n_tail = int(SR * min(rt60, 1.2))
    t = np.arange(n_tail) / SR
    tail = rng.standard_normal(n_tail) * np.exp(-6.9078 * t / rt60)
    tail[: int(0.002 * SR)] = 0.0
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    rir = tail
    rir[0] = 1.0
    size = 1 << int(np.ceil(np.log2(audio.size + n_tail)))
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(rir, size), size)[: audio.size]
    return _match_rms(wet, audio)


def telephone(audio: np.ndarray, low: float, high: float, mu: float = 255.0) -> np.ndarray:
    """Telephone channel: band-pass ``low``..``high`` Hz (cosine edges) and 8-bit mu-law."""
    spec = np.fft.rfft(audio)
    f = np.fft.rfftfreq(audio.size, 1 / SR)
    edge = 100.0
    up = np.clip((f - low + edge / 2) / edge, 0, 1)
    down = np.clip((high + edge / 2 - f) / edge, 0, 1)
    band = np.fft.irfft(spec * (0.5 - 0.5 * np.cos(np.pi * up * down)), audio.size)
    scale = 0.9 / (np.max(np.abs(band)) + 1e-12)
    x = band * scale
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    q = np.round(y * 127) / 127
    out = np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu
    return (out / scale).astype(np.float32)


def set_level(audio: np.ndarray, level_dbfs: float) -> np.ndarray:
    """Scale to an RMS of ``level_dbfs`` dB re full scale."""
    rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2)) + 1e-12
    return (audio * (10 ** (level_dbfs / 20) / rms)).astype(np.float32)


def _match_rms(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    gain = np.sqrt(np.mean(ref.astype(np.float64) ** 2) / (np.mean(x**2) + 1e-20))
    return (x * gain).astype(np.float32)


def limit_peak(audio: np.ndarray, peak: float = _PEAK) -> np.ndarray:
    """Scale down (never up) so that no sample exceeds ``peak``."""
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio * (peak / top) if top > peak else audio


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(rng.uniform(lo, hi)), 3)


def sample_augment(rng: np.random.Generator) -> dict:
    """Draw an augmentation chain: clean ({}) with probability P_CLEAN, else at least one
    of speed, vtlp, reverb, noise, telephone, followed by a random level."""
    if rng.random() < P_CLEAN:
        return {}
    p: dict = {}
    while not p:
        if rng.random() < 0.5:
            p["speed"] = {"factor": _u(rng, 0.9, 1.1)}
        if rng.random() < 0.5:
            p["vtlp"] = {"alpha": _u(rng, 0.85, 1.15)}
        if rng.random() < 0.3:
            p["reverb"] = {"rt60": _u(rng, 0.15, 0.9), "drr_db": _u(rng, -3.0, 12.0)}
        if rng.random() < 0.5:
            kind = str(rng.choice(NOISE_KINDS, p=_NOISE_P))
            p["noise"] = {"kind": kind, "snr_db": _u(rng, *_SNR_DB[kind])}
            if kind == "babble":
                p["noise"]["talkers"] = int(rng.integers(3, 7))
        if rng.random() < 0.1:
            p["telephone"] = {"low": _u(rng, 200, 400), "high": _u(rng, 3000, 3600)}
    p["gain"] = {"level_dbfs": _u(rng, -35.0, -15.0)}
    return p


def apply_augment(
    audio: np.ndarray,
    params: dict,
    rng: np.random.Generator,
    babble: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Apply a chain from ``sample_augment``; ``babble`` holds the talkers' audio for
    babble noise. The result is float32 with peaks at most 0.99."""
    x = np.asarray(audio, np.float32)
    if "speed" in params:
        x = speed(x, params["speed"]["factor"])
    if "vtlp" in params:
        x = vtlp(x, params["vtlp"]["alpha"])
    if "reverb" in params:
        x = reverb(x, params["reverb"]["rt60"], params["reverb"]["drr_db"], rng)
    if "noise" in params:
        kind = params["noise"]["kind"]
        if kind == "babble":
            if not babble:
                raise ValueError("babble noise needs talkers' audio")
            noise = babble_noise(x.size, babble, rng)
        else:
            noise = colored_noise(x.size, kind, rng)
        x = add_noise(x, noise, params["noise"]["snr_db"])
    if "telephone" in params:
        x = telephone(x, params["telephone"]["low"], params["telephone"]["high"])
    if "gain" in params:
        x = set_level(x, params["gain"]["level_dbfs"])
    return limit_peak(x).astype(np.float32)


def random_augment(
    audio: np.ndarray, rng: np.random.Generator, babble: Sequence[np.ndarray] = ()
) -> tuple[np.ndarray, dict]:
    """Draw and apply a chain; without ``babble`` audio, babble noise becomes pink."""
    params = sample_augment(rng)
    if params.get("noise", {}).get("kind") == "babble" and not babble:
        params["noise"] = {"kind": "pink", "snr_db": params["noise"]["snr_db"]}
    return apply_augment(audio, params, rng, babble), params
