"""The microphone path for real: PortAudio's ALSA ``pulse`` device recording a PulseAudio
null sink's monitor while ``paplay`` plays speech into the sink (shared/TOOLCHAIN.md).

The fixture starts a PulseAudio server when none runs (and kills it afterwards), or adds
the null sink to the running one (and removes it afterwards). Clients get a config
without autospawn, so a killed server stays dead.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SINK = "edgetok_test"


@dataclass(frozen=True)
class Pulse:
    env: dict[str, str]
    """Environment of a client recording the sink's monitor."""
    started: bool
    """True when this fixture started the server (so a test may kill it)."""


def _pulse_ok(env: dict[str, str]) -> bool:
    return subprocess.run(["pulseaudio", "--check"], env=env).returncode == 0


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pulse]:
    for tool in ("pulseaudio", "paplay", "pactl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is needed (apt install pulseaudio pulseaudio-utils)")
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        pytest.skip(f"PortAudio is needed (apt install libportaudio2): {exc}")
    config = tmp_path_factory.mktemp("pulse") / "client.conf"
    config.write_text("autospawn = no\n")
    env = {**os.environ, "PULSE_CLIENTCONFIG": str(config), "PULSE_SOURCE": f"{SINK}.monitor"}
    started = not _pulse_ok(env)
    module = None
    if started:
        subprocess.run(
            [
                "pulseaudio", "-D", "-n", "--exit-idle-time=-1",
                f"--load=module-null-sink sink_name={SINK}", "--load=module-native-protocol-unix",
            ],
            env=env, check=True, timeout=30, capture_output=True,
        )  # fmt: skip
    else:
        load = ["pactl", "load-module", "module-null-sink", f"sink_name={SINK}"]
        module = subprocess.run(load, env=env, check=True, capture_output=True, text=True).stdout
    try:
        yield Pulse(env, started)
    finally:
        if started:
            subprocess.run(["pulseaudio", "--kill"], env=env, timeout=30)
        elif module is not None:
            subprocess.run(["pactl", "unload-module", module.strip()], env=env, timeout=30)


class Listen:
    """``edgetok listen --device pulse --json`` in a subprocess, its output read by threads."""

    def __init__(self, bundle: Path, pulse: Pulse) -> None:
        command = [sys.executable, "-m", "edgetok", "listen", "--device", "pulse"]
        self.process = subprocess.Popen(
            [*command, "--bundle", str(bundle), "--json"],
            env=pulse.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.process.stdout, self.stdout.put)).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.stderr.append)).start()

    @staticmethod
    def _read(stream, put) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            put(line)

    def wait_for_stderr(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stderr):
            assert self.process.poll() is None, "".join(self.stderr)
            assert time.monotonic() < deadline, f"no {text!r} in {self.stderr}"
            time.sleep(0.05)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=20)
        time.sleep(0.1)  # the reader threads take the last lines
        return code, "".join(self.stderr)


@pytest.fixture(scope="module")
def spoken(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """ "hello world" between 0.7 s silences (22.05 kHz, as espeak-ng wrote it); its length."""
    audio, rate = sf.read(speech_dir / "hello.wav", dtype="float32")
    quiet = np.zeros(round(0.7 * rate), np.float32)
    path = tmp_path_factory.mktemp("spoken") / "spoken.wav"
    sf.write(path, np.concatenate([quiet, audio, quiet]), rate)
    return path, len(audio) / rate


def test_devices_lists_the_pulse_input(pulse: Pulse) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgetok", "devices", "--json"],
        env=pulse.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pulse" in [device["name"] for device in json.loads(result.stdout)]


def test_listen_transcribes_speech_played_into_the_sink(
    pulse: Pulse, tiny_bundle: Path, spoken: tuple[Path, float]
) -> None:
    path, speech_s = spoken
    listen = Listen(tiny_bundle, pulse)
    try:
        listen.wait_for_stderr("listening", 60)
        line = None
        for _ in range(3):  # the first play can start before PortAudio's stream has
            play = ["paplay", "-d", SINK, str(path)]
            subprocess.run(play, env=pulse.env, check=True, timeout=30)
            try:
                line = listen.stdout.get(timeout=3)
                break
            except queue.Empty:
                continue
    finally:
        code, stderr = listen.stop()
    assert line is not None, stderr
    assert code == 0, stderr
    utterance = json.loads(line)
    assert utterance["text"] and utterance["tokens"] > 0 and utterance["segments"] > 0
    assert speech_s - 0.3 < utterance["duration_s"] < speech_s + 1.0
    assert 0 < utterance["latency_s"] < 3
    assert "overruns: 0 samples lost" in stderr


def test_a_vanishing_device_is_a_clear_error(pulse: Pulse, tiny_bundle: Path) -> None:
    if not pulse.started:
        pytest.skip(
            "PulseAudio was running before the tests: not killing a server they did not start"
        )
    listen = Listen(tiny_bundle, pulse)
    try:
        listen.wait_for_stderr("listening", 60)
        time.sleep(3)  # PortAudio's pulse stream takes ~2 s to start
        subprocess.run(["pulseaudio", "--kill"], env=pulse.env, timeout=30)
        code = listen.process.wait(timeout=15)
    finally:
        code, stderr = listen.stop()
    assert code == 1, stderr
    assert "Error: input device" in stderr and "disconnected?" in stderr
