"""Tokenizer latency of a built model against the FP32 ONNX on the same backend.

One thread, one window of log-mel, the two sessions timed alternately in the same run.
Each run is timed twice: wall clock and the process's CPU time. On a machine shared with
other work the wall clock mostly measures the wait for a core (minima 14 ms vs medians
344 ms for the same model on this build machine), so the speed-up is the ratio of the
median CPU times, which a busy machine leaves alone; with one inference thread and no
spinning, CPU time is the compute time. Wall medians and minima are reported too.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Final

import numpy as np

from edgetok.bundle import Bundle
from edgetok.runtime import Session, SessionOptions, open_session

#: Backends that also open the FP32 ``.onnx`` directly, for a same-backend baseline.
ONNX_BACKENDS: Final = ("onnxruntime", "openvino")
WARMUP: Final = 3


def _seconds(session: Session, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    session.run(feeds)
    return time.perf_counter() - wall, time.process_time() - cpu


def tokenizer_latency(
    reference: Bundle, built: Bundle, mel: np.ndarray, repeats: int = 30
) -> dict[str, Any]:
    """Milliseconds (median, min) of the built tokenizer and, where its backend reads
    ONNX, of the FP32 ONNX tokenizer on ``mel`` [1, T, n_mels], one thread; speed-up."""
    backend = built.models["tokenizer"].backend
    feeds = {"mel": np.ascontiguousarray(mel, dtype=np.float32)}
    sessions = {"built": built.open("tokenizer", options=SessionOptions(threads=1))}
    if backend in ONNX_BACKENDS:
        sessions["fp32"] = open_session(
            reference.path_of("tokenizer"),
            backend,
            options=SessionOptions(threads=1, precision="fp32"),
        )
    times: dict[str, list[float]] = {name: [] for name in sessions}
    cpu_times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_ in range(WARMUP + repeats):
        for name, session in sessions.items():
            wall, cpu = _seconds(session, feeds)
            if round_ >= WARMUP:
                times[name].append(wall)
                cpu_times[name].append(cpu)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    best = {name: 1000 * min(values) for name, values in times.items()}
    cpu = {name: 1000 * statistics.median(values) for name, values in cpu_times.items()}
    return {
        "backend": backend,
        "threads": 1,
        "frames": int(mel.shape[1]),
        "repeats": repeats,
        "built_ms": ms["built"],
        "fp32_ms": ms.get("fp32"),
        "built_min_ms": best["built"],
        "fp32_min_ms": best.get("fp32"),
        "built_cpu_ms": cpu["built"],
        "fp32_cpu_ms": cpu.get("fp32"),
        "speedup": cpu["fp32"] / cpu["built"] if "fp32" in cpu else None,
        "speedup_wall_min": best["fp32"] / best["built"] if "fp32" in best else None,
    }
