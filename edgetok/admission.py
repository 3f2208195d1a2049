"""TCP connections before the websocket handshake: a cap on those not yet authenticated,
and one log line, not a traceback per attempt, when file descriptors run out.

A connection is *unauthenticated* from its accept until its HTTP upgrade request has
been read (the server then checks the token: ``edgetok.server.Server.process_request``).
``Doorman`` keeps at most ``limit`` of them: a new one beyond that aborts the oldest, so
connections that never send a request (or send it slowly) can hold neither file
descriptors nor the door against a client that sends its request at once.

When ``accept`` fails for want of file descriptors, asyncio reports each failed attempt
to the loop's exception handler with a traceback, many times a second. ``quiet_accept``
wraps that handler: such a report becomes one warning line per ``_FD_LOG_EVERY_S`` with
the count; the kernel keeps the refused connections queued until descriptors are free.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from websockets.asyncio.server import ServerConnection

__all__ = ["Doorman", "quiet_accept"]

log = logging.getLogger("edgetok.server")

_FD_LOG_EVERY_S = 60.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Doorman:
    """Connections accepted whose upgrade request has not been read, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.dropped = 0
        """Unauthenticated connections aborted to make room for newer ones."""
        self._waiting: OrderedDict[ServerConnection, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def arrived(self, connection: ServerConnection) -> None:
        """A connection was accepted: the oldest waiting one goes if there are too many."""
        self._waiting[connection] = None
        while len(self._waiting) > self.limit:
            oldest, _ = self._waiting.popitem(last=False)
            self.dropped += 1
            if oldest.transport is not None:
                oldest.transport.abort()

    def admitted(self, connection: ServerConnection) -> None:
        """Its request was read (or it closed): it no longer counts."""
        self._waiting.pop(connection, None)

    def connection_class(self) -> type[ServerConnection]:
        """A ``ServerConnection`` that reports to this doorman (for ``serve``'s
        ``create_connection``)."""
        doorman = self

        class Counted(ServerConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                doorman.arrived(self)

            def connection_lost(self, exc: Exception | None) -> None:
                doorman.admitted(self)
                super().connection_lost(exc)

        return Counted


class _AcceptFailures:
    """Counts failed accepts; logs the first and then one line per ``_FD_LOG_EVERY_S``."""

    def __init__(self) -> None:
        self.count = 0
        self.unlogged = 0
        self.logged_at = -_FD_LOG_EVERY_S

    def note(self, exc: OSError) -> None:
        self.count += 1
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= _FD_LOG_EVERY_S:
            log.warning(
                "cannot accept connections: %s (%d refused attempt(s)); they wait in the "
                "listen queue until connections close",
                exc.strerror or exc,
                self.unlogged,
            )
            self.logged_at, self.unlogged = now, 0


@contextlib.contextmanager
def quiet_accept(loop: asyncio.AbstractEventLoop) -> Iterator[_AcceptFailures]:
    """While inside, ``loop`` reports out-of-resources ``accept`` failures in one line."""
    failures = _AcceptFailures()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            if "accept" in str(context.get("message", "")):
                failures.note(exc)
                return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield failures
    finally:
        loop.set_exception_handler(previous)
