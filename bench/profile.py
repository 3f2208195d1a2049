"""Per-stage latency of built bundles through the real device pipeline (``edgetok bench``).

What runs is the code a device runs: ``edgetok.pipeline.Pipeline`` (capture thread, the
silero VAD, streaming log-mel, tokenizer, entropy LM, Numba segmenter, aggregator) over
the audio as a ``FileSource`` streamed as fast as it goes, into a ``RemoteSink`` talking
the wire protocol to a real ``edgetok serve`` server (``edgetok.server.start_server``) on
127.0.0.1 (``edgetok.bench.runners``: the stopwatches). The server's decoder is timed too
(``server_decode``: the remote model's work, not the device's).

Clocks: ``wall`` (``time.perf_counter``) is the latency a dedicated device sees; ``cpu``
(``time.process_time``: CPU seconds of this process, every thread) is what each stage
costs a core, and is what a machine shared with other work can still measure (a niced
benchmark next to a busy job spends most of its wall time waiting for a CPU). With one
thread and nothing else to wait for (the server runs in this process, one utterance at
a time), the CPU time of a stage is its latency on an idle core. ``auto`` picks ``cpu``
when this process is niced or the load average is at least half the usable CPUs.

Several configurations (``edgetok.bench.configs``) are opened together, warmed up, then
run in rounds, one run of each per round in a rotating order, so a machine shared with
other work slows them alike and their ratios are measured in one run. The report (see
docs/bench.md for the schema) sums the runs up (``edgetok.bench.stats``), adds each
row's provenance (``edgetok.bench.provenance``), cold start and peak memory from a fresh
process (``edgetok.bench.coldstart``), MACs per second of audio against this CPU's rate
(``edgetok.bench.rates``), and the like-for-like ratios (``edgetok.bench.ratios``).
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgetok.beam import DEFAULT_BEAM
from edgetok.bench import machine as machine_info
from edgetok.bench.coldstart import cold_entry
from edgetok.bench.configs import Config
from edgetok.bench.provenance import bundle_provenance, code_provenance, model_bytes
from edgetok.bench.rates import compute_rates
from edgetok.bench.ratios import ratios
from edgetok.bench.runners import CLOCKS, Participant, PipelineRunner, PocketSphinxRunner
from edgetok.bench.stats import percentiles, summarize_pipeline
from edgetok.bundle import BundleError, default_bundle_path, load_bundle

__all__ = ["SCHEMA", "choose_clock", "load_audio_for_bench", "profile"]

SCHEMA: Final = "edgetok.bench/2"

SILENCE_S: Final = 0.5
"""Silence between repetitions of the sample when ``--duration`` builds the audio."""


Progress = Callable[[str], None]


def load_audio_for_bench(
    sample: Path, audio: Path | None, duration_s: float | None, sample_rate: int
) -> tuple[np.ndarray, str]:
    """(float32 audio, a description): ``audio`` as it is, or ``sample`` repeated with
    ``SILENCE_S`` of silence between until ``duration_s``."""
    from edgetok.audio import load_audio

    if audio is not None:
        return load_audio(audio, sample_rate), str(audio)
    if duration_s is None or duration_s <= 0:
        raise ValueError("give an audio file or a duration > 0")
    speech = load_audio(sample, sample_rate)
    piece = np.concatenate([speech, np.zeros(round(SILENCE_S * sample_rate), np.float32)])
    total = round(duration_s * sample_rate)
    looped = np.tile(piece, math.ceil(total / len(piece)))[:total]
    return looped.astype(np.float32), f"{sample} repeated to {duration_s:g} s"


def profile(
    configs: Sequence[Config],
    *,
    audio: Path | None = None,
    duration_s: float | None = 10.0,
    threads: int = 1,
    runs: int = 5,
    warmup: int = 1,
    pocketsphinx: bool = False,
    cold: bool = True,
    flops: bool = True,
    clock: str = "auto",
    beam: int = DEFAULT_BEAM,
    command: str | None = None,
    progress: Progress = lambda _message: None,
) -> dict[str, Any]:
    """Benchmark ``configs`` on the same audio in interleaved rounds, the server decoding
    with ``beam``; the report dict (schema ``SCHEMA``, docs/bench.md)."""
    if runs < 1 or warmup < 0 or threads < 1 or beam < 1:
        raise ValueError("need runs >= 1, warmup >= 0, threads >= 1, beam >= 1")
    import soundfile as sf

    machine = machine_info.describe()
    code = code_provenance()
    clock, why = choose_clock(clock, machine)
    progress(f"clock: {clock} ({why})")
    runnable = [c for c in configs if c.available]
    first = next((c.bundle for c in runnable if c.bundle is not None), None)
    reference = load_bundle(first or default_bundle_path(), verify=False)
    sample = reference.manifest_path.parent / "sample.wav"
    if audio is None and not sample.is_file():
        sample = default_bundle_path().parent / "sample.wav"
    rate = reference.audio.sample_rate
    samples, described = load_audio_for_bench(sample, audio, duration_s, rate)
    audio_s = len(samples) / rate
    entries: dict[str, dict[str, Any]] = {}
    participants: list[Participant] = []
    with tempfile.TemporaryDirectory(prefix="edgetok-bench-") as tmp:
        wav = Path(tmp) / "audio.wav"
        sf.write(wav, samples, rate, subtype="FLOAT")
        try:
            for config in configs:
                entry = _entry(config)
                entries[config.name] = entry
                if not config.available:
                    continue
                progress(f"open {config.name} ({config.bundle})")
                try:
                    participants.append(PipelineRunner(config, wav, audio_s, threads, clock, beam))
                except (BundleError, ValueError, OSError, ImportError, RuntimeError) as exc:
                    entry.update(available=False, reason=f"cannot open: {exc}")
            if pocketsphinx:
                try:
                    participants.append(PocketSphinxRunner(samples, rate, clock))
                except ImportError as exc:
                    progress(f"pocketsphinx skipped: {exc}")
            records: dict[str, list[dict[str, Any]]] = {p.name: [] for p in participants}
            for i in range(warmup):
                for p in participants:
                    progress(f"warm-up {i + 1}/{warmup}: {p.name}")
                    p.run_once()
            for i in range(runs):
                shift = i % max(1, len(participants))
                for p in participants[shift:] + participants[:shift]:
                    records[p.name].append(p.run_once())
                progress(f"run {i + 1}/{runs} done")
        finally:
            for p in participants:
                p.close()
        gemm = None
        if flops and participants:
            from edgetok.bench.flops import available as onnx_available
            from edgetok.bench.flops import measure_gemm

            if onnx_available():
                progress("GEMM rate of this CPU (ONNX Runtime MatMul, MatMulInteger)")
                gemm = measure_gemm(threads, CLOCKS[clock])
        machine["gemm"] = gemm
        baselines: dict[str, Any] = {}
        for p in participants:
            if isinstance(p, PocketSphinxRunner):
                baselines["pocketsphinx"] = _pocketsphinx_entry(records[p.name])
                continue
            assert isinstance(p, PipelineRunner)
            entry = entries[p.name]
            summary = summarize_pipeline(records[p.name])
            entry.update({k: v for k, v in summary.items() if not k.startswith("_")})
            entry["provenance"] = {
                **code,
                "bundle": bundle_provenance(p.bundle),
                "beam": beam,
                "threads": threads,
                "clock": clock,
                "cpu": machine["cpu"]["model"],
            }
            entry["model_bytes"] = model_bytes(p.bundle)
            if cold:
                entry["cold_start"] = cold_entry(p.config, wav, threads, clock, progress)
                warm = entry["cold_start"].get("warm_cache") or {}
                entry["peak_rss_mb"] = {"device": warm.get("peak_rss_mb")}
            else:
                entry["cold_start"] = None
                entry["peak_rss_mb"] = {"device": None}
            entry["flops"] = (
                compute_rates(
                    p.bundle,
                    summary,
                    audio_s,
                    threads,
                    machine["peak_per_core"],
                    gemm,
                )
                if flops
                else {"available": False, "reason": "not asked for"}
            )
    report = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "provenance": code,
        "machine": machine,
        "audio": {"source": described, "duration_s": audio_s, "sample_rate": rate},
        "settings": {
            "threads": threads,
            "beam": beam,
            "runs": runs,
            "warmup": warmup,
            "paced": False,
            "clock": clock,
            "clock_reason": why,
        },
        "configs": list(entries.values()),
        "baselines": baselines,
        "bench_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    report["ratios"] = ratios(report)
    return report


def choose_clock(clock: str, machine: dict[str, Any]) -> tuple[str, str]:
    """(``wall`` or ``cpu``, why) for ``clock`` ``wall``, ``cpu`` or ``auto``."""
    if clock in CLOCKS:
        return clock, "asked for"
    if clock != "auto":
        raise ValueError(f"clock must be auto, wall or cpu, got {clock!r}")
    niceness = os.nice(0) if hasattr(os, "nice") else 0
    load = (machine.get("load_average") or [0.0])[0]
    usable = machine.get("usable_cpus") or 1
    if niceness > 0:
        return "cpu", f"this process runs at nice {niceness}: its wall time waits for other work"
    if load >= 0.5 * usable:
        return "cpu", f"the machine is busy: load {load:.2f} on {usable} CPUs"
    return "wall", f"the machine is idle: load {load:.2f} on {usable} CPUs"


def _entry(config: Config) -> dict[str, Any]:
    budget = None
    if config.target != "default":
        from edgetok.targets import load_profile, profile_names

        if config.target in profile_names():
            profile = load_profile(config.target)
            budget = {
                "real_time_factor": profile.real_time_factor,
                "peak_rss_mb": profile.peak_rss_mb,
            }
    return {
        "name": config.name,
        "target": config.target,
        "backend": config.backend,
        "precision": config.precision,
        "bundle": str(config.bundle) if config.bundle else None,
        "available": config.available,
        "reason": config.reason,
        "budget": budget,
    }


def _pocketsphinx_entry(runs: list[dict[str, Any]]) -> dict[str, Any]:
    import importlib.metadata

    try:
        version = importlib.metadata.version("pocketsphinx")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "name": f"pocketsphinx {version}" if version else "pocketsphinx",
        "version": version,
        "threads": 1,
        "rtf": percentiles([run["run_s"] / run["audio_s"] for run in runs]),
        "transcript": runs[-1]["text"] if runs else "",
    }
