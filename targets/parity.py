"""Parity of a built bundle against its FP32 ONNX source, on held-out audio.

Each model is measured on the FP32 pipeline's own inputs, so its number is its own
error: the tokenizer's token agreement (same audio), the entropy LM's mean absolute
entropy error and the segment-boundary F1 its entropies give (FP32 tokens), the
aggregator's relative vector error (FP32 segments) and the decoder's teacher-forced
next-character agreement (FP32 vectors and transcript). The whole built pipeline is then
run end to end: token agreement, boundary F1 and the WER/CER change against the FP32
pipeline, where the audio has reference transcripts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from calibration.sources import Utterance
from edgetok.bundle import Bundle
from edgetok.runtime import SessionOptions

__all__ = ["THRESHOLDS", "Counts", "checks", "measure"]

#: Acceptance thresholds: metric -> (comparison, limit).
THRESHOLDS: Final = {
    "token_agreement": (">=", 0.98),
    "boundary_f1": (">=", 0.95),
    "wer_change": ("<=", 0.005),
}


@dataclass
class _F1:
    hits: int = 0
    predicted: int = 0
    expected: int = 0

    def add(self, expected: np.ndarray, predicted: np.ndarray) -> None:
        self.hits += len(np.intersect1d(expected, predicted))
        self.predicted += len(predicted)
        self.expected += len(expected)

    @property
    def f1(self) -> float:
        total = self.predicted + self.expected
        return 2 * self.hits / total if total else 1.0


@dataclass
class Counts:
    """Running sums over utterances; ``summary`` turns them into the report."""

    tokens_same: int = 0
    tokens: int = 0
    entropy_abs: float = 0.0
    lm_boundaries: _F1 = field(default_factory=_F1)
    vector_sq_error: float = 0.0
    vector_sq_norm: float = 0.0
    chars_same: int = 0
    chars: int = 0
    e2e_tokens_same: int = 0
    e2e_boundaries: _F1 = field(default_factory=_F1)
    errors: dict[str, list[int]] = field(
        default_factory=lambda: {"fp32": [0, 0, 0, 0], "built": [0, 0, 0, 0]}
    )
    with_text: int = 0
    utterances: int = 0
    audio_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        def ratio(a: float, b: float) -> float:
            return a / b if b else 1.0

        wer = {k: ratio(v[0], v[1]) for k, v in self.errors.items()}
        cer = {k: ratio(v[2], v[3]) for k, v in self.errors.items()}
        has_text = self.with_text > 0
        return {
            "utterances": self.utterances,
            "audio_s": round(self.audio_s, 2),
            "models": {
                "tokenizer": {"token_agreement": ratio(self.tokens_same, self.tokens)},
                "entropy_lm": {
                    "entropy_mae": ratio(self.entropy_abs, self.tokens),
                    "boundary_f1": self.lm_boundaries.f1,
                },
                "aggregator": {
                    "vector_rel_error": ratio(self.vector_sq_error, self.vector_sq_norm) ** 0.5
                },
                "decoder": {"next_char_agreement": ratio(self.chars_same, self.chars)},
            },
            "pipeline": {
                "token_agreement": ratio(self.e2e_tokens_same, self.tokens),
                "boundary_f1": self.e2e_boundaries.f1,
                "wer_fp32": wer["fp32"] if has_text else None,
                "wer": wer["built"] if has_text else None,
                "wer_change": wer["built"] - wer["fp32"] if has_text else None,
                "cer_change": cer["built"] - cer["fp32"] if has_text else None,
                "utterances_with_text": self.with_text,
            },
        }


def measure(
    reference: Bundle,
    built: Bundle,
    utterances: Sequence[Utterance],
    *,
    options: SessionOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The parity report of ``built`` against ``reference`` on ``utterances``."""
    from edgetok.audio import load_audio
    from edgetok.evaluate import error_counts, normalize
    from edgetok.stages import Transcriber
    from edgetok.vocab import BOS, encode_text

    ref = Transcriber(reference, options=options)
    new = Transcriber(built, options=options)
    max_len = ref.pack.compression.max_len
    counts = Counts()
    for i, utt in enumerate(utterances):
        audio = load_audio(utt.path, reference.audio.sample_rate)
        r = ref(audio)
        counts.utterances += 1
        counts.audio_s += r.duration_s
        counts.tokens += len(r.tokens)
        counts.tokens_same += int(np.sum(new.tokenizer(audio) == r.tokens))
        entropy = new.entropy(r.tokens)
        counts.entropy_abs += float(np.abs(entropy - r.entropy).sum())
        counts.lm_boundaries.add(r.starts, ref.pack.compression.starts(r.tokens, entropy))
        vectors = new.pack.aggregator(r.tokens, r.starts, max_len)
        counts.vector_sq_error += float(np.sum((vectors - r.vectors) ** 2))
        counts.vector_sq_norm += float(np.sum(r.vectors**2))
        if len(r.starts):
            feeds = {
                "prefix": np.ascontiguousarray(r.vectors[None], dtype=np.float32),
                "text": np.array([[BOS, *encode_text(r.text)]], np.int64),
            }
            want = ref.pack.decoder.session.run(feeds)["logits"].argmax(-1)
            got = new.pack.decoder.session.run(feeds)["logits"].argmax(-1)
            counts.chars_same += int(np.sum(want == got))
            counts.chars += want.size
        e2e = new(audio)
        counts.e2e_tokens_same += int(np.sum(e2e.tokens == r.tokens))
        counts.e2e_boundaries.add(r.starts, e2e.starts)
        if utt.text is not None:
            reference_text = normalize(utt.text)
            counts.with_text += 1
            for key, text in (("fp32", r.text), ("built", e2e.text)):
                counts.errors[key] = [
                    a + b
                    for a, b in zip(
                        counts.errors[key], error_counts(reference_text, text), strict=True
                    )
                ]
        if progress is not None:
            progress(i + 1, len(utterances))
    return counts.summary()


def checks(report: dict[str, Any]) -> dict[str, bool | None]:
    """Each acceptance threshold -> passed (None when it could not be measured)."""
    pipeline = report["pipeline"]
    values = {
        "token_agreement": report["models"]["tokenizer"]["token_agreement"],
        "boundary_f1": pipeline["boundary_f1"],
        "wer_change": pipeline["wer_change"],
    }
    out: dict[str, bool | None] = {}
    for name, (op, limit) in THRESHOLDS.items():
        value = values[name]
        label = f"{name} {op} {limit:g}"
        out[label] = None if value is None else (value >= limit if op == ">=" else value <= limit)
    return out
