"""Compute of a measured configuration: MACs per second of speech of each device model and
the rate its measured stage time achieves, against this CPU's GEMM rate and peak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetok.bench.configs import DEVICE_MODELS
from edgetok.bundle import Bundle, default_bundle_path, load_bundle

__all__ = ["compute_rates"]

_MAC_CACHE: dict[tuple[str, tuple[Any, ...]], Any] = {}


def _macs(path: Path, feeds: dict[str, np.ndarray]) -> Any:
    from edgetok.bench.flops import count_macs

    key = (str(path), tuple((k, v.shape) for k, v in sorted(feeds.items())))
    if key not in _MAC_CACHE:
        _MAC_CACHE[key] = count_macs(path, feeds)
    return _MAC_CACHE[key]


def _onnx_for(bundle: Bundle, role: str) -> Path | None:
    """The ONNX graph whose MACs stand for ``role``: the bundle's own ``.onnx``, else the
    shipped default bundle's (builds keep the architecture; INT8 keeps the MAC count)."""
    own = bundle.path_of(role)
    if own.suffix == ".onnx":
        return own
    reference = load_bundle(default_bundle_path(), verify=False)
    if role in reference.models and reference.path_of(role).suffix == ".onnx":
        return reference.path_of(role)
    return None


def compute_rates(
    bundle: Bundle,
    summary: dict[str, Any],
    audio_s: float,
    threads: int,
    peak: dict[str, Any],
    gemm: dict[str, float] | None,
) -> dict[str, Any]:
    """MACs per second of speech of each device model (at the median utterance's shapes;
    the models run on the VAD's utterances only), the rate the measured stage time
    achieves, and its fraction of this CPU's rate for the threads used at the model's own
    precision (an INT8 build keeps some models in float): ``gemm`` (ONNX Runtime's own
    GEMM measured here, ``edgetok.bench.flops.measure_gemm``) and the estimated
    theoretical peak (``edgetok.bench.machine.peak_per_core``)."""
    from edgetok.bench.flops import available

    if not available():
        return {"available": False, "reason": "onnx is not installed (pip install onnx)"}
    utterances = sorted(summary["_utterances"], key=lambda u: u["duration_s"])
    if not utterances:
        return {"available": False, "reason": "no utterance was detected in the audio"}
    median = utterances[len(utterances) // 2]
    fe = bundle.frontend
    samples = round(median["duration_s"] * bundle.audio.sample_rate)
    frames = max(1, 1 + (samples - fe.win_length) // fe.hop_length)
    tokens, segments = max(1, median["tokens"]), max(1, median["segments"])
    max_len = bundle.segmenter.max_len
    reads = {spec.name: spec for spec in bundle.models["aggregator"].inputs}
    if "frames" in reads:  # v2: the encoder frames of each segment
        width = reads["frames"].shape[-1]
        source = {"frames": np.zeros((segments, max_len, width), np.float32)}
    else:
        source = {"tokens": np.zeros((segments, max_len), np.int64)}
    feeds = {
        "tokenizer": {"mel": np.zeros((1, frames, fe.n_mels), np.float32)},
        "entropy_lm": {"tokens": np.zeros((1, tokens), np.int64)},
        "aggregator": {**source, "mask": np.ones((segments, max_len), bool)},
    }
    codebook = np.load(bundle.codebook_path, mmap_mode="r")
    keys = {"fp32": "fp32_gflops", "int8": "int8_gops"}
    theoretical = {kind: (peak[key] or 0.0) * threads or None for kind, key in keys.items()}
    attainable = {kind: gemm[key] if gemm else None for kind, key in keys.items()}
    speech_s = summary["speech_s_per_run"]
    models: dict[str, Any] = {}
    for role, stage in DEVICE_MODELS.items():
        path = _onnx_for(bundle, role)
        if path is None:
            models[role] = {"macs_per_audio_s": None, "reason": "no ONNX graph to count"}
            continue
        count = _macs(path, feeds[role])
        macs = count.macs + (
            tokens * codebook.shape[0] * codebook.shape[1] if role == "tokenizer" else 0
        )
        per_speech = macs / median["duration_s"]
        stage_s = summary["stages"][stage]["ms_per_audio_s"] / 1e3 * audio_s  # per run
        achieved = 2 * per_speech * speech_s / stage_s / 1e9 if stage_s > 0 else None
        kind = "int8" if bundle.models[role].precision == "int8" else "fp32"
        gemm_rate, peak_rate = attainable[kind], theoretical[kind]
        models[role] = {
            "kind": kind,
            "macs_per_speech_s": per_speech,
            "gflop_per_speech_s": 2 * per_speech / 1e9,
            "achieved_gflops": achieved,
            "fraction_of_gemm": achieved / gemm_rate if achieved and gemm_rate else None,
            "fraction_of_peak": achieved / peak_rate if achieved and peak_rate else None,
            "counted_from": str(path),
            "skipped": count.skipped,
        }
    return {
        "available": True,
        "shapes": {"frames": frames, "tokens": tokens, "segments": segments, "max_len": max_len},
        "gemm_gflops": attainable,
        "peak_gflops": theoretical,
        "models": models,
    }
