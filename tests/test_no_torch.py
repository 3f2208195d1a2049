"""The device path never imports torch: run it in subprocesses where ``import torch`` fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgetok.cli import COMMAND_MODULES

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"
LIVE_MODULES = ["edgetok.audio", "edgetok.vad", "edgetok.sinks", "edgetok.pipeline"]
DEVICE_MODULES = [
    "edgetok",
    "edgetok.cli",
    *LIVE_MODULES,
    *[f"edgetok.cli.{m}" for m in COMMAND_MODULES],
]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120
    )


def test_blocking_really_blocks_torch() -> None:
    result = _run("import torch")
    assert result.returncode != 0
    assert "torch" in result.stderr


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_modules_import_without_torch(module: str) -> None:
    result = _run(
        f"import importlib; importlib.import_module({module!r})\n"
        "assert sys.modules.get('torch') is None, 'torch was imported'\n"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["--help", *[[name, "--help"] for name in COMMAND_MODULES]])
def test_cli_help_without_torch(command: str | list[str]) -> None:
    args = [command] if isinstance(command, str) else command
    result = _run(f"from edgetok.cli import main\nmain({args!r})")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_demo_runs_without_torch(tiny_bundle: Path, speech_dir: Path) -> None:
    """The whole live path: VAD, models, in-process server, client."""
    args = ["demo", "--fast", "--bundle", str(tiny_bundle), "--audio", str(speech_dir / "fox.wav")]
    result = _run(
        f"from edgetok.cli import main\nmain({args!r}, standalone_mode=False)\n"
        "assert sys.modules.get('torch') is None, 'torch was imported'\n"
    )
    assert result.returncode == 0, result.stderr
    assert "transcript:" in result.stdout


def test_default_bundle_demo_without_torch() -> None:
    """The README's main job on the shipped default bundle, on a device install's imports:
    its sample ("an exchange where grains are bought and sold", a held-out TTS voice)
    comes back as text that has most of those words."""
    from edgetok.bundle import BundleError, default_bundle_path

    try:
        default_bundle_path()
    except BundleError as exc:
        pytest.skip(str(exc))
    result = _run(
        "from edgetok.cli import main\nmain(['demo', '--fast', '--json'], standalone_mode=False)\n"
        "assert sys.modules.get('torch') is None, 'torch was imported'\n"
    )
    assert result.returncode == 0, result.stderr
    import json

    text = json.loads(result.stdout.strip().splitlines()[-1])["transcript"]
    words = set("an exchange where grains are bought and sold".split())
    assert len(words & set(text.split())) >= 5, text
