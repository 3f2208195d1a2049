"""edgetok.server and edgetok.client over real websockets on 127.0.0.1 (port 0), decoding
with the real ``DecoderStage`` on the tiny bundle's decoder ONNX.

Connection faults come from a real TCP relay between client and server (``Relay``): it can
hide the server's acks and cut both sockets, as a failing network would.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import itertools
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fixtures.make_tiny_bundle import D, make_tiny_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as sync_connect

from edgetok.bundle import load_bundle
from edgetok.client import AuthError, Client, RemoteDecoder, RemoteError, TextEvent
from edgetok.protocol import (
    CLOSE_CODES,
    Ack,
    Error,
    Hello,
    Identity,
    Message,
    Partial,
    ProtocolError,
    Ready,
    decode_frame,
    encode_frame,
    parse_message,
    wire_identity,
)
from edgetok.server import Limits, Server, serve, start_server
from edgetok.stages import DecoderStage

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FrameArgs = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def stage(tiny: Path) -> DecoderStage:
    return DecoderStage(load_bundle(tiny).open("decoder"))


@pytest.fixture(scope="module")
def identity(tiny: Path) -> Identity:
    return wire_identity(load_bundle(tiny))


class Recorder:
    """A decoder object (``decode``) over the real stage that records every input."""

    def __init__(self, stage: DecoderStage) -> None:
        self.stage = stage
        self.inputs: list[np.ndarray] = []
        self._lock = threading.Lock()

    def decode(self, vectors: np.ndarray) -> str:
        with self._lock:
            self.inputs.append(vectors.copy())
        return self.stage(vectors)


def utterance(seed: int, frames: int, per_frame: int = 3) -> list[FrameArgs]:
    """Frames of contiguous segments: (starts, lengths, vectors) each."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, frames * per_frame)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    vectors = rng.normal(size=(frames * per_frame, D)).astype(np.float32)
    cut = range(0, frames * per_frame, per_frame)
    return [
        (starts[i : i + per_frame], lengths[i : i + per_frame], vectors[i : i + per_frame])
        for i in cut
    ]


def wire_vectors(frames: list[FrameArgs], dtype: str = "fp16") -> np.ndarray:
    """The vectors as the server receives them."""
    return np.concatenate(
        [decode_frame(encode_frame(0, 0, *frame, dtype=dtype)).vectors for frame in frames]
    )


async def send_all(client: Client, uid: int, frames: list[FrameArgs]) -> None:
    for i, frame in enumerate(frames):
        await client.send(uid, *frame, end=i == len(frames) - 1)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 15))


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/"


class Relay:
    """TCP relay to ``target`` (which may change); on its first connection it hides the
    server's messages of the types in ``hide``."""

    def __init__(self, target: int, *, hide: frozenset[str] = frozenset()) -> None:
        self.target, self.hide = target, hide
        self.hidden: collections.Counter[str] = collections.Counter()
        self._changed = asyncio.Event()
        self._connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()

    async def wait_hidden(self, kind: str, count: int) -> None:
        """Until ``count`` messages of type ``kind`` have been hidden from the client."""
        while self.hidden[kind] < count:
            self._changed.clear()
            await self._changed.wait()

    def cut(self) -> None:
        """Abort every relayed connection, both sides."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        hide = self.hide and self._connections == 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]
        downstream = self._filter(up_reader, writer) if hide else self._pipe(up_reader, writer)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(downstream),
        ]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for side in (writer, up_writer):  # one side ended: end the other, after its data
            side.close()
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()

    async def _filter(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server -> client: pass the HTTP response and the messages not hidden."""
        writer.write(await reader.readuntil(b"\r\n\r\n"))
        while True:
            head = await reader.readexactly(2)
            size = head[1] & 0x7F
            extra = await reader.readexactly({126: 2, 127: 8}.get(size, 0))
            payload = await reader.readexactly(int.from_bytes(extra, "big") if extra else size)
            kind = json.loads(payload)["type"] if head[0] & 0x0F == 1 else None
            if kind in self.hide:
                self.hidden[kind] += 1
                self._changed.set()
                continue
            writer.write(head + extra + payload)
            await writer.drain()


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_partials_then_final_match_a_direct_decode(
    stage: DecoderStage, identity: Identity, dtype: str
) -> None:
    frames = utterance(1, 4)
    events: list[TextEvent] = []

    async def main() -> None:
        first = asyncio.Event()

        def seen(event: TextEvent) -> None:
            events.append(event)
            first.set()

        async with serve(stage, identity, token=TOKEN) as server:  # a plain callable
            client = Client(url(server.port), TOKEN, identity, dtype=dtype, on_transcript=seen)
            async with client:
                await client.send(7, *frames[0])
                await first.wait()
                assert events == [TextEvent(7, stage(wire_vectors(frames[:1], dtype)), False, 3)]
                await send_all(client, 7, frames[1:])
                text = await client.result(7)
                with pytest.raises(KeyError):
                    await client.result(7)  # taken
        assert text == stage(wire_vectors(frames, dtype))
        assert events[-1] == TextEvent(7, text, True, 12)
        assert all(not e.final and e.segments <= 12 for e in events[:-1])
        assert server.stats.frames == 4 and server.stats.segments == 12
        assert client.stats.frames == 4 and client.stats.resent_frames == 0
        assert client.stats.wire_bytes > client.stats.payload_bytes > 0

    run(main)


