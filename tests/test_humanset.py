"""The human-speech evaluation set from Debian packages, and the Whisper ceiling row."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetok.audio import load_audio
from edgetok.cli import main
from edgetok.humanset import ALSA_DIR, ASTERISK_DIR, build_human_set, human_clips

HAS_WHISPER = importlib.util.find_spec("faster_whisper") is not None


@pytest.fixture(scope="module")
def clips() -> dict:
    found = human_clips()
    if not any(found.values()):
        pytest.skip("no human recordings installed (scripts/setup installs them)")
    return found


def test_every_clip_has_audio_and_a_reference(clips: dict) -> None:
    for source, found in clips.items():
        for clip in found:
            assert clip.voice == source and clip.path.is_file() and clip.text.strip()
            assert not clip.text.startswith("[")
    ids = [c.id for found in clips.values() for c in found]
    assert len(ids) == len(set(ids))


@pytest.mark.skipif(not ASTERISK_DIR.is_dir(), reason="asterisk-core-sounds-en-wav missing")
def test_asterisk_prompts_leave_out_tones_and_silence(clips: dict) -> None:
    names = {c.id for c in clips["asterisk"]}
    assert "asterisk/agent-pass" in names
    assert "asterisk/beep" not in names and not any("/silence/" in n for n in names)
    assert len(names) > 500


def test_build_writes_a_manifest_eval_reads(clips: dict, tmp_path: Path) -> None:
    from edgetok.evaluate import read_manifest

    out = tmp_path / "human.jsonl"
    counts = build_human_set(out)
    assert counts == {source: len(found) for source, found in clips.items()}
    rows = read_manifest(out)
    assert len(rows) == sum(counts.values())
    assert load_audio(rows[0].path).size > 0


def test_unknown_source_is_named() -> None:
    with pytest.raises(ValueError, match="unknown human sources"):
        human_clips(("librispeech",))


def test_cli_human_needs_no_manifest(clips: dict, tiny_bundle: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("EDGETOK_CACHE", str(tmp_path))
    args = ["eval", "--human", "--bundle", str(tiny_bundle), "--limit", "2", "--json"]
    result = CliRunner().invoke(main, [*args, "--no-pocketsphinx", "--no-whisper"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["utterances"] == 2 and list(report["systems"]) == ["entropy"]
    assert (tmp_path / "human" / "manifest.jsonl").is_file()
    both = CliRunner().invoke(main, ["eval", str(tmp_path / "human" / "manifest.jsonl"), "--human"])
    assert both.exit_code == 2 and "MANIFEST or --human" in both.output


@pytest.mark.skipif(not HAS_WHISPER, reason="faster-whisper is not installed")
@pytest.mark.skipif(not ALSA_DIR.is_dir(), reason="alsa-utils' sounds are not installed")
def test_whisper_reference_transcribes_a_person() -> None:
    from edgetok.evaluate import WhisperReference
    from edgetok.pretrained import PretrainedError

    try:
        whisper = WhisperReference(threads=1)
    except PretrainedError as exc:
        pytest.skip(str(exc))
    assert whisper.name == "whisper-tiny.en"
    assert whisper(load_audio(ALSA_DIR / "Front_Center.wav")) == "front center"
