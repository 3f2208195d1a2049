"""``edgetok transcribe`` and ``edgetok inspect`` on the tiny bundle and espeak-ng speech."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from fixtures import bad_models

import edgetok.bundle
from edgetok.audio import FileSource, load_audio
from edgetok.bundle import load_bundle
from edgetok.cli import main
from edgetok.cli.transcribe import CHUNK_S
from edgetok.pipeline import Pipeline, Utterance
from edgetok.sinks import LocalSink
from edgetok.stages import Transcriber

SR = 16000
SUMMARY_KEYS = {
    "file",
    "text",
    "duration_s",
    "speech_s",
    "tokens",
    "segments",
    "tokens_per_s",
    "segments_per_s",
    "rtf",
    "timings",
    "utterances",
}
INSPECT_KEYS = {
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
STAGES = {"vad", "frontend", "tokenizer", "entropy_lm", "segmenter", "aggregator", "decoder"}


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def two(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Silence, "hello world", silence, the fox sentence, silence (16 kHz PCM WAV)."""
    hello, fox = (load_audio(speech_dir / name) for name in ("hello.wav", "fox.wav"))
    pause = np.zeros(round(0.8 * SR), np.float32)
    path = tmp_path_factory.mktemp("two") / "two.wav"
    sf.write(path, np.concatenate([pause, hello, pause, fox, pause]), SR, subtype="PCM_16")
    return path


def utterances(bundle: Path, path: Path, **options: object) -> list[Utterance]:
    """What the pipeline makes of ``path`` with the local decoder, as the command reads it."""
    transcriber = Transcriber(load_bundle(bundle))
    pipeline = Pipeline(transcriber, LocalSink(transcriber.pack.decoder), **options)
    return list(pipeline.run(FileSource(path, chunk_s=CHUNK_S)))


def test_text_output_gives_each_utterance_with_its_times(tiny_bundle: Path, two: Path) -> None:
    result = run("transcribe", str(two), "--bundle", str(tiny_bundle), "--local")
    assert result.exit_code == 0, result.output
    expected = utterances(tiny_bundle, two)
    assert len(expected) == 2
    head, *lines, tail = result.stdout.splitlines()
    assert head == f"{two} ({sf.info(two).duration:.2f} s)"
    assert lines == [f"  [{u.start_s:8.2f} - {u.end_s:8.2f} s] {u.text}" for u in expected]
    tokens = sum(u.tokens for u in expected)
    assert tail.startswith(f"  2 utterances, {sum(u.duration_s for u in expected):.2f} s of ")
    assert f": {tokens} tokens (" in tail and ", RTF " in tail


def test_json_one_object_per_file_with_its_utterances(
    tiny_bundle: Path, two: Path, speech_dir: Path
) -> None:
    files = [str(two), str(speech_dir / "fox.wav")]
    result = run("transcribe", *files, "--bundle", str(tiny_bundle), "--json", "--threads", "2")
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [obj["file"] for obj in objects] == files
    for obj in objects:
        assert set(obj) == SUMMARY_KEYS
        expected = utterances(tiny_bundle, Path(obj["file"]))
        assert obj["utterances"] == [
            {
                "start_s": u.start_s,
                "end_s": u.end_s,
                "text": u.text,
                "tokens": u.tokens,
                "segments": u.segments,
            }
            for u in expected
        ]
        assert obj["text"] == " ".join(u.text for u in expected if u.text)
        assert obj["duration_s"] == pytest.approx(sf.info(obj["file"]).duration)
        assert obj["speech_s"] == pytest.approx(sum(u.duration_s for u in expected))
        assert obj["tokens"] == sum(u.tokens for u in expected)
        assert obj["tokens_per_s"] == pytest.approx(obj["tokens"] / obj["speech_s"])
        assert obj["segments_per_s"] == pytest.approx(obj["segments"] / obj["speech_s"])
        assert obj["rtf"] > 0
        assert set(obj["timings"]) == STAGES


