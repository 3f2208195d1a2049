"""The attacks of issue 18, each against its own ``edgetok serve``; each returns a dict of
figures with ``pass`` (the issue's "Done when" target met)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from edgetok.bench.attack.payloads import Frame, Payloads, fuzz_frames, random_binary, random_json
from edgetok.bench.attack.served import Served, served
from edgetok.client import Client, RemoteError
from edgetok.protocol import Ack, Error, Ready, parse_message

__all__ = ["back_to_back", "connections", "fd", "fuzz", "hog", "memory", "resume"]

TOKEN = "attack-" + secrets.token_hex(8)
_MIB = 1 << 20


async def _raw(srv: Served, payloads: Payloads, session: str, dtype: str) -> ClientConnection:
    """A websocket with the token that has said hello and got ``ready``."""
    ws = await connect(
        srv.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, compression=None
    )
    await ws.send(payloads.hello(session, dtype).to_json())
    reply = parse_message(await ws.recv())
    if not isinstance(reply, Ready):
        raise RuntimeError(f"no ready: {reply}")
    return ws


async def _open_sockets(
    srv: Served, count: int, timeout_s: float = 2.0
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` TCP connections to the server that send nothing (those not set up within
    ``timeout_s`` left out: the listen queue is full)."""

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            return await asyncio.wait_for(asyncio.open_connection(*srv.address), timeout_s)
        return None

    opened = await asyncio.gather(*(one() for _ in range(count)))
    return [pair for pair in opened if pair is not None]


async def _replies(ws: ClientConnection) -> list[Any]:
    """Every message until the server closes the connection."""
    messages = []
    with contextlib.suppress(ConnectionClosed):
        async for text in ws:
            messages.append(parse_message(text))
    return messages


async def _transcribe(client: Client, uid: int, frames: list[Frame]) -> str:
    for i, frame in enumerate(frames):
        await client.send(uid, *frame, end=i == len(frames) - 1)
    return await client.result(uid)


async def _canary(srv: Served, payloads: Payloads) -> bool:
    """A well-behaved client gets the same text twice for the same utterance."""
    frames = payloads.utterance(7, 20)
    async with Client(srv.url, TOKEN, payloads.identity) as client:
        return await _transcribe(client, 0, frames) == await _transcribe(client, 1, frames)


# Memory


async def _hostile_session(
    srv: Served, payloads: Payloads, name: str, utterances: int
) -> tuple[int, int, str | None]:
    """Open ``utterances`` utterances of the longest int8 segments, never ended; returns
    (bytes sent, float32 bytes acknowledged, the error that closed the connection)."""
    ws = await _raw(srv, payloads, name, "int8")
    frames = [
        (uid, frame)
        for uid in range(utterances)
        for frame in payloads.utterance(uid, payloads.max_segments, "int8")
    ]
    acked, errors = [0], []
    all_acked = asyncio.Event()

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in ws:
                message = parse_message(text)
                if isinstance(message, Ack):
                    acked[0] += frames[message.seq][1][2].nbytes
                    if message.seq == len(frames) - 1:
                        all_acked.set()
                elif isinstance(message, Error):
                    errors.append(message.code)
        all_acked.set()

    reader = asyncio.create_task(read())
    sent = 0
    with contextlib.suppress(ConnectionClosed):
        for seq, (uid, frame) in enumerate(frames):
            data = payloads.wire(seq, uid, frame, "int8")
            await ws.send(data)
            sent += len(data)
    await all_acked.wait()
    await ws.close()
    await reader
    return sent, acked[0], errors[-1] if errors else None


async def _too_long(srv: Served, payloads: Payloads) -> str | None:
    """One utterance a segment longer than the bundle allows: the error it gets."""
    ws = await _raw(srv, payloads, "too-long", "fp16")
    frames = payloads.utterance(1, payloads.max_segments + 1)
    with contextlib.suppress(ConnectionClosed):
        for seq, frame in enumerate(frames):
            await ws.send(payloads.wire(seq, 0, frame, "fp16", end=seq == len(frames) - 1))
    errors = [m.code for m in await _replies(ws) if isinstance(m, Error)]
    return errors[-1] if errors else None


