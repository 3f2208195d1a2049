"""The decoding server behind ``edgetok serve``: segment vectors in, transcripts out.

One websocket endpoint speaks protocol version 1 (docs/protocol.md). ``process_request``
refuses a wrong bearer token (HTTP 401) and connections beyond the limit (HTTP 503)
before the upgrade. A connection starts with the client's ``hello``; frames are then
applied in sequence order into a *session* that outlives the connection, so a client
that reconnects and resends gets each frame applied once. Decoding runs in worker threads
(``asyncio.to_thread``, at most ``Limits.decode_threads`` at a time), one decode at a
time per utterance: a ``partial`` after each decode, a ``final`` at end of utterance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from ssl import SSLContext
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from edgetok.protocol import (
    CLOSE_CODES,
    HEADER_BYTES,
    Ack,
    Error,
    Final,
    Frame,
    Hello,
    Identity,
    Partial,
    ProtocolError,
    Ready,
    decode_frame,
    parse_message,
)

__all__ = [
    "BackgroundServer",
    "Decoder",
    "Limits",
    "Server",
    "ServerStats",
    "SupportsDecode",
    "serve",
    "start_server",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_FINALS_KEPT = 64
"""Finished utterances a session remembers, to resend a ``final`` lost with a connection."""


@runtime_checkable
class SupportsDecode(Protocol):
    """A decoder object: float32 [S, D] segment vectors -> text."""

    def decode(self, vectors: np.ndarray) -> str: ...


Decoder = Callable[[np.ndarray], str] | SupportsDecode
"""What the server decodes with; called from worker threads, so it must be thread-safe."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds on what clients may make the server hold and do."""

    max_connections: int = 16
    max_frame_bytes: int = 256 * 1024
    """Larger frames: ``too_large``; beyond twice this, websockets closes (1009) unread."""
    max_frames_per_second: float = 50.0
    burst_frames: int = 100
    """Token bucket per connection: ``burst_frames`` at once, refilled at the rate."""
    max_open_utterances: int = 16
    """Utterances a session may be sending at once (not yet ended)."""
    max_queued_utterances: int = 64
    """Utterances of a session, ended or not, whose final text is not yet out."""
    max_segments_per_utterance: int = 4096
    max_sessions: int = 256
    session_ttl_s: float = 300.0
    """How long a session without a connection is kept for a reconnect."""
    decode_threads: int = 2
    hello_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    """A connection that sends no frame for this long, with no text owed to it, is closed."""
    max_auth_failures: int = 20
    """Wrong tokens per address per ``auth_window_s``; beyond, the address gets HTTP 429."""
    auth_window_s: float = 60.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {value}")
        if self.max_sessions < self.max_connections:
            raise ValueError("Limits.max_sessions must be >= max_connections")
        if not HEADER_BYTES < self.max_frame_bytes <= 64 << 20:
            raise ValueError(f"Limits.max_frame_bytes must be in ({HEADER_BYTES}, 64 MiB]")


@dataclass
class ServerStats:
    """Counters since the server started."""

    connections: int = 0
    """Connections whose hello was accepted."""
    refused: int = 0
    """Handshakes refused with HTTP 401 or 503."""
    frames: int = 0
    """Frames applied (each at most once)."""
    segments: int = 0
    duplicates: int = 0
    """Resent frames that had been applied already: acknowledged and ignored."""
    partials: int = 0
    finals: int = 0
    errors: int = 0
    """Connections closed with a protocol error."""


@dataclass(eq=False)
class _Utterance:
    chunks: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    end_token: int = 0
    """Where the last segment ends: the next must start here or later."""
    ended: bool = False
    text: str | None = None
    decoded: int = 0
    """Segments in the last decode."""
    task: asyncio.Task[None] | None = None


#: Addresses whose wrong tokens the server remembers (the oldest are forgotten first).
_ADDRESSES_KEPT = 4096
#: Seconds between two log lines about one address's refused logins.
_AUTH_LOG_EVERY_S = 10.0


class _AuthFailures:
    """Wrong tokens from one address in the current window, and when it was last logged."""

    def __init__(self) -> None:
        self.window_start = time.monotonic()
        self.count = 0
        self.unlogged = 0
        self.logged_at = -math.inf

    def _roll(self, limits: Limits) -> None:
        now = time.monotonic()
        if now - self.window_start > limits.auth_window_s:
            self.window_start, self.count = now, 0

    def add(self, limits: Limits) -> None:
        self._roll(limits)
        self.count += 1

    def blocked(self, limits: Limits) -> bool:
        self._roll(limits)
        return self.count >= limits.max_auth_failures

    def note(self, address: str) -> None:
        """One log line per address every ``_AUTH_LOG_EVERY_S``, with the count since."""
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= _AUTH_LOG_EVERY_S:
            log.warning("refused %d login(s) from %s: wrong token", self.unlogged, address)
            self.logged_at, self.unlogged = now, 0


