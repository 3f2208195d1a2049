"""bench.attack at reduced size: each attack of issue 18 against a real ``edgetok serve``
(the tiny bundle) on loopback, with the stock client and raw websockets. Assertions are
on counts, bytes and outcomes, never on speed (the full-size figures come from
``python -m edgetok.bench.attack``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgetok.bench.attack import attacks
from edgetok.bench.attack.payloads import Payloads


@pytest.fixture(scope="module")
def payloads(tiny_bundle: Path) -> Payloads:
    return Payloads.for_bundle(tiny_bundle)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 240))


def test_memory_attack_is_held_to_the_session_and_server_budgets(
    tiny_bundle: Path, payloads: Payloads
) -> None:
    """The tiny bundle's longest utterance holds 1,501 x 8 x 4 bytes (48 KB): a 0.25 MiB
    session budget takes 5 of the 16 each hostile session opens."""
    budgets = ("--session-budget-mib", "0.25", "--server-budget-mib", "0.75")
    result = run(
        attacks.memory(tiny_bundle, payloads, sessions=6, at_once=3, control=False, options=budgets)
    )
    assert result["closed_with"] == {"over_budget": 6}
    assert 0.15 < result["acked_mib_max_session"] <= 0.25
    assert result["too_long_utterance"] == "limit_exceeded"
    assert result["canary_ok"]


def test_a_decode_hog_leaves_another_client_its_texts(
    tiny_bundle: Path, payloads: Payloads
) -> None:
    result = run(attacks.hog(tiny_bundle, payloads, samples=5))
    assert result["samples"] == 5 and result["hog_finals"] >= 1
    assert result["p99_loaded_s"] > 0 and result["p99_alone_s"] > 0


def test_idle_and_unauthenticated_connections_do_not_lock_a_client_out(
    tiny_bundle: Path, payloads: Payloads
) -> None:
    """4 connections idle after their hello fill the server; 40 never send a request,
    8 allowed: the 32 oldest are closed, and one more for the client's arrival."""
    options = ("--max-connections", "4", "--max-unauthenticated", "8", "--idle-yield", "0.5")
    result = run(
        attacks.connections(tiny_bundle, payloads, idle=4, unauthenticated=40, options=options)
    )
    assert result["client_ok"], result
    assert result["unauthenticated_connected"] == 40
    assert result["unauthenticated_closed_by_server"] == 33
    assert result["idle_closed_for_the_client"] == 1


def test_running_out_of_file_descriptors_is_one_log_line(
    tiny_bundle: Path, payloads: Payloads
) -> None:
    result = run(attacks.fd(tiny_bundle, payloads, connections=120, spare_fds=16))
    assert result["connected"] > result["fd_limit"] - 16  # some had to wait for a descriptor
    assert (result["log_lines"], result["tracebacks"]) == (1, 0)
    assert result["client_ok_after"]


def test_fuzzed_frames_leave_no_traceback_and_the_canary_correct(
    tiny_bundle: Path, payloads: Payloads
) -> None:
    result = run(attacks.fuzz(tiny_bundle, payloads, frames=300, workers=4))
    assert sum(result["outcomes"].values()) == 300
    assert result["tracebacks"] == 0 and result["internal_errors_1011"] == 0
    assert result["canary"].get("ok", 0) >= 1 and set(result["canary"]) == {"ok"}


def test_seventeen_utterances_back_to_back_all_succeed(
    tiny_bundle: Path, payloads: Payloads
) -> None:
    result = run(attacks.back_to_back(tiny_bundle, payloads))
    assert (result["utterances"], result["succeeded"]) == (17, 17)


def test_a_resume_with_a_foreign_session_id_is_refused(
    tiny_bundle: Path, payloads: Payloads
) -> None:
    result = run(attacks.resume(tiny_bundle, payloads))
    assert result["refused"] == {"session_taken/4010": 2}
    assert result["owner_kept_its_session"]


def test_the_server_decoder_loads_without_the_segmenter() -> None:
    """What ``edgetok serve`` loads for the shipped bundle leaves Numba, llvmlite and
    SciPy out (59 MiB the server would hold for nothing)."""
    code = (
        "import sys\n"
        "import edgetok.cli.serve, edgetok.server\n"
        "from edgetok.bundle import default_bundle_path, load_bundle\n"
        "from edgetok.stages import server_decoder\n"
        "server_decoder(load_bundle(default_bundle_path()))\n"
        "print(sorted({'numba', 'llvmlite', 'scipy'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_decode_memory_bench_compares_settings_on_the_same_texts() -> None:
    """``python -m edgetok.bench.decode_memory`` at reduced size: the shipped decoder in a
    child per setting; the settings change memory, never the text (no speed asserted)."""
    command = [sys.executable, "-m", "edgetok.bench.decode_memory", "--rounds", "1"]
    command += ["--repeats", "1", "--long-s", "4", "--json"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [row["setting"] for row in report["rows"]] == ["stock", "serve"]
    assert all(row["same_text"] for row in report["rows"])
    assert all(0 < row["rss_loaded_mib"] <= row["rss_peak_mib"] for row in report["rows"])
    assert report["rows"][0]["time_ratio"] == 1.0 and report["rows"][1]["time_ratio"] > 0
