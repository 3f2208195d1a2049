"""edgetok.evaluate and ``edgetok eval``: error counts, aggregation, the whole run."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.make_tiny_bundle import make_decoder_pack

from edgetok.audio import load_audio
from edgetok.bundle import load_bundle
from edgetok.cli import main
from edgetok.evaluate import (
    POCKETSPHINX,
    PocketSphinx,
    Score,
    Utterance,
    error_counts,
    evaluate,
    normalize,
    read_manifest,
)
from edgetok.stages import DecoderPack, Transcriber

HAS_POCKETSPHINX = importlib.util.find_spec("pocketsphinx") is not None
ROWS = [  # (file, voice, reference)
    ("hello.wav", "us", "hello world"),
    ("fox.wav", "gb", "the quick brown fox jumps over the lazy dog"),
    ("hello.wav", "us", "hello there world"),
]
SYSTEM_KEYS = {"utterances", "wer", "cer", "tokens_per_s", "segments_per_s", "rtf", "voices"}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Hello, World!", "hello world"),
        ("It\u2019s  Caf\u00e9-time", "it's cafe time"),
        ("  we don't   know [noise] <sil> ", "we don't know noise sil"),
        ("", ""),
        ("Press 1, or # to exit.", "press one or pound to exit"),
        ("1,234 & 5% *", "one thousand two hundred thirty four and five percent star"),
        ("Call-Forward on line 2", "call forward on line two"),
    ],
)
def test_normalize(raw: str, clean: str) -> None:
    assert normalize(raw) == clean


@pytest.mark.parametrize(
    ("ref", "hyp", "counts"),
    [
        ("the cat sat", "the cat sat", (0, 3, 0, 11)),
        ("the cat sat", "the bat sat on", (2, 3, 4, 11)),  # 1 sub + 1 ins; c->b + " on"
        ("a b c", "", (3, 3, 5, 5)),
        ("", "a b", (2, 0, 3, 0)),
    ],
)
def test_error_counts(ref: str, hyp: str, counts: tuple[int, int, int, int]) -> None:
    assert error_counts(ref, hyp) == counts


def test_score_is_corpus_level() -> None:
    score = Score()
    score.add("a b c d", "a b c d", 2.0, 0.5, tokens=100, segments=30)
    score.add("e f", "e", 1.0, 0.25, tokens=50, segments=15)
    assert score.wer == 1 / 6  # not the mean of 0 and 1/2
    assert score.cer == 2 / 10
    assert score.summary(rates=True) == {
        "utterances": 2,
        "wer": 1 / 6,
        "cer": 0.2,
        "tokens_per_s": 50.0,
        "segments_per_s": 15.0,
        "rtf": 0.25,
    }
    summary = score.summary(rates=False)
    assert summary["tokens_per_s"] is None and summary["segments_per_s"] is None


@pytest.fixture
def manifest(speech_dir: Path, tmp_path: Path) -> Path:
    (tmp_path / "audio").mkdir()
    lines = []
    for index, (name, voice, text) in enumerate(ROWS):
        shutil.copy(speech_dir / name, tmp_path / "audio" / name)
        row = {"id": f"u{index}", "path": f"audio/{name}", "text": text, "voice": voice}
        lines.append(json.dumps({**row, "duration": 1.0, "augment": {}, "split": "test"}))
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    return path


def test_read_manifest(manifest: Path) -> None:
    rows = read_manifest(manifest)
    first = Utterance("u0", manifest.parent / "audio/hello.wav", "hello world", "us", 1.0)
    assert rows[0] == first
    assert [row.voice for row in rows] == ["us", "gb", "us"]
    assert [row.id for row in read_manifest(manifest, limit=2)] == ["u0", "u1"]


def test_read_manifest_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "path": "x.wav", "text": "t", "voice": "v"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=rf"^{path} line 2: not a manifest row \(KeyError"):
        read_manifest(path)


def test_read_manifest_needs_only_path_and_text(tmp_path: Path) -> None:
    path = tmp_path / "people.jsonl"
    rows = [
        {"path": "a.wav", "text": "one"},
        {"audio_filepath": "/abs/b.wav", "text": "two", "source": "nemo"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_manifest(path)
    assert got[0] == Utterance("1", tmp_path / "a.wav", "one", "people")
    assert got[1] == Utterance("2", Path("/abs/b.wav"), "two", "nemo")
    path.write_text('{"path": 3, "text": "x"}\n')
    with pytest.raises(ValueError, match="line 1: not a manifest row"):
        read_manifest(path)
    path.write_text('{"path": "a.wav"}\n[1]\n')
    no_text = Utterance("1", tmp_path / "a.wav", None, "people")
    assert read_manifest(path, limit=1, need_text=False) == [no_text]
    with pytest.raises(ValueError, match="line 2: not a JSON object"):
        read_manifest(path, need_text=False)


def test_evaluate(tiny_bundle: Path, manifest: Path, tmp_path: Path) -> None:
    transcriber = Transcriber(load_bundle(tiny_bundle))
    rule = {"mode": "fixed", "max_len": 4, "rate_hz": 15.0}
    packs = {
        "entropy": transcriber.pack,
        "fixed": DecoderPack.from_dir(make_decoder_pack(tiny_bundle, tmp_path / "fixed", rule)),
    }
    utterances = read_manifest(manifest)
    result = evaluate(utterances, transcriber, packs)
    audio = [load_audio(utt.path) for utt in utterances]
    audio_s = sum(len(a) for a in audio) / 16000
    assert result["utterances"] == 3 and result["audio_s"] == pytest.approx(audio_s)
    assert list(result["systems"]) == ["entropy", "fixed"]
    for name, pack in packs.items():
        outs = [transcriber.decode(transcriber.encode(a), pack) for a in audio]
        counts = [error_counts(u.text, o.text) for u, o in zip(utterances, outs, strict=True)]
        system = result["systems"][name]
        assert set(system) == SYSTEM_KEYS and system["utterances"] == 3
        assert system["wer"] == sum(c[0] for c in counts) / sum(c[1] for c in counts)
        assert system["cer"] == sum(c[2] for c in counts) / sum(c[3] for c in counts)
        tokens = sum(len(o.tokens) for o in outs)
        assert system["tokens_per_s"] == pytest.approx(tokens / audio_s)
        segments = sum(len(o.starts) for o in outs)
        assert system["segments_per_s"] == pytest.approx(segments / audio_s)
        assert system["rtf"] > 0
        us = [c for c, u in zip(counts, utterances, strict=True) if u.voice == "us"]
        assert system["voices"]["us"] == {
            "utterances": 2,
            "wer": sum(c[0] for c in us) / sum(c[1] for c in us),
            "cer": sum(c[2] for c in us) / sum(c[3] for c in us),
        }
        assert list(system["voices"]) == ["gb", "us"]


def eval_cli(*args: str):
    return CliRunner().invoke(main, ["eval", *args])


def test_cli_json_and_table(tiny_bundle: Path, manifest: Path, tmp_path: Path) -> None:
    pack = make_decoder_pack(tiny_bundle, tmp_path / "dense", {"mode": "dense", "max_len": 1})
    args = [str(manifest), "--bundle", str(tiny_bundle), "--baseline", f"dense={pack}"]
    args += ["--no-pocketsphinx", "--no-whisper", "--limit", "2"]
    result = eval_cli(*args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"manifest", "bundle", "utterances", "audio_s", "systems"}
    assert (report["manifest"], report["bundle"]) == (str(manifest), str(tiny_bundle))
    assert report["utterances"] == 2 and list(report["systems"]) == ["entropy", "dense"]
    dense = report["systems"]["dense"]
    assert set(dense) == SYSTEM_KEYS
    assert dense["segments_per_s"] == dense["tokens_per_s"]

    rows_file = tmp_path / "hyps.jsonl"
    table = eval_cli(*args, "--hypotheses", str(rows_file)).stdout.splitlines()
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert [(r["id"], r["system"]) for r in rows] == [
        (utt, system) for utt in ("u0", "u1") for system in ("entropy", "dense")
    ]
    assert all(set(r) == {"id", "voice", "system", "reference", "hypothesis"} for r in rows)
    assert rows[0]["reference"] == normalize(read_manifest(manifest)[0].text)
    assert table[0] == f"2 utterances, {report['audio_s']:.1f} s of audio"
    assert table[2].split() == ["system", "utts", "WER", "CER", "tokens/s", "segments/s", "RTF"]
    assert [line.split()[0] for line in table[3:5]] == ["entropy", "dense"]
    assert table[6].split() == ["WER", "by", "voice", "entropy", "dense"]
    assert [line.split()[:2] for line in table[7:]] == [["gb", "(1)"], ["us", "(1)"]]


@pytest.mark.parametrize(
    ("baseline", "message"),
    [("dense", "'dense' is not NAME=DIR"), ("entropy=x", "system name 'entropy' is taken")],
)
def test_cli_bad_baseline(tiny_bundle: Path, manifest: Path, baseline: str, message: str) -> None:
    result = eval_cli(str(manifest), "--bundle", str(tiny_bundle), "--baseline", baseline)
    assert result.exit_code == 2 and message in result.output


def test_cli_baseline_that_is_not_a_pack(tiny_bundle: Path, manifest: Path, tmp_path: Path) -> None:
    args = [str(manifest), "--bundle", str(tiny_bundle), "--baseline", f"fixed={tmp_path}"]
    result = eval_cli(*args, "--no-pocketsphinx", "--no-whisper")
    assert result.exit_code == 1
    assert f"--baseline fixed: {tmp_path} is not a decoder pack" in result.stderr


@pytest.mark.skipif(HAS_POCKETSPHINX, reason="pocketsphinx is installed")
def test_cli_asks_for_pocketsphinx_when_missing(tiny_bundle: Path, manifest: Path) -> None:
    result = eval_cli(str(manifest), "--bundle", str(tiny_bundle), "--pocketsphinx")
    assert result.exit_code == 1 and "pip install 'edgetok[eval]'" in result.stderr


@pytest.mark.skipif(not HAS_POCKETSPHINX, reason="pocketsphinx is not installed")
def test_pocketsphinx(tiny_bundle: Path, manifest: Path, speech_dir: Path) -> None:
    text = PocketSphinx()(load_audio(speech_dir / "fox.wav"))
    assert text and text == normalize(text)
    args = [str(manifest), "--bundle", str(tiny_bundle), "--limit", "1", "--json"]
    result = eval_cli(*args, "--no-whisper")
    assert result.exit_code == 0, result.output
    systems = json.loads(result.stdout)["systems"]
    assert list(systems) == ["entropy", POCKETSPHINX]
    assert systems[POCKETSPHINX]["tokens_per_s"] is None
    assert systems[POCKETSPHINX]["voices"]["us"]["utterances"] == 1


def test_cli_record_writes_the_eval_table(
    tiny_bundle: Path, manifest: Path, tmp_path: Path
) -> None:
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    args = [
        str(manifest),
        "--bundle",
        str(bundle_dir),
        "--no-pocketsphinx",
        "--no-whisper",
        "--limit",
        "2",
    ]
    result = eval_cli(*args, "--record", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    recorded = load_bundle(bundle_dir).eval
    assert recorded["utterances"] == 2 and recorded["manifest"] == str(manifest)
    assert recorded["command"].startswith("edgetok ")
    entropy = report["systems"]["entropy"]
    assert recorded["entropy"]["wer"] == round(entropy["wer"], 4)
    assert recorded["entropy"]["per_voice_wer"] == {
        voice: round(v["wer"], 4) for voice, v in entropy["voices"].items()
    }


def test_cli_record_keeps_systems_of_an_earlier_run(
    tiny_bundle: Path, manifest: Path, tmp_path: Path
) -> None:
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    pack = make_decoder_pack(tiny_bundle, tmp_path / "dense", {"mode": "dense", "max_len": 1})
    args = [
        str(manifest),
        "--bundle",
        str(bundle_dir),
        "--no-pocketsphinx",
        "--no-whisper",
        "--limit",
        "2",
    ]
    assert eval_cli(*args, "--baseline", f"dense={pack}", "--record").exit_code == 0
    assert eval_cli(*args, "--record").exit_code == 0
    recorded = load_bundle(bundle_dir).eval
    assert {"entropy", "dense"} <= set(recorded) and len(recorded["commands"]) == 2
    # Another utterance count starts over.
    assert eval_cli(*args[:-1], "1", "--record").exit_code == 0
    assert "dense" not in load_bundle(bundle_dir).eval


def test_cli_default_baselines(
    tiny_bundle: Path, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --baseline, eval scores the packs export-baselines left in the cache for
    this kind of bundle (v1 here: decoder_dense, decoder_fixed) and names the missing."""
    monkeypatch.setenv("EDGETOK_CACHE", str(tmp_path))
    args = [str(manifest), "--bundle", str(tiny_bundle), "--no-pocketsphinx", "--no-whisper"]
    args += ["--limit", "1", "--json"]
    result = eval_cli(*args)
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["systems"]) == ["entropy"]
    assert f"note: no dense or fixed baseline in {tmp_path / 'exports'}" in result.stderr

    make_decoder_pack(
        tiny_bundle, tmp_path / "exports" / "decoder_dense", {"mode": "dense", "max_len": 1}
    )
    result = eval_cli(*args)
    assert list(json.loads(result.stdout)["systems"]) == ["entropy", "dense"]
    assert "note: no fixed baseline" in result.stderr
    result = eval_cli(*args, "--no-baselines")
    assert list(json.loads(result.stdout)["systems"]) == ["entropy"]
    assert "note:" not in result.stderr
    result = eval_cli(*args, "--no-baselines", "--baseline", f"dense={tmp_path}")
    assert result.exit_code == 2 and "--no-baselines with --baseline" in result.stderr