class _Session:
    """What a client has sent, kept across its reconnects."""

    def __init__(self, sid: str, next_seq: int) -> None:
        self.id = sid
        self.key = secrets.token_urlsafe(24)
        """Sent only to the owner (``ready``); a hello resuming the session must carry it."""
        self.next_seq = next_seq
        self.connection: ServerConnection | None = None
        self.detached_at = time.monotonic()
        self.open: dict[int, _Utterance] = {}
        self.done: OrderedDict[int, Final | Error] = OrderedDict()

    def apply(self, frame: Frame, limits: Limits) -> _Utterance | None:
        """Apply ``frame`` if it is the next in sequence; None for a duplicate."""
        if frame.seq < self.next_seq:
            return None
        if frame.seq > self.next_seq:
            raise ProtocolError("sequence", f"frame seq {frame.seq}; expected {self.next_seq}")
        utterance = self.open.get(frame.utterance)
        if utterance is None:
            sending = sum(not u.ended for u in self.open.values())
            if sending >= limits.max_open_utterances:
                raise ProtocolError(
                    "limit_exceeded", f"more than {limits.max_open_utterances} open utterances"
                )
            if len(self.open) >= limits.max_queued_utterances:
                raise ProtocolError(
                    "limit_exceeded",
                    f"more than {limits.max_queued_utterances} utterances waiting for text",
                )
        utterance = utterance or _Utterance()
        if utterance.ended:
            raise ProtocolError("sequence", f"utterance {frame.utterance} has ended")
        count = len(frame.starts)
        if utterance.count + count > limits.max_segments_per_utterance:
            raise ProtocolError(
                "limit_exceeded",
                f"utterance {frame.utterance} longer than "
                f"{limits.max_segments_per_utterance} segments",
            )
        if count and frame.starts[0] < utterance.end_token:
            raise ProtocolError(
                "sequence",
                f"utterance {frame.utterance}: segment at token {int(frame.starts[0])} before "
                f"the end of the previous one at {utterance.end_token}",
            )
        self.open[frame.utterance] = utterance
        if count:
            utterance.chunks.append(frame.vectors)
            utterance.count += count
            utterance.end_token = int(frame.starts[-1] + frame.lengths[-1])
        utterance.ended = frame.end
        self.next_seq += 1
        return utterance

    def finish(self, utterance: int, message: Final | Error) -> None:
        self.open.pop(utterance, None)
        self.done[utterance] = message
        self.done.move_to_end(utterance)
        while len(self.done) > _FINALS_KEPT:
            self.done.popitem(last=False)

    async def send(self, message: Partial | Final | Error) -> None:
        """Send on the current connection; dropped when there is none (finals are kept)."""
        if self.connection is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.connection.send(message.to_json())


