"""The terminal tables of a bench report (``edgetok bench``, ``python -m edgetok.bench.suite``)."""

from __future__ import annotations

import textwrap
from typing import Any

from edgetok.bench.machine import summary as machine_summary
from edgetok.bench.ratios import format_ratios
from edgetok.bench.stats import DEVICE_STAGES, STAGES

__all__ = ["format_report"]

_STAGE_LABELS = {
    "vad": "VAD",
    "frontend": "frontend (log-mel)",
    "tokenizer": "tokenizer",
    "entropy_lm": "entropy LM",
    "segmenter": "segmenter",
    "aggregator": "aggregator",
    "serialize": "serialization",
    "send": "send (until acked)",
    "round_trip": "round trip",
    "server_decode": "(server decode)",
}


def _short(name: str) -> str:
    """A configuration's name with short backend names, for column headers."""
    return name.replace("onnxruntime", "ort").replace("openvino", "ov")


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return lines


def _code_line(code: dict[str, Any]) -> str:
    commit = code.get("commit")
    where = f"commit {commit[:12]}{' (dirty)' if code.get('dirty') else ''}" if commit else "no git"
    return f"code: edgetok {code.get('edgetok_version')}, {where}"


def format_report(report: dict[str, Any]) -> str:
    """Stage latencies, the summary per configuration (with pocketsphinx), compute vs
    peak, and the configurations that could not run here."""
    configs = [c for c in report["configs"] if c.get("available") and c.get("stages")]
    missing = [c for c in report["configs"] if not (c.get("available") and c.get("stages"))]
    settings, audio = report["settings"], report["audio"]
    lines = [
        f"machine: {machine_summary(report['machine'])}",
        f"audio: {audio['source']} ({audio['duration_s']:.1f} s), {settings['threads']} thread(s), "
        f"{settings['warmup']} warm-up + {settings['runs']} runs each, interleaved",
        f"clock: {settings['clock']} ({settings['clock_reason']})",
        _code_line(report.get("provenance") or {}),
        "",
    ]
    if configs:
        short = [_short(c["name"]) for c in configs]
        lines.append(
            "per-utterance stage latency, ms p50/p90/p99 (ort = ONNX Runtime, ov = OpenVINO)"
        )
        rows = []
        for stage in (*STAGES, "server_decode"):
            row = [_STAGE_LABELS[stage]]
            for c in configs:
                ms = c["stages"][stage]["ms"]
                row.append(f"{_ms(ms['p50'])}/{_ms(ms['p90'])}/{_ms(ms['p99'])}")
            rows.append(row)
        lines += _grid(["stage", *short], rows)
        lines.append("")
        lines.append(
            "ms per second of audio (mean over runs; the device stages add up to RTF x 1000)"
        )
        rows = []
        for stage in (*STAGES, "server_decode"):
            row = [_STAGE_LABELS[stage]]
            row += [_ms(c["stages"][stage]["ms_per_audio_s"]) for c in configs]
            rows.append(row)
        total = ["device total"]
        total += [
            _ms(sum(c["stages"][s]["ms_per_audio_s"] for s in DEVICE_STAGES)) for c in configs
        ]
        rows.insert(len(DEVICE_STAGES), total)
        lines += _grid(["stage", *short], rows)
        lines.append("")
        lines.append("summary (p50 over runs)")
        header = [
            "config",
            "device RTF",
            "e2e RTF",
            "vs sphinx",
            "first result",
            "EOS->final",
            "cold start",
            "cold, no cache",
            "peak RSS",
            "models",
            "tokens/s",
            "segments/s",
            "bytes/s",
            "codes B/s",
            "tokens B/s",
        ]
        rows = []
        speedups = report.get("ratios", {}).get("pocketsphinx_over_end_to_end", {})
        for c in configs:
            cold = c.get("cold_start") or {}
            warm, empty = cold.get("warm_cache") or {}, cold.get("empty_cache") or {}
            budget = c.get("budget") or {}
            rtf = c["rtf"]["device"]["p50"]
            mark = ""
            if budget.get("real_time_factor") is not None:
                mark = " ok" if rtf <= budget["real_time_factor"] else " OVER"
            rows.append(
                [
                    c["name"],
                    f"{rtf:.4f}{mark}",
                    f"{c['rtf']['end_to_end']['p50']:.4f}",
                    f"{speedups[c['name']]:.1f}x" if c["name"] in speedups else "-",
                    f"{_ms(c['latency_ms']['first_result']['p50'])} ms",
                    f"{_ms(c['latency_ms']['eos_to_final']['p50'])} ms",
                    f"{_num(warm.get('first_token_s'), 2)} s",
                    f"{_num(empty.get('first_token_s'), 2)} s",
                    f"{_num((c.get('peak_rss_mb') or {}).get('device'), 0)} MB",
                    f"{c['model_bytes']['device_total'] / 1e6:.1f} MB",
                    _num(c["rates"]["tokens_per_s"]),
                    _num(c["rates"]["segments_per_s"]),
                    _num(c["rates"]["bytes_per_s"]["segments"], 0),
                    _num(c["rates"]["bytes_per_s"].get("codes"), 0),
                    _num(c["rates"]["bytes_per_s"].get("tokens"), 0),
                ]
            )
        sphinx = report.get("baselines", {}).get("pocketsphinx")
        if sphinx:
            rows.append(
                [
                    sphinx["name"],
                    f"{sphinx['rtf']['p50']:.4f}",
                    f"{sphinx['rtf']['p50']:.4f}",
                    "1.0x",
                ]
                + ["-"] * 11
            )
        lines += _grid(header, rows)
        legend = (
            "device RTF: VAD over the whole stream + frontend .. serialization of each "
            "utterance, / audio time (ok / OVER: the target profile's budget); e2e RTF: the "
            "whole run, round trips and the server's decoding included, / audio time; vs "
            "sphinx: pocketsphinx RTF / e2e RTF (both end to end); cold start: process spawn "
            "-> first token (Numba cache warm / empty); peak RSS: that device process; "
            "models: device models + codebook on disk; bytes/s: wire frames per second of "
            "speech (fp16); codes B/s: the same segments as the bundle's segment codes "
            "(--wire codes, protocol 2); tokens B/s: their token ids (--wire tokens, protocol 2)."
        )
        lines += textwrap.wrap(legend, 100)
        lines += _flops_lines(configs)
        lines.append("")
        lines += _provenance_lines(configs)
    if report.get("ratios"):
        lines.append("")
        lines.append(format_ratios(report["ratios"]))
    if missing:
        lines.append("")
        lines.append("not benchmarked here:")
        for c in missing:
            lines.append(f"  {c['name']}: unavailable: {c['reason']}")
    return "\n".join(lines)


