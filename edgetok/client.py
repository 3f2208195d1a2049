"""The device side of the wire protocol (docs/protocol.md): send segments, get text back.

``Client`` (asyncio) numbers every frame, keeps each one in a bounded buffer until the
server acknowledges it (``send`` waits while the buffer is full: backpressure, never a
silent drop), and after a lost connection reconnects with exponential backoff and
jitter, then resends every unacknowledged frame; the server applies each frame once.
``RemoteDecoder`` runs a ``Client`` on its own event loop thread for the thread-based
audio pipeline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from ssl import SSLCertVerificationError, SSLContext
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import process_exception
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from edgetok.protocol import (
    CLOSE_CODES,
    HELLO_DTYPES,
    MAX_PENDING,
    RETRYABLE_ERRORS,
    Ack,
    Error,
    Final,
    Hello,
    Identity,
    Message,
    Partial,
    ProtocolError,
    Ready,
    encode_frame,
    encode_tokens_frame,
    parse_message,
    ws_message_bytes,
)
from edgetok.segment_codes import SegmentCodes

if TYPE_CHECKING:
    from edgetok.token_wire import TokenWire

__all__ = [
    "AuthError",
    "Client",
    "ClientStats",
    "RemoteDecoder",
    "RemoteError",
    "TextEvent",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_RESULTS_KEPT = 256
"""Finished transcripts kept for ``result`` when nobody asks for them."""
# Close codes after which reconnecting would meet the same refusal.
_FATAL_CLOSE = {code for name, code in CLOSE_CODES.items() if name not in RETRYABLE_ERRORS} | {
    1002,
    1003,
    1007,
    1008,
    1010,
}


class RemoteError(RuntimeError):
    """The server refused the connection or an utterance; ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class AuthError(RemoteError):
    """HTTP 401: the bearer token is missing or wrong."""


@dataclass(frozen=True)
class TextEvent:
    """A ``partial`` or ``final`` transcript of one utterance."""

    utterance: int
    text: str
    final: bool
    segments: int
    """Segments the text was decoded from."""


@dataclass
class ClientStats:
    """Counters for bytes/s reports; wire bytes include websocket framing, not TCP/TLS."""

    frames: int = 0
    segments: int = 0
    payload_bytes: int = 0
    """Frame bytes, each frame counted once."""
    wire_bytes: int = 0
    """Every websocket message sent (hellos and resends too) with its frame header."""
    resent_frames: int = 0
    reconnects: int = 0