class _Bucket:
    """Token bucket: ``burst`` frames at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Server:
    """Connection handling for ``serve``; ``decoder`` turns float32 [S, D] into text."""

    def __init__(
        self, decoder: Decoder, identity: Identity, *, token: str, limits: Limits | None = None
    ) -> None:
        token = token.strip()  # as the client sends it and as a header is read
        if not token:
            raise ValueError("the server needs a non-empty bearer token")
        self.decode = decoder.decode if isinstance(decoder, SupportsDecode) else decoder
        self.identity = identity
        self.limits = limits or Limits()
        self.stats = ServerStats()
        self.port = 0
        """The bound TCP port, once ``serve`` has started."""
        self._token = token.encode()
        self._auth_failures: dict[str, _AuthFailures] = {}
        self._admitted: set[ServerConnection] = set()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._decoding = asyncio.Semaphore(self.limits.decode_threads)
        self._tasks: set[asyncio.Task[None]] = set()

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the upgrade: HTTP 401 for a missing or wrong token, 503 when full."""
        address = str(connection.remote_address[0]) if connection.remote_address else "?"
        failures = self._auth_failures.get(address)
        if failures is not None and failures.blocked(self.limits):
            self.stats.refused += 1
            failures.note(address)
            response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many wrong tokens\n")
            response.headers["Retry-After"] = str(round(self.limits.auth_window_s))
            return response
        values = request.headers.get_all("Authorization")
        scheme, _, token = (values[0] if len(values) == 1 else "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._token
        ):
            self.stats.refused += 1
            if failures is None:
                failures = self._auth_failures.setdefault(address, _AuthFailures())
                while len(self._auth_failures) > _ADDRESSES_KEPT:
                    self._auth_failures.pop(next(iter(self._auth_failures)))
            failures.add(self.limits)
            failures.note(address)
            response = connection.respond(
                HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token\n"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="edgetok"'
            return response
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        if len(self._admitted) >= self.limits.max_connections:
            self.stats.refused += 1
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            response.headers["Retry-After"] = "1"
            return response
        self._admitted.add(connection)
        return None

    async def handle(self, connection: ServerConnection) -> None:
        """One connection: hello, then frames until it closes or breaks the protocol."""
        session = None
        try:
            hello, session = await self._hello(connection)
            bucket = _Bucket(self.limits.max_frames_per_second, self.limits.burst_frames)
            while True:
                message = await self._next(connection, session)
                if isinstance(message, str):
                    raise ProtocolError("bad_message", "after the hello, only binary frames")
                if not bucket.take():
                    raise ProtocolError(
                        "rate_limited",
                        f"more than {self.limits.max_frames_per_second:g} frames/s "
                        f"(burst {self.limits.burst_frames})",
                    )
                await self._frame(connection, session, message, hello.dtype)
        except ProtocolError as exc:
            self.stats.errors += 1
            log.info("closing %s: %s: %s", connection.remote_address, exc.code, exc)
            with contextlib.suppress(ConnectionClosed):
                await connection.send(Error(code=exc.code, message=str(exc)).to_json())
                await connection.close(CLOSE_CODES[exc.code], exc.code)
        except ConnectionClosed:
            pass
        finally:
            if session is not None and session.connection is connection:
                session.connection = None
                session.detached_at = time.monotonic()

    async def _next(self, connection: ServerConnection, session: _Session) -> str | bytes:
        """The next message; ``idle`` once none came for ``idle_timeout_s`` while the
        session is owed no text (a client waiting for a slow decode is not idle)."""
        idle = self.limits.idle_timeout_s
        while True:
            try:
                return await asyncio.wait_for(connection.recv(), idle)
            except asyncio.TimeoutError:
                if not session.open:
                    raise ProtocolError("idle", f"no frame for {idle:g} s") from None

    async def _hello(self, connection: ServerConnection) -> tuple[Hello, _Session]:
        """Read and check the hello, attach its session, answer ``ready``."""
        try:
            text = await asyncio.wait_for(connection.recv(), self.limits.hello_timeout_s)
        except asyncio.TimeoutError:
            raise ProtocolError(
                "bad_message", f"no hello within {self.limits.hello_timeout_s:g} s"
            ) from None
        if not isinstance(text, str):
            raise ProtocolError("bad_message", "the first message must be a JSON hello")
        hello = parse_message(text)
        if not isinstance(hello, Hello):
            raise ProtocolError(
                "bad_message", f"the first message must be a hello, not {hello.TYPE}"
            )
        if hello.identity != self.identity:
            mine, theirs = self.identity, hello.identity
            raise ProtocolError(
                "identity",
                f"this server decodes bundle {mine.bundle!r}, aggregator "
                f"{mine.aggregator_sha256[:12]}, dim {mine.dim}; the client sent "
                f"{theirs.bundle!r}, {theirs.aggregator_sha256[:12]}, dim {theirs.dim}",
            )
        session, resumed = self._attach(hello, connection)
        self.stats.connections += 1
        limits = self.limits
        ready = Ready(
            session=session.id,
            resumed=resumed,
            max_frame_bytes=limits.max_frame_bytes,
            max_frames_per_second=limits.max_frames_per_second,
            burst_frames=limits.burst_frames,
            resume_key=session.key,
        )
        await connection.send(ready.to_json())
        for utterance in hello.pending:
            if utterance in session.done:
                await session.send(session.done[utterance])
        return hello, session

    def _attach(self, hello: Hello, connection: ServerConnection) -> tuple[_Session, bool]:
        """The hello's session (resumed, or new), now served on ``connection``."""
        now = time.monotonic()
        for sid, old in list(self._sessions.items()):
            if old.connection is None and now - old.detached_at > self.limits.session_ttl_s:
                self._drop(sid)
        session = self._sessions.get(hello.session)
        resumed = session is not None
        if session is None:
            if len(self._sessions) >= self.limits.max_sessions:
                # Connected sessions < max_connections <= max_sessions: an idle one exists.
                self._drop(next(k for k, s in self._sessions.items() if s.connection is None))
            session = self._sessions[hello.session] = _Session(hello.session, hello.seq)
        elif not hmac.compare_digest(hello.resume_key.encode(), session.key.encode()):
            raise ProtocolError(
                "session_taken", f"session {hello.session!r} belongs to another client"
            )
        elif hello.seq > session.next_seq:
            raise ProtocolError(
                "sequence", f"hello seq {hello.seq}; the server expects {session.next_seq}"
            )
        self._sessions.move_to_end(hello.session)
        previous, session.connection = session.connection, connection
        if previous is not None:
            log.info("session %s moved to %s", session.id, connection.remote_address)
            self._spawn(self._supersede(previous))
        return session, resumed

    def _drop(self, sid: str) -> None:
        session = self._sessions.pop(sid)
        for utterance in session.open.values():
            if utterance.task is not None:
                utterance.task.cancel()

    async def _supersede(self, connection: ServerConnection) -> None:
        message = "this session continues on a newer connection"
        with contextlib.suppress(ConnectionClosed):
            await connection.send(Error(code="superseded", message=message).to_json())
            await connection.close(CLOSE_CODES["superseded"], "superseded")

    async def _frame(
        self, connection: ServerConnection, session: _Session, data: bytes, dtype: str
    ) -> None:
        """Decode, apply (or skip a duplicate), acknowledge, and start decoding."""
        frame = decode_frame(
            data, max_bytes=self.limits.max_frame_bytes, dim=self.identity.dim, dtype=dtype
        )
        utterance = session.apply(frame, self.limits)
        if utterance is None:
            self.stats.duplicates += 1
        else:
            self.stats.frames += 1
            self.stats.segments += len(frame.starts)
        await connection.send(Ack(seq=frame.seq).to_json())
        if utterance is not None and (utterance.task is None or utterance.task.done()):
            utterance.task = self._spawn(self._run(session, frame.utterance, utterance))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, session: _Session, uid: int, utterance: _Utterance) -> None:
        """Decode ``utterance`` until it has caught up with what arrived; final at the end."""
        while True:
            count = utterance.count
            if utterance.text is None or count != utterance.decoded:
                if len(utterance.chunks) > 1:
                    utterance.chunks = [np.concatenate(utterance.chunks)]
                try:
                    text = await self._decode(utterance.chunks[0] if count else None)
                except Exception as exc:
                    log.exception("decoding utterance %d of session %s failed", uid, session.id)
                    error = Error(code="decode_failed", message=repr(exc)[:300], utterance=uid)
                    session.finish(uid, error)
                    await session.send(error)
                    return
                utterance.text, utterance.decoded = text, count
            caught_up = utterance.count == count
            if caught_up and utterance.ended:
                final = Final(utterance=uid, text=utterance.text, segments=count)
                session.finish(uid, final)
                self.stats.finals += 1
                await session.send(final)
                return
            self.stats.partials += 1
            await session.send(Partial(utterance=uid, text=utterance.text, segments=count))
            if caught_up:
                return

    async def _decode(self, vectors: np.ndarray | None) -> str:
        if vectors is None:
            return ""
        async with self._decoding:
            return await asyncio.to_thread(self.decode, vectors)

    async def shutdown(self) -> None:
        """Cancel running decodes (their threads finish on their own)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def serve(
    decoder: Decoder,
    identity: Identity,
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: Limits | None = None,
    ssl: SSLContext | None = None,
) -> AsyncIterator[Server]:
    """Serve until the block exits; yields the ``Server`` (``port`` is the bound port)."""
    server = Server(decoder, identity, token=token, limits=limits)
    async with ws_serve(
        server.handle,
        host,
        port,
        process_request=server.process_request,
        compression=None,
        max_size=2 * server.limits.max_frame_bytes,
        ssl=ssl,
    ) as listening:
        server.port = listening.sockets[0].getsockname()[1]
        try:
            yield server
        finally:
            await server.shutdown()


class BackgroundServer:
    """``serve`` on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(self, decoder: Decoder, identity: Identity, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="edgetok-serve", daemon=True
        )
        self._thread.start()
        self._context = serve(decoder, identity, **options)
        try:
            self.server: Server = self._call(self._context.__aenter__())
        except BaseException:
            self._stop()
            raise

    @property
    def port(self) -> int:
        return self.server.port

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        """Stop serving, then the loop and its thread."""
        if self._thread.is_alive():
            self._call(self._context.__aexit__(None, None, None))
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_server(decoder: Decoder, identity: Identity, **options: Any) -> BackgroundServer:
    """Start ``serve(decoder, identity, **options)`` in a background thread."""
    return BackgroundServer(decoder, identity, **options)
