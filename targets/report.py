"""The parity report of a build as a printed table."""

from __future__ import annotations

from typing import Any


def _num(value: float | None, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def format_report(report: dict[str, Any]) -> str:
    """Per-model and end-to-end parity, the acceptance checks and the tokenizer latency."""
    lines = [
        f"target {report['target']} ({report['backend']}): "
        + ", ".join(f"{role} {p}" for role, p in report["precision"].items())
    ]
    if "models" in report:
        m, p = report["models"], report["pipeline"]
        next_char = m["decoder"]["next_char_agreement"]
        rows = [
            ("tokenizer", "token agreement", f"{m['tokenizer']['token_agreement']:.2%}"),
            ("entropy_lm", "entropy MAE (nats)", f"{m['entropy_lm']['entropy_mae']:.4f}"),
            ("entropy_lm", "boundary F1", f"{m['entropy_lm']['boundary_f1']:.4f}"),
            ("aggregator", "vector rel. error", f"{m['aggregator']['vector_rel_error']:.4f}"),
            # None: no character decoder was built (v2: the server decoder is carried over).
            ("decoder", "next-char agreement", _num(next_char, ".2%", "n/a")),
            ("pipeline", "token agreement", f"{p['token_agreement']:.2%}"),
            ("pipeline", "boundary F1", f"{p['boundary_f1']:.4f}"),
            ("pipeline", "WER FP32", _num(p["wer_fp32"], ".2%")),
            ("pipeline", "WER built", _num(p["wer"], ".2%")),
            ("pipeline", "WER change (abs.)", _num(p["wer_change"], "+.4f")),
        ]
        lines += [
            f"parity vs FP32 ONNX on {report['utterances']} held-out utterances "
            f"({report['audio_s']:.1f} s)",
            f"  {'model':<11} {'metric':<22} {'value':>9}",
            *(f"  {model:<11} {metric:<22} {value:>9}" for model, metric, value in rows),
        ]
        lines += [
            f"  check {name}: {'-' if ok is None else 'PASS' if ok else 'FAIL'}"
            for name, ok in report["checks"].items()
        ]
    else:
        lines.append(report["note"])
    t = report["latency"]["tokenizer"]
    lines.append(
        f"tokenizer latency, {t['backend']}, {t['threads']} thread, {t['frames']} frames, "
        f"median of {t['repeats']}: CPU time built {t['built_cpu_ms']:.1f} ms, FP32 "
        f"{_num(t['fp32_cpu_ms'], '.1f')} ms, speed-up {_num(t['speedup'], '.2f')}x "
        f"(wall: medians {t['built_ms']:.1f} / {_num(t['fp32_ms'], '.1f')} ms, best "
        f"{t['built_min_ms']:.1f} / {_num(t['fp32_min_ms'], '.1f')} ms)"
    )
    return "\n".join(lines)
