"""``edgetok transcribe`` and ``edgetok inspect`` on the tiny bundle and espeak-ng speech."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgetok.bundle
from edgetok.audio import load_audio
from edgetok.bundle import load_bundle
from edgetok.cli import main
from edgetok.stages import Transcriber

SUMMARY_KEYS = {
    "file",
    "text",
    "duration_s",
    "tokens",
    "segments",
    "tokens_per_s",
    "segments_per_s",
    "rtf",
    "timings",
}


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_text_output(tiny_bundle: Path, speech_dir: Path) -> None:
    wav = speech_dir / "hello.wav"
    result = run("transcribe", str(wav), "--bundle", str(tiny_bundle), "--local")
    assert result.exit_code == 0, result.output
    expected = Transcriber(load_bundle(tiny_bundle))(load_audio(wav))
    head, text = result.output.splitlines()
    tokens, segments = len(expected.tokens), len(expected.starts)
    assert head.startswith(
        f"{wav}  {expected.duration_s:.2f} s: {tokens} tokens "
        f"({expected.tokens_per_s:.1f}/s) -> {segments} segments "
        f"({expected.segments_per_s:.1f}/s), RTF "
    )
    assert text == f"  {expected.text}"


def test_json_one_object_per_file(tiny_bundle: Path, speech_dir: Path) -> None:
    files = [str(speech_dir / "hello.wav"), str(speech_dir / "fox.wav")]
    result = run("transcribe", *files, "--bundle", str(tiny_bundle), "--json", "--threads", "2")
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [obj["file"] for obj in objects] == files
    for obj in objects:
        assert set(obj) == SUMMARY_KEYS
        assert obj["tokens_per_s"] == pytest.approx(obj["tokens"] / obj["duration_s"])
        assert obj["segments_per_s"] == pytest.approx(obj["segments"] / obj["duration_s"])
        assert obj["rtf"] == pytest.approx(sum(obj["timings"].values()) / obj["duration_s"])
        assert set(obj["timings"]) == {
            "tokenizer",
            "entropy_lm",
            "segmenter",
            "aggregator",
            "decoder",
        }


def test_dump_tokens_matches_the_transcriber(tiny_bundle: Path, speech_dir: Path) -> None:
    wav = speech_dir / "fox.wav"
    result = run("transcribe", str(wav), "--bundle", str(tiny_bundle), "--json", "--dump-tokens")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert set(obj) == SUMMARY_KEYS | {"token_ids", "entropy", "starts"}
    expected = Transcriber(load_bundle(tiny_bundle))(load_audio(wav))
    assert obj["token_ids"] == expected.tokens.tolist()
    assert obj["entropy"] == expected.entropy.tolist()
    assert obj["starts"] == expected.starts.tolist()


@pytest.mark.parametrize("extra", [[], ["--server", "ws://localhost:1"]])
def test_dump_tokens_needs_local_json(tiny_bundle: Path, speech_dir: Path, extra) -> None:
    wav = str(speech_dir / "hello.wav")
    args = ["--json"] if extra else []
    result = run("transcribe", wav, "--bundle", str(tiny_bundle), "--dump-tokens", *args, *extra)
    assert result.exit_code == 2
    assert "--dump-tokens needs --json and a local decoder" in result.output


def test_bad_file_is_reported_and_others_still_run(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("no audio")
    good = speech_dir / "hello.wav"
    result = run("transcribe", str(bad), str(good), "--bundle", str(tiny_bundle), "--json")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {bad}: not a readable audio file")
    assert json.loads(result.stdout)["file"] == str(good)


def test_default_bundle_not_built(
    speech_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edgetok.bundle, "__file__", str(tmp_path / "bundle.py"))
    result = run("transcribe", str(speech_dir / "hello.wav"))
    assert result.exit_code == 1
    manifest = tmp_path / "models" / "default" / "bundle.toml"
    assert f"the default bundle has not been built: {manifest} does not exist" in result.stderr


def test_inspect_json_and_plot(tiny_bundle: Path, speech_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "fig.png"
    wav = speech_dir / "fox.wav"
    result = run("inspect", str(wav), "--bundle", str(tiny_bundle), "--plot", str(png), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == SUMMARY_KEYS | {
        "token_ids",
        "entropy",
        "starts",
        "global_threshold",
        "relative_threshold",
        "min_len",
        "max_len",
    }
    assert len(report["token_ids"]) == len(report["entropy"]) == report["tokens"]
    assert len(report["starts"]) == report["segments"] and report["starts"][0] == 0
    assert (report["global_threshold"], report["max_len"]) == (2.5, 16)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_text(tiny_bundle: Path, speech_dir: Path) -> None:
    result = run("inspect", str(speech_dir / "hello.wav"), "--bundle", str(tiny_bundle))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 3 and lines[2].startswith("  segment starts (s): 0.00 ")


def test_inspect_bad_audio(tiny_bundle: Path, tmp_path: Path) -> None:
    result = run("inspect", str(tmp_path / "missing.wav"), "--bundle", str(tiny_bundle))
    assert result.exit_code == 1
    assert f"Error: {tmp_path / 'missing.wav'}: no such file" in result.stderr


def test_transcribe_and_eval_never_import_torch(tiny_bundle: Path, speech_dir: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edgetok.evaluate\n"
        "from edgetok.cli import main\n"
        f"main(['transcribe', {str(speech_dir / 'hello.wav')!r}, '--bundle', "
        f"{str(tiny_bundle)!r}, '--json'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == SUMMARY_KEYS
