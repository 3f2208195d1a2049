"""Segmenter throughput, streaming latency and first-call cost on one CPU core.

Run: ``python -m edgetok.bench.segmenter [--tokens 10000000] [--json]``. Not a test: it prints
numbers and marks the targets (see TARGETS) as met or missed; the exit code is 0 either
way. Pinned to one thread (NUMBA_NUM_THREADS=1) and to the first CPU this process may use.
"""

from __future__ import annotations

import os

os.environ["NUMBA_NUM_THREADS"] = "1"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402

from edgetok.segment import Segmenter, boundaries, segment_rate, threshold_for_rate  # noqa: E402

TOKEN_RATE_HZ = 50.0
TARGET_HZ = 15.0
MIN_LEN, MAX_LEN = 2, 10
CHUNK = 50  # tokens: 1 s of audio

#: name -> (comparison, value); checked against the measured numbers.
TARGETS = {
    "numba_tokens_per_s": (">=", 100e6),
    "speedup_vs_python": (">=", 10.0),
    "push_median_us": ("<=", 5.0),
    "first_call_warm_s": ("<=", 0.150),
}


def python_loop(h: list[float], tg: float, tr: float, min_len: int, max_len: int) -> list[int]:
    """The obvious loop over a list of floats (None thresholds given as +inf)."""
    starts = []
    cur = 0
    prev = 0.0
    for t, x in enumerate(h):
        if cur == 0 or cur >= max_len or (cur >= min_len and (x > tg or x - prev > tr)):
            starts.append(t)
            cur = 1
        else:
            cur += 1
        prev = x
    return starts


def numpy_vectorised(h: np.ndarray, tg: float, tr: float, min_len: int, max_len: int):
    """Rule firings vectorised (np.diff / np.flatnonzero); min/max_len need a loop over
    the candidate cuts (a cut depends on the previous accepted one), max_len gaps filled
    with np.arange. Fully vectorised when min_len == 1 and there is no max_len."""
    x = h.astype(np.float64)
    fire = x > tg
    fire[1:] |= np.diff(x) > tr
    fire[0] = True
    cand = np.flatnonzero(fire)
    if min_len == 1 and max_len >= len(h):
        return cand
    out = []
    last = 0
    for c in cand[1:].tolist():
        if c - last > max_len:  # forced cuts in the gap
            forced = range(last + max_len, c, max_len)
            out.extend(forced)
            last = forced[-1]
        if c - last >= min_len or c - last >= max_len:
            out.append(c)
            last = c
    n = len(h)
    out.extend(range(last + max_len, n, max_len))
    return np.array([0, *out], np.int64)


def _time_best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


FIRST_CALL = """
import json, time
t0 = time.perf_counter()
import numpy as np
from edgetok.segment import Segmenter, boundaries
t1 = time.perf_counter()
boundaries(np.ones(100, np.float32), 1.0, 0.5, 2, 10)
t2 = time.perf_counter()
Segmenter(1.0, 0.5, 2, 10).push(np.ones(50, np.float32))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_call_s": t2 - t1, "first_push_s": t3 - t2}))
"""

# numba's own one-time cost: first call of a trivial cached function, then ours.
FLOOR = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import numba
import trivial_numba_mod
t0 = time.perf_counter()
trivial_numba_mod.f(1.0)
t1 = time.perf_counter()
from edgetok.segment import boundaries
t2 = time.perf_counter()
boundaries(np.ones(100, np.float32), 1.0, 0.5, 2, 10)
t3 = time.perf_counter()
print(json.dumps({"numba_floor_s": t1 - t0, "ours_after_floor_s": t3 - t2}))
"""

TRIVIAL = """
import numba

@numba.njit(cache=True)
def f(x):
    return x + 1.0
