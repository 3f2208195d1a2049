"""Session fixtures shared by the pipeline tests: the tiny real bundle and espeak-ng speech."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.make_tiny_bundle import make_tiny_bundle

#: Sentences the speech fixtures say, with the espeak-ng voice that says each.
SENTENCES = {
    "hello.wav": ("en-us", "hello world"),
    "fox.wav": ("en-gb", "the quick brown fox jumps over the lazy dog"),
}


def espeak(text: str, voice: str, out: Path) -> Path:
    """``text`` spoken by espeak-ng ``voice`` into the WAV ``out`` (22050 Hz mono)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is needed (apt install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True, timeout=60)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny real bundle of ``fixtures/make_tiny_bundle.py``; do not modify it."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the ``SENTENCES`` WAV files."""
    directory = tmp_path_factory.mktemp("speech")
    for name, (voice, text) in SENTENCES.items():
        espeak(text, voice, directory / name)
    return directory


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """Whisper tiny.en's folder from its pinned wheel (skips where it is not installed)."""
    from edgetok.pretrained import PRETRAINED, PretrainedError

    try:
        return PRETRAINED["tiny.en"].model_dir()
    except PretrainedError as exc:
        pytest.skip(str(exc))