def test_disconnect_mid_utterance_loses_nothing(stage: DecoderStage, identity: Identity) -> None:
    frames = utterance(2, 10)

    async def main() -> None:
        undisturbed = Recorder(stage)
        async with serve(undisturbed, identity, token=TOKEN) as server:
            async with Client(url(server.port), TOKEN, identity, buffer_frames=4) as client:
                await send_all(client, 1, frames)
                expected = await client.result(1)

        recorder = Recorder(stage)
        async with serve(recorder, identity, token=TOKEN) as server:
            async with Relay(server.port, hide=frozenset({"ack"})) as relay:
                client = Client(url(relay.port), TOKEN, identity, buffer_frames=4, backoff_s=0.01)
                async with client:
                    sender = asyncio.create_task(send_all(client, 1, frames))
                    await relay.wait_hidden("ack", 4)  # 4 frames applied; the client saw no ack
                    relay.cut()
                    await sender
                    assert await client.result(1) == expected
        assert server.stats.frames == len(frames)  # each frame applied once...
        assert server.stats.segments == 30
        assert server.stats.duplicates == 4  # ...the 4 resent ones acked and ignored
        assert (client.stats.resent_frames, client.stats.reconnects) == (4, 1)
        np.testing.assert_array_equal(recorder.inputs[-1], undisturbed.inputs[-1])
        np.testing.assert_array_equal(recorder.inputs[-1], wire_vectors(frames))

    run(main)


def test_a_final_lost_with_the_connection_is_sent_again(
    stage: DecoderStage, identity: Identity
) -> None:
    frames = utterance(11, 3)

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN) as server:
            async with Relay(server.port, hide=frozenset({"ack", "final"})) as relay:
                async with Client(url(relay.port), TOKEN, identity, backoff_s=0.01) as client:
                    await send_all(client, 4, frames)
                    await relay.wait_hidden("final", 1)  # decoded; the client heard nothing
                    relay.cut()
                    assert await client.result(4) == stage(wire_vectors(frames))
        assert (server.stats.finals, server.stats.duplicates) == (1, 3)

    run(main)


def test_a_restarted_server_fails_what_it_lost(stage: DecoderStage, identity: Identity) -> None:
    frames = utterance(12, 3)

    async def main() -> None:
        async with (
            serve(stage, identity, token=TOKEN) as first,
            serve(stage, identity, token=TOKEN) as second,
            Relay(first.port) as relay,
        ):
            async with Client(url(relay.port), TOKEN, identity, backoff_s=0.01) as client:
                await send_all(client, 1, frames[:2])
                await client.flush()  # applied by the first server only
                relay.target = second.port  # "restarted": it knows nothing of the session
                relay.cut()
                with pytest.raises(RemoteError, match="session_lost"):
                    await client.send(1, *frames[2], end=True)
                    await client.result(1)
                await send_all(client, 2, frames)
                assert await client.result(2) == stage(wire_vectors(frames))
            assert client.stats.reconnects == 1

    run(main)


def test_full_buffer_applies_backpressure(stage: DecoderStage, identity: Identity) -> None:
    frames = utterance(3, 5)

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN) as server:
            async with Relay(server.port, hide=frozenset({"ack"})) as relay:
                client = Client(url(relay.port), TOKEN, identity, buffer_frames=3, backoff_s=0.01)
                async with client:
                    for frame in frames[:3]:
                        await client.send(5, *frame)
                    blocked = asyncio.create_task(client.send(5, *frames[3]))
                    await relay.wait_hidden("ack", 3)  # the server has all three
                    done, _ = await asyncio.wait({blocked}, timeout=0.2)
                    assert not done and client.stats.frames == 3  # waiting, nothing dropped
                    relay.cut()  # the reconnect resends the three and gets the acks
                    await blocked
                    await client.send(5, *frames[4], end=True)
                    assert await client.result(5) == stage(wire_vectors(frames))

    run(main)


