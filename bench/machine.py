"""What machine a benchmark ran on: CPU model, flags, cores, clock, and an estimate of
its peak arithmetic rate per core (the denominator of "fraction of peak").

``describe()`` reads ``/proc/cpuinfo`` (Linux; elsewhere ``platform`` gives less) and the
versions of the runtimes the benchmark may use. The peak is an *estimate* from the
vector flags and the CPU family, documented in ``peak_per_core``:

- FP32 FLOP/cycle = FMA units (2) x FP32 lanes of the FMA datapath x 2 (multiply + add).
  The datapath is 512 bits with AVX-512 on Intel and on AMD family 26 (Zen 5), 256 bits
  on AMD family 25 (Zen 3/4 run AVX-512 on 256-bit halves) and with AVX2, 128 with SSE.
- INT8 ops/cycle = 4 x the FP32 rate with AVX-512 VNNI or AVX-VNNI (four 8-bit products
  per 32-bit lane), 2 x without (``vpmaddubsw``).
- The clock is ``cpu MHz`` of /proc/cpuinfo (under a hypervisor: the nominal clock).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any, Final

__all__ = ["FLAGS_OF_INTEREST", "cpu_info", "describe", "peak_per_core"]

#: The vector and matrix flags a reader of a benchmark cares about (others are dropped).
FLAGS_OF_INTEREST: Final = (
    "sse4_2",
    "avx",
    "fma",
    "f16c",
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
    "bf16",
)
_PACKAGES: Final = (
    "numpy",
    "numba",
    "onnxruntime",
    "openvino",
    "ai-edge-litert",
    "tflite-runtime",
    "pocketsphinx",
)


def cpu_info(text: str | None = None) -> dict[str, Any]:
    """The first processor's fields of ``/proc/cpuinfo`` (or of ``text``) plus counts."""
    if text is None:
        path = Path("/proc/cpuinfo")
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    fields: dict[str, str] = {}
    for line in blocks[0].splitlines() if blocks else []:
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    cores = {
        (b.split("physical id")[1].split("\n")[0], b.split("core id")[1].split("\n")[0])
        for b in blocks
        if "core id" in b and "physical id" in b
    }
    mhz = fields.get("cpu MHz")
    return {
        "model": fields.get("model name") or fields.get("Model") or platform.processor() or None,
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer"),
        "family": _int(fields.get("cpu family")),
        "model_number": _int(fields.get("model")),
        "stepping": _int(fields.get("stepping")),
        "mhz": float(mhz) if mhz else None,
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "logical_cpus": len(blocks) or os.cpu_count(),
        "physical_cores": len(cores) or None,
    }


def _int(value: str | None) -> int | None:
    try:
        return int(value, 0) if value is not None else None
    except ValueError:
        return None


def peak_per_core(cpu: dict[str, Any]) -> dict[str, Any]:
    """Estimated peak FP32 GFLOP/s and INT8 GOP/s of one core (see the module docstring)."""
    flags = set(cpu["flags"])
    if "avx512f" in flags:
        amd_half_width = cpu["vendor"] == "AuthenticAMD" and (cpu["family"] or 0) < 26
        bits = 256 if amd_half_width else 512
    elif "avx2" in flags or "fma" in flags:
        bits = 256
    else:
        bits = 128
    fp32_per_cycle = 2 * (bits // 32) * 2
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    int8_per_cycle = fp32_per_cycle * (4 if vnni else 2)
    ghz = (cpu["mhz"] or 0.0) / 1000
    return {
        "ghz": ghz or None,
        "fp32_flop_per_cycle": fp32_per_cycle,
        "int8_op_per_cycle": int8_per_cycle,
        "fp32_gflops": fp32_per_cycle * ghz or None,
        "int8_gops": int8_per_cycle * ghz or None,
        "method": (
            f"estimate: 2 FMA units x {bits}-bit datapath ({bits // 32} fp32 lanes) x 2 "
            f"flop at {ghz:.2f} GHz; int8 x{4 if vnni else 2} "
            f"({'VNNI' if vnni else 'no VNNI'})"
        ),
    }


def _versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def describe() -> dict[str, Any]:
    """The machine and software a benchmark runs on, JSON-ready."""
    cpu = cpu_info()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu,
        "peak_per_core": peak_per_core(cpu),
        "usable_cpus": len(affinity) if affinity is not None else os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": sys.version.split()[0],
        "packages": _versions(),
    }


def summary(machine: dict[str, Any]) -> str:
    """One line: CPU, cores, flags, clock, load."""
    cpu, peak = machine["cpu"], machine["peak_per_core"]
    family = f" (family {cpu['family']} model {cpu['model_number']})" if cpu["family"] else ""
    load = machine.get("load_average")
    load_text = f", load {load[0]:.2f}" if load else ""
    clock = f", {peak['ghz']:.2f} GHz" if peak["ghz"] else ""
    return (
        f"{cpu['model']}{family}, {cpu['logical_cpus']} CPUs ({machine['usable_cpus']} usable)"
        f"{clock}, {' '.join(cpu['flags'])}{load_text}"
    )
