"""Parity of a built bundle against its FP32 ONNX source, on held-out audio.

Each model is measured on the FP32 pipeline's own inputs, so its number is its own
error: the tokenizer's token agreement (same audio), the entropy LM's mean absolute
entropy error and the segment-boundary F1 its entropies give (FP32 tokens), the
aggregator's relative vector error (FP32 segments of the FP32 tokens, or of a v2
tokenizer's FP32 encoder frames) and a v1 character decoder's teacher-forced
next-character agreement (FP32 vectors and transcript; not applicable to v2, whose
server decoder is carried over, not built: reported as None). The built device pipeline
(tokenizer, entropy LM, aggregator) is then run end to end and decoded as the server
decodes it, with the source bundle's FP32 server decoder (``server_decoder``: v1's
character decoder or v2's Whisper graphs) and edgetok's default beam
(``PARITY_BEAM``): token agreement, boundary F1 and the WER/CER change against the FP32
pipeline, where the audio has reference transcripts (both transcripts normalised as
``edgetok eval`` scores them). (A built v1 decoder, for ``--local`` decoding, is the
next-character agreement above; a fixed-window LiteRT decoder would rerun its whole
window for every character of every hypothesis.)

What the FP32 pipeline makes of an utterance is cached (``cache_dir``, one ``.npz`` per
utterance keyed by the source bundle's hashes and the audio file), so building several
targets from one bundle runs the FP32 pipeline over the held-out audio once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from edgetok.beam import DEFAULT_BEAM
from edgetok.bundle import Bundle
from edgetok.calibration.sources import Utterance
from edgetok.runtime import SessionOptions

if TYPE_CHECKING:
    from edgetok.stages import DecoderStage, SegmentDecoder, Transcriber

__all__ = ["THRESHOLDS", "Counts", "checks", "measure"]

#: The beam width both pipelines decode with: the product's.
PARITY_BEAM: Final = DEFAULT_BEAM
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
    teacher_forced: bool = True
    """Whether a built character decoder was measured (v1); False for v2."""
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
                "decoder": {
                    "next_char_agreement": (
                        ratio(self.chars_same, self.chars) if self.teacher_forced else None
                    )
                },
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


#: Bump when what is cached of the FP32 pipeline changes.
_REFERENCE_VERSION: Final = 2
_ARRAYS: Final = ("tokens", "entropy", "starts", "vectors", "frames", "next_chars")


@dataclass(frozen=True)
class _Reference:
    """What the FP32 pipeline made of one utterance: a v2 tokenizer's encoder frames
    ([T, D]; [0, 0] from v1) and a v1 decoder's teacher-forced next characters ([1, U];
    empty without segments or without a character decoder)."""

    tokens: np.ndarray
    entropy: np.ndarray
    starts: np.ndarray
    vectors: np.ndarray
    frames: np.ndarray
    text: str
    duration_s: float
    next_chars: np.ndarray

    @staticmethod
    def key(bundle: Bundle, utt: Utterance) -> str:
        identity = {
            "version": _REFERENCE_VERSION,
            "beam": PARITY_BEAM,
            "models": {role: entry.sha256 for role, entry in bundle.models.items()},
            "codebook": bundle.tokens.codebook_sha256,
            "segmenter": bundle.segmenter.to_dict(),
            "audio": [str(utt.path.resolve()), utt.path.stat().st_size],
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{id(self)}.tmp.npz")
        np.savez(temporary, **{**vars(self), "text": np.array(self.text)})
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> _Reference:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        return cls(
            **{name: arrays[name] for name in _ARRAYS},
            text=str(arrays["text"]),
            duration_s=float(arrays["duration_s"]),
        )


def _teacher_forced(decoder: DecoderStage | None, vectors: np.ndarray, text: str) -> np.ndarray:
    """The character decoder's argmax next character at every position of BOS + ``text``
    ([1, 0] without segments or without a character decoder)."""
    from edgetok.vocab import BOS, encode_text

    if decoder is None or not len(vectors):
        return np.zeros((1, 0), np.int64)
    prefix = np.ascontiguousarray(vectors[None], dtype=np.float32)
    chars = np.array([[BOS, *encode_text(text)]], np.int64)
    return decoder.logits(prefix, chars).argmax(-1)


def _device(bundle: Bundle, decoder: SegmentDecoder, options: SessionOptions | None) -> Transcriber:
    """``bundle``'s device models with ``decoder`` as the server's."""
    from edgetok.stages import AggregatorStage, DecoderPack, Transcriber, bundle_compression

    aggregator = AggregatorStage(bundle.open("aggregator", options=options))
    pack = DecoderPack(bundle_compression(bundle), aggregator, decoder)
    return Transcriber(bundle, options=options, pack=pack)


def _fp32_reference(
    ref: Transcriber, decoder: DecoderStage | None, audio: np.ndarray
) -> _Reference:
    encoded = ref.encode(audio)
    t = ref.decode(encoded)
    frames = np.zeros((0, 0), np.float32) if encoded.frames is None else encoded.frames
    next_chars = _teacher_forced(decoder, t.vectors, t.text)
    return _Reference(
        t.tokens, t.entropy, t.starts, t.vectors, frames, t.text, t.duration_s, next_chars
    )


def measure(
    reference: Bundle,
    built: Bundle,
    utterances: Sequence[Utterance],
    *,
    options: SessionOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """The parity report of ``built`` against ``reference`` on ``utterances``; the FP32
    pipeline's results are read from (and written to) ``cache_dir`` when given."""
    from edgetok.audio import load_audio
    from edgetok.evaluate import error_counts, normalize
    from edgetok.stages import DecoderStage, Encoded, server_decoder

    # Both pipelines' segments are decoded as the server decodes them: the source's.
    served = server_decoder(reference, options, beam=PARITY_BEAM)
    ref: Transcriber | None = None
    new = _device(built, served, options)
    # v1's character decoders, teacher-forced: the source's (the served one) and the
    # built one (``--local`` decoding).
    teacher = served if isinstance(served, DecoderStage) else None
    built_decoder = DecoderStage.from_bundle(built, options) if teacher is not None else None
    compression = new.pack.compression
    max_len = compression.max_len
    counts = Counts(teacher_forced=built_decoder is not None)
    for i, utt in enumerate(utterances):
        audio = load_audio(utt.path, reference.audio.sample_rate)
        cached = cache_dir / f"ref-{_Reference.key(reference, utt)}.npz" if cache_dir else None
        if cached is not None and cached.is_file():
            r = _Reference.load(cached)
        else:
            ref = ref or _device(reference, served, options)
            r = _fp32_reference(ref, teacher, audio)
            if cached is not None:
                r.save(cached)
        counts.utterances += 1
        counts.audio_s += r.duration_s
        counts.tokens += len(r.tokens)
        tokens, frames = new.tokenizer.encode(audio)
        counts.tokens_same += int(np.sum(tokens == r.tokens))
        entropy = new.entropy(r.tokens)
        counts.entropy_abs += float(np.abs(entropy - r.entropy).sum())
        counts.lm_boundaries.add(r.starts, compression.starts(r.tokens, entropy))
        aggregator = new.pack.aggregator
        source = aggregator.source(r.tokens, r.frames if aggregator.reads_frames else None)
        vectors = aggregator(source, r.starts, max_len)
        counts.vector_sq_error += float(np.sum((vectors - r.vectors) ** 2))
        counts.vector_sq_norm += float(np.sum(r.vectors**2))
        if built_decoder is not None and len(r.starts):
            got = _teacher_forced(built_decoder, r.vectors, r.text)
            counts.chars_same += int(np.sum(r.next_chars == got))
            counts.chars += r.next_chars.size
        # The built device pipeline end to end, from what its tokenizer gave above.
        e2e = new.decode(Encoded(tokens, new.entropy(tokens), r.duration_s, {}, frames))
        counts.e2e_tokens_same += int(np.sum(e2e.tokens == r.tokens))
        counts.e2e_boundaries.add(r.starts, e2e.starts)
        if utt.text is not None:
            reference_text = normalize(utt.text)
            counts.with_text += 1
            for key, text in (("fp32", r.text), ("built", e2e.text)):
                counts.errors[key] = [
                    a + b
                    for a, b in zip(
                        counts.errors[key],
                        error_counts(reference_text, normalize(text)),
                        strict=True,
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
