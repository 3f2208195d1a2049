"""calibration/: sources, the stratified pick, and cached model inputs from real speech."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import build_fixtures

from edgetok.bundle import load_bundle
from edgetok.calibration import (
    CalibrationSet,
    Utterance,
    heldout_source,
    make_calibration,
    pick,
    read_source,
)

speech_corpus = build_fixtures.speech_corpus


def _utterances(n_voices: int, per_voice: int) -> list[Utterance]:
    return [
        Utterance(f"{v}-{i}", Path(f"/a/{v}/{i}.wav"), None, f"voice{v}", 1.0 + i)
        for v in range(n_voices)
        for i in range(per_voice)
    ]


def test_pick_spreads_over_voices_and_durations() -> None:
    utterances = _utterances(4, 8)
    chosen = pick(utterances, 8)
    assert len(chosen) == len(set(chosen)) == 8
    assert {u.voice for u in chosen} == {f"voice{v}" for v in range(4)}
    durations = sorted(u.duration for u in chosen)
    assert durations[0] <= 2.0 and durations[-1] >= 7.0  # short and long ones
    assert pick(utterances, 8) == chosen  # deterministic
    assert len(pick(utterances, 100)) == 32


def test_sources(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"path": "x.wav", "voice": "v", "duration": 2.0, "text": "hi"}) + "\n"
    )
    (tmp_path / "test.jsonl").write_text("")
    rows = read_source(tmp_path / "a.jsonl")
    assert rows == [Utterance("1", tmp_path / "x.wav", "hi", "v", 2.0)]
    assert heldout_source(tmp_path / "a.jsonl") == tmp_path / "test.jsonl"
    assert heldout_source(tmp_path / "test.jsonl") is None
    (tmp_path / "bad.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="bad.jsonl line 1: not a manifest row"):
        read_source(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        read_source(tmp_path / "absent")


def test_audio_directory_source(speech_corpus: Path) -> None:
    rows = read_source(speech_corpus / "audio")
    assert [r.path.name for r in rows] == ["one.wav", "three.wav", "two.wav"]
    assert all(r.voice == "audio" and r.duration > 0.5 and r.text is None for r in rows)


def test_model_inputs_from_speech_are_cached(
    tiny_bundle: Path,
    speech_corpus: Path,
    tmp_path: Path,
) -> None:
    bundle = load_bundle(tiny_bundle)
    utterances = read_source(speech_corpus)
    made = make_calibration(bundle, utterances, tmp_path)
    assert len(made.utterances) == 2
    for role, names in {
        "tokenizer": ["mel"],
        "entropy_lm": ["tokens"],
        "aggregator": ["tokens", "mask"],
        "decoder": ["prefix", "text"],
    }.items():
        feeds = made.reader(role)
        assert len(feeds) == 2 and all(sorted(f) == sorted(names) for f in feeds)
    mel, tokens = made.reader("tokenizer")[0]["mel"], made.reader("entropy_lm")[0]["tokens"]
    assert mel.shape[0] == 1 and mel.shape[2] == 80 and tokens.shape == (1, -(-mel.shape[1] // 2))
    aggregator = made.reader("aggregator")[0]
    assert aggregator["tokens"].shape[1] == bundle.segmenter.max_len
    assert aggregator["mask"].sum() == tokens.shape[1]  # every token in one segment
    assert made.reader("decoder")[0]["text"][0, 0] == 1  # BOS
    (cached,) = tmp_path.glob("calib-*.npz")
    again = CalibrationSet.load(cached)
    assert again.utterances == made.utterances
    np.testing.assert_array_equal(
        again.reader("tokenizer")[1]["mel"], made.reader("tokenizer")[1]["mel"]
    )
    assert make_calibration(bundle, utterances, tmp_path).utterances == made.utterances
    with pytest.raises(KeyError, match="no calibration data for 'vocoder'"):
        made.reader("vocoder")


def test_a_user_without_a_corpus_gets_synthetic_calibration_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``synthetic_source``: a small TTS corpus made once in the cache, with a train split
    for calibration and held-out voices for parity."""
    import shutil

    from edgetok.calibration.sources import heldout_source, read_source, synthetic_source

    if not (shutil.which("espeak-ng") and shutil.which("flite")):
        pytest.skip("espeak-ng and flite are needed (apt install espeak-ng flite)")
    monkeypatch.setenv("EDGETOK_CACHE", str(tmp_path))
    corpus = synthetic_source()
    assert corpus == tmp_path / "corpus" / "calibration"
    utterances = read_source(corpus)
    assert sum(u.duration for u in utterances) > 200 and len({u.voice for u in utterances}) > 3
    held = heldout_source(corpus)
    assert held is not None and read_source(held)
    stamp = utterances[0].path.stat().st_mtime_ns  # a second call synthesizes nothing
    assert synthetic_source() == corpus and utterances[0].path.stat().st_mtime_ns == stamp
