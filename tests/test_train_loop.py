"""The training loop checkpoints when it is stopped and resumes where it stopped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgetok.train.batching import bucketed_batches, pad_stack  # noqa: E402
from edgetok.train.loop import LoopConfig, TrainingRun, cosine_with_warmup  # noqa: E402

TRAIN_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, itertools
    import torch
    from pathlib import Path
    from edgetok.train.loop import LoopConfig, TrainingRun

    model = torch.nn.Linear(4, 1)
    run = TrainingRun(Path(sys.argv[1]), model, LoopConfig(
        steps=100, warmup=2, checkpoint_every=1000, log_every=1, threads=1, bf16=False))
    x = torch.randn(8, 4)

    def loss_fn(_):
        if run.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return model(x).pow(2).mean(), {}

    run.train(itertools.repeat(None), loss_fn)
    """
)


def test_sigterm_checkpoints_and_resume_continues(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "KeyboardInterrupt" in result.stderr
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["step"] == 3

    model = torch.nn.Linear(4, 1)
    run = TrainingRun(tmp_path, model, LoopConfig(steps=5, warmup=2, threads=1, bf16=False))
    assert run.step == 3
    assert torch.equal(model.weight, state["model"]["weight"])
    x = torch.randn(8, 4)
    run.train(iter([None] * 10), lambda _: (model(x).pow(2).mean(), {}))
    assert run.step == 5
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 5


def test_cosine_schedule_warms_up_then_decays() -> None:
    values = [cosine_with_warmup(s, warmup=10, total=100) for s in range(100)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert values[-1] == pytest.approx(0.05, abs=0.01)


def test_bucketed_batches_cover_every_item_within_budget() -> None:
    lengths = np.random.default_rng(0).integers(1, 100, size=500)
    batches = bucketed_batches(lengths, max_frames=400, seed=1, bucket_size=100)
    seen: list[int] = []
    while len(seen) < len(lengths):
        batch = next(batches)
        assert max(lengths[batch]) * len(batch) <= 400
        seen += batch
    assert sorted(seen) == list(range(len(lengths)))


def test_pad_stack() -> None:
    out, lengths = pad_stack([np.array([1, 2, 3]), np.array([4])], pad_value=-1)
    assert out.tolist() == [[1, 2, 3], [4, -1, -1]]
    assert lengths.tolist() == [3, 1]


def test_bf16_autocast_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgetok.train.loop as loop

    for native in (True, False):
        monkeypatch.setattr(loop, "native_bf16", lambda native=native: native)
        assert LoopConfig().use_bf16 is native
        assert LoopConfig(bf16=False).use_bf16 is False
        assert LoopConfig(bf16=True).use_bf16 is True
