"""The device process of a cold-start measurement: ``python -m edgetok.bench.coldstart``.

Started by ``cold_start`` (the bench's side, below) with the wall-clock time of the spawn
(``--t0``).
It imports edgetok, loads the bundle's device models (tokenizer, entropy LM, aggregator:
no decoder, that runs on the server) and the VAD, loads the segmenter's Numba kernels,
tokenizes the first second of the audio (the *first token*), then streams the whole
audio through the device pipeline (VAD -> frontend -> tokenizer -> entropy LM ->
segmenter -> aggregator -> wire frames, written to /dev/null) and prints one JSON line:
wall seconds from the spawn to each mark, the CPU seconds the process had used at each
(what the marks cost an idle core on a machine busy with other work), and the process's
peak resident memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetok.bench.configs import Config

_MARKS: dict[str, float] = {}
_CPU_MARKS: dict[str, float] = {}
_RSS_MARKS: dict[str, float] = {}
COLD_START_TIMEOUT_S = 300.0


def _mark(name: str, t0: float) -> None:
    """Wall seconds since the spawn, and CPU seconds this process has used so far."""
    _MARKS[name] = time.time() - t0
    _CPU_MARKS[name] = time.process_time()
    _RSS_MARKS[name] = peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: ``VmHWM`` of /proc/self/status (reset
    by exec), else ``ru_maxrss`` (which on Linux keeps the forking parent's peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--audio", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--t0", type=float, required=True, help="time.time() of the spawn")
    args = parser.parse_args()
    t0 = args.t0
    _mark("python_started", t0)

    import json
    import os

    from edgetok.audio import FileSource, load_audio
    from edgetok.bench.runners import device_transcriber
    from edgetok.bundle import load_bundle
    from edgetok.pipeline import Pipeline
    from edgetok.runtime import SessionOptions
    from edgetok.sinks import JsonlSink
    from edgetok.vad import SileroModel

    _mark("imported", t0)
    options = SessionOptions(threads=args.threads)
    bundle = load_bundle(args.bundle)
    transcriber = device_transcriber(bundle, options)  # includes the Numba warm-up
    vad = SileroModel(options=options)
    _mark("loaded", t0)
    audio = load_audio(args.audio, transcriber.sample_rate)
    tokens = transcriber.tokenizer(audio[: transcriber.sample_rate])
    _mark("first_token", t0)
    sink = JsonlSink(os.devnull)
    pipeline = Pipeline(transcriber, sink, vad_model=vad)
    utterances = list(pipeline.run(FileSource(args.audio)))
    sink.close()
    _mark("streamed", t0)
    print(
        json.dumps(
            {
                "marks_s": _MARKS,
                "cpu_marks_s": _CPU_MARKS,
                "peak_rss_mb_at": _RSS_MARKS,
                "first_tokens": int(len(tokens)),
                "utterances": len(utterances),
                "peak_rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )


# ------------------------------------------------------------- the bench's side


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
    import json
    import os
    import subprocess
    import sys
    import tempfile

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


def cold_entry(
    config: Config, wav: Path, threads: int, clock: str, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Both cold starts; ``first_token_s`` on the report's clock (cpu: CPU seconds the
    process used until its first token)."""
    import json
    import subprocess

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


if __name__ == "__main__":
    main()