def test_wrong_or_missing_token_is_refused_before_the_upgrade(
    stage: DecoderStage, identity: Identity
) -> None:
    async def main() -> None:
        async with serve(stage, identity, token=TOKEN) as server:
            for headers in ({"Authorization": "Bearer wrong"}, {}, {"Authorization": TOKEN}):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(url(server.port), additional_headers=headers):
                        pass
                assert info.value.response.status_code == 401
            with pytest.raises(AuthError):
                await Client(url(server.port), "wrong", identity).start()  # no retries
            assert (server.stats.refused, server.stats.connections) == (4, 0)

    run(main)


def test_tokens_are_stripped_the_same_way_on_both_sides(
    stage: DecoderStage, identity: Identity
) -> None:
    """A token pasted with a newline or spaces (a token file, an env var) still matches."""

    async def main() -> None:
        async with serve(stage, identity, token=f"  {TOKEN}\n") as server:
            for token in (TOKEN, f"{TOKEN}\n", f" {TOKEN} "):
                async with Client(url(server.port), token, identity) as client:
                    frames = utterance(1, 3)
                    await send_all(client, 0, frames)
                    assert await client.result(0) == stage(wire_vectors(frames))
        with pytest.raises(ValueError, match="non-empty"):
            Server(stage, identity, token=" \n")

    run(main)


def test_ended_utterances_free_their_slot_for_the_next(
    stage: DecoderStage, identity: Identity
) -> None:
    """17 utterances sent back to back while the decoder lags: only utterances still being
    sent count against the 16-open limit, so every one gets its text."""

    def slow(vectors: np.ndarray) -> str:
        time.sleep(0.02)
        return stage(vectors)

    async def main() -> None:
        async with serve(slow, identity, token=TOKEN) as server:
            async with Client(url(server.port), TOKEN, identity) as client:
                sent = {uid: utterance(uid, 2) for uid in range(17)}
                for uid, frames in sent.items():
                    await send_all(client, uid, frames)
                for uid, frames in sent.items():
                    assert await client.result(uid) == stage(wire_vectors(frames))

    run(main)


def test_a_session_cannot_queue_without_bound(stage: DecoderStage, identity: Identity) -> None:
    limits = Limits(max_open_utterances=2, max_queued_utterances=3)

    def stuck(vectors: np.ndarray) -> str:
        time.sleep(0.5)
        return stage(vectors)

    async def main() -> None:
        async with serve(stuck, identity, token=TOKEN, limits=limits) as server:
            client = Client(url(server.port), TOKEN, identity)
            async with client:
                for uid in range(4):
                    await send_all(client, uid, utterance(uid, 1))
                with pytest.raises(RemoteError, match="waiting for text"):
                    await client.result(3)

    run(main)


def test_an_idle_connection_is_closed_but_not_one_owed_text(
    stage: DecoderStage, identity: Identity
) -> None:
    limits = Limits(idle_timeout_s=0.3)

    def slow(vectors: np.ndarray) -> str:
        time.sleep(0.8)
        return stage(vectors)

    async def main() -> None:
        async with serve(slow, identity, token=TOKEN, limits=limits) as server:
            error, code = await refusal(server.port, hello(identity).to_json())
            assert (error.code, code) == ("idle", CLOSE_CODES["idle"])
            # Waiting 0.8 s for a final is not idling: the text arrives.
            async with Client(url(server.port), TOKEN, identity) as client:
                frames = utterance(2, 1)
                await send_all(client, 0, frames)
                assert await client.result(0) == stage(wire_vectors(frames))

    run(main)


def test_a_session_is_resumed_only_with_its_key(stage: DecoderStage, identity: Identity) -> None:
    """Someone with the token and another client's session id gets session_taken; the
    owner is not kicked off and keeps getting its text."""

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN) as server:
            async with Client(url(server.port), TOKEN, identity) as owner:
                first = utterance(3, 1)
                await send_all(owner, 0, first)
                assert await owner.result(0) == stage(wire_vectors(first))
                for key in ("", "guessed-key"):
                    theft = hello(identity, session=owner.session, resume_key=key).to_json()
                    error, code = await refusal(server.port, theft)
                    assert (error.code, code) == ("session_taken", CLOSE_CODES["session_taken"])
                second = utterance(4, 1)
                await send_all(owner, 1, second)
                assert await owner.result(1) == stage(wire_vectors(second))
                assert owner.stats.reconnects == 0

    run(main)


