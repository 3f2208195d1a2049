"""The decoding server behind ``edgetok serve``: segment vectors in, transcripts out.

One websocket endpoint speaks protocol version 1 (docs/protocol.md). At most
``Limits.max_unauthenticated`` connections may wait to send their upgrade request
(``edgetok.admission``). ``process_request`` refuses a wrong bearer token (HTTP 401) and
connections beyond the limit (HTTP 503; a connection idle for ``idle_yield_s`` gives its
place up instead) before the upgrade. A connection starts with the client's ``hello``;
frames are then applied in sequence order into a *session* that outlives the connection,
so a client that reconnects and resends gets each frame applied once.

Every byte a session holds is counted (``edgetok.ledger``) against a per-session and a
server-wide budget: a frame that does not fit waits while decodes under way will free
bytes, evicts disconnected sessions, and is otherwise refused (``over_budget``).
Decoding runs on ``Limits.decode_threads`` worker threads shared round-robin by the
sessions (``edgetok.scheduler``), with at most ``Limits.decode_segments`` segments
being decoded at once (a decode's memory grows with them), one decode at a time per
utterance: a ``partial`` after each decode, a ``final`` at end of utterance.
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
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from edgetok.admission import Doorman, quiet_accept
from edgetok.ledger import SESSION_BYTES, UTTERANCE_BYTES, Account, Ledger
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
    decode_tokens_frame,
    parse_message,
)
from edgetok.scheduler import FairScheduler
from edgetok.segment_codes import SegmentCodes

if TYPE_CHECKING:
    from edgetok.token_wire import TokenVectors

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
_QUEUED_FRAMES = 4
"""Frames websockets reads ahead on one connection (each up to 2 ``max_frame_bytes``)."""


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
    max_unauthenticated: int = 64
    """Connections accepted that have not sent their upgrade request; a newer one beyond
    this aborts the oldest."""
    max_frame_bytes: int = 256 * 1024
    """Larger frames: ``too_large``; beyond twice this, websockets closes (1009) unread."""
    max_frames_per_second: float = 50.0
    burst_frames: int = 100
    """Token bucket per connection: ``burst_frames`` at once, refilled at the rate."""
    max_open_utterances: int = 16
    """Utterances a session may be sending at once (not yet ended)."""
    max_queued_utterances: int = 64
    """Utterances of a session, ended or not, whose final text is not yet out."""
    max_segments_per_utterance: int = 1600
    """``serve`` sets the bundle's bound (``protocol.max_utterance_segments``)."""
    max_session_bytes: int = 4 << 20
    """Bytes one session may hold: vectors of its utterances, finals kept, bookkeeping."""
    max_server_bytes: int = 64 << 20
    """Bytes all sessions together may hold; disconnected ones are evicted first."""
    max_sessions: int = 256
    session_ttl_s: float = 300.0
    """How long a session without a connection is kept for a reconnect (at most; it goes
    earlier when its bytes are needed)."""
    decode_threads: int = 2
    session_decodes: int = 1
    """Decodes one session may run at once; the sessions take turns on the threads."""
    decode_segments: int = 2400
    """Segments being decoded at once, all decodes together (a decode's working memory
    grows with its segments); a longer utterance is decoded alone. ``serve`` sets 1.5 x
    the bundle's longest utterance: two of the longest never run together."""
    hello_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    """A connection that sends no frame for this long, with no text owed to it, is closed."""
    idle_yield_s: float = 10.0
    """When the server is full, a connection idle this long gives its place to a new one."""
    max_auth_failures: int = 20
    """Wrong tokens per address per ``auth_window_s``; beyond, the address gets HTTP 429."""
    auth_window_s: float = 60.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {value}")
        if self.max_sessions < self.max_connections:
            raise ValueError("Limits.max_sessions must be >= max_connections")
        if self.max_server_bytes < self.max_session_bytes:
            raise ValueError("Limits.max_server_bytes must be >= max_session_bytes")
        if not HEADER_BYTES < self.max_frame_bytes <= 64 << 20:
            raise ValueError(f"Limits.max_frame_bytes must be in ({HEADER_BYTES}, 64 MiB]")

    def check_dim(self, dim: int) -> None:
        """Raise ``ValueError`` unless a session may hold one longest utterance of float32
        vectors of size ``dim``."""
        largest = self.max_segments_per_utterance * dim * 4 + UTTERANCE_BYTES + SESSION_BYTES
        if largest > self.max_session_bytes:
            raise ValueError(
                f"the session budget of {self.max_session_bytes} bytes cannot hold one "
                f"utterance of {self.max_segments_per_utterance} segments of dim {dim} "
                f"({largest} bytes with the session's bookkeeping)"
            )


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
    evicted: int = 0
    """Disconnected sessions dropped before their time, for room (bytes or count)."""
    yielded: int = 0
    """Idle connections closed to let a new one in."""


