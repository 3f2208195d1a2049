"""``python -m edgetok.bench.load``: N simulated devices against a real ``edgetok serve``, the
single-process server and the Ray Serve deployment (``--ray``) in one run.

Each device is a real protocol client (``edgetok.client.Client``) on loopback. It speaks
clips at real time, open loop: it waits a clip's duration (the person talking), then
sends the clip's segments as a device's pipeline does at the end of an utterance, and
starts the next clip after ``--gap`` seconds whether or not the text has come back. The
clips are the default bundle's sample and, when the corpus is in the cache, test split
utterances; their segment vectors come from the device pipeline once, before the run.

Per utterance it measures end of speech (the last frame sent) -> final text; per run
p50/p95/p99, utterances/s and audio seconds decoded per wall second, errors, frames
resent, reconnects and the server's peak RSS (the front plus Ray's replicas). Utterances
whose final never came are *lost*; finals beyond one per utterance (the server's count)
*duplicated*; finals that differ from the clip's offline decode are counted as
*mismatched*. ``--kill-replicas K`` SIGKILLs a decoder replica K times during each Ray
run; ``--restart-front K`` stops the server and starts it again K times in each run (a
device sends again what the old process lost, as ``RemoteSink`` does). Everything is
bounded: each device speaks ``--utterances`` clips, and a run gives up waiting
``--drain-s`` after its last utterance. Run it under ``nice``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgetok.bundle import load_bundle
from edgetok.client import Client, RemoteError
from edgetok.protocol import MAX_SEGMENTS, frame_bytes, wire_identity

from .attack.served import Served, served

__all__ = ["Clip", "RunResult", "load_clips", "main", "run_load"]

_MAX_FRAME_BYTES = 256 * 1024
"""``edgetok serve``'s default ``--max-frame-bytes``."""
_REPLICA_TITLE = b"ServeReplica:edgetok:"
"""How Ray titles a decoder replica's process (``edgetok.serve_ray``)."""


@dataclass(frozen=True)
class Clip:
    """One utterance as a device sends it, with the text the plain decoder writes."""

    name: str
    duration_s: float
    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    """(starts, lengths, vectors) per frame, each within the default frame size."""
    text: str