def test_wrong_tokens_are_logged_sparingly_and_throttled(
    stage: DecoderStage, identity: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(max_auth_failures=5, auth_window_s=60.0)

    async def status(port: int, token: str) -> int:
        with pytest.raises(InvalidStatus) as info:
            headers = {"Authorization": f"Bearer {token}"}
            async with connect(url(port), additional_headers=headers):
                pass
        return info.value.response.status_code

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, limits=limits) as server:
            codes = [await status(server.port, f"guess{i}") for i in range(30)]
            assert codes == [401] * 5 + [429] * 25
            assert await status(server.port, TOKEN) == 429  # the address waits its window
            assert server.stats.refused == 31

    with caplog.at_level(logging.WARNING, logger="edgetok.server"):
        run(main)
    lines = [r for r in caplog.records if "wrong token" in r.getMessage()]
    assert 1 <= len(lines) <= 2 and "refused 1 login(s) from 127.0.0.1" in lines[0].getMessage()


def test_a_client_rides_out_a_server_restart(stage: DecoderStage, identity: Identity) -> None:
    """Retries go on for ``retry_for_s`` (30 s by default), not a fixed few attempts: a
    server down for 1.5 s loses nothing; with nobody there, the error says how long."""

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN) as server:
            port = server.port
        client = Client(url(port), TOKEN, identity, backoff_s=0.05, max_backoff_s=0.2)
        starting = asyncio.create_task(client.start())
        await asyncio.sleep(1.5)
        assert not starting.done()
        async with serve(stage, identity, token=TOKEN, port=port):
            await starting
            frames = utterance(5, 2)
            await send_all(client, 0, frames)
            assert await client.result(0) == stage(wire_vectors(frames))
            await client.close()
        alone = Client(url(port), TOKEN, identity, retry_for_s=0.3, backoff_s=0.05)
        with pytest.raises(ConnectionError, match=r"no connection for 0\.3 s"):
            await alone.start()

    run(main)


# Budgets: bytes held per session and in all, segments per utterance.

#: Limits small enough to reach with a few frames of the tiny bundle (D = 8): one
#: utterance of 32 segments holds 32 * 8 * 4 + 512 bytes, a session 4,096 of its own.
BUDGET = Limits(max_segments_per_utterance=32, max_session_bytes=12_000, max_server_bytes=24_000)


def test_a_session_is_held_to_its_memory_budget(stage: DecoderStage, identity: Identity) -> None:
    """Utterances left open fill the session's budget: over_budget, and the bytes the
    server acknowledged stay within it; the limit on segments per utterance holds too."""

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, limits=BUDGET) as server:
            async with connect(url(server.port), additional_headers=AUTH) as ws:
                await ws.send(hello(identity).to_json())
                assert isinstance(parse_message(await ws.recv()), Ready)
                for seq in range(20):  # 20 open utterances of 8 segments, never ended
                    frames = utterance(seq, 1, per_frame=8)
                    await ws.send(encode_frame(seq, seq, *frames[0]))
                messages = await until_closed(ws)
            acked = [m for m in messages if isinstance(m, Ack)]
            assert messages[-1].code == "over_budget"
            assert ws.close_code == CLOSE_CODES["over_budget"]
            held = 4096 + len(acked) * (8 * D * 4 + 512)
            assert 0 < len(acked) < 20 and held <= BUDGET.max_session_bytes
            assert server.peak_held_bytes <= BUDGET.max_session_bytes
            async with Client(url(server.port), TOKEN, identity) as client:
                too_long = utterance(3, 11)  # 33 segments
                with pytest.raises(RemoteError, match="longer than 32 segments"):
                    await send_all(client, 0, too_long)
                    await client.result(0)

    run(main)


def test_ended_utterances_wait_for_room_instead_of_failing(
    stage: DecoderStage, identity: Identity
) -> None:
    """Ended utterances sent faster than they are decoded fill the budget: the server
    reads on as decodes free bytes (backpressure), and every one gets its text."""

    def slow(vectors: np.ndarray) -> str:
        time.sleep(0.01)
        return stage(vectors)

    limits = replace(BUDGET, max_session_bytes=20_000, max_server_bytes=40_000)
    sent = {uid: utterance(uid, 4, per_frame=8) for uid in range(16)}  # 16 x 1.5 KB

    async def main() -> None:
        async with serve(slow, identity, token=TOKEN, limits=limits) as server:
            async with Client(url(server.port), TOKEN, identity) as client:
                for uid, frames in sent.items():
                    await send_all(client, uid, frames)
                for uid, frames in sent.items():
                    assert await client.result(uid) == stage(wire_vectors(frames))
            assert server.peak_held_bytes <= limits.max_session_bytes
            assert server.stats.errors == 0

    total = sum(len(frames) * 8 * D * 4 + 512 for frames in sent.values())
    assert total > limits.max_session_bytes  # all at once would not have fitted
    run(main)


