"""Synthetic corpus: real TTS (espeak-ng, flite) on a tiny corpus, and the augmentations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from edgetok.train import augment as A
from edgetok.train import corpus as C
from edgetok.train import voices as V
from edgetok.train.text import FORTUNE_DIR, encode_text

needs_tts = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("flite")),
    reason="espeak-ng and flite binaries are needed (apt install espeak-ng flite)",
)
needs_text = pytest.mark.skipif(
    not FORTUNE_DIR.is_dir(), reason="packaged text needed (apt install fortunes wordnet-base)"
)
TEST_VOICES = ("espeak_en-us+f4", "espeak_en-gb-x-gbcwmd", "flite_rms")
TINY = {"hours": 0.01, "dev_hours": 0.004, "test_hours": 0.01, "test_voices": TEST_VOICES}
FIELDS = {"id", "path", "text", "voice", "duration", "augment", "split"}


def _manifest(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    return out, C.build_corpus(out, seed=0, jobs=2, progress=False, **TINY)


# --- voices ----------------------------------------------------------------------------


@needs_tts
def test_inventory_and_synthesis() -> None:
    inv = V.inventory()
    engines = {v.engine for v in inv}
    assert {"espeak", "flite"} <= engines
    assert all(V.Voice.parse(v.id) == v for v in inv)
    for vid in ("espeak_en-us+f4", "flite_slt"):
        audio = V.synthesize(V.Voice.parse(vid), "a short test sentence", rate=1.2, pitch=0.9)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert 0.5 < audio.size / V.SAMPLE_RATE < 4 and 0 < np.abs(audio).max() <= 1
        slow = V.synthesize(V.Voice.parse(vid), "a short test sentence", rate=0.8)
        assert slow.size > audio.size


@pytest.mark.skipif(not shutil.which("text2wave"), reason="festival is not installed")
def test_festival_failure_is_an_error_not_a_crash() -> None:
    with pytest.raises(V.SynthesisError):
        V.synthesize(V.Voice("festival", "no_such_voice"), "hello there")
    festival = [v for v in V.inventory() if v.engine == "festival"]
    if festival:
        assert V.synthesize(festival[0], "it still works").size > 0


def test_voice_id_parse() -> None:
    assert V.Voice.parse("espeak_en-gb-x-rp+klatt3") == V.Voice("espeak", "en-gb-x-rp", "klatt3")
    assert V.Voice.parse("festival_kal_diphone").name == "kal_diphone"
    with pytest.raises(ValueError):
        V.Voice.parse("nope_x")


# --- corpus ----------------------------------------------------------------------------


@needs_tts
@needs_text
def test_manifest_fields_and_audio(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    assert summary["build"]["status"].get("failed", 0) == 0
    for split in C.SPLITS:
        recs = _manifest(root, split)
        assert recs, split
        for r in recs:
            assert set(r) == FIELDS and r["split"] == split
            assert r["path"] == f"audio/{split}/{r['voice']}/{r['id']}.flac"
            info = sf.info(str(root / r["path"]))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert abs(info.frames / 16000 - r["duration"]) < 1e-3
            assert encode_text(r["text"]) and "tts" in r["augment"]
        audio, _ = sf.read(str(root / recs[0]["path"]), dtype="float32")
        assert 0.01 < np.abs(audio).max() < 1.0


@needs_tts
@needs_text
def test_held_out_voices_and_sentences(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    info = json.loads((root / "corpus.json").read_text())
    train_voices = set(info["voices"]["train"])
    assert set(info["voices"]["test"]) == set(TEST_VOICES)
    assert not train_voices & set(TEST_VOICES)
    assert not any(v.endswith("+f4") or "gbcwmd" in v for v in train_voices)
    train, dev, test = (_manifest(root, s) for s in C.SPLITS)
    assert {r["voice"] for r in test} == set(TEST_VOICES)
    assert {r["voice"] for r in dev} <= train_voices
    train_text = {r["text"] for r in train}
    assert not train_text & {r["text"] for r in test}
    assert not train_text & {r["text"] for r in dev}


@needs_tts
@needs_text
def test_resume_skips_existing_and_redoes_missing(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    before = (root / "train.jsonl").read_text()
    again = C.build_corpus(root, seed=0, jobs=1, progress=False, **TINY)
    assert again["build"]["status"] == {}  # every shard finished
    first = _manifest(root, "train")[0]
    (root / "parts" / "train-00000.jsonl").unlink()
    (root / first["path"]).write_bytes(b"truncated")
    again = C.build_corpus(root, seed=0, jobs=1, progress=False, **TINY)
    assert again["build"]["status"]["done"] == 1
    assert again["build"]["status"]["skipped"] == len(_manifest(root, "train")) - 1
    assert (root / "train.jsonl").read_text() == before
    with pytest.raises(RuntimeError, match="another plan"):
        C.build_corpus(root, seed=1, jobs=1, progress=False, **TINY)


@needs_tts
@needs_text
def test_deterministic(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny
    other = {**TINY, "hours": 0.003, "dev_hours": 0.001, "test_hours": 0.001}
    C.build_corpus(tmp_path, seed=0, jobs=1, progress=False, **other)
    plan, _ = C.plan_corpus(seed=0, **other)
    assert [(u.text, u.voice) for u in plan["train"]] == [
        (r["text"], r["voice"]) for r in _manifest(tmp_path, "train")
    ]
    again, _ = C.plan_corpus(seed=0, **other)
    assert again == plan
    shifted, _ = C.plan_corpus(seed=1, **other)
    assert [u.text for u in shifted["train"]] != [u.text for u in plan["train"]]
    # Same seed, other job count and size: train is planned first, so the small corpus's
    # train lines (durations and augmentations included) are the big one's first lines.
    full = {r["id"]: r for r in _manifest(root, "train")}
    small = _manifest(tmp_path, "train")
    assert small and all(r == full[r["id"]] for r in small)


@needs_tts
@needs_text
def test_cli_stats(tiny: tuple[Path, dict]) -> None:
    from edgetok.cli import main

    root, _ = tiny
    res = CliRunner().invoke(main, ["corpus", "stats", str(root), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert set(stats) == set(C.SPLITS)
    assert stats["test"]["utterances"] == len(_manifest(root, "test"))
    assert set(stats["test"]["voices"]) == set(TEST_VOICES)


# --- augmentations ---------------------------------------------------------------------


def _speechlike(seconds: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(A.SR * seconds)) / A.SR
    tone = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 20))
    return (
        0.1 * tone * (1 + np.sin(2 * np.pi * 3 * t)) + 0.003 * rng.standard_normal(t.size)
    ).astype(np.float32)


def test_each_augmentation_is_sane() -> None:
    x = _speechlike()
    rng = np.random.default_rng(1)
    outs = {
        "speed": A.speed(x, 1.1),
        "vtlp": A.vtlp(x, 1.15),
        "reverb": A.reverb(x, 0.6, 3.0, rng),
        "telephone": A.telephone(x, 300, 3400),
        "pink": A.add_noise(x, A.colored_noise(x.size, "pink", rng), 10.0),
        "babble": A.add_noise(x, A.babble_noise(x.size, [x[:5000], x[3000:]], rng), 5.0),
        "level": A.set_level(x, -26.0),
    }
    assert abs(outs["speed"].size - x.size / 1.1) < 5
    rms = float(np.sqrt(np.mean(x**2)))
    for name, y in outs.items():
        assert y.dtype == np.float32 and np.all(np.isfinite(y)), name
        if name != "speed":
            assert y.size == x.size, name
        y_rms = float(np.sqrt(np.mean(y**2)))
        assert 0.2 * rms < y_rms < 3 * rms or name == "level", name
    assert abs(20 * np.log10(np.sqrt(np.mean(outs["level"] ** 2))) + 26) < 0.01
    np.testing.assert_allclose(A.vtlp(x, 1.0), x, atol=1e-4)


def test_colored_noise_slopes() -> None:
    rng = np.random.default_rng(0)
    for kind, lo_over_hi in (("white", (0.5, 2)), ("pink", (5, 1e3)), ("brown", (1e2, 1e6))):
        n = A.colored_noise(1 << 15, kind, rng)
        p = np.abs(np.fft.rfft(n)) ** 2
        ratio = p[50:200].mean() / p[5000:8000].mean()
        assert lo_over_hi[0] < ratio < lo_over_hi[1], (kind, ratio)


def test_random_augment_chain() -> None:
    rng = np.random.default_rng(0)
    draws = [A.sample_augment(rng) for _ in range(2000)]
    clean = sum(not d for d in draws) / len(draws)
    assert 0.15 < clean < 0.25
    assert all("gain" in d and len(d) > 1 for d in draws if d)
    assert all(json.loads(json.dumps(d)) == d for d in draws)
    x = _speechlike()
    for seed in range(30):
        y, params = A.random_augment(x, np.random.default_rng(seed))
        assert params.get("noise", {}).get("kind") != "babble"
        assert np.all(np.isfinite(y)) and np.abs(y).max() <= 0.99 + 1e-6
        assert 0.85 * x.size <= y.size <= 1.15 * x.size
        z, _ = A.random_augment(x, np.random.default_rng(seed))
        np.testing.assert_array_equal(y, z)