async def _control_rss(
    bundle: Path, payloads: Payloads, clients: int, options: tuple[str, ...]
) -> float:
    """Peak resident memory of a fresh server under heavy honest load: ``clients``
    well-behaved clients each send two of the longest utterances at once (no attack)."""

    async def honest(srv: Served, seed: int) -> None:
        async with Client(srv.url, TOKEN, payloads.identity) as client:
            frames = payloads.utterance(seed, payloads.max_segments)
            await asyncio.gather(*(_transcribe(client, uid, frames) for uid in range(2)))

    async with served(bundle, TOKEN, *options) as srv:
        peak = [srv.rss_mib()]
        sampler = asyncio.create_task(srv.sample_rss(peak))
        await asyncio.gather(*(honest(srv, seed) for seed in range(clients)))
        sampler.cancel()
        return peak[0]


async def memory(
    bundle: Path,
    payloads: Payloads,
    *,
    sessions: int = 40,
    at_once: int = 8,
    utterances: int = 16,
    target_mib: float = 400.0,
    control: bool = True,
    options: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Hostile sessions (``at_once`` at a time) each open ``utterances`` utterances of
    the longest int8 segments and leave them open; the server's resident memory (sampled
    every 50 ms; VmHWM also counts loading the bundle), and (``control``) that of a server
    under ``at_once`` honest clients sending two of the longest utterances each."""
    control_rss = await _control_rss(bundle, payloads, at_once, options) if control else None
    async with served(bundle, TOKEN, *options) as srv:
        start = srv.rss_mib()
        peak = [start]
        sampler = asyncio.create_task(srv.sample_rss(peak))
        gate = asyncio.Semaphore(at_once)

        async def one(i: int) -> tuple[int, int, str | None]:
            async with gate:
                return await _hostile_session(srv, payloads, f"hostile-{i}", utterances)

        results = await asyncio.gather(*(one(i) for i in range(sessions)))
        too_long = await _too_long(srv, payloads)
        canary = await _canary(srv, payloads)
        sampler.cancel()
        hwm = srv.hwm_mib()
    codes = Counter(code or "none" for _, _, code in results)
    return {
        "sessions": sessions,
        "utterances_per_session": utterances,
        "segments_per_utterance": payloads.max_segments,
        "sent_mib": round(sum(r[0] for r in results) / _MIB, 1),
        "acked_mib_max_session": round(max(r[1] for r in results) / _MIB, 2),
        "closed_with": dict(codes),
        "too_long_utterance": too_long,
        "rss_start_mib": round(start, 1),
        "rss_peak_mib": round(peak[0], 1),
        "vmhwm_mib": round(hwm, 1),
        "control_rss_peak_mib": control_rss and round(control_rss, 1),
        "target_mib": target_mib,
        "canary_ok": canary,
        "pass": peak[0] <= target_mib and canary and too_long == "limit_exceeded",
    }


# Decode hog


async def _latencies(client: Client, payloads: Payloads, first: int, samples: int) -> list[float]:
    """Seconds from sending each short utterance (one frame) to its final text."""
    frames = payloads.utterance(3, 47)
    seconds = []
    for uid in range(first, first + samples):
        began = time.perf_counter()
        await _transcribe(client, uid, frames)
        seconds.append(time.perf_counter() - began)
    return seconds


async def _hog(srv: Served, payloads: Payloads, at_once: int, decoded: list[int]) -> None:
    """Keep ``at_once`` longest utterances in the server until cancelled."""
    async with Client(srv.url, TOKEN, payloads.identity) as client:
        frames = payloads.utterance(5, payloads.max_segments)

        async def lane(lane_id: int) -> None:
            for uid in range(lane_id, 1 << 30, at_once):
                await _transcribe(client, uid, frames)
                decoded[0] += 1

        lanes = [asyncio.create_task(lane(i)) for i in range(at_once)]
        try:
            await asyncio.gather(*lanes)
        finally:
            for task in lanes:
                task.cancel()


async def hog(
    bundle: Path,
    payloads: Payloads,
    *,
    samples: int = 100,
    hog_utterances: int = 2,
    target_ratio: float = 2.0,
    options: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Another client's latency for 47-segment utterances, alone and while a hog keeps
    ``hog_utterances`` of the longest utterances decoding."""
    async with served(bundle, TOKEN, *options) as srv:
        async with Client(srv.url, TOKEN, payloads.identity) as victim:
            await _latencies(victim, payloads, 0, 3)  # warm up
            alone = await _latencies(victim, payloads, 10, samples)
            decoded = [0]
            attacker = asyncio.create_task(_hog(srv, payloads, hog_utterances, decoded))
            while not decoded[0] and not attacker.done():  # until it decodes
                await asyncio.sleep(0.05)
            loaded = await _latencies(victim, payloads, 10 + samples, samples)
            attacker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attacker
    p99_alone, p99_loaded = (float(np.percentile(x, 99)) for x in (alone, loaded))
    ratio = p99_loaded / p99_alone
    return {
        "samples": samples,
        "victim_segments": 47,
        "hog_utterances": hog_utterances,
        "hog_segments": payloads.max_segments,
        "hog_finals": decoded[0],
        "p50_alone_s": round(float(np.median(alone)), 3),
        "p99_alone_s": round(p99_alone, 3),
        "p50_loaded_s": round(float(np.median(loaded)), 3),
        "p99_loaded_s": round(p99_loaded, 3),
        "p99_ratio": round(ratio, 2),
        "target_ratio": target_ratio,
        "pass": ratio <= target_ratio,
    }