def test_disconnected_sessions_make_room_for_live_ones(
    stage: DecoderStage, identity: Identity
) -> None:
    """Sessions left with open utterances hold bytes only until a live session needs
    them: the server's total stays within its budget, the oldest orphans go first."""

    async def orphan(port: int, name: str) -> str:
        """A session left holding two open utterances; returns its resume key."""
        async with connect(url(port), additional_headers=AUTH) as ws:
            await ws.send(hello(identity, session=name).to_json())
            ready = parse_message(await ws.recv())
            for seq in range(2):
                await ws.send(encode_frame(seq, seq, *utterance(seq, 1, per_frame=24)[0]))
                assert parse_message(await ws.recv()) == Ack(seq=seq)
        assert isinstance(ready, Ready)
        return ready.resume_key

    async def resumed(port: int, name: str, key: str) -> bool:
        async with connect(url(port), additional_headers=AUTH) as ws:
            await ws.send(hello(identity, session=name, seq=2, resume_key=key).to_json())
            ready = parse_message(await ws.recv())
        assert isinstance(ready, Ready)
        return ready.resumed

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, limits=BUDGET) as server:
            # Each holds 4,096 + 2 x (24 x 8 x 4 + 512) = 6,656 bytes: 3 fit in 24,000.
            keys = [await orphan(server.port, f"orphan-{i}") for i in range(6)]
            assert server.stats.evicted == 3
            async with Client(url(server.port), TOKEN, identity) as client:
                frames = utterance(9, 3, per_frame=8)
                await send_all(client, 0, frames)
                assert await client.result(0) == stage(wire_vectors(frames))
            assert server.stats.evicted == 4
            assert server.peak_held_bytes <= BUDGET.max_server_bytes
            assert await resumed(server.port, "orphan-5", keys[5])  # the newest is kept
            assert not await resumed(server.port, "orphan-0", keys[0])  # the oldest is not

    run(main)


def test_a_dropped_session_frees_its_vectors_without_the_cycle_collector(
    stage: DecoderStage, identity: Identity
) -> None:
    """A client leaves while its partial is being decoded; once its session is dropped,
    every array the server decoded is freed by reference counting alone (cancelled
    decode tasks hold no cycle through their utterance; a cycle would keep them until
    the cycle collector runs, which a server filling with frames seldom triggers)."""
    started, go = threading.Event(), threading.Event()
    decoded: list[weakref.ref[np.ndarray]] = []

    def held(vectors: np.ndarray) -> str:
        decoded.append(weakref.ref(vectors))
        started.set()
        go.wait(10)
        return stage(vectors)

    async def main() -> None:
        limits = replace(BUDGET, session_ttl_s=0.05)
        async with serve(held, identity, token=TOKEN, limits=limits) as server:
            async with connect(url(server.port), additional_headers=AUTH) as ws:
                await ws.send(hello(identity, session="leaves").to_json())
                assert isinstance(parse_message(await ws.recv()), Ready)
                await ws.send(encode_frame(0, 0, *utterance(0, 1, per_frame=8)[0]))
                assert parse_message(await ws.recv()) == Ack(seq=0)
                assert await asyncio.to_thread(started.wait, 10)
            await asyncio.sleep(0.1)  # detached, its decode cancelled; past its ttl
            go.set()
            while server._scheduler.busy:
                await asyncio.sleep(0.01)
            async with connect(url(server.port), additional_headers=AUTH) as ws:
                await ws.send(hello(identity, session="next").to_json())  # drops "leaves"
                assert isinstance(parse_message(await ws.recv()), Ready)
            await asyncio.sleep(0.05)
            assert server.held_bytes == 4096  # "next" only
            assert decoded and all(ref() is None for ref in decoded)

    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        run(main)
    finally:
        if enabled:
            gc.enable()


# Fair decoding: sessions take turns on the decode threads.


class Gate:
    """A decoder over the real stage that records the order of its inputs' markers
    (``vectors[0, 0]``) and holds marker 42 until ``release``."""

    def __init__(self, stage: DecoderStage) -> None:
        self.stage = stage
        self.order: list[float] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def decode(self, vectors: np.ndarray) -> str:
        self.order.append(float(vectors[0, 0]))
        if vectors[0, 0] == 42:
            self.entered.set()
            self.release.wait(10)
        return self.stage(vectors)


