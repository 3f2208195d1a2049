"""Memory and speed of the server decoder under different allocator settings, in one run.

Run: ``python -m edgetok.bench.decode_memory [--rounds 2] [--json]``.

Makes real segment vectors once (the device half of the shipped bundle on its sample.wav:
the file itself, and looped to ``--long-s`` seconds with short gaps as one utterance),
then, in a fresh child process per setting and round (settings interleaved, so load on
the machine hits them alike), decodes the same utterances on ``--threads`` threads as
``edgetok serve`` does and reports the child's resident memory after loading, its peak
(sampled every 10 ms) and the decode seconds. Each setting's figures are then divided by
the first one's (``stock``: ONNX Runtime's and glibc's defaults), and the texts compared.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

#: name -> (SessionOptions.extra of the decoder's sessions, edgetok.heap.bound() arguments,
#: or None for glibc's defaults and no trim). The others trim the heap after loading.
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "stock": ({}, None),
    "serve": ({"memory_pattern": False}, {}),
    "serve+arenas": ({"memory_pattern": False}, {"arenas": 2}),
    "serve+mmap": ({"memory_pattern": False}, {"arenas": 8, "mmap_threshold": 1 << 18}),
    "no-arena+mmap": ({"cpu_arena": False}, {"arenas": 8, "mmap_threshold": 1 << 18}),
}
"""``serve``: what ``edgetok serve`` does (``edgetok.cli.serve``)."""


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_vectors(long_s: float, out: Path) -> list[int]:
    """Segment vectors of sample.wav and of it looped to ``long_s`` seconds, saved as
    ``out`` (.npz, one array per utterance); their segment counts."""
    from edgetok.audio import load_audio
    from edgetok.bundle import default_bundle_path, load_bundle
    from edgetok.stages import DecoderPack, Transcriber

    bundle = load_bundle(default_bundle_path())
    transcriber = Transcriber(bundle)
    keep = DecoderPack(transcriber.pack.compression, transcriber.pack.aggregator, lambda v: "")
    voice = load_audio(default_bundle_path() / "sample.wav")
    gap = np.zeros(round(0.3 * transcriber.sample_rate), np.float32)
    loops = max(1, int(long_s * transcriber.sample_rate) // (len(voice) + len(gap)))
    long = np.concatenate([voice, gap] * loops)
    vectors = [transcriber.decode(transcriber.encode(a), keep).vectors for a in (voice, long)]
    np.savez(out, *vectors)
    return [len(v) for v in vectors]


def child(setting: str, vectors_file: Path, threads: int, repeats: int) -> dict[str, Any]:
    """Load the decoder with ``setting``, decode every utterance ``repeats`` times on
    ``threads`` threads; memory and seconds."""
    from edgetok import heap
    from edgetok.bundle import default_bundle_path, load_bundle
    from edgetok.runtime import SessionOptions
    from edgetok.whisper_decoding import WhisperDecoderStage

    extra, bound = SETTINGS[setting]
    if bound:
        heap.bound(**bound)
    stored = np.load(vectors_file)
    utterances = [stored[name] for name in stored.files] * repeats
    decoder = WhisperDecoderStage.from_bundle(
        load_bundle(default_bundle_path()), SessionOptions(extra=extra)
    )
    if bound is not None:
        heap.trim()
    loaded = _status_mib("VmRSS")
    peak, done = [loaded], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], _status_mib("VmRSS"))

    jobs: queue.Queue[tuple[int, np.ndarray]] = queue.Queue()
    for job in enumerate(utterances):
        jobs.put(job)
    texts: dict[int, str] = {}

    def work() -> None:
        while True:
            try:
                index, vectors = jobs.get_nowait()
            except queue.Empty:
                return
            texts[index] = decoder(vectors)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - began
    done.set()
    sampler.join()
    return {
        "rss_loaded_mib": round(loaded, 1),
        "rss_peak_mib": round(max(peak[0], _status_mib("VmRSS")), 1),
        "rss_end_mib": round(_status_mib("VmRSS"), 1),
        "decode_s": round(seconds, 2),
        "texts": [texts[i] for i in range(len(utterances))],
    }


def _run_child(setting: str, vectors_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    module = __spec__.name if __spec__ else "bench.decode_memory"
    command = [sys.executable, "-m", module, "--child", setting, "--vectors", str(vectors_file)]
    command += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{setting}: child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings", nargs="+", default=["stock", "serve"], choices=SETTINGS, help="first: 1.0"
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting")
    parser.add_argument("--threads", type=int, default=2, help="decode threads (serve: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="decodes of each utterance")
    parser.add_argument("--long-s", type=float, default=28.0, help="the long utterance")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.vectors, args.threads, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        vectors_file = Path(tmp) / "vectors.npz"
        segments = make_vectors(args.long_s, vectors_file)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.settings}
        for _ in range(args.rounds):
            for name in args.settings:
                runs[name].append(_run_child(name, vectors_file, args))
    first = args.settings[0]
    base_texts = runs[first][0]["texts"]
    rows = []
    for name, results in runs.items():
        row: dict[str, Any] = {"setting": name, "extra": SETTINGS[name][0]}
        row["heap"] = SETTINGS[name][1]
        for key in ("rss_loaded_mib", "rss_peak_mib", "rss_end_mib", "decode_s"):
            row[key] = min(r[key] for r in results)
        row["same_text"] = all(r["texts"] == base_texts for r in results)
        rows.append(row)
    for row in rows:
        row["peak_ratio"] = round(row["rss_peak_mib"] / rows[0]["rss_peak_mib"], 3)
        row["growth_ratio"] = round(
            (row["rss_peak_mib"] - row["rss_loaded_mib"])
            / (rows[0]["rss_peak_mib"] - rows[0]["rss_loaded_mib"]),
            3,
        )
        row["time_ratio"] = round(row["decode_s"] / rows[0]["decode_s"], 3)
    report = {
        "command": " ".join(["python -m edgetok.bench.decode_memory", *sys.argv[1:]]),
        "segments": segments,
        "threads": args.threads,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"utterances of {segments} segments, x{args.repeats}, {args.threads} threads")
    print(
        f"{'setting':>16} {'loaded':>7} {'peak':>7} {'end':>7} {'decode s':>9} "
        f"{'peak x':>7} {'growth x':>8} {'time x':>7} same"
    )
    for row in rows:
        print(
            f"{row['setting']:>16} {row['rss_loaded_mib']:7.0f} {row['rss_peak_mib']:7.0f} "
            f"{row['rss_end_mib']:7.0f} {row['decode_s']:9.2f} {row['peak_ratio']:7.3f} "
            f"{row['growth_ratio']:8.3f} {row['time_ratio']:7.3f} {row['same_text']}"
        )


if __name__ == "__main__":
    main()
