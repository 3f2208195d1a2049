"""Where calibration and held-out audio come from, and a stratified pick of utterances.

A source is a corpus directory (``train.jsonl``, ``dev.jsonl``, ``test.jsonl``), one
JSONL manifest (rows with ``path`` relative to the manifest, ``voice``, ``duration``,
``text``), or a directory of audio files (voice = the file's parent directory name).
Without one, ``synthetic_source`` makes a small corpus with the machine's TTS voices.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Final

import numpy as np

from edgetok.manifest import Utterance, read_manifest

__all__ = [
    "AUDIO_SUFFIXES",
    "Utterance",
    "heldout_source",
    "pick",
    "read_source",
    "synthetic_source",
]

AUDIO_SUFFIXES: Final = (".wav", ".flac", ".ogg", ".mp3")
#: The manifest of a corpus directory used for calibration, and the held-out one.
CALIBRATION_SPLITS: Final = ("train.jsonl", "dev.jsonl")
HELDOUT_SPLIT: Final = "test.jsonl"
#: The TTS corpus made when no calibration audio is given: about 6 min of speech for
#: calibration and 4 min of held-out voices for parity (``edgetok.train.corpus``).
SYNTHETIC_CORPUS: Final = "calibration"
SYNTHETIC_HOURS: Final = {"hours": 0.1, "dev_hours": 0.01, "test_hours": 0.06}


def _manifest(path: Path) -> list[Utterance]:
    """A manifest's rows; a row without ``duration`` gets its audio file's."""
    import soundfile as sf

    return [
        u if u.duration is not None else replace(u, duration=float(sf.info(u.path).duration))
        for u in read_manifest(path, need_text=False)
    ]


def _directory(path: Path) -> list[Utterance]:
    import soundfile as sf

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    return [Utterance(str(p), p, None, p.parent.name, float(sf.info(p).duration)) for p in files]


def read_source(source: str | Path) -> list[Utterance]:
    """The utterances of a corpus directory (its calibration splits), manifest or audio
    directory; ValueError when there are none."""
    path = Path(source)
    if path.is_dir() and any((path / s).is_file() for s in CALIBRATION_SPLITS):
        found = [u for s in CALIBRATION_SPLITS if (path / s).is_file() for u in _manifest(path / s)]
    elif path.is_file():
        found = _manifest(path)
    elif path.is_dir():
        found = _directory(path)
    else:
        raise ValueError(f"calibration source {path} does not exist")
    if not found:
        raise ValueError(f"calibration source {path} holds no audio")
    return found


def heldout_source(source: str | Path) -> Path | None:
    """The held-out manifest that goes with a calibration source: a corpus directory's
    ``test.jsonl``, or a ``test.jsonl`` beside a manifest; None when there is none."""
    path = Path(source)
    candidate = path / HELDOUT_SPLIT if path.is_dir() else path.with_name(HELDOUT_SPLIT)
    return candidate if candidate.is_file() and candidate != path else None


def pick(utterances: list[Utterance], n: int, seed: int = 0) -> list[Utterance]:
    """``n`` utterances stratified by duration (quartiles) and voice, deterministically.

    The duration bins take turns; each gives the utterance whose voice has been picked
    least so far, so lengths and voices are spread before any repeats.
    """
    if n >= len(utterances):
        return sorted(utterances, key=lambda u: str(u.path))
    rng = np.random.default_rng(seed)
    durations = np.array([u.duration for u in utterances])
    edges = np.quantile(durations, [0.25, 0.5, 0.75])
    bins: dict[int, list[Utterance]] = defaultdict(list)
    for index in rng.permutation(len(utterances)):
        bins[int(np.searchsorted(edges, durations[index]))].append(utterances[index])
    used: dict[str, int] = defaultdict(int)
    chosen: list[Utterance] = []
    while len(chosen) < n:
        for b in sorted(bins):
            if bins[b] and len(chosen) < n:
                best = min(range(len(bins[b])), key=lambda i: used[bins[b][i].voice])
                chosen.append(bins[b].pop(best))
                used[chosen[-1].voice] += 1
    return chosen


def synthetic_source() -> Path:
    """A small TTS corpus in the edgetok cache (``$EDGETOK_CACHE/corpus/calibration``),
    built once from the machine's espeak-ng / flite / festival voices and packaged text:
    calibration audio for a user without a corpus. RuntimeError when there are no voices."""
    from edgetok.train.corpus import build_corpus
    from edgetok.train.paths import cache_dir

    out = cache_dir() / "corpus" / SYNTHETIC_CORPUS
    build_corpus(out, seed=1, progress=False, **SYNTHETIC_HOURS)
    return out