def marked(marker: float, frames: int = 1) -> list[FrameArgs]:
    """One-segment frames whose first vector starts with ``marker``."""
    out = []
    for i in range(frames):
        vectors = np.full((1, D), 0.5, np.float32)
        vectors[0, 0] = marker if i == 0 else 0.5
        out.append((np.array([i]), np.array([1]), vectors))
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_a_client_with_many_decodes_waits_its_turn(
    stage: DecoderStage, identity: Identity, threads: int
) -> None:
    """A hog queues four utterances, the first held in its decoder. One thread: the
    other client's utterance is decoded next, before the hog's second. Two threads: the
    hog holds one at most, so the other client gets its text while the hog's first
    decode is still held."""
    gate = Gate(stage)
    limits = Limits(decode_threads=threads)

    async def main() -> None:
        async with serve(gate, identity, token=TOKEN, limits=limits) as server:
            async with (
                Client(url(server.port), TOKEN, identity) as hog,
                Client(url(server.port), TOKEN, identity) as other,
            ):
                await send_all(hog, 0, marked(42))
                await asyncio.to_thread(gate.entered.wait, 10)
                for uid, marker in enumerate((2.0, 3.0, 4.0), start=1):
                    await send_all(hog, uid, marked(marker))
                await hog.flush()
                await send_all(other, 0, marked(7.0))
                if threads == 2:
                    assert await other.result(0) == stage(wire_vectors(marked(7.0)))
                    assert not gate.release.is_set()
                else:
                    await other.flush()
                gate.release.set()
                for uid in range(4):
                    await hog.result(uid)
                await other.result(0) if threads == 1 else None
        assert gate.order == [42.0, 7.0, 2.0, 3.0, 4.0]

    try:
        run(main)
    finally:
        gate.release.set()


# Connections: unauthenticated ones, idle ones, idle timeouts.


def test_unauthenticated_connections_cannot_hold_the_door(
    stage: DecoderStage, identity: Identity
) -> None:
    """20 connections that never send a request, 4 allowed: each newcomer aborts the
    oldest, so the 16 oldest are closed and a real client still gets in."""
    limits = Limits(max_unauthenticated=4)

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, limits=limits) as server:
            silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
            for reader, _ in silent[:16]:
                with contextlib.suppress(ConnectionResetError):
                    assert await reader.read() == b""
            assert len(server.doorman) == 4 and server.doorman.dropped == 16
            async with Client(url(server.port), TOKEN, identity) as client:
                frames = utterance(1, 2)
                await send_all(client, 0, frames)
                assert await client.result(0) == stage(wire_vectors(frames))
            assert server.doorman.dropped == 17  # the client's arrival closed one more
            for _, writer in silent:
                writer.close()

    run(main)


def test_an_idle_connection_gives_way_when_the_server_is_full(
    stage: DecoderStage, identity: Identity
) -> None:
    limits = Limits(max_connections=2, max_sessions=2, idle_yield_s=0.2)

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, limits=limits) as server:
            idle = []
            for name in ("first", "second"):
                ws = await connect(url(server.port), additional_headers=AUTH)
                await ws.send(hello(identity, session=name).to_json())
                assert isinstance(parse_message(await ws.recv()), Ready)
                idle.append(ws)
            client = Client(url(server.port), TOKEN, identity, backoff_s=0.05)
            async with client:  # 503 until the first has idled 0.2 s, then its place
                frames = utterance(2, 2)
                await send_all(client, 0, frames)
                assert await client.result(0) == stage(wire_vectors(frames))
            messages = await until_closed(idle[0])
            assert messages[-1].code == "idle" and idle[0].close_code == CLOSE_CODES["idle"]
            assert server.stats.yielded == 1
            await idle[1].close()

    run(main)


def test_an_open_utterance_does_not_keep_a_silent_connection_alive(
    stage: DecoderStage, identity: Identity
) -> None:
    """Once its partial is out, a client that stops mid-utterance is idle."""
    limits = Limits(idle_timeout_s=0.3)

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, limits=limits) as server:
            async with connect(url(server.port), additional_headers=AUTH) as ws:
                await ws.send(hello(identity).to_json())
                assert isinstance(parse_message(await ws.recv()), Ready)
                await ws.send(encode_frame(0, 0, *utterance(1, 1)[0]))
                messages = await until_closed(ws)
            assert [m.TYPE for m in messages] == ["ack", "partial", "error"]
            assert messages[-1].code == "idle" and ws.close_code == CLOSE_CODES["idle"]

    run(main)


async def refusal(port: int, first: str | bytes) -> tuple[Error, int]:
    """Connect, send ``first``, return the error and close code that follow."""
    async with connect(url(port), additional_headers=AUTH, compression=None) as ws:
        await ws.send(first)
        messages = await until_closed(ws)
    assert ws.close_code is not None
    return messages[-1], ws.close_code


