"""JSONL manifests: one utterance per line, read once for eval, calibration and training.

A row needs the audio (``path``, or NeMo's ``audio_filepath``; relative to the manifest's
directory). ``text`` is the reference, ``voice`` (or ``source``) who speaks, ``duration``
its seconds and ``id`` its name; ``id`` defaults to the line number and ``voice`` to the
manifest's name. Numpy-free, torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Utterance", "read_manifest", "read_rows"]


@dataclass(frozen=True)
class Utterance:
    """One manifest row: the audio's resolved path, the reference text (None when the row
    has none), the voice, and the duration in seconds (None when the row does not say)."""

    id: str
    path: Path
    text: str | None
    voice: str
    duration: float | None = None


def _numbered_rows(path: Path, limit: int | None) -> list[tuple[int, dict[str, Any]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path} line {number}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: not a JSON object")
            rows.append((number, row))
    return rows


def read_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` (default all) rows of a JSONL file as dicts, blank lines
    skipped; a ValueError names the file and line of a row that is not a JSON object."""
    return [row for _, row in _numbered_rows(Path(path), limit)]


def _utterance(path: Path, number: int, row: dict[str, Any], need_text: bool) -> Utterance:
    audio = row.get("path", row.get("audio_filepath"))
    if not isinstance(audio, str):
        raise KeyError("path (or audio_filepath) must be a string")
    text = row.get("text")
    if not isinstance(text, str) and (need_text or text is not None):
        raise KeyError("text must be a string")
    duration = row.get("duration")
    return Utterance(
        id=str(row.get("id", number)),
        path=path.parent / audio,
        text=text,
        voice=str(row.get("voice", row.get("source", path.stem))),
        duration=None if duration is None else float(duration),
    )


def read_manifest(
    path: str | Path, limit: int | None = None, *, need_text: bool = True
) -> list[Utterance]:
    """The first ``limit`` (default all) utterances of a JSONL manifest; with
    ``need_text`` (the default) every row must have a ``text``. A ValueError names the
    line of a row that is not a manifest row."""
    path = Path(path)
    found = []
    for number, row in _numbered_rows(path, limit):
        try:
            found.append(_utterance(path, number, row, need_text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} line {number}: not a manifest row ({exc!r})") from None
    return found
