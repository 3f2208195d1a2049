"""The bench report as a picture: per-stage stacked bars per target and precision.

Each bar is one configuration; its segments are the device stages' milliseconds per
second of audio (so the bar's height is the device real-time factor x 1000), with the
target's budget as a tick and pocketsphinx as a bar of its own. A second panel stacks
the remote part (round trip, of which the server's decoding). matplotlib is imported
inside ``plot_report`` (the eval/train extras have it; a device install need not).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from edgetok.bench.stats import DEVICE_STAGES

__all__ = ["plot_report"]

_COLORS = {
    "vad": "#8c8c8c",
    "frontend": "#bcbd22",
    "tokenizer": "#1f77b4",
    "entropy_lm": "#ff7f0e",
    "segmenter": "#2ca02c",
    "aggregator": "#d62728",
    "serialize": "#9467bd",
}


def _label(name: str) -> str:
    """A config name as a short tick label of a few lines (long build names wrap)."""
    short = name.replace("onnxruntime", "ort").replace("openvino", "ov")
    target, _, rest = short.partition("/")
    return "\n".join([target, *textwrap.wrap(rest, width=14, break_on_hyphens=True)])


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the PNG for ``report`` (``edgetok.bench.profile.profile``'s dict) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in report["configs"] if c.get("available") and c.get("stages")]
    sphinx = report.get("baselines", {}).get("pocketsphinx")
    names = [_label(c["name"]) for c in configs]
    fig, (ax, remote) = plt.subplots(
        1, 2, figsize=(max(7.0, 1.6 * len(configs) + 4), 5.2), width_ratios=[3, 1.4]
    )
    bottoms = [0.0] * len(configs)
    for stage in DEVICE_STAGES:
        heights = [c["stages"][stage]["ms_per_audio_s"] for c in configs]
        ax.bar(names, heights, bottom=bottoms, label=stage, color=_COLORS[stage])
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    budgets = [(c.get("budget") or {}).get("real_time_factor") for c in configs]
    top = 1.35 * max(bottoms, default=1.0)
    for i, c in enumerate(configs):
        label = f"RTF {c['rtf']['device']['p50']:.4f}"
        budget = budgets[i]
        if budget is not None and budget * 1000 < top:
            ax.hlines(budget * 1000, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
        elif budget is not None:
            label += f"\n(budget {budget:g}: off scale)"
        ax.annotate(label, (i, bottoms[i] + 0.02 * top), ha="center", va="bottom", fontsize=8)
    if sphinx:
        height = sphinx["rtf"]["p50"] * 1000
        shown = min(height, 0.92 * top)
        x = sphinx["name"].replace(" ", "\n", 1)
        ax.bar([x], [shown], color="#444444", label="pocketsphinx (all)")
        if shown < height:
            ax.annotate(
                f"{height:.0f} ms/s (off scale)",
                (len(configs), shown),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_ylim(0, top)
    ax.set_ylabel(f"ms per second of audio ({report['settings']['clock']} clock)")
    ax.set_title(
        f"device stages, {report['settings']['threads']} thread(s); dashed: target budget",
        fontsize=10,
    )
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    ax.tick_params(axis="x", labelsize=8)

    decode = [c["stages"]["server_decode"]["ms_per_audio_s"] for c in configs]
    trip = [c["stages"]["round_trip"]["ms_per_audio_s"] for c in configs]
    remote.bar(names, decode, label="server decode", color="#17becf")
    remote.bar(
        names,
        [max(0.0, t - d) for t, d in zip(trip, decode, strict=True)],
        bottom=decode,
        label="rest of round trip",
        color="#e377c2",
    )
    remote.set_title("remote: round trip", fontsize=10)
    remote.set_ylabel("ms per second of audio")
    remote.legend(fontsize=8)
    remote.set_xticks(range(len(configs)))
    remote.set_xticklabels(names, fontsize=7)
    machine = report["machine"]["cpu"]
    fig.suptitle(
        f"edgetok bench on {machine['model']} ({machine['logical_cpus']} CPUs), "
        f"{report['audio']['duration_s']:.0f} s audio, {report['settings']['runs']} runs",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