async def until_closed(ws: ClientConnection) -> list[Message]:
    """Every message until the server closes the connection."""
    messages = []
    with contextlib.suppress(ConnectionClosed):
        async for text in ws:
            messages.append(parse_message(text))
    return messages


def hello(identity: Identity, **changes) -> Hello:
    values = dict(vars(identity), session="raw", dtype="fp16", seq=0)
    return Hello(**(values | changes))


def test_hello_is_checked(stage: DecoderStage, identity: Identity) -> None:
    async def main() -> None:
        async with serve(stage, identity, token=TOKEN) as server:
            cases = [
                (hello(identity, aggregator_sha256="0" * 64).to_json(), "identity"),
                (hello(identity, bundle="other").to_json(), "identity"),
                (hello(identity, dim=D + 1).to_json(), "identity"),
                (hello(identity).to_json().replace('"version":2', '"version":3'), "version"),
                (encode_frame(0, 0, [0], [1], np.zeros((1, D))), "bad_message"),
                ('{"type": "ack", "seq": 0}', "bad_message"),
            ]
            for first, code in cases:
                error, close_code = await refusal(server.port, first)
                assert error.code == code and close_code == CLOSE_CODES[code], error
            wrong = replace(identity, aggregator_sha256="1" * 64)
            with pytest.raises(RemoteError) as info:
                await Client(url(server.port), TOKEN, wrong).start()
            assert info.value.code == "identity" and "aggregator" in str(info.value)

    run(main)


def test_connection_limit(stage: DecoderStage, identity: Identity) -> None:
    async def main() -> None:
        limits = Limits(max_connections=2, max_sessions=2)
        async with serve(stage, identity, token=TOKEN, limits=limits) as server:
            first = Client(url(server.port), TOKEN, identity)
            await first.start()
            async with Client(url(server.port), TOKEN, identity):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(url(server.port), additional_headers=AUTH):
                        pass
                assert info.value.response.status_code == 503
                await first.close()
                third = Client(url(server.port), TOKEN, identity, backoff_s=0.01)
                async with third:  # the freed slot; the idle session is evicted
                    await third.send(1, *utterance(4, 1)[0], end=True)
                    assert await third.result(1) == stage(wire_vectors(utterance(4, 1)))

    run(main)


def test_rate_limit_closes_the_connection(stage: DecoderStage, identity: Identity) -> None:
    async def main() -> None:
        limits = Limits(max_frames_per_second=0.5, burst_frames=2)
        async with serve(stage, identity, token=TOKEN, limits=limits) as server:
            async with connect(url(server.port), additional_headers=AUTH) as ws:
                await ws.send(hello(identity).to_json())
                assert isinstance(parse_message(await ws.recv()), Ready)
                for seq, frame in enumerate(utterance(5, 3)):
                    await ws.send(encode_frame(seq, 0, *frame))
                messages = await until_closed(ws)
            assert messages.count(Ack(seq=0)) == messages.count(Ack(seq=1)) == 1
            assert messages[-1].code == "rate_limited"
            assert ws.close_code == CLOSE_CODES["rate_limited"]

    run(main)


def test_a_slow_decode_does_not_block_other_clients(stage: DecoderStage, identity: Identity):
    entered, release = threading.Event(), threading.Event()

    def gated(vectors: np.ndarray) -> str:
        if vectors[0, 0] == 42:
            entered.set()
            release.wait(10)
        return stage(vectors)

    slow = [(np.array([0]), np.array([1]), np.full((1, D), 42.0, np.float32))]
    fast = utterance(6, 2)

    async def main() -> None:
        async with serve(gated, identity, token=TOKEN) as server:
            async with (
                Client(url(server.port), TOKEN, identity) as a,
                Client(url(server.port), TOKEN, identity) as b,
            ):
                await send_all(a, 1, slow)
                await asyncio.to_thread(entered.wait, 10)
                await send_all(b, 1, fast)
                assert await b.result(1) == stage(wire_vectors(fast))
                release.set()
                assert await a.result(1) == stage(wire_vectors(slow))

    try:
        run(main)
    finally:
        release.set()


# Malformed and oversized frames, generated, against one live server.

MAX_FRAME = 2048


@pytest.fixture(scope="module")
def live(stage: DecoderStage, identity: Identity) -> Iterator[tuple[int, RemoteDecoder]]:
    """A server in a thread, and a well-behaved client connected to it throughout."""
    limits = Limits(max_frame_bytes=MAX_FRAME)
    with start_server(stage, identity, token=TOKEN, limits=limits) as background:
        with RemoteDecoder(url(background.port), TOKEN, identity) as good:
            yield background.port, good


