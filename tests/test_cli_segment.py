"""``edgetok segment``: through click's CliRunner and as ``python -m edgetok``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetok.cli import main
from edgetok.segment import boundaries

REPO = Path(__file__).resolve().parents[1]
KEYS = {
    "starts",
    "segments_per_s",
    "tokens",
    "global_threshold",
    "relative_threshold",
    "min_len",
    "max_len",
}


@pytest.fixture
def ramp(tmp_path) -> Path:
    path = tmp_path / "ramp.npy"
    np.save(path, np.arange(10.0))  # 10 tokens; at 10 tokens/s: 1 second
    return path


@pytest.fixture
def noisy(tmp_path) -> Path:
    path = tmp_path / "noisy.npy"
    np.save(path, np.random.default_rng(0).gamma(2.0, 1.0, 1000).astype(np.float32))
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, ["segment", *map(str, args)])


def test_json_with_thresholds(noisy):
    res = invoke(noisy, "--global-threshold", 3.0, "--relative-threshold", 1.5, "--min-len", 2,
                 "--max-len", 9, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert set(obj) == KEYS
    expected = boundaries(np.load(noisy), 3.0, 1.5, 2, 9)
    assert obj["starts"] == expected.tolist()
    assert obj["tokens"] == 1000
    assert obj["segments_per_s"] == pytest.approx(len(expected) / 20.0)  # 1000 tokens at 50/s
    assert (obj["global_threshold"], obj["relative_threshold"]) == (3.0, 1.5)
    assert (obj["min_len"], obj["max_len"]) == (2, 9)


def test_json_target_hz_solves_threshold(ramp):
    res = invoke(ramp, "--target-hz", 5, "--token-rate", 10, "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    # 5 segments in 1 s: values 6..9 cut -> threshold midway in [5, 6)
    assert obj["global_threshold"] == 5.5
    assert obj["relative_threshold"] is None
    assert obj["starts"] == [0, 6, 7, 8, 9]
    assert obj["segments_per_s"] == 5.0
    assert obj["max_len"] is None


def test_target_hz_relative_rule_with_fixed_global(noisy):
    res = invoke(noisy, "--target-hz", 12, "--rule", "relative", "--global-threshold", 4,
                 "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["global_threshold"] == 4.0
    assert abs(obj["segments_per_s"] - 12.0) <= 0.05  # 1000 tokens: steps of 0.05 Hz
    assert obj["starts"] == boundaries(np.load(noisy), 4.0, obj["relative_threshold"]).tolist()


def test_no_threshold_only_max_len(ramp):
    res = invoke(ramp, "--max-len", 4, "--json")
    assert json.loads(res.stdout)["starts"] == [0, 4, 8]
    res = invoke(ramp, "--json")
    assert json.loads(res.stdout)["starts"] == [0]


def test_human_summary(ramp):
    res = invoke(ramp, "--target-hz", 5, "--token-rate", 10)
    assert res.exit_code == 0, res.output
    assert "10 tokens" in res.output
    assert "5 segments, 5.000 per second" in res.output
    assert "solved for 5 Hz" in res.output
    assert "starts: 0 6 7 8 9" in res.output


def test_empty_sequence(tmp_path):
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros(0, np.float32))
    res = invoke(path, "--global-threshold", 1, "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["starts"] == [] and obj["tokens"] == 0 and obj["segments_per_s"] == 0.0
    assert "no tokens" in invoke(path).output


def _write(tmp_path: Path, name: str, kind: str) -> Path:
    path = tmp_path / name
    if kind == "2d":
        np.save(path, np.ones((2, 3)))
    elif kind == "int":
        np.save(path, np.arange(5))
    elif kind == "nan":
        np.save(path, np.array([1.0, np.nan]))
    elif kind == "npz":
        np.savez(path, a=np.ones(3))
    elif kind == "text":
        path.write_text("not numpy\n")
    elif kind == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "match"),
    [
        ("two_d.npy", "2d", r"shape \(2, 3\)"),
        ("ints.npy", "int", "dtype int64"),
        ("nans.npy", "nan", "non-finite entropy nan at index 1"),
        ("several.npz", "npz", ".npz archive"),
        ("junk.npy", "text", "cannot read as .npy"),
        ("objects.npy", "pickle", "cannot read as .npy"),
    ],
)
def test_bad_files(tmp_path, name, kind, match):
    path = _write(tmp_path, name, kind)
    res = invoke(path, "--global-threshold", 1)
    assert res.exit_code == 2, res.output
    assert name in res.output
    assert re.search(match, res.output)


def test_missing_file(tmp_path):
    res = invoke(tmp_path / "nope.npy")
    assert res.exit_code == 2
    assert "nope.npy" in res.output and "does not exist" in res.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--target-hz", 15, "--global-threshold", 2], "give one or the other"),
        (["--target-hz", 15, "--rule", "relative", "--relative-threshold", 2], "one or the other"),
        (["--min-len", 5, "--max-len", 3], "--min-len (5) must be <= --max-len (3)"),
        (["--min-len", 0], "--min-len"),
        (["--global-threshold", "nan"], "must be finite"),
        (["--relative-threshold", "inf"], "must be finite"),
        (["--target-hz", 0], "--target-hz"),
        (["--token-rate", -1], "--token-rate"),
        (["--target-hz", 40, "--min-len", 2], "reachable range is [0.05, 25] Hz"),
    ],
)
def test_usage_errors(noisy, args, match):
    res = invoke(noisy, *args)
    assert res.exit_code == 2, res.output
    assert match in res.output


def test_unreachable_names_file(noisy):
    res = invoke(noisy, "--target-hz", 40, "--min-len", 2)
    assert "noisy.npy" in res.output


def _python_m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgetok", "segment", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_python_m_json(noisy):
    proc = _python_m(noisy, "--target-hz", 15, "--min-len", 2, "--max-len", 10, "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert set(obj) == KEYS
    assert abs(obj["segments_per_s"] - 15.0) <= 0.05
    assert (
        obj["starts"] == boundaries(np.load(noisy), obj["global_threshold"], None, 2, 10).tolist()
    )


def test_python_m_help_and_error(tmp_path):
    proc = _python_m("--help")
    assert proc.returncode == 0
    assert "--target-hz" in proc.stdout and "ENTROPY.npy" in proc.stdout
    bad = _write(tmp_path, "two_d.npy", "2d")
    proc = _python_m(bad)
    assert proc.returncode == 2
    assert "two_d.npy" in proc.stderr
