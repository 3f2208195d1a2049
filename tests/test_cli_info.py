"""``edgetok info`` on the tiny bundle, through the real CLI group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.make_tiny_bundle import make_tiny_bundle

import edgetok.bundle
from edgetok.bundle import V1_ROLES, load_bundle, sha256_file
from edgetok.cli import main
from edgetok.runtime import available_backends


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "tiny")


def info(*args: str):
    return CliRunner().invoke(main, ["info", *args])


def test_text_summary(tiny: Path) -> None:
    result = info(str(tiny))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:8] == [
        "tiny: tiny real ONNX models for tests",
        f"  manifest   {tiny / 'bundle.toml'}",
        "  bundle     schema 1, target default, created 2025-01-01T00:00:00Z",
        "  hashes     verified (5 files)",
        "  audio      16000 Hz; log-mel 80 bins 20-8000 Hz, n_fft 400, window 400, hop 160, "
        "floor 1e-10",
        "  tokens     50 Hz, vocab 16, codebook codebook.npy (640 B)",
        "  segmenter  global 2.5, relative off, 1-16 tokens, target 15 Hz",
        "  backends   "
        + ", ".join(
            f"{name} ({reason or 'available'})" for name, reason in available_backends().items()
        ),
    ]
    tokenizer = next(line for line in lines if line.startswith("  tokenizer "))
    size = (tiny / "tokenizer.onnx").stat().st_size
    assert tokenizer.split() == ["tokenizer", "tokenizer.onnx", f"{size / 1000:.1f}", "kB"] + [
        "644",  # 80 x 8 weights + 4 slice constants
        "fp32",
        "onnxruntime",
    ]
    assert "              in  mask bool [N, L]" in lines
    assert "              out logits float32 [B, T, 16]" in lines
    total = sum((tiny / f"{role}.onnx").stat().st_size for role in V1_ROLES)
    assert lines[-9].split() == ["total", f"{total / 1000:.1f}", "kB"]
    assert lines[-8:] == [
        "",
        "  eval",
        "    wer.dense = 0.5",
        "    wer.entropy = 0.25",
        "",
        "  training",
        "    corpus = none",
        "    steps = 0",
    ]


def test_json_report(tiny: Path) -> None:
    result = info(str(tiny / "bundle.toml"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["path"] == str(tiny / "bundle.toml")
    assert report["verified"] is True
    assert report["manifest"] == load_bundle(tiny).to_dict()
    assert report["backends"] == available_backends()
    assert report["files"]["codebook"] == {"file": "codebook.npy", "bytes": 640, "params": None}
    for role in ("tokenizer", "entropy_lm", "aggregator", "decoder"):
        path = tiny / f"{role}.onnx"
        assert report["files"][role]["file"] == path.name
        assert report["files"][role]["bytes"] == path.stat().st_size
    assert report["files"]["decoder"]["params"] == 8 * 31 + 31 * 31 + 1


def test_bad_hash_fails_unless_no_verify(tiny: Path) -> None:
    expected = sha256_file(tiny / "decoder.onnx")
    with open(tiny / "decoder.onnx", "ab") as file:
        file.write(b"\0")
    result = info(str(tiny))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tiny / 'bundle.toml'} [models.decoder] sha256: file decoder.onnx has sha256 "
        f"{sha256_file(tiny / 'decoder.onnx')}, manifest says {expected}\n"
    )
    result = info(str(tiny), "--no-verify")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  hashes     not verified" in lines
    decoder = next(line for line in lines if line.startswith("  decoder "))
    assert decoder.split()[-3:] == ["-", "fp32", "onnxruntime"]  # no parameter count


def test_missing_bundle(tmp_path: Path) -> None:
    result = info(str(tmp_path))
    assert result.exit_code == 1
    assert (
        result.output == f"Error: no bundle at {tmp_path}: {tmp_path / 'bundle.toml'} not found\n"
    )


def test_default_bundle() -> None:
    default = Path(edgetok.bundle.__file__).resolve().parent / "models" / "default"
    result = info("--no-verify")
    if (default / "bundle.toml").is_file():
        assert result.exit_code == 0, result.output
        assert f"  manifest   {default / 'bundle.toml'}" in result.output.splitlines()
    else:
        assert result.exit_code == 1
        assert result.output.startswith("Error: the default bundle has not been built: ")