def _provenance_lines(configs: list[dict[str, Any]]) -> list[str]:
    """One line per configuration: its bundle (family), segmenter settings, the beam."""
    lines = ["bundles (family: source models, codebook, segmenter; same family = like for like)"]
    for c in configs:
        made = c.get("provenance") or {}
        bundle = made.get("bundle") or {}
        seg = bundle.get("segmenter") or {}
        lines.append(
            f"  {c['name']}: {bundle.get('name')} family {bundle.get('family')}, segmenter "
            f"threshold {seg.get('global_threshold', 0):.3f} len {seg.get('min_len')}.."
            f"{seg.get('max_len')}, beam {made.get('beam')}"
        )
    return lines


def _flops_lines(configs: list[dict[str, Any]]) -> list[str]:
    with_flops = [c for c in configs if (c.get("flops") or {}).get("available")]
    if not with_flops:
        reasons = {(c.get("flops") or {}).get("reason") for c in configs} - {None}
        return ["", f"compute: not counted ({'; '.join(sorted(reasons))})"] if reasons else []
    lines = [
        "",
        "compute: GFLOP per second of speech (MACs x 2 of the ONNX graphs), achieved GFLOP/s "
        "and its fraction of ONNX Runtime's GEMM here | of the estimated peak",
    ]
    first = with_flops[0]["flops"]
    header = ["model", "GFLOP/s speech", *[_short(c["name"]) for c in with_flops]]
    rows = []
    for role in first["models"]:
        row = [role, _num(first["models"][role].get("gflop_per_speech_s"), 3)]
        for c in with_flops:
            m = c["flops"]["models"][role]
            achieved = m.get("achieved_gflops")
            row.append(
                f"{achieved:.1f} ({_pct(m.get('fraction_of_gemm'))} | "
                f"{_pct(m.get('fraction_of_peak'))} {m['kind']})"
                if achieved is not None
                else "-"
            )
        rows.append(row)
    lines += _grid(header, rows)
    gemm, peak = first["gemm_gflops"], first["peak_gflops"]
    lines.append(
        "GEMM here: "
        + ", ".join(f"{k} {_num(v, 0)} G/s" for k, v in gemm.items())
        + "; estimated peak: "
        + ", ".join(f"{k} {_num(v, 0)} G/s" for k, v in peak.items())
    )
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"