@dataclass(eq=False)
class _Utterance:
    chunks: list[np.ndarray] = field(default_factory=list)
    """Its segment vectors as they came; for the token wire, its token ids."""
    starts: list[np.ndarray] = field(default_factory=list)
    """The token wire: each frame's segment starts, as positions in the ids received."""
    tokens_received: int = 0
    count: int = 0
    nbytes: int = UTTERANCE_BYTES
    """What the utterance holds: its vectors and bookkeeping."""
    end_token: int = 0
    """Where the last segment ends: the next must start here or later."""
    ended: bool = False
    text: str | None = None
    decoded: int = 0
    """Segments in the last decode."""
    task: asyncio.Task[None] | None = None

    def payload(self) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """What its decode reads: the vectors [S, D], or (token ids, segment starts)."""
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        if not self.starts:
            return self.chunks[0]
        if len(self.starts) > 1:
            self.starts = [np.concatenate(self.starts)]
        return self.chunks[0], self.starts[0]

    def stop(self) -> None:
        """Cancel the decode task and forget it: the cancelled task's frames refer to this
        utterance, so keeping the task here would make a cycle that holds the vectors
        (those its frames passed on included) until the cycle collector runs."""
        if self.task is not None:
            self.task.cancel()
            self.task = None


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

    def __init__(self, sid: str, next_seq: int, account: Account) -> None:
        self.id = sid
        self.key = secrets.token_urlsafe(24)
        """Sent only to the owner (``ready``); a hello resuming the session must carry it."""
        self.next_seq = next_seq
        self.connection: ServerConnection | None = None
        self.detached_at = time.monotonic()
        self.open: dict[int, _Utterance] = {}
        self.done: OrderedDict[int, Final | Error] = OrderedDict()
        self.account = account
        account.charge(SESSION_BYTES)

    def detach(self) -> None:
        """No connection now: partials would reach nobody, so decodes of utterances not
        ended stop (the next frame after a reconnect starts them again)."""
        self.connection = None
        self.detached_at = time.monotonic()
        for utterance in self.open.values():
            if not utterance.ended:
                utterance.stop()

    def release(self) -> None:
        """The session is dropped: stop its decodes and let go of its utterances."""
        for utterance in self.open.values():
            utterance.stop()
        self.open.clear()

    def cost(self, frame: Frame) -> int:
        """Bytes applying ``frame`` would add (0 for a duplicate)."""
        if frame.seq < self.next_seq:
            return 0
        return _held_bytes(frame) + (UTTERANCE_BYTES * (frame.utterance not in self.open))

    def finishing(self) -> bool:
        """Whether an ended utterance waits for its final: its bytes will be freed."""
        return any(u.ended for u in self.open.values())

    def owed(self) -> bool:
        """Whether the server owes this session text: a final, or a decode under way."""
        return any(
            u.ended or (u.task is not None and not u.task.done()) for u in self.open.values()
        )

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
        if frame.utterance not in self.open:
            self.open[frame.utterance] = utterance
            self.account.charge(utterance.nbytes)
        if count and frame.tokens is not None and int(frame.starts[0]) != utterance.end_token:
            raise ProtocolError(
                "sequence",
                f"utterance {frame.utterance}: token ids must go on at token "
                f"{utterance.end_token}, not {int(frame.starts[0])}",
            )
        if count and utterance.count and (frame.tokens is None) != (not utterance.starts):
            raise ProtocolError(
                "bad_frame",
                f"utterance {frame.utterance} began with "
                f"{'token ids' if utterance.starts else 'vectors'}; a {frame.dtype} frame "
                "cannot continue it",
            )
        if count:
            held = _held_bytes(frame)
            if frame.tokens is None:
                utterance.chunks.append(frame.vectors)
            else:  # positions in the ids received so far
                offset = utterance.tokens_received - int(frame.starts[0])
                utterance.chunks.append(frame.tokens)
                utterance.starts.append(frame.starts + offset)
                utterance.tokens_received += len(frame.tokens)
            utterance.count += count
            utterance.nbytes += held
            self.account.charge(held)
            utterance.end_token = int(frame.starts[-1] + frame.lengths[-1])
        utterance.ended = frame.end
        self.next_seq += 1
        return utterance

    def finish(self, utterance: int, message: Final | Error) -> None:
        """Forget the utterance's vectors; keep ``message`` to send again on a reconnect."""
        finished = self.open.pop(utterance, None)
        if finished is not None:
            self.account.charge(-finished.nbytes)
        if utterance in self.done:
            self.account.charge(-_kept_bytes(self.done.pop(utterance)))
        self.done[utterance] = message
        self.account.charge(_kept_bytes(message))
        while len(self.done) > _FINALS_KEPT:
            _, old = self.done.popitem(last=False)
            self.account.charge(-_kept_bytes(old))

    async def send(self, message: Partial | Final | Error) -> None:
        """Send on the current connection; dropped when there is none (finals are kept)."""
        if self.connection is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.connection.send(message.to_json())


