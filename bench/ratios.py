"""Ratios of p50s measured in one bench run, like for like only.

Two configurations are compared only when they are builds of the same bundle with the
same settings (same ``provenance.bundle.family``: source models, codebook, segmenter;
the beam, threads, clock and audio are the run's): FP32 against INT8 on one backend, and
ONNX Runtime against another backend at one precision. Every such pair is its own entry
(a second pair never replaces a first). pocketsphinx, which recognizes speech end to
end, is compared with each configuration's end-to-end RTF (device pipeline, round trips
and the server's decoding), never with the device part alone.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["MODEL_STAGES", "format_ratios", "ratios"]

#: Stages whose ratios are shown beside the device RTF (the models).
MODEL_STAGES: Final = ("tokenizer", "entropy_lm", "aggregator")


def _family(config: dict[str, Any]) -> str | None:
    return ((config.get("provenance") or {}).get("bundle") or {}).get("family")


def _pair(slow: dict[str, Any], fast: dict[str, Any]) -> dict[str, Any]:
    """``slow``'s time / ``fast``'s time for the device RTF and each model stage."""
    out: dict[str, Any] = {"first": slow["name"], "second": fast["name"]}
    out["device_rtf"] = slow["rtf"]["device"]["p50"] / fast["rtf"]["device"]["p50"]
    for stage in MODEL_STAGES:
        x = slow["stages"][stage]["ms_per_audio_s"]
        y = fast["stages"][stage]["ms_per_audio_s"]
        out[stage] = x / y if y else None
    return out


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """``fp32_over_int8`` and ``onnxruntime_over_backend``: lists of pairs (``first``,
    ``second``: config names; ``device_rtf`` and each model stage as the first's time /
    the second's; > 1: the second is faster), and ``pocketsphinx_over_end_to_end``
    {config name: pocketsphinx RTF / its end-to-end RTF}."""
    measured = [c for c in report["configs"] if c.get("rtf") and c.get("stages")]
    fp32_over_int8, over_backend = [], []
    for a in measured:
        for b in measured:
            if a is b or _family(a) is None or _family(a) != _family(b):
                continue
            if a["backend"] == b["backend"] and (a["precision"], b["precision"]) == (
                "fp32",
                "int8",
            ):
                fp32_over_int8.append(_pair(a, b))
            if (
                a["precision"] == b["precision"]
                and a["backend"] == "onnxruntime"
                and b["backend"] != "onnxruntime"
            ):
                over_backend.append(_pair(a, b))
    sphinx = (report.get("baselines") or {}).get("pocketsphinx")
    over_sphinx = {}
    if sphinx:
        for c in measured:
            end_to_end = c["rtf"]["end_to_end"]["p50"]
            if end_to_end:
                over_sphinx[c["name"]] = sphinx["rtf"]["p50"] / end_to_end
    return {
        "fp32_over_int8": fp32_over_int8,
        "onnxruntime_over_backend": over_backend,
        "pocketsphinx_over_end_to_end": over_sphinx,
    }


def format_ratios(found: dict[str, Any]) -> str:
    """The ratios as lines (device RTF, then tokenizer / entropy LM / aggregator)."""

    def row(pair: dict[str, Any]) -> str:
        parts = [f"device RTF {pair['device_rtf']:.2f}x"]
        parts += [
            f"{stage} {pair[stage]:.2f}x" if pair[stage] is not None else f"{stage} -"
            for stage in MODEL_STAGES
        ]
        return f"  {pair['first']} / {pair['second']}: " + ", ".join(parts)

    lines = ["ratios measured in this run, like for like (p50; > 1: the second is faster)"]
    lines += [row(pair) for pair in found["fp32_over_int8"]]
    lines += [row(pair) for pair in found["onnxruntime_over_backend"]]
    for name, value in found["pocketsphinx_over_end_to_end"].items():
        lines.append(f"  pocketsphinx / {name}, end to end: {value:.1f}x")
    if len(lines) == 1:
        lines.append("  (nothing to compare: no two builds of one bundle ran)")
    return "\n".join(lines)