def test_dump_tokens_are_the_utterances_one_after_the_other(tiny_bundle: Path, two: Path) -> None:
    result = run("transcribe", str(two), "--bundle", str(tiny_bundle), "--json", "--dump-tokens")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert set(obj) == SUMMARY_KEYS | {"token_ids", "entropy", "starts"}
    arrays = [u.arrays for u in utterances(tiny_bundle, two, keep_tokens=True)]
    offsets = np.cumsum([0] + [len(a.ids) for a in arrays[:-1]])
    assert obj["token_ids"] == np.concatenate([a.ids for a in arrays]).tolist()
    assert obj["entropy"] == np.concatenate([a.entropy for a in arrays]).tolist()
    starts = [a.starts + offset for a, offset in zip(arrays, offsets, strict=True)]
    assert obj["starts"] == np.concatenate(starts).tolist()


def test_dump_tokens_needs_json(tiny_bundle: Path, speech_dir: Path) -> None:
    wav = str(speech_dir / "hello.wav")
    result = run("transcribe", wav, "--bundle", str(tiny_bundle), "--dump-tokens")
    assert result.exit_code == 2
    assert "--dump-tokens needs --json" in result.output


def test_a_batch_goes_on_after_a_failure_and_lists_the_failures(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("no audio")
    missing = tmp_path / "missing.wav"
    good = speech_dir / "hello.wav"
    files = [str(bad), str(good), str(missing)]
    result = run("transcribe", *files, "--bundle", str(tiny_bundle), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["file"] == str(good)
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"Error: {bad}: not a readable audio file")
    assert errors[1] == f"Error: {missing}: no such file"
    assert errors[2] == "2 of 3 files failed:"
    assert errors[3:] == [f"  {line.removeprefix('Error: ')}" for line in errors[:2]]


def test_a_truncated_wav_is_transcribed_with_a_warning(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    whole = speech_dir / "fox.wav"
    cut = tmp_path / "cut.wav"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    result = run("transcribe", str(cut), "--bundle", str(tiny_bundle), "--json")
    assert result.exit_code == 0, result.output
    read, declared = sf.info(cut).duration, sf.info(whole).duration
    assert result.stderr == (
        f"warning: {cut}: read {read:.2f} s of audio, its header declares {declared:.2f} s "
        "(truncated?)\n"
    )
    assert json.loads(result.stdout)["duration_s"] == pytest.approx(read)


@pytest.mark.parametrize("role", ["tokenizer", "decoder"])
@pytest.mark.parametrize("spoil", [bad_models.truncated, bad_models.garbage])
def test_a_model_file_that_does_not_parse_is_one_line(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path, role: str, spoil
) -> None:
    data = spoil((tiny_bundle / f"{role}.onnx").read_bytes())
    bundle = bad_models.bundle_with(tiny_bundle, role, data, tmp_path / "bundle")
    result = run("transcribe", str(speech_dir / "hello.wav"), "--bundle", str(bundle))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"Error: {bundle / 'bundle.toml'}: {bundle / f'{role}.onnx'}: onnxruntime cannot "
        "load the model: "
    )


def test_a_model_that_fails_to_run_fails_each_file_in_one_line(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    data = bad_models.fails_to_run((tiny_bundle / "tokenizer.onnx").read_bytes())
    bundle = bad_models.bundle_with(tiny_bundle, "tokenizer", data, tmp_path / "bundle")
    files = [str(speech_dir / "hello.wav"), str(speech_dir / "fox.wav")]
    result = run("transcribe", *files, "--bundle", str(bundle), "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    model = bundle / "tokenizer.onnx"
    for file, line in zip(files, errors[:2], strict=True):
        assert line.startswith(f"Error: {file}: {model}: the model failed to run: ")
    assert errors[2] == "2 of 2 files failed:"


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
    assert set(report) == INSPECT_KEYS | {
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
