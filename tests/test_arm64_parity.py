"""tests/arm64/parity.py: the numbers of the arm64 parity report on made-up transcripts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "arm64_parity", Path(__file__).parent / "arm64" / "parity.py"
)
parity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parity)


def row(file: str, tokens: list[int], entropy: list[float], starts: list[int], text: str):
    return {"file": file, "text": text, "token_ids": tokens, "entropy": entropy, "starts": starts}


def write(directory: Path, config: str, rows: list[dict]) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{config}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "versions.json").write_text(json.dumps(parity.versions()))


def test_equal_runs_pass(tmp_path: Path) -> None:
    rows = [row("a.wav", [1, 2, 3], [0.5, 1.0, 2.0], [0, 2], "hi")]
    write(tmp_path / "ref", "fp32-ort", rows)
    write(tmp_path / "dut", "fp32-ort", rows)
    text, numbers, failures = parity.report(tmp_path / "ref", tmp_path / "dut", "a.wav")
    assert failures == [] and "PASS" in text
    result = numbers["configs"]["fp32-ort"]
    assert result["token_agreement"] == 1.0 and result["boundary_f1"] == 1.0
    assert result["entropy_max_abs_diff"] == 0.0 and result["transcripts_equal"] == 1


def test_differences_are_measured_and_fail(tmp_path: Path) -> None:
    ref = [row("a.wav", [1, 2, 3, 4], [0.5, 1.0, 2.0, 1.0], [0, 2], "hi")]
    dut = [row("a.wav", [1, 2, 9], [0.5, 1.25, 2.0], [0, 1, 2], "ho")]
    write(tmp_path / "ref", "fp32-ort", ref)
    write(tmp_path / "dut", "fp32-ort", dut)
    _, numbers, failures = parity.report(tmp_path / "ref", tmp_path / "dut", "a.wav")
    result = numbers["configs"]["fp32-ort"]
    assert result["token_agreement"] == pytest.approx(2 / 4)
    assert result["entropy_max_abs_diff"] == pytest.approx(0.25)
    assert result["boundary_f1"] == pytest.approx(2 * 2 / (2 + 3))
    assert len(failures) == 3  # agreement, F1, the sample's text


def test_int8_needs_99_percent(tmp_path: Path) -> None:
    tokens = list(range(200))
    starts = list(range(0, 200, 4))
    ref = [row("a.wav", tokens, [1.0] * 200, starts, "x")]
    dut = [row("a.wav", [*tokens[:-1], -1], [1.0] * 200, starts, "x")]
    write(tmp_path / "ref", "litert-int8-rpi", ref)
    write(tmp_path / "dut", "litert-int8-rpi", dut)
    _, numbers, failures = parity.report(tmp_path / "ref", tmp_path / "dut", "a.wav")
    assert numbers["configs"]["litert-int8-rpi"]["token_agreement"] == pytest.approx(0.995)
    assert failures == []
