"""Statistics of bench runs: the timed stages, percentiles, and one configuration's runs
summed up into stage latencies, real-time factors, latencies and rates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

__all__ = ["DEVICE_STAGES", "STAGES", "percentiles", "summarize_pipeline"]

#: Stages timed per utterance, in pipeline order.
STAGES: Final = (
    "vad",
    "frontend",
    "tokenizer",
    "entropy_lm",
    "segmenter",
    "aggregator",
    "serialize",
    "send",
    "round_trip",
)

#: The stages that run on the device's CPU: their sum is the device real-time factor.
DEVICE_STAGES: Final = STAGES[:7]


def percentiles(values: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    """p50/p90/p99 (linear interpolation), mean, min, max and count of ``values`` x scale."""
    if not values:
        return {
            "p50": None,
            "p90": None,
            "p99": None,
            "mean": None,
            "min": None,
            "max": None,
            "n": 0,
        }
    array = np.asarray(values, dtype=np.float64) * scale
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(array.mean()),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def summarize_pipeline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage, real-time factor, latency and rate figures of a configuration's runs
    (``_utterances``: every utterance record, for the MAC counts)."""
    utterances = [u for run in runs for u in run["utterances"]]
    stages = {}
    for stage in STAGES:
        per_audio = []
        for run in runs:
            if stage == "vad":
                seconds = run["vad_total_s"]
            else:
                seconds = sum(u["timings"].get(stage, 0.0) for u in run["utterances"])
            per_audio.append(seconds / run["audio_s"])
        stages[stage] = {
            "ms": percentiles([u["timings"].get(stage, 0.0) for u in utterances], 1e3),
            "ms_per_audio_s": 1e3 * float(np.mean(per_audio)),
        }
    stages["server_decode"] = {
        "ms": percentiles([s for run in runs for s in run["server_decode_s"]], 1e3),
        "ms_per_audio_s": 1e3
        * float(np.mean([sum(run["server_decode_s"]) / run["audio_s"] for run in runs])),
    }
    device_rtf = []
    for run in runs:
        seconds = run["vad_total_s"] + sum(
            u["timings"].get(stage, 0.0)
            for u in run["utterances"]
            for stage in DEVICE_STAGES
            if stage != "vad"
        )
        device_rtf.append(seconds / run["audio_s"])
    speech = sum(u["duration_s"] for u in utterances)

    def rate(total: float) -> float | None:
        return total / speech if speech else None

    return {
        "runs": len(runs),
        "utterances_per_run": len(runs[0]["utterances"]) if runs else 0,
        "speech_s_per_run": speech / len(runs) if runs else 0.0,
        "stages": stages,
        "rtf": {
            "device": percentiles(device_rtf),
            "end_to_end": percentiles([run["run_s"] / run["audio_s"] for run in runs]),
        },
        "latency_ms": {
            "first_result": percentiles([u["first_result_s"] for u in utterances], 1e3),
            "eos_to_final": percentiles([u["eos_to_final_s"] for u in utterances], 1e3),
        },
        "rates": {
            "tokens_per_s": rate(sum(u["tokens"] for u in utterances)),
            "segments_per_s": rate(sum(u["segments"] for u in utterances)),
            "bytes_per_s": {
                kind: rate(sum(u["bytes"][kind] for u in utterances))
                for kind in ("segments", "dense", "pcm", "codes", "tokens")
                # codes, tokens: what the bundle's segment codes (--wire codes) or its
                # token wire (--wire tokens) would send
                if utterances and all(u["bytes"].get(kind) is not None for u in utterances)
            },
        },
        "transcript": runs[-1]["text"] if runs else "",
        "_utterances": utterances,
    }
