"""``python -m edgetok.bench.decode_batch``: what one batched decode costs against batch size.

The same utterances (``bench.load``'s clips, cycled) are decoded by
``WhisperDecoderStage.decode_batch`` over the masked step graph, in batches of each size,
on one thread. Per size it prints the CPU seconds per utterance, the step graph's share
and its cost per run, and utterances per CPU second as a ratio to batch 1: the ceiling
of what Ray's batching can add on this machine. CPU time (``time.process_time``) is
used so that other processes on a shared machine count less; wall time is printed too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgetok.bundle import default_bundle_path, load_bundle
from edgetok.runtime import Session, SessionOptions

from .load import load_clips


class _TimedSession:
    """A session that adds up the CPU seconds and rows of its runs."""

    def __init__(self, session: Session) -> None:
        self.session, self.inputs, self.outputs = session, session.inputs, session.outputs
        self.cpu_s, self.runs, self.rows = 0.0, 0, 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.process_time()
        out = self.session.run(feeds)
        self.cpu_s += time.process_time() - start
        self.runs += 1
        self.rows += len(feeds["text"])
        return out


@click.command()
@click.option("--bundle", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--sizes", default="1,2,4,8,16,32", show_default=True)
@click.option("--utterances", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--clips", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
def main(bundle: Path | None, sizes: str, utterances: int, clips: int, as_json: bool) -> None:
    """Per-batch cost of the batched decoder against batch size, one thread."""
    from edgetok.masked_step import open_masked_step
    from edgetok.whisper_decoding import WhisperDecoderStage

    path = bundle or default_bundle_path()
    loaded = load_bundle(path)
    vectors = [np.concatenate([f[2] for f in clip.frames]) for clip in load_clips(path, clips)]
    batch = [vectors[i % len(vectors)] for i in range(utterances)]
    options = SessionOptions(threads=1)
    plain = WhisperDecoderStage.from_bundle(loaded, options)
    step = _TimedSession(open_masked_step(loaded, options))
    stage = WhisperDecoderStage(plain.context, step, plain.vocab)
    stage.decode_batch(batch[:2])  # warm up
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    for size in [int(s) for s in sizes.split(",")]:
        step.cpu_s, step.runs, step.rows = 0.0, 0, 0
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(0, len(batch), size):
            stage.decode_batch(batch[i : i + size])
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rows.append(
            {
                "batch": size,
                "cpu_s_per_batch": round(cpu / -(-len(batch) // size), 4),
                "cpu_ms_per_utterance": round(1000 * cpu / len(batch), 1),
                "step_share": round(step.cpu_s / cpu, 3),
                "step_ms_per_run": round(1000 * step.cpu_s / step.runs, 2),
                "rows_per_run": round(step.rows / step.runs, 1),
                "utterances_per_cpu_s": round(len(batch) / cpu, 2),
                "wall_s": round(wall, 2),
            }
        )
    for row in rows:
        row["x_batch_1"] = round(row["utterances_per_cpu_s"] / rows[0]["utterances_per_cpu_s"], 2)
    report = {
        "command": " ".join(["python -m edgetok.bench.decode_batch", *sys.argv[1:]]),
        "utterances": len(batch),
        "distinct_clips": len(vectors),
        "segments_mean": round(float(np.mean([len(v) for v in batch])), 1),
        "load_average": [load_before, os.getloadavg()],
        "rows": rows,
    }
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(f"{len(batch)} utterances, load average {load_before} -> {os.getloadavg()}")
    click.echo("batch  cpu ms/utt  step share  step ms/run  rows/run  utt/cpu s  x batch 1")
    for r in rows:
        click.echo(
            f"{r['batch']:5d}  {r['cpu_ms_per_utterance']:10.1f}  {r['step_share']:10.3f}  "
            f"{r['step_ms_per_run']:11.2f}  {r['rows_per_run']:8.1f}  "
            f"{r['utterances_per_cpu_s']:9.2f}  {r['x_batch_1']:9.2f}"
        )


if __name__ == "__main__":
    main()