def _held_bytes(frame: Frame) -> int:
    """What a frame's segments hold on the server: their vectors, or their token ids and
    starts (the vectors rebuilt from them live only while a decode runs)."""
    if frame.tokens is None:
        return frame.vectors.nbytes
    return frame.tokens.nbytes + frame.starts.nbytes


def _kept_bytes(message: Final | Error) -> int:
    """What a remembered final or error is charged: its text and bookkeeping."""
    return UTTERANCE_BYTES + len(message.to_json())


@dataclass(eq=False)
class _Peer:
    """An admitted connection: its session once it said hello, when it last sent."""

    session: _Session | None = None
    active_at: float = field(default_factory=time.monotonic)


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
        self,
        decoder: Decoder,
        identity: Identity,
        *,
        token: str,
        limits: Limits | None = None,
        codes: SegmentCodes | None = None,
        tokens: TokenVectors | None = None,
    ) -> None:
        token = token.strip()  # as the client sends it and as a header is read
        if not token:
            raise ValueError("the server needs a non-empty bearer token")
        self.decode = decoder.decode if isinstance(decoder, SupportsDecode) else decoder
        self.identity = identity
        self.codes = codes
        """The bundle's segment codes: protocol 2 clients may send codes frames."""
        if codes is not None and codes.dim != identity.dim:
            raise ValueError(f"codebooks of D = {codes.dim} for vectors of D = {identity.dim}")
        self.tokens = tokens
        """The bundle's token reader and aggregator: protocol 2 clients may send tokens."""
        self.limits = limits = limits or Limits()
        limits.check_dim(identity.dim)
        self.stats = ServerStats()
        self.port = 0
        """The bound TCP port, once ``serve`` has started."""
        self.doorman = Doorman(limits.max_unauthenticated)
        self._token = token.encode()
        self._auth_failures: dict[str, _AuthFailures] = {}
        self._peers: dict[ServerConnection, _Peer] = {}
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._ledger = Ledger()
        self._scheduler = FairScheduler(
            limits.decode_threads,
            limits.session_decodes,
            capacity=limits.decode_segments,
            name="edgetok-decode",
        )
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def held_bytes(self) -> int:
        """Bytes the sessions hold now (``edgetok.ledger``)."""
        return self._ledger.total

    @property
    def peak_held_bytes(self) -> int:
        """The most bytes the sessions have held at once."""
        return self._ledger.peak

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the upgrade: HTTP 401 for a missing or wrong token, 503 when full."""
        self.doorman.admitted(connection)
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
        self._peers = {c: p for c, p in self._peers.items() if c.state is not State.CLOSED}
        if len(self._peers) >= self.limits.max_connections and not self._yield_idlest():
            self.stats.refused += 1
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            response.headers["Retry-After"] = "1"
            return response
        self._peers[connection] = _Peer()
        return None

    def _yield_idlest(self) -> bool:
        """Close the connection idle longest, if one is idle ``idle_yield_s`` and owed no
        text, to make room for a new one."""
        now = time.monotonic()
        idle = [
            (peer.active_at, connection)
            for connection, peer in self._peers.items()
            if peer.session is not None
            and not peer.session.owed()
            and now - peer.active_at >= self.limits.idle_yield_s
        ]
        if not idle:
            return False
        active_at, connection = min(idle, key=lambda item: item[0])
        del self._peers[connection]
        self.stats.yielded += 1
        message = f"idle for {now - active_at:.0f} s while the server is full"
        self._spawn(self._close(connection, "idle", message))
        return True

    async def handle(self, connection: ServerConnection) -> None:
        """One connection: hello, then frames until it closes or breaks the protocol."""
        session = None
        peer = self._peers.get(connection) or _Peer()
        try:
            hello, session = await self._hello(connection)
            peer.session, peer.active_at = session, time.monotonic()
            bucket = _Bucket(self.limits.max_frames_per_second, self.limits.burst_frames)
            while True:
                message = await self._next(connection, session)
                peer.active_at = time.monotonic()
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
            self._peers.pop(connection, None)
            if session is not None and session.connection is connection:
                session.detach()

    async def _next(self, connection: ServerConnection, session: _Session) -> str | bytes:
        """The next message; ``idle`` once none came for ``idle_timeout_s`` while the
        session is owed no text (a client waiting for a slow decode is not idle)."""
        idle = self.limits.idle_timeout_s
        while True:
            try:
                return await asyncio.wait_for(connection.recv(), idle)
            except asyncio.TimeoutError:
                if not session.owed():
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
        if hello.dtype == "codes":
            self._check_codes(hello)
        if hello.dtype == "tokens":
            self._check_tokens(hello)
        if hello.session not in self._sessions:
            await self._make_room(None, SESSION_BYTES)
        session, resumed = self._attach(hello, connection)
        self.stats.connections += 1
        limits = self.limits
        ready = Ready(
            version=hello.version,
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
                self._evict_detached()
            session = _Session(hello.session, hello.seq, self._ledger.account())
            self._sessions[hello.session] = session
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
            message = "this session continues on a newer connection"
            self._spawn(self._close(previous, "superseded", message))
        return session, resumed

    def _drop(self, sid: str) -> None:
        session = self._sessions.pop(sid)
        session.account.close()
        session.release()

    def _evict_detached(self) -> bool:
        """Drop the disconnected session attached longest ago; False if there is none."""
        sid = next((k for k, s in self._sessions.items() if s.connection is None), None)
        if sid is None:
            return False
        log.info("session %s evicted: its room is needed", sid)
        self._drop(sid)
        self.stats.evicted += 1
        return True

    async def _close(self, connection: ServerConnection, code: str, message: str) -> None:
        """Send ``error`` ``code`` on ``connection`` and close it with its close code."""
        with contextlib.suppress(ConnectionClosed):
            await connection.send(Error(code=code, message=message).to_json())
            await connection.close(CLOSE_CODES[code], code)

    async def _make_room(self, session: _Session | None, cost: int) -> None:
        """Return once ``session`` (None: a new one) may hold ``cost`` more bytes: wait
        while decodes under way will free bytes, evict disconnected sessions; else raise
        ``over_budget``."""
        limits, ledger = self.limits, self._ledger
        while True:
            if session is not None and session.account.held + cost > limits.max_session_bytes:
                if not session.finishing():
                    raise ProtocolError(
                        "over_budget",
                        f"the session holds {session.account.held} bytes in utterances not "
                        f"ended; its budget is {limits.max_session_bytes}",
                    )
            elif ledger.total + cost > limits.max_server_bytes:
                if self._evict_detached():
                    continue
                if not any(s.finishing() for s in self._sessions.values()):
                    raise ProtocolError(
                        "over_budget",
                        f"the server holds {ledger.total} bytes in utterances not ended; "
                        f"its budget is {limits.max_server_bytes}",
                    )
            else:
                return
            await ledger.freed.wait()

    def _check_codes(self, hello: Hello) -> None:
        """A codes hello names the codebooks this server decodes with."""
        if self.codes is None:
            raise ProtocolError(
                "identity",
                f"bundle {self.identity.bundle!r} has no segment codes here; send fp16 or int8",
            )
        if hello.codes_sha256 != self.codes.sha256:
            raise ProtocolError(
                "identity",
                f"this server's segment codebooks are {self.codes.sha256[:12]}; the client "
                f"sent {hello.codes_sha256[:12]}: device and server bundles differ",
            )

    def _check_tokens(self, hello: Hello) -> None:
        """A tokens hello names the token reader this server rebuilds vectors with."""
        if self.tokens is None:
            raise ProtocolError(
                "identity",
                f"bundle {self.identity.bundle!r} has no token reader here; send fp16, int8 "
                "or codes",
            )
        if hello.reader_sha256 != self.tokens.wire.sha256:
            raise ProtocolError(
                "identity",
                f"this server's token reader is {self.tokens.wire.sha256[:12]}; the client "
                f"sent {hello.reader_sha256[:12]}: device and server bundles differ",
            )

    async def _frame(
        self, connection: ServerConnection, session: _Session, data: bytes, dtype: str
    ) -> None:
        """Decode, wait for room, apply (or skip a duplicate), acknowledge, and start
        decoding."""
        if dtype == "tokens":
            assert self.tokens is not None  # the hello was checked
            frame = decode_tokens_frame(
                data, self.tokens.wire.vocab_size, max_bytes=self.limits.max_frame_bytes
            )
            if frame.seq >= session.next_seq:  # not a resent duplicate
                under_way = session.open.get(frame.utterance)
                self.tokens.check(frame, under_way.tokens_received if under_way else 0)
        else:
            frame = decode_frame(
                data,
                max_bytes=self.limits.max_frame_bytes,
                dim=self.identity.dim,
                dtype=dtype,
                codes=self.codes,
            )
        await self._make_room(session, session.cost(frame))
        if session.connection is not connection:  # superseded while it waited
            return
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
                try:
                    text = await self._decode(session, utterance.payload() if count else None)
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

    async def _decode(
        self, session: _Session, payload: np.ndarray | tuple[np.ndarray, np.ndarray] | None
    ) -> str:
        """``payload`` (``_Utterance.payload``) decoded on a worker thread in ``session``'s
        turn; token ids become vectors there too."""
        if payload is None:
            return ""
        if isinstance(payload, tuple):
            return await self._scheduler.run(
                session, self._decode_tokens, payload, weight=len(payload[1])
            )
        return await self._scheduler.run(session, self.decode, payload, weight=len(payload))

    def _decode_tokens(self, payload: tuple[np.ndarray, np.ndarray]) -> str:
        assert self.tokens is not None
        return self.decode(self.tokens(*payload))

    async def shutdown(self) -> None:
        """Cancel running decodes (their threads finish on their own)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._scheduler.close()


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
    codes: SegmentCodes | None = None,
    tokens: TokenVectors | None = None,
) -> AsyncIterator[Server]:
    """Serve until the block exits; yields the ``Server`` (``port`` is the bound port);
    ``codes``: the bundle's segment codes, for protocol 2 codes frames; ``tokens``: its
    token reader and aggregator, for protocol 2 tokens frames."""
    server = Server(decoder, identity, token=token, limits=limits, codes=codes, tokens=tokens)
    with quiet_accept(asyncio.get_running_loop()):
        async with ws_serve(
            server.handle,
            host,
            port,
            process_request=server.process_request,
            create_connection=server.doorman.connection_class(),
            compression=None,
            max_size=2 * server.limits.max_frame_bytes,
            max_queue=_QUEUED_FRAMES,
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