def load_clips(bundle_path: Path, count: int) -> list[Clip]:
    """The bundle's ``sample.wav`` and up to ``count - 1`` clips of the cached test split
    ($EDGETOK_CACHE/corpus/v1/test.jsonl), through the device pipeline and the decoder."""
    import soundfile as sf
    import soxr

    from edgetok.stages import Transcriber

    bundle = load_bundle(bundle_path)
    transcriber = Transcriber(bundle)
    paths = [bundle.path_of("decoder_step").parent / "sample.wav"]
    corpus = _cache() / "corpus" / "v1"
    if (corpus / "test.jsonl").is_file():
        with open(corpus / "test.jsonl", encoding="utf-8") as lines:
            for line in lines:
                if len(paths) >= count:
                    break
                paths.append(corpus / json.loads(line)["path"])
    dim = wire_identity(bundle).dim
    per_segment = frame_bytes(1, dim, "fp16") - frame_bytes(0, dim, "fp16")
    step = min(MAX_SEGMENTS, (_MAX_FRAME_BYTES - frame_bytes(0, dim, "fp16")) // per_segment)
    clips = []
    for path in paths[:count]:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != transcriber.sample_rate:
            audio = soxr.resample(audio, rate, transcriber.sample_rate).astype(np.float32)
        transcript = transcriber(audio)
        starts = transcript.starts
        lengths = np.diff(np.append(starts, len(transcript.tokens)))
        frames = [
            (starts[i : i + step], lengths[i : i + step], transcript.vectors[i : i + step])
            for i in range(0, len(starts), step)
        ]
        clips.append(Clip(path.stem, transcript.duration_s, frames, transcript.text))
    return clips


def _cache() -> Path:
    return Path(os.environ.get("EDGETOK_CACHE", Path.home() / ".cache" / "edgetok"))


@dataclass
class RunResult:
    """One run: a server kind at N devices."""

    server: str
    devices: int
    utterances: int = 0
    finals: int = 0
    lost: int = 0
    mismatched: int = 0
    errors: int = 0
    resent_frames: int = 0
    reconnects: int = 0
    replica_kills: int = 0
    front_restarts: int = 0
    resent_utterances: int = 0
    """Utterances sent again because a restarted front had lost them."""
    wall_s: float = 0.0
    audio_s: float = 0.0
    latency_s: dict[str, float] = field(default_factory=dict)
    utterances_per_s: float = 0.0
    audio_s_per_s: float = 0.0
    peak_rss_mib: float = 0.0
    error_messages: list[str] = field(default_factory=list)


class _Front:
    """The server under test (``served``) on a port of its own, which the harness can
    stop and start again: devices reconnect to the same address."""

    def __init__(self, bundle: Path, token: str, options: list[str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._args = (bundle, token, *options, "--port", str(port))  # the last --port wins
        self.lines: list[str] = []
        """The log of every server process so far, in order."""
        self.finals = 0
        """Finals sent by the server processes that have stopped."""
        self.current: Served

    async def start(self) -> None:
        self._context = served(*self._args)
        self.current = await self._context.__aenter__()

    async def stop(self) -> None:
        await self._context.__aexit__(None, None, None)
        self.lines += self.current.lines
        self.finals += _server_finals(self.current.lines) or 0

    @property
    def url(self) -> str:
        return self.current.url

    def rss_mib(self) -> float:
        return self.current.rss_mib()


async def _device(
    index: int,
    front: _Front,
    token: str,
    identity: Any,
    clips: list[Clip],
    plan: _Plan,
    result: RunResult,
    latencies: list[float],
) -> None:
    """One device: ``plan.utterances`` clips, spoken at real time, open loop."""
    pending: list[asyncio.Task[None]] = []
    uids = iter(range(1 << 30))
    async with Client(front.url, token, identity, retry_for_s=plan.drain_s) as client:
        await asyncio.sleep(plan.offset(index))

        async def send(clip: Clip) -> int:
            uid = next(uids)
            for i, frame in enumerate(clip.frames):
                await client.send(uid, *frame, end=i == len(clip.frames) - 1)
            return uid

        async def wait_final(uid: int, clip: Clip, ended: float) -> None:
            while True:
                try:
                    text = await asyncio.wait_for(client.result(uid), plan.drain_s)
                    break
                except RemoteError as exc:
                    if exc.code == "session_lost":  # a restarted front: send it again,
                        result.resent_utterances += 1  # as edgetok's RemoteSink does
                        uid = await send(clip)
                        continue
                    failure: BaseException = exc
                except (asyncio.TimeoutError, ConnectionError) as exc:
                    failure = exc
                result.errors += not isinstance(failure, asyncio.TimeoutError)
                result.error_messages.append(f"device {index} utterance {uid}: {failure!r}"[:200])
                return
            latencies.append(time.monotonic() - ended)
            result.finals += 1
            result.audio_s += clip.duration_s
            result.mismatched += text != clip.text

        for k in range(plan.utterances):
            clip = clips[(index + k) % len(clips)]
            await asyncio.sleep(clip.duration_s)  # the person speaking
            uid = await send(clip)
            result.utterances += 1
            pending.append(asyncio.create_task(wait_final(uid, clip, time.monotonic())))
            await asyncio.sleep(plan.gap_s)
        await asyncio.gather(*pending)
        result.resent_frames += client.stats.resent_frames
        result.reconnects += client.stats.reconnects


@dataclass(frozen=True)
class _Plan:
    utterances: int
    gap_s: float
    drain_s: float
    spread_s: float
    """Devices start spread evenly over this many seconds."""
    devices: int

    def offset(self, index: int) -> float:
        return self.spread_s * index / self.devices


def _replica_pids() -> list[int]:
    """Processes of this machine titled as an edgetok decoder replica."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _REPLICA_TITLE in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _sample_rss(front: _Front, peak: list[float]) -> None:
    """Keep ``peak[0]`` at the front's RSS plus every replica's, until cancelled."""
    while True:
        total = front.rss_mib() + sum(_rss_mib(pid) for pid in _replica_pids())
        peak[0] = max(peak[0], total)
        await asyncio.sleep(0.25)


async def _kill_replicas(times: int, every_s: float, result: RunResult) -> None:
    """SIGKILL one decoder replica every ``every_s`` seconds, ``times`` times; a kill
    waits until Ray has a replica running again."""
    for _ in range(times):
        await asyncio.sleep(every_s)
        while not (pids := _replica_pids()):
            await asyncio.sleep(0.2)
        os.kill(pids[0], signal.SIGKILL)
        result.replica_kills += 1


async def _restart_front(front: _Front, times: int, every_s: float, result: RunResult) -> None:
    """Stop the front (SIGTERM) and start it again every ``every_s`` seconds."""
    for _ in range(times):
        await asyncio.sleep(every_s)
        await front.stop()
        await front.start()
        result.front_restarts += 1


async def run_load(
    front: _Front,
    token: str,
    identity: Any,
    clips: list[Clip],
    plan: _Plan,
    server: str,
    kills: int = 0,
    restarts: int = 0,
) -> RunResult:
    """``plan.devices`` devices against the running server."""
    result = RunResult(server=server, devices=plan.devices)
    latencies: list[float] = []
    peak = [0.0]
    sampler = asyncio.create_task(_sample_rss(front, peak))
    speaking = plan.spread_s + plan.utterances * (
        sum(c.duration_s for c in clips) / len(clips) + plan.gap_s
    )
    killer = asyncio.create_task(
        _kill_replicas(kills, speaking / (kills + 1), result) if kills else asyncio.sleep(0)
    )
    restarter = asyncio.create_task(
        _restart_front(front, restarts, speaking / (restarts + 1), result)
    )
    start = time.monotonic()
    devices = [
        _device(i, front, token, identity, clips, plan, result, latencies)
        for i in range(plan.devices)
    ]
    outcomes = await asyncio.gather(*devices, return_exceptions=True)
    result.wall_s = time.monotonic() - start
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors += 1
            result.error_messages.append(repr(outcome)[:200])
    killer.cancel()
    sampler.cancel()
    await restarter  # done by now: restarts fall within the speaking time
    result.lost = result.utterances - result.finals
    if latencies:
        for q in (50, 95, 99):
            result.latency_s[f"p{q}"] = round(float(np.percentile(latencies, q)), 3)
    result.utterances_per_s = round(result.finals / result.wall_s, 3)
    result.audio_s_per_s = round(result.audio_s / result.wall_s, 3)
    result.peak_rss_mib = round(peak[0], 1)
    result.wall_s, result.audio_s = round(result.wall_s, 2), round(result.audio_s, 2)
    return result


def _requests_resent(lines: list[str]) -> int:
    """Decode requests the front sent again after a replica died (``serve_ray`` logs each)."""
    return sum("sending the request again" in line for line in lines)


def _failures(lines: list[str]) -> list[str]:
    """The server's log lines about failed or resent decodes, for a report."""
    return [line.strip()[:300] for line in lines if "request" in line or "Error" in line][-20:]


def _server_finals(lines: list[str]) -> int | None:
    """The finals the server sent in all, from its ``stopped: ServerStats(...)`` line."""
    for line in reversed(lines):
        if line.startswith("stopped:") and (match := re.search(r"finals=(\d+)", line)):
            return int(match.group(1))
    return None


async def _serve_and_load(
    bundle: Path,
    clips: list[Clip],
    counts: list[int],
    plan: dict[str, Any],
    server: str,
    options: list[str],
    kills: int,
    restarts: int,
) -> tuple[list[RunResult], int | None, int]:
    """One server of ``server`` kind, each N of ``counts`` in turn; then its finals count
    and the decode requests it sent again."""
    token = secrets.token_urlsafe(16)
    identity = wire_identity(load_bundle(bundle))
    results = []
    connections = str(max(counts) + 4)
    front = _Front(bundle, token, ["--max-connections", connections, *options])
    await front.start()
    try:
        for n in counts:
            plan_n = _Plan(devices=n, **plan)
            run = await run_load(front, token, identity, clips, plan_n, server, kills, restarts)
            results.append(run)
            _echo(run)
    finally:
        await front.stop()
    for line in _failures(front.lines):
        click.echo(f"  server: {line}", err=True)
    return results, front.finals, _requests_resent(front.lines)


def _echo(run: RunResult) -> None:
    click.echo(
        f"{run.server:6s} N={run.devices:3d}: {run.finals}/{run.utterances} finals "
        f"({run.lost} lost, {run.mismatched} mismatched, {run.errors} errors, "
        f"{run.replica_kills} kills, {run.front_restarts} front restarts, "
        f"{run.resent_utterances} utterances sent again), {run.utterances_per_s} utt/s, "
        f"{run.audio_s_per_s} audio s/s, latency {run.latency_s}, "
        f"peak RSS {run.peak_rss_mib} MiB, {run.resent_frames} frames resent",
        err=True,
    )


@click.command()
@click.option("--bundle", type=click.Path(exists=True, path_type=Path), default=None)
@click.option(
    "--devices", default="1,8,32,64", show_default=True, help="N values, comma-separated."
)
@click.option(
    "--servers",
    default="plain,ray",
    show_default=True,
    type=click.Choice(["plain", "ray", "plain,ray", "ray,plain"]),
)
@click.option("--utterances", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--clips", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--gap", default=1.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--spread", default=4.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--drain-s", default=180.0, show_default=True, type=click.FloatRange(min=1))
@click.option(
    "--replicas", default="2:auto", show_default=True, help="Ray replicas MIN:MAX (edgetok serve)."
)
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-wait-ms", default=20.0, show_default=True)
@click.option("--kill-replicas", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--address", default=None, help="Ray cluster for --ray (default: a local one).")
@click.option(
    "--restart-front",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Stop and start the server again this many times in each run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def main(
    bundle: Path | None,
    devices: str,
    servers: str,
    utterances: int,
    clips: int,
    gap: float,
    spread: float,
    drain_s: float,
    replicas: str,
    max_batch: int,
    batch_wait_ms: float,
    kill_replicas: int,
    address: str | None,
    restart_front: int,
    as_json: bool,
) -> None:
    """Load-test edgetok serve with N simulated devices; exit 1 if an utterance is lost
    or duplicated."""
    from edgetok.bundle import default_bundle_path

    bundle = bundle or default_bundle_path()
    counts = [int(n) for n in devices.split(",")]
    loaded = _timed_clips(bundle, clips)
    plan = {"utterances": utterances, "gap_s": gap, "drain_s": drain_s, "spread_s": spread}
    ray_options = [
        "--ray",
        "--replicas",
        replicas,
        "--max-batch",
        str(max_batch),
        "--batch-wait-ms",
        str(batch_wait_ms),
        *(["--address", address] if address else []),
    ]
    report: dict[str, Any] = {
        "command": " ".join(["python -m edgetok.bench.load", *sys.argv[1:]]),
        "clips": len(loaded),
        "load_average": os.getloadavg(),
        "runs": [],
        "server_finals": {},
        "requests_resent": {},
    }
    failed = False
    for server in servers.split(","):
        options = ray_options if server == "ray" else []
        kills = kill_replicas if server == "ray" else 0
        runs, finals, resent = asyncio.run(
            _serve_and_load(bundle, loaded, counts, plan, server, options, kills, restart_front)
        )
        report["runs"] += [asdict(run) for run in runs]
        report["server_finals"][server] = finals
        report["requests_resent"][server] = resent
        sent = sum(run.utterances for run in runs)
        duplicated = (finals or 0) - sum(run.finals for run in runs)
        lost = sum(run.lost for run in runs)
        click.echo(
            f"{server}: {lost} lost, {duplicated} duplicated of {sent}; "
            f"{resent} decode requests sent again after a replica died",
            err=True,
        )
        failed |= lost > 0 or duplicated != 0
    report["load_average_after"] = os.getloadavg()
    if as_json:
        click.echo(json.dumps(report, indent=1))
    sys.exit(1 if failed else 0)


def _timed_clips(bundle: Path, count: int) -> list[Clip]:
    start = time.monotonic()
    clips = load_clips(bundle, count)
    click.echo(
        f"{len(clips)} clips ({sum(c.duration_s for c in clips):.1f} s of audio) ready in "
        f"{time.monotonic() - start:.1f} s",
        err=True,
    )
    return clips


if __name__ == "__main__":
    main()