def _valid_frame(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 6))
    vectors = draw(st.lists(st.floats(-4, 4, width=32), min_size=count * D, max_size=count * D))
    seq = draw(st.sampled_from([0, 0, 1, 2**32 - 1]))
    end = draw(st.booleans())
    return encode_frame(
        seq, 9, np.arange(count), np.ones(count), np.reshape(vectors, (count, D)), end=end
    )


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "flip", "cut", "extend", "oversized"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    frame = bytearray(_valid_frame(draw))
    if kind == "flip":
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    elif kind == "cut":
        del frame[draw(st.integers(0, len(frame) - 1)) :]
    elif kind == "extend":
        frame += draw(st.binary(min_size=1, max_size=64))
    else:
        frame += bytes(draw(st.integers(MAX_FRAME + 1, 2 * MAX_FRAME)) - len(frame))
    return bytes(frame)


def expected_code(data: bytes) -> str | None:
    """The error the server must answer ``data`` with (None: an ack), on a new session."""
    try:
        frame = decode_frame(data, max_bytes=MAX_FRAME, dim=D, dtype="fp16")
    except ProtocolError as exc:
        return exc.code
    return None if frame.seq == 0 else "sequence"


_sessions = itertools.count()
_good_utterances = itertools.count(100)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_frames())
def test_malformed_frames_are_refused_while_others_are_served(
    live: tuple[int, RemoteDecoder], identity: Identity, stage: DecoderStage, data: bytes
) -> None:
    port, good = live
    code = expected_code(data)
    with sync_connect(url(port), additional_headers=AUTH, compression=None) as ws:
        ws.send(hello(identity, session=f"fuzz-{next(_sessions)}").to_json())
        assert isinstance(parse_message(ws.recv(timeout=5)), Ready)
        ws.send(data)
        reply = parse_message(ws.recv(timeout=5))
        if code is None:
            assert reply == Ack(seq=0)
        else:
            assert isinstance(reply, Error) and reply.code == code, (reply, code)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    assert not isinstance(parse_message(ws.recv(timeout=5)), (Ack, Partial))
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CLOSE_CODES[code]
    uid = next(_good_utterances)
    frames = utterance(uid, 1)
    good.submit(uid, *frames[0], final=True, timeout=5)
    assert good.result(uid, timeout=5) == stage(wire_vectors(frames))


def test_frames_far_beyond_the_limit_are_closed_unread(live, identity: Identity) -> None:
    port, good = live
    with sync_connect(url(port), additional_headers=AUTH, compression=None) as ws:
        ws.send(hello(identity, session="huge").to_json())
        parse_message(ws.recv(timeout=5))
        ws.send(bytes(4 * MAX_FRAME))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    good.flush(timeout=5)


def test_cli_serves_a_bundle_until_sigterm(tiny: Path, stage: DecoderStage) -> None:
    frames = utterance(8, 2)

    async def main() -> None:
        command = ["-m", "edgetok", "serve", "--bundle", str(tiny), "--port", "0"]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *command,
            env=os.environ | {"EDGETOK_TOKEN": TOKEN},
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            while not (line := (await process.stderr.readline()).decode()).startswith("serving"):
                assert line, "edgetok serve exited"
            address = line.split()[-1]
            identity = wire_identity(load_bundle(tiny))
            async with Client(address, TOKEN, identity) as client:
                await send_all(client, 3, frames)
                assert await client.result(3) == stage(wire_vectors(frames))
            process.send_signal(signal.SIGTERM)
            rest = (await process.stderr.read()).decode()
            assert await process.wait() == 0, rest
            assert "stopped: ServerStats(connections=1" in rest
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    run(main)


def test_cli_refuses_a_session_budget_below_one_utterance(tiny: Path) -> None:
    """The tiny bundle's longest utterance is 1,501 segments of 8 float32: 48 KB."""
    from click.testing import CliRunner

    from edgetok.cli import main

    args = ["serve", "--bundle", str(tiny), "--token", TOKEN, "--session-budget-mib", "0.04"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "cannot hold one utterance of 1501 segments of dim 8" in result.output


def test_tls(tmp_path: Path, stage: DecoderStage, identity: Identity) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=edgetok",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    frames = utterance(9, 2)

    async def main() -> None:
        async with serve(stage, identity, token=TOKEN, ssl=server_context) as server:
            address = f"wss://127.0.0.1:{server.port}/"
            trusted = ssl.create_default_context(cafile=str(cert))
            async with Client(address, TOKEN, identity, ssl=trusted) as client:
                await send_all(client, 1, frames)
                assert await client.result(1) == stage(wire_vectors(frames))
            with pytest.raises(ssl.SSLCertVerificationError):
                await Client(address, TOKEN, identity).start()  # an unknown certificate

    run(main)