# Connections


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(asyncio.TimeoutError):
        try:
            return await asyncio.wait_for(reader.read(1), 0.01) == b""
        except ConnectionError:
            return True
    return False


async def connections(
    bundle: Path,
    payloads: Payloads,
    *,
    idle: int = 16,
    unauthenticated: int = 500,
    options: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``idle`` connections idle after their hello (filling the server) and
    ``unauthenticated`` ones that never send a request; then a real client."""
    async with served(bundle, TOKEN, *options) as srv:
        idlers = [await _raw(srv, payloads, f"idle-{i}", "fp16") for i in range(idle)]
        sockets = await _open_sockets(srv, unauthenticated)
        began = time.perf_counter()
        frames = payloads.utterance(9, 20)
        try:
            async with Client(srv.url, TOKEN, payloads.identity) as client:
                text = await _transcribe(client, 0, frames)
            ok = isinstance(text, str)
        except (RemoteError, ConnectionError) as exc:
            ok, text = False, repr(exc)
        seconds = time.perf_counter() - began
        yielded = sum(ws.state.name != "OPEN" for ws in idlers)
        dropped = sum([await _closed_by_server(reader) for reader, _ in sockets])
        for _, writer in sockets:
            writer.close()
        for ws in idlers:
            await ws.close()
    return {
        "idle": idle,
        "unauthenticated": unauthenticated,
        "unauthenticated_connected": len(sockets),
        "unauthenticated_closed_by_server": dropped,
        "idle_closed_for_the_client": yielded,
        "client_ok": ok,
        "client_seconds_to_text": round(seconds, 2),
        "pass": ok,
    }


async def fd(
    bundle: Path,
    payloads: Payloads,
    *,
    connections: int = 300,
    spare_fds: int = 32,
    options: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The server with ``spare_fds`` file descriptors beyond what it uses idle, and
    ``connections`` opened at once (unauthenticated cap raised so they take fds): the
    log lines about it, tracebacks, and a real client once they close."""
    async with served(bundle, TOKEN, *options) as probe:
        idle_fds = probe.open_fds()
    limit = idle_fds + spare_fds
    options = (*options, "--max-unauthenticated", str(4 * connections))
    async with served(bundle, TOKEN, *options, nofile=limit) as srv:
        sockets = await _open_sockets(srv, connections)
        await asyncio.sleep(2.0)  # the server keeps trying to accept meanwhile
        for _, writer in sockets:
            writer.close()
        ok = await _canary(srv, payloads)
    lines = srv.count("cannot accept connections")
    tracebacks = srv.count("Traceback")
    return {
        "fd_limit": limit,
        "connections": connections,
        "connected": len(sockets),
        "log_lines": lines,
        "tracebacks": tracebacks,
        "client_ok_after": ok,
        "pass": lines == 1 and tracebacks == 0 and ok,
    }


# Fuzzing


async def _fuzz_one(srv: Served, payloads: Payloads, kind: str, rng: random.Random) -> str:
    """Send one fuzz frame on a fresh connection: the close code the server answered it
    with, or the type of the message that accepted it (``ready``, ``ack``)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    valid = payloads.hello(f"fuzz-{rng.randrange(1 << 40)}")
    async with connect(srv.url, additional_headers=headers, compression=None) as ws:
        if kind == "json-first":
            await ws.send(random_json(rng, valid))
        else:
            await ws.send(valid.to_json())
            parse_message(await ws.recv())
            if kind == "json-after":
                await ws.send(random_json(rng, valid))
            else:
                await ws.send(random_binary(rng, payloads, 0))
        with contextlib.suppress(ConnectionClosed):
            reply = parse_message(await asyncio.wait_for(ws.recv(), 10))
            if not isinstance(reply, Error):
                return reply.TYPE
        await _replies(ws)
    return str(ws.close_code)


async def fuzz(
    bundle: Path,
    payloads: Payloads,
    *,
    frames: int = 10_000,
    workers: int = 8,
    seed: int = 18,
    options: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``frames`` random JSON and binary frames, each on its own connection, while a
    canary client keeps sending one utterance and checks its text never changes."""
    async with served(bundle, TOKEN, *options) as srv:
        outcomes: Counter[str] = Counter()
        jobs = iter(fuzz_frames(seed, frames))
        checks = Counter[str]()
        done = asyncio.Event()

        async def worker() -> None:
            for kind, rng in jobs:
                try:
                    outcomes[await _fuzz_one(srv, payloads, kind, rng)] += 1
                except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                    outcomes[type(exc).__name__] += 1

        async def canary() -> None:
            utterance = payloads.utterance(11, 30)
            async with Client(srv.url, TOKEN, payloads.identity) as client:
                expected = await _transcribe(client, 0, utterance)
                for uid in range(1, 1 << 30):
                    if done.is_set():
                        return
                    try:
                        text = await _transcribe(client, uid, utterance)
                        checks["ok" if text == expected else "wrong"] += 1
                    except RemoteError:
                        checks["failed"] += 1

        watcher = asyncio.create_task(canary())
        await asyncio.gather(*(worker() for _ in range(workers)))
        done.set()
        await watcher
    tracebacks = srv.count("Traceback")
    return {
        "frames": frames,
        "outcomes": dict(outcomes),
        "internal_errors_1011": outcomes["1011"],
        "tracebacks": tracebacks,
        "canary": dict(checks),
        "pass": tracebacks == 0
        and not outcomes["1011"]
        and checks["ok"] > 0
        and checks["ok"] == sum(checks.values()),
    }


# Sessions


async def back_to_back(
    bundle: Path, payloads: Payloads, *, utterances: int = 17, options: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``utterances`` sent back to back by the stock client, then their results."""
    async with served(bundle, TOKEN, *options) as srv:
        async with Client(srv.url, TOKEN, payloads.identity) as client:
            sent = {uid: payloads.utterance(uid, 40) for uid in range(utterances)}
            for uid, frames in sent.items():
                for i, frame in enumerate(frames):
                    await client.send(uid, *frame, end=i == len(frames) - 1)
            ok = 0
            for uid in sent:
                with contextlib.suppress(RemoteError):
                    ok += isinstance(await client.result(uid), str)
    return {"utterances": utterances, "succeeded": ok, "pass": ok == utterances}


async def resume(
    bundle: Path, payloads: Payloads, *, options: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Hellos resuming another client's session without its key, or with a guessed one."""
    async with served(bundle, TOKEN, *options) as srv:
        async with Client(srv.url, TOKEN, payloads.identity) as owner:
            frames = payloads.utterance(4, 20)
            first = await _transcribe(owner, 0, frames)
            refused = Counter[str]()
            for key in ("", secrets.token_urlsafe(24)):
                async with connect(
                    srv.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
                ) as ws:
                    await ws.send(payloads.hello(owner.session, resume_key=key).to_json())
                    replies = await _replies(ws)
                refused[f"{replies[-1].code}/{ws.close_code}" if replies else "none"] += 1
            again = await _transcribe(owner, 1, frames)
            reconnects = owner.stats.reconnects
    owner_ok = first == again and reconnects == 0
    return {
        "attempts": 2,
        "refused": dict(refused),
        "owner_kept_its_session": owner_ok,
        "pass": refused["session_taken/4010"] == 2 and owner_ok,
    }