"""

NUMBA_IMPORT = """
import json, time
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
import numba
t2 = time.perf_counter()
print(json.dumps({"numpy_s": t1 - t0, "numba_s": t2 - t1}))
"""


def _subprocess(code: str, cache_dir: str, *args: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def first_call_costs(warm_runs: int = 5) -> dict:
    """Import + first call in fresh processes: cold (empty cache dir) then warm."""
    with tempfile.TemporaryDirectory(prefix="edgetok-bench-numba-") as cache:
        cold = _subprocess(FIRST_CALL, cache)
        warm = [_subprocess(FIRST_CALL, cache) for _ in range(warm_runs)]
        imports = [_subprocess(NUMBA_IMPORT, cache) for _ in range(3)]
        Path(cache, "trivial_numba_mod.py").write_text(TRIVIAL)
        _subprocess(FLOOR, cache, cache)  # populate the trivial function's cache
        floors = [_subprocess(FLOOR, cache, cache) for _ in range(warm_runs)]

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {
        "first_call_cold_s": cold["first_call_s"],
        "import_cold_s": cold["import_s"],
        "first_call_warm_s": med(warm, "first_call_s"),
        "import_warm_s": med(warm, "import_s"),
        "first_push_after_first_call_s": med(warm, "first_push_s"),
        "import_numpy_s": med(imports, "numpy_s"),
        "import_numba_s": med(imports, "numba_s"),
        "numba_init_floor_s": med(floors, "numba_floor_s"),
        "first_call_after_numba_init_s": med(floors, "ours_after_floor_s"),
    }


def run(n_tokens: int, python_tokens: int, push_calls: int) -> dict:
    rng = np.random.default_rng(0)
    h = rng.gamma(2.0, 1.0, n_tokens).astype(np.float32)  # entropy LM output is float32
    calib = h[:200_000]
    tg = threshold_for_rate(calib, TOKEN_RATE_HZ, TARGET_HZ, min_len=MIN_LEN, max_len=MAX_LEN)
    tr = float("inf")  # relative rule off
    args = (tg, None, MIN_LEN, MAX_LEN)

    boundaries(h[:1000], *args)  # load/compile outside the timing
    ref = boundaries(h, *args)
    t_numba = _time_best(lambda: boundaries(h, *args), 5)

    n_py = min(python_tokens, n_tokens)
    sub = h[:n_py]
    sub_list = sub.astype(np.float64).tolist()
    py = python_loop(sub_list, tg, tr, MIN_LEN, MAX_LEN)
    if py != boundaries(sub, *args).tolist():
        raise AssertionError("python loop disagrees with boundaries()")
    t_py = _time_best(lambda: python_loop(sub_list, tg, tr, MIN_LEN, MAX_LEN), 2)

    vec = numpy_vectorised(h, tg, tr, MIN_LEN, MAX_LEN)
    if not np.array_equal(vec, ref):
        raise AssertionError("numpy version disagrees with boundaries()")
    t_np = _time_best(lambda: numpy_vectorised(h, tg, tr, MIN_LEN, MAX_LEN), 2)

    seg = Segmenter(*args)
    chunks = [h[i : i + CHUNK] for i in range(0, min(n_tokens, push_calls * CHUNK), CHUNK)]
    chunks = [c for c in chunks if len(c) == CHUNK]
    for c in chunks[:100]:
        seg.push(c)
    seg.reset()
    lat = np.empty(len(chunks))
    clock = time.perf_counter_ns
    for i, c in enumerate(chunks):
        t = clock()
        seg.push(c)
        lat[i] = clock() - t
    lat_us = lat / 1000.0

    numba_tps = n_tokens / t_numba
    py_tps = n_py / t_py
    np_tps = n_tokens / t_np
    result = {
        "tokens": n_tokens,
        "settings": {
            "global_threshold": tg,
            "relative_threshold": None,
            "min_len": MIN_LEN,
            "max_len": MAX_LEN,
            "segments_per_s": segment_rate(h, TOKEN_RATE_HZ, *args),
            "dtype": "float32",
        },
        "numba_tokens_per_s": numba_tps,
        "python_tokens_per_s": py_tps,
        "python_tokens_measured": n_py,
        "numpy_tokens_per_s": np_tps,
        "speedup_vs_python": numba_tps / py_tps,
        "speedup_vs_numpy": numba_tps / np_tps,
        "push_chunk_tokens": CHUNK,
        "push_calls": len(chunks),
        "push_median_us": float(np.median(lat_us)),
        "push_p99_us": float(np.percentile(lat_us, 99)),
        "cpu": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    result.update(first_call_costs())
    result["targets"] = {}
    for key, (op, limit) in TARGETS.items():
        value = result[key]
        ok = value >= limit if op == ">=" else value <= limit
        result["targets"][key] = {"target": f"{op} {limit:g}", "met": bool(ok)}
    return result


def _print_table(r: dict) -> None:
    s = r["settings"]
    t = r["targets"]

    def mark(key: str) -> str:
        return f"[{'met' if t[key]['met'] else 'MISSED'}: {t[key]['target']}]" if key in t else ""

    print(
        f"segmenter bench: {r['tokens']:,} float32 tokens, 1 thread, cpu {r['cpu']}; "
        f"global threshold {s['global_threshold']:.4f} (15 Hz), min_len {s['min_len']}, "
        f"max_len {s['max_len']} -> {s['segments_per_s']:.2f} segments/s"
    )
    rows = [
        ("numba boundaries()", f"{r['numba_tokens_per_s'] / 1e6:8.1f} M tokens/s", "1.0x",
         mark("numba_tokens_per_s")),
        ("pure-Python loop", f"{r['python_tokens_per_s'] / 1e6:8.2f} M tokens/s",
         f"{r['speedup_vs_python']:.0f}x slower",
         f"({r['python_tokens_measured']:,} tokens) {mark('speedup_vs_python')}"),
        ("numpy vectorised", f"{r['numpy_tokens_per_s'] / 1e6:8.2f} M tokens/s",
         f"{r['speedup_vs_numpy']:.1f}x slower", ""),
        ("Segmenter.push 50 tok", f"{r['push_median_us']:8.2f} us median",
         f"p99 {r['push_p99_us']:.2f} us", mark("push_median_us")),
        ("first call, warm cache", f"{r['first_call_warm_s'] * 1e3:8.1f} ms",
         f"+ import {r['import_warm_s'] * 1e3:.0f} ms", mark("first_call_warm_s")),
        ("  numba's own init", f"{r['numba_init_floor_s'] * 1e3:8.1f} ms", "(trivial cached fn)",
         ""),
        ("  ours after numba init", f"{r['first_call_after_numba_init_s'] * 1e3:8.1f} ms", "",
         ""),
        ("first call, cold cache", f"{r['first_call_cold_s'] * 1e3:8.1f} ms",
         f"+ import {r['import_cold_s'] * 1e3:.0f} ms", ""),
        ("first push after that", f"{r['first_push_after_first_call_s'] * 1e6:8.1f} us", "", ""),
        ("import numpy / numba", f"{r['import_numpy_s'] * 1e3:8.1f} ms",
         f"/ {r['import_numba_s'] * 1e3:.0f} ms", ""),
    ]  # fmt: skip
    for name, value, ratio, note in rows:
        print(f"  {name:<24}{value:<22}{ratio:<18}{note}")


@click.command()
@click.option("--tokens", type=click.IntRange(min=1000), default=10_000_000, show_default=True)
@click.option(
    "--python-tokens",
    type=click.IntRange(min=1000),
    default=1_000_000,
    show_default=True,
    help="Subset timed for the pure-Python loop (tokens/s extrapolated).",
)
@click.option("--push-calls", type=click.IntRange(min=100), default=20_000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(tokens: int, python_tokens: int, push_calls: int, as_json: bool) -> None:
    """Benchmark the entropy segmenter on one core."""
    result = run(tokens, python_tokens, push_calls)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)


if __name__ == "__main__":
    main()
