"""``edgetok serve --ray`` at small size: ``python -m edgetok.bench.load`` with real clients on
loopback against the plain server and a local Ray Serve deployment whose decoder replica
is SIGKILLed under load; it fails if an utterance is lost or duplicated. Ray is never
imported on the device path or by plain ``serve``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetok.cli import COMMAND_MODULES

REPO = Path(__file__).resolve().parents[1]
BLOCK_RAY = "import sys; sys.modules['ray'] = None\n"


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_RAY + code], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "module",
    ["edgetok", "edgetok.server", "edgetok.client", "edgetok.pipeline", "edgetok.cli"]
    + [f"edgetok.cli.{m}" for m in COMMAND_MODULES],
)
def test_device_and_plain_server_modules_import_without_ray(module: str) -> None:
    result = _run_python(
        f"import importlib; importlib.import_module({module!r})\n"
        "assert sys.modules.get('ray') is None, 'ray was imported'\n"
    )
    assert result.returncode == 0, result.stderr


def test_ray_options_are_checked() -> None:
    from edgetok.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--address", "auto"])
    assert result.exit_code == 2 and "--address is for --ray" in result.output
    pytest.importorskip("ray.serve")
    result = runner.invoke(main, ["serve", "--ray", "--replicas", "3:1"])
    assert result.exit_code == 2 and "--replicas" in result.output


def test_ray_refuses_a_bundle_without_whisper_graphs(tiny_bundle: Path) -> None:
    pytest.importorskip("ray.serve")
    from edgetok.cli import main

    result = CliRunner().invoke(main, ["serve", "--ray", "--bundle", str(tiny_bundle)])
    assert result.exit_code == 1 and "serves v2 bundles" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_without_ray_serve_ray_names_the_extra() -> None:
    result = _run_python("from edgetok.cli import main\nmain(['serve', '--ray', '--port', '0'])\n")
    assert result.returncode == 1
    assert "pip install 'edgetok[serve]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_load_and_replica_kills_lose_no_utterance() -> None:
    """3 devices x 3 utterances on each server; the Ray run loses its only replica twice."""
    pytest.importorskip("ray.serve")
    pytest.importorskip("onnx")
    from edgetok.bundle import BundleError, default_bundle_path, load_bundle

    try:
        load_bundle(default_bundle_path()).open("decoder_step")
    except BundleError as exc:  # the embedding's wheel is not installed (pip --no-deps)
        pytest.skip(str(exc))
    command = [
        sys.executable,
        "-m",
        "edgetok.bench.load",
        "--devices",
        "3",
        "--servers",
        "plain,ray",
        "--utterances",
        "3",
        "--clips",
        "3",
        "--gap",
        "0.5",
        "--spread",
        "1",
        "--drain-s",
        "90",
        "--replicas",
        "1:1",
        "--kill-replicas",
        "2",
        "--json",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    plain, ray = report["runs"]
    assert (plain["server"], ray["server"]) == ("plain", "ray")
    assert ray["replica_kills"] == 2 and report["requests_resent"]["plain"] == 0
    for run in (plain, ray):
        assert run["utterances"] == 9 and run["finals"] == 9 and run["lost"] == 0
        assert run["mismatched"] == 0 and run["errors"] == 0
        assert report["server_finals"][run["server"]] == 9  # none duplicated
        assert run["latency_s"]["p99"] > 0 and run["peak_rss_mib"] > 0


def test_a_restarted_front_loses_no_utterance() -> None:
    """The plain server (the --ray front's code) stopped and started twice under load:
    devices reconnect, and what the old process had not finished they send again."""
    from edgetok.bundle import BundleError, default_bundle_path, load_bundle

    try:
        load_bundle(default_bundle_path()).open("decoder_step")
    except BundleError as exc:  # the embedding's wheel is not installed (pip --no-deps)
        pytest.skip(str(exc))
    command = [
        *(sys.executable, "-m", "edgetok.bench.load", "--servers", "plain", "--devices", "3"),
        *("--utterances", "4", "--clips", "3", "--gap", "0.5", "--spread", "1"),
        *("--drain-s", "60", "--restart-front", "2", "--json"),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = json.loads(result.stdout)["runs"]
    assert run["front_restarts"] == 2
    assert run["utterances"] == run["finals"] == 12 and run["lost"] == run["errors"] == 0
    assert run["mismatched"] == 0
