"""``edgetok demo``, ``transcribe --server`` and ``listen --raw`` on the tiny bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from edgetok.audio import load_audio
from edgetok.bundle import load_bundle
from edgetok.cli import main
from edgetok.protocol import wire_identity
from edgetok.server import start_server
from edgetok.stages import DecoderStage

TOKEN = "cli-token"


def run(*args: str, stdin: bytes | None = None):
    return CliRunner().invoke(main, list(args), input=stdin)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path):
    bundle = load_bundle(tiny_bundle)
    decoder = DecoderStage(bundle.open("decoder"))
    with start_server(decoder, wire_identity(bundle), token=TOKEN) as background:
        yield f"ws://127.0.0.1:{background.port}/"


@pytest.fixture(scope="module")
def sample_bundle(tiny_bundle: Path, speech_dir: Path, tmp_path_factory) -> Path:
    """A copy of the tiny bundle with a sample.wav: speech between silences, at 22.05 kHz."""
    directory = tmp_path_factory.mktemp("sample") / "tiny"
    shutil.copytree(tiny_bundle, directory)
    audio, rate = sf.read(speech_dir / "fox.wav", dtype="float32")
    quiet = np.zeros(rate // 2, np.float32)
    sf.write(directory / "sample.wav", np.concatenate([quiet, audio, quiet]), rate)
    return directory


def test_demo_fast_end_to_end(sample_bundle: Path) -> None:
    result = run("demo", "--bundle", str(sample_bundle), "--fast", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (utterance,) = report["utterances"]
    assert report["transcript"] == utterance["text"].strip()
    rates = {name: row["bytes_per_s"] for name, row in report["bytes"].items()}
    assert rates["raw PCM (16-bit)"] == pytest.approx(32000)
    assert 0 < rates["compressed segments"] < rates["dense tokens"] < rates["raw PCM (16-bit)"]
    assert report["client"]["payload_bytes"] == report["bytes"]["compressed segments"]["bytes"]
    assert report["overruns"] == 0 and report["latency_s"]["max"] < 5


def test_demo_text_report(sample_bundle: Path, speech_dir: Path) -> None:
    result = run("demo", "--bundle", str(sample_bundle), "--audio", str(speech_dir / "hello.wav"))
    assert result.exit_code == 0, result.output
    for expected in ("in real time", "transcript:", "compressed segments", "end of speech ->"):
        assert expected in result.output


def test_demo_without_a_sample(tiny_bundle: Path) -> None:
    result = run("demo", "--bundle", str(tiny_bundle), "--fast")
    assert result.exit_code == 1
    assert "has no sample.wav: pass --audio FILE" in result.output


def test_transcribe_through_a_server_equals_local(
    tiny_bundle: Path, speech_dir: Path, server: str
) -> None:
    files = [str(speech_dir / "hello.wav"), str(speech_dir / "fox.wav")]
    here = run("transcribe", *files, "--bundle", str(tiny_bundle), "--json")
    remote = run(
        "transcribe", *files, "--bundle", str(tiny_bundle), "--json", "--server", server,
        "--token", TOKEN,
    )  # fmt: skip
    assert here.exit_code == 0 and remote.exit_code == 0, remote.output
    mine = [json.loads(line) for line in here.stdout.splitlines()]
    theirs = [json.loads(line) for line in remote.stdout.splitlines()]
    assert [o["text"] for o in theirs] == [o["text"] for o in mine]
    assert [o["segments"] for o in theirs] == [o["segments"] for o in mine]
    assert all("remote" in o["timings"] and o["bytes"]["segments"] > 0 for o in theirs)


def test_transcribe_with_a_wrong_token(tiny_bundle: Path, speech_dir: Path, server: str) -> None:
    wav = str(speech_dir / "hello.wav")
    result = run(
        "transcribe", wav, "--bundle", str(tiny_bundle), "--server", server, "--token", "x"
    )
    assert result.exit_code == 1
    assert "unauthorized" in result.output


def test_token_from_a_file(
    tiny_bundle: Path, speech_dir: Path, server: str, tmp_path: Path
) -> None:
    """--token-file keeps the token out of the process list; a newline does not matter."""
    wav = str(speech_dir / "hello.wav")
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    result = run(
        "transcribe", wav, "--bundle", str(tiny_bundle), "--server", server,
        "--token-file", str(secret),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    both = run("transcribe", wav, "--server", server, "--token", "x", "--token-file", str(secret))
    assert both.exit_code == 2 and "--token-file" in both.output
    secret.write_text("  \n")
    empty = run("transcribe", wav, "--server", server, "--token-file", str(secret))
    assert empty.exit_code == 2 and "is empty" in empty.output


def test_server_and_local_exclude_each_other(tiny_bundle: Path, speech_dir: Path) -> None:
    wav = str(speech_dir / "hello.wav")
    result = run("transcribe", wav, "--bundle", str(tiny_bundle), "--local", "--server", "ws://x/")
    assert result.exit_code == 2 and "choose one of --server and --local" in result.output


def test_listen_to_raw_pcm_on_stdin(tiny_bundle: Path, speech_dir: Path) -> None:
    audio = load_audio(speech_dir / "fox.wav")
    quiet = np.zeros(8000, np.float32)
    pcm = (np.concatenate([quiet, audio, quiet]) * 32767).astype("<i2").tobytes()
    result = run("listen", "--raw", "s16le", "--bundle", str(tiny_bundle), "--json", stdin=pcm)
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("{")]
    utterance = json.loads(line)
    assert utterance["tokens"] > 0 and utterance["bytes"]["pcm"] > 0
    assert "1 utterances from" in result.output


def test_listen_truncated_raw_pcm(tiny_bundle: Path) -> None:
    result = run("listen", "--raw", "s16le", "--bundle", str(tiny_bundle), stdin=b"\x00" * 3333)
    assert result.exit_code == 1
    assert "ends 1 bytes into a sample frame" in result.output
