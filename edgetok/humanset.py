"""The human-speech evaluation set: recordings of people from Debian packages.

Never used for training (edgetok.train reads only TTS voices). Sources, each a ``voice``
in eval's per-voice table:

- ``asterisk``: asterisk-core-sounds-en-wav, one speaker (Allison), 8 kHz telephone
  prompts; references from ``core-sounds-en.txt`` (asterisk-core-sounds-en), prompts that
  are only tones or silence left out.
- ``pocketsphinx``: pocketsphinx-testdata's LibriVox and card-game clips, with their
  transcription files.
- ``alsa``: alsa-utils' speaker-test words; the reference is the file name.
- ``codec2``: codec2-examples' clips of about ten speakers, 8 kHz, no transcript file.
  References are Whisper base's transcripts (beam 5, ``data/codec2_references.tsv``,
  made by ``scripts/codec2-references``), so Whisper has an edge on this source.

``build_human_set`` writes a JSONL manifest (``id``, ``path``, ``text``, ``voice``) of every
installed source and says which are missing and how to install them.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

__all__ = ["HUMAN_PACKAGES", "HumanClip", "build_human_set", "human_clips", "human_manifest"]

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
POCKETSPHINX_DIR = Path("/usr/share/pocketsphinx/test/data")
ALSA_DIR = Path("/usr/share/sounds/alsa")
CODEC2_DIR = Path("/usr/share/codec2/wav")
CODEC2_REFERENCES = Path(__file__).parent / "data" / "codec2_references.tsv"

#: Debian packages per source.
HUMAN_PACKAGES = {
    "asterisk": ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en"),
    "pocketsphinx": ("pocketsphinx-testdata",),
    "alsa": ("alsa-utils",),
    "codec2": ("codec2-examples",),
}


@dataclass(frozen=True)
class HumanClip:
    id: str
    path: Path
    text: str
    voice: str


def _asterisk() -> Iterator[HumanClip]:
    if not (ASTERISK_DIR.is_dir() and ASTERISK_TEXT.is_file()):
        return
    with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            name, sep, text = line.partition(":")
            text = text.strip()
            if not sep or line.startswith(";") or not text or text.startswith("["):
                continue
            path = ASTERISK_DIR / f"{name.strip()}.wav"
            if path.is_file() and not name.startswith("silence/"):
                yield HumanClip(f"asterisk/{name.strip()}", path, text, "asterisk")


def _transcription(path: Path) -> Iterator[tuple[str, str]]:
    """(utterance id, text) of a Sphinx transcription file: ``<s> text </s> (id)``."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text, _, rest = line.rpartition("(")
        text = text.replace("<s>", " ").replace("</s>", " ").strip()
        if rest.endswith(")") and text:
            yield rest[:-1], text


def _pocketsphinx() -> Iterator[HumanClip]:
    for folder, transcription in (("librivox", "transcription"), ("cards", "cards.transcription")):
        file = POCKETSPHINX_DIR / folder / transcription
        if not file.is_file():
            continue
        for name, text in _transcription(file):
            path = POCKETSPHINX_DIR / folder / f"{name}.wav"
            if path.is_file():
                yield HumanClip(f"pocketsphinx/{folder}/{name}", path, text, "pocketsphinx")


def _alsa() -> Iterator[HumanClip]:
    if not ALSA_DIR.is_dir():
        return
    for path in sorted(ALSA_DIR.glob("*.wav")):
        if path.stem != "Noise":
            yield HumanClip(f"alsa/{path.stem}", path, path.stem.replace("_", " "), "alsa")


def _codec2() -> Iterator[HumanClip]:
    if not CODEC2_DIR.is_dir():
        return
    for line in CODEC2_REFERENCES.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, text = line.split("\t", 1)
        path = CODEC2_DIR / f"{name}.wav"
        if path.is_file():
            yield HumanClip(f"codec2/{name}", path, text, "codec2")


_SOURCES = {"asterisk": _asterisk, "pocketsphinx": _pocketsphinx, "alsa": _alsa, "codec2": _codec2}
#: Longer clips are left out: one Whisper window, and the VAD's longest utterance.
MAX_SECONDS = 30.0


def _short(clip: HumanClip) -> bool:
    return sf.info(str(clip.path)).duration <= MAX_SECONDS


def human_clips(sources: tuple[str, ...] = tuple(_SOURCES)) -> dict[str, list[HumanClip]]:
    """The installed clips of each source up to ``MAX_SECONDS`` long (an empty list: its
    packages are missing)."""
    unknown = set(sources) - set(_SOURCES)
    if unknown:
        raise ValueError(f"unknown human sources {sorted(unknown)}; known: {list(_SOURCES)}")
    return {name: [c for c in _SOURCES[name]() if _short(c)] for name in sources}


def build_human_set(out: Path, sources: tuple[str, ...] = tuple(_SOURCES)) -> dict[str, int]:
    """Write the manifest of the installed sources to ``out``; returns clips per source.

    Raises ``FileNotFoundError`` naming the packages to install when no source is there."""
    clips = human_clips(sources)
    if not any(clips.values()):
        packages = sorted({p for name in sources for p in HUMAN_PACKAGES[name]})
        raise FileNotFoundError(
            "no human recordings installed: apt-get install " + " ".join(packages)
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as sink:
        for source in clips.values():
            for clip in source:
                row = {
                    "id": clip.id,
                    "path": str(clip.path),
                    "text": clip.text,
                    "voice": clip.voice,
                }
                sink.write(json.dumps(row) + "\n")
    return {name: len(found) for name, found in clips.items()}


def human_manifest() -> tuple[Path, dict[str, int]]:
    """Build the manifest of every installed source under the cache: (path, clips per
    source)."""
    from edgetok.cache import cache_dir

    path = cache_dir() / "human" / "manifest.jsonl"
    return path, build_human_set(path)
