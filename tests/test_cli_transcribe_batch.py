"""``edgetok transcribe`` batches in real processes: a batch rides out an ``edgetok serve``
restart on 127.0.0.1, and SIGTERM lets the utterances in flight finish, or ends the
process when they cannot within the grace period."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from edgetok.audio import load_audio
from edgetok.cli import main
from edgetok.cli._batch import GRACE_S, TERMINATED

TOKEN = "batch-token"
ENV = os.environ | {"EDGETOK_TOKEN": TOKEN}
SR = 16000


def edgetok(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgetok", *args]


@contextmanager
def server(bundle: Path, port: int = 0) -> Iterator[tuple[subprocess.Popen, int]]:
    """``edgetok serve`` in a child process; yields it and its port once it serves."""
    process = subprocess.Popen(
        edgetok("serve", "--bundle", str(bundle), "--port", str(port)),
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not (line := process.stderr.readline()).startswith("serving"):
            assert line, "edgetok serve exited"
        yield process, int(line.rstrip().rstrip("/").rsplit(":", 1)[1])
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


@pytest.fixture(scope="module")
def long_speech(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About two minutes of the fox sentence, with a second of silence after each."""
    fox = load_audio(speech_dir / "fox.wav")
    one = np.concatenate([fox, np.zeros(SR, np.float32)])
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, np.tile(one, 32), SR, subtype="PCM_16")
    return path


def test_a_batch_survives_a_server_restart(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    files = []
    for i in range(8):
        files.append(tmp_path / f"{i}.wav")
        shutil.copy(speech_dir / ("hello.wav" if i % 2 else "fox.wav"), files[-1])
    names = [str(f) for f in files]
    local = CliRunner().invoke(main, ["transcribe", *names, "--bundle", str(tiny_bundle), "--json"])
    expected = [json.loads(line)["text"] for line in local.stdout.splitlines()]
    with server(tiny_bundle) as (first, port):
        url = f"ws://127.0.0.1:{port}/"
        command = edgetok("transcribe", *names, "--bundle", str(tiny_bundle), "--server", url)
        batch = subprocess.Popen(
            [*command, "--json"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = [batch.stdout.readline()]  # the first file is done
        batch.send_signal(signal.SIGSTOP)  # hold the batch while the server goes down
        first.kill()
        first.wait()
        batch.send_signal(signal.SIGCONT)
        time.sleep(1.0)  # the batch goes on with no server
        with server(tiny_bundle, port):
            out, err = batch.communicate(timeout=120)
    assert batch.returncode == 0, err
    assert "Traceback" not in err
    assert "server reconnections: 1; " in err
    objects = [json.loads(line) for line in lines + out.splitlines()]
    assert [obj["file"] for obj in objects] == names
    assert [obj["text"] for obj in objects] == expected


def test_the_files_left_fail_when_the_server_stays_away(
    tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    names = []
    for i in range(4):
        names.append(str(tmp_path / f"{i}.wav"))
        shutil.copy(speech_dir / "hello.wav", names[-1])
    with server(tiny_bundle) as (process, port):
        url = f"ws://127.0.0.1:{port}/"
        command = edgetok("transcribe", *names, "--bundle", str(tiny_bundle), "--server", url)
        batch = subprocess.Popen(
            [*command, "--retry-for", "1", "--json"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = batch.stdout.readline()
        batch.send_signal(signal.SIGSTOP)
        process.kill()
        process.wait()
        batch.send_signal(signal.SIGCONT)
        out, err = batch.communicate(timeout=60)
    assert batch.returncode == 1
    assert "Traceback" not in err
    assert json.loads(first)["file"] == names[0] and out == ""
    errors = err.splitlines()
    assert errors[0].startswith(f"Error: {names[1]}: the server failed: no connection for 1 s")
    lost = f"cannot use the server at {url}: no connection for 1 s"
    for name, line in zip(names[2:], errors[1:3], strict=True):
        assert line.startswith(f"Error: {name}: {lost}")
    assert errors[3] == "3 of 4 files failed:"


def test_sigterm_lets_the_utterances_in_flight_finish(
    tiny_bundle: Path, long_speech: Path, speech_dir: Path
) -> None:
    other = speech_dir / "hello.wav"
    batch = subprocess.Popen(
        edgetok("transcribe", str(long_speech), str(other), "--bundle", str(tiny_bundle)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = [batch.stdout.readline(), batch.stdout.readline()]  # the file, an utterance
    assert lines[1].startswith("  [")
    batch.send_signal(signal.SIGTERM)
    out, err = batch.communicate(timeout=60)
    lines += out.splitlines()
    assert batch.returncode == TERMINATED
    assert "Traceback" not in err
    assert f"{long_speech}: stopped by SIGTERM after " in err
    assert "stopped by SIGTERM: 1 files not transcribed" in err
    spans = [line for line in lines if line.startswith("  [")]
    summary = lines[-1]
    assert summary.startswith(f"  {len(spans)} utterance")  # every utterance got its text
    assert str(other) not in out
    assert float(spans[-1].split("-")[1].split()[0]) < sf.info(long_speech).duration - 10


def test_sigterm_ends_the_process_when_a_final_does_not_come(
    tiny_bundle: Path, long_speech: Path
) -> None:
    with server(tiny_bundle) as (process, port):
        url = f"ws://127.0.0.1:{port}/"
        batch = subprocess.Popen(
            edgetok("transcribe", str(long_speech), "--bundle", str(tiny_bundle), "--server", url),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = [batch.stdout.readline(), batch.stdout.readline()]
        assert lines[1].startswith("  [")
        process.send_signal(signal.SIGSTOP)  # finals stop coming
        try:
            batch.send_signal(signal.SIGTERM)
            out, err = batch.communicate(timeout=60)
        finally:
            process.send_signal(signal.SIGCONT)
    assert batch.returncode == TERMINATED
    assert err.endswith(
        f"Error: stopped by SIGTERM; the utterances in flight did not finish within {GRACE_S:g} s\n"
    )
    assert "Traceback" not in err