class Client:
    """Asyncio client for one session: ``async with Client(url, token, identity) as c``.

    ``send`` frames segments of an utterance, ``result`` awaits its final text;
    ``on_transcript`` (called on the event loop) sees every partial and final.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        identity: Identity,
        *,
        dtype: str = "fp16",
        codes: SegmentCodes | None = None,
        tokens: TokenWire | None = None,
        buffer_frames: int = 64,
        retry_for_s: float = 30.0,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        open_timeout_s: float = 10.0,
        ssl: SSLContext | None = None,
        on_transcript: Callable[[TextEvent], None] | None = None,
    ) -> None:
        if dtype not in HELLO_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(HELLO_DTYPES)}")
        if (dtype == "codes") != (codes is not None):
            raise ValueError("dtype codes goes with the bundle's segment codes (codes=)")
        if (dtype == "tokens") != (tokens is not None):
            raise ValueError("dtype tokens goes with the bundle's token wire (tokens=)")
        if buffer_frames < 1 or not retry_for_s > 0:
            raise ValueError("buffer_frames must be >= 1 and retry_for_s > 0")
        self.url, self.identity, self.dtype, self.codes = url, identity, dtype, codes
        self.tokens = tokens
        # Float frames speak version 1, which every server understands; codes and tokens
        # need 2.
        self.version = 1 if dtype in ("fp16", "int8") else 2
        self.buffer_frames, self.retry_for_s = buffer_frames, retry_for_s
        self.backoff_s, self.max_backoff_s, self.open_timeout_s = (
            backoff_s,
            max_backoff_s,
            open_timeout_s,
        )
        self.on_transcript = on_transcript
        self.stats = ClientStats()
        self.session = secrets.token_hex(16)
        token = token.strip() if token else token  # the server strips its token alike
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._resume_key = ""  # the session's secret, from the server's first ready
        self._tls = {"ssl": ssl} if ssl is not None else {}
        self._seq = 0
        self._written = -1
        """The highest seq ever written: a lower one written again is a resend."""
        self._unacked: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._changed = asyncio.Event()
        """Set whenever the buffer or the failure changes; waiters re-check."""
        self._open: dict[int, asyncio.Future[str]] = {}
        """Utterances sent whose final has not arrived."""
        self._done: OrderedDict[int, asyncio.Future[str]] = OrderedDict()
        self._applied: set[int] = set()
        """Open utterances with acknowledged frames: lost if the server forgets the session."""
        self._lost: set[int] = set()
        """Utterances failed by a session loss: refused until the server finishes them."""
        self._max_frame_bytes: int | None = None
        self._error: Error | None = None
        """The server's last connection-level error: why it is about to close."""
        self._attempt = 0
        self._failing_since: float | None = None
        """When the current run of failed connection attempts began."""
        self._connection: ClientConnection | None = None
        self._failure: BaseException | None = None
        self._started = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        await self.close(flush=exc_type is None)

    async def start(self) -> None:
        """Connect; raises ``AuthError``/``RemoteError`` if refused, ``ConnectionError``
        when no connection could be made within ``retry_for_s``."""
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(self._check_run)
        await self._started.wait()
        self._raise_if_failed()

    async def send(
        self,
        utterance: int,
        starts: np.ndarray,
        lengths: np.ndarray,
        vectors: np.ndarray,
        *,
        tokens: np.ndarray | None = None,
        end: bool = False,
    ) -> int:
        """Queue one frame of segments of ``utterance`` (``end``: its last); returns its seq.
        On the token wire (dtype tokens) the frame carries the segments' ``tokens`` (their
        ids, sum(lengths) of them) and ``vectors`` are not sent.

        Waits while ``buffer_frames`` frames are unacknowledged.
        """
        if utterance in self._lost:
            raise RemoteError("session_lost", f"utterance {utterance} was lost with the session")
        if self.tokens is None:
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != self.identity.dim:
                raise ValueError(f"vectors must be [S, {self.identity.dim}], got {vectors.shape}")
        elif tokens is None:
            raise ValueError("the token wire sends token ids: give tokens=")
        await self._wait_for(lambda: len(self._unacked) < self.buffer_frames)
        seq = self._seq
        if self.tokens is None:
            data = encode_frame(
                seq,
                utterance,
                starts,
                lengths,
                vectors,
                dtype=self.dtype,
                end=end,
                codes=self.codes,
            )
        else:
            data = encode_tokens_frame(
                seq, utterance, starts, lengths, tokens, self.tokens.vocab_size, end=end
            )
        if self._max_frame_bytes is not None and len(data) > self._max_frame_bytes:
            raise ValueError(
                f"a frame of {len(data)} bytes exceeds the server's limit of "
                f"{self._max_frame_bytes}; send fewer segments a frame"
            )
        self._seq += 1
        self._unacked[seq] = (utterance, data)
        self._changed.set()
        if utterance not in self._open:
            self._open[utterance] = asyncio.get_running_loop().create_future()
        self.stats.frames += 1
        self.stats.segments += len(starts)
        self.stats.payload_bytes += len(data)
        return seq

    async def flush(self) -> None:
        """Wait until the server has acknowledged every frame."""
        await self._wait_for(lambda: not self._unacked)

    async def result(self, utterance: int) -> str:
        """The final text of ``utterance`` (raises ``RemoteError`` if its decode failed)."""
        future = self._open.get(utterance) or self._done.get(utterance)
        if future is None:
            raise KeyError(f"utterance {utterance} was not sent, or its result was taken")
        text = await asyncio.shield(future)
        self._done.pop(utterance, None)
        return text

    async def close(self, *, flush: bool = True, timeout_s: float = 10.0) -> None:
        """Disconnect; with ``flush``, first wait up to ``timeout_s`` for every
        acknowledgement, raising ``TimeoutError`` (after disconnecting) if some are missing."""
        try:
            if flush and self._failure is None and self._task is not None:
                try:
                    await asyncio.wait_for(self.flush(), timeout_s)
                except asyncio.TimeoutError:
                    raise TimeoutError(
                        f"{len(self._unacked)} frames unacknowledged after {timeout_s:g} s"
                    ) from None
        finally:
            self._closing = True
            if self._connection is not None:
                await self._connection.close()
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._fail(ConnectionError("the client is closed"))

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; raise if the client fails meanwhile."""
        while not predicate():
            self._raise_if_failed()
            self._changed.clear()
            await self._changed.wait()
        self._raise_if_failed()

    def _fail(self, exc: BaseException) -> None:
        """Stop for good: wake every waiter with ``exc``."""
        if self._failure is None:
            self._failure = exc
        for future in self._open.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning
        self._started.set()
        self._changed.set()

    def _check_run(self, task: asyncio.Task[None]) -> None:
        """A connection loop that died of an unexpected error fails the client."""
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())

    async def _run(self) -> None:
        """Connect, serve the connection, reconnect after a transient failure."""
        while not self._closing:
            try:
                async with connect(
                    self.url,
                    additional_headers=self._headers,
                    compression=None,
                    open_timeout=self.open_timeout_s,
                    **self._tls,
                ) as connection:
                    await self._serve(connection)  # returns only by raising
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                if code in _FATAL_CLOSE:
                    error = self._error or Error(code=str(code), message=str(exc))
                    return self._fail(RemoteError(error.code, error.message))
                reason: object = exc
            except RemoteError as exc:
                return self._fail(exc)
            except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                if isinstance(exc, SSLCertVerificationError):  # retrying will not fix it
                    return self._fail(exc)
                if isinstance(exc, InvalidStatus) and exc.response.status_code == 401:
                    return self._fail(AuthError("unauthorized", "missing or wrong bearer token"))
                if isinstance(exc, InvalidHandshake) and process_exception(exc) is not None:
                    return self._fail(RemoteError("handshake", str(exc)))
                reason = exc
            self._error = None
            if self._closing:
                return
            self._attempt += 1
            now = time.monotonic()
            self._failing_since = self._failing_since or now
            if now - self._failing_since > self.retry_for_s:
                return self._fail(
                    ConnectionError(
                        f"no connection for {self.retry_for_s:g} s "
                        f"({self._attempt} attempts): {reason}"
                    )
                )
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self._attempt - 1))
            delay *= random.uniform(0.5, 1.0)
            log.info("connection to %s lost (%s); retrying in %.2f s", self.url, reason, delay)
            await asyncio.sleep(delay)

    async def _serve(self, connection: ClientConnection) -> None:
        """Hello, then resend what is unacknowledged and send new frames while reading."""
        first = next(iter(self._unacked), self._seq)
        hello = Hello(
            version=self.version,
            session=self.session,
            bundle=self.identity.bundle,
            aggregator_sha256=self.identity.aggregator_sha256,
            dim=self.identity.dim,
            dtype=self.dtype,
            seq=first,
            pending=tuple(self._open)[-MAX_PENDING:],
            resume_key=self._resume_key,
            codes_sha256=self.codes.sha256 if self.codes is not None else "",
            reader_sha256=self.tokens.sha256 if self.tokens is not None else "",
        )
        await self._write(connection, hello.to_json())
        reply = self._parse(await asyncio.wait_for(connection.recv(), self.open_timeout_s))
        if isinstance(reply, Error):
            raise RemoteError(reply.code, reply.message)
        if not isinstance(reply, Ready):
            raise RemoteError("bad_message", f"expected ready, got {reply.TYPE}")
        self._attempt, self._failing_since = 0, None
        self._resume_key = reply.resume_key
        self._max_frame_bytes = reply.max_frame_bytes
        if not reply.resumed:
            self._forget_applied()
        if self._started.is_set():
            self.stats.reconnects += 1
        self._started.set()
        self._connection = connection
        writer = asyncio.create_task(self._write_frames(connection, first))
        try:
            while True:
                self._receive(self._parse(await connection.recv()))
        finally:
            self._connection = None
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    def _forget_applied(self) -> None:
        """The server lost the session: utterances it had partly applied cannot finish."""
        for utterance in list(self._applied):
            self._lost.add(utterance)
            self._settle(utterance, RemoteError("session_lost", "the server lost the session"))
        self._applied.clear()

    async def _write_frames(self, connection: ClientConnection, seq: int) -> None:
        """Write frames in seq order from ``seq``, skipping ones acknowledged meanwhile."""
        while True:
            await self._wait_for(lambda seq=seq: seq < self._seq)
            entry = self._unacked.get(seq)
            if entry is not None:
                await self._write(connection, entry[1])
                if seq <= self._written:
                    self.stats.resent_frames += 1
                self._written = max(self._written, seq)
            seq += 1

    async def _write(self, connection: ClientConnection, data: str | bytes) -> None:
        await connection.send(data)
        size = len(data) if isinstance(data, bytes) else len(data.encode())
        self.stats.wire_bytes += ws_message_bytes(size)

    def _parse(self, data: str | bytes) -> Message:
        if not isinstance(data, str):
            raise RemoteError("bad_message", "the server sent a binary message")
        try:
            return parse_message(data, (self.version,))
        except ProtocolError as exc:
            raise RemoteError(exc.code, str(exc)) from None

    def _receive(self, message: Message) -> None:
        if isinstance(message, Ack):
            for seq in [seq for seq in self._unacked if seq <= message.seq]:
                utterance, _ = self._unacked.pop(seq)
                if utterance in self._open:
                    self._applied.add(utterance)
            self._changed.set()
        elif isinstance(message, (Partial, Final)):
            if message.utterance in self._lost:  # a truncated utterance: not reported
                if isinstance(message, Final):
                    self._lost.discard(message.utterance)
                return
            if message.utterance not in self._open:  # already final: a repeat
                return
            if isinstance(message, Final):
                self._settle(message.utterance, message.text)
            if self.on_transcript is not None:
                transcript = TextEvent(
                    message.utterance, message.text, isinstance(message, Final), message.segments
                )
                try:
                    self.on_transcript(transcript)
                except Exception:
                    log.exception("on_transcript failed")
        elif isinstance(message, Error) and message.utterance is not None:
            self._settle(message.utterance, RemoteError(message.code, message.message))
        elif isinstance(message, Error):  # the server closes next; its close code decides
            log.warning("server error %s: %s", message.code, message.message)
            self._error = message
        else:
            raise RemoteError("bad_message", f"unexpected {message.TYPE} from the server")

    def _settle(self, utterance: int, outcome: str | BaseException) -> None:
        """Record the final text (or failure) of an open utterance."""
        future = self._open.pop(utterance, None)
        self._applied.discard(utterance)
        if future is None or future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
            future.exception()
        else:
            future.set_result(outcome)
        self._done[utterance] = future
        while len(self._done) > _RESULTS_KEPT:
            self._done.popitem(last=False)


class RemoteDecoder:
    """A ``Client`` on its own event loop thread, for callers in ordinary threads.

    ``submit`` blocks while the client's buffer is full (``timeout`` bounds the wait).
    ``on_transcript`` is called on the client's thread.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        identity: Identity,
        *,
        start_timeout_s: float = 60.0,
        **options: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="edgetok-client", daemon=True
        )
        self._thread.start()
        try:
            self._client = self._call(self._make(url, token, identity, options), start_timeout_s)
        except BaseException:
            self._stop()
            raise

    @staticmethod
    async def _make(url: str, token: str | None, identity: Identity, options: Any) -> Client:
        client = Client(url, token, identity, **options)
        await client.start()
        return client

    def _call(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("RemoteDecoder methods block: do not call them on its own thread")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def submit(
        self,
        utterance: int,
        starts: np.ndarray,
        lengths: np.ndarray,
        vectors: np.ndarray,
        final: bool = False,
        *,
        tokens: np.ndarray | None = None,
        timeout: float | None = None,
    ) -> int:
        """``Client.send`` from this thread; returns the frame's seq."""
        return self._call(
            self._client.send(utterance, starts, lengths, vectors, tokens=tokens, end=final),
            timeout,
        )

    def result(self, utterance: int, timeout: float | None = None) -> str:
        """The final text of ``utterance``, waiting up to ``timeout`` seconds."""
        return self._call(self._client.result(utterance), timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every frame is acknowledged."""
        self._call(self._client.flush(), timeout)

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the client's counters."""
        return replace(self._client.stats)

    def close(self, timeout: float = 10.0) -> None:
        """Flush (up to ``timeout`` seconds), disconnect and stop the thread."""
        if self._thread.is_alive():
            try:
                self._call(self._client.close(timeout_s=timeout), None)
            finally:
                self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> RemoteDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
