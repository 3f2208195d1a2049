"""Bytes the decoding server holds for its sessions, per session and in all.

Each session has an ``Account`` in the server's ``Ledger``: segment vectors as they are
kept (float32), the finals it remembers, and a fixed charge for its bookkeeping. Budgets
are checked against these counts (``edgetok.server``); ``Ledger.freed`` wakes whoever
waits for bytes to be given back.
"""

from __future__ import annotations

import asyncio

__all__ = ["SESSION_BYTES", "UTTERANCE_BYTES", "Account", "Ledger", "Signal"]

SESSION_BYTES = 4096
"""Charged for a session's bookkeeping (its objects, key and maps)."""
UTTERANCE_BYTES = 512
"""Charged for one utterance's bookkeeping, beyond its vectors."""


class Signal:
    """Wakes every waiter on each ``fire``. A coroutine that checks its condition and then
    awaits ``wait()`` misses no ``fire`` in between (one event loop, no await between)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class Ledger:
    """Bytes held by all accounts (``total``), the most ever held (``peak``)."""

    def __init__(self) -> None:
        self.total = 0
        self.peak = 0
        self.freed = Signal()
        """Fired whenever an account gives bytes back."""

    def account(self) -> Account:
        return Account(self)

    def _move(self, nbytes: int) -> None:
        self.total += nbytes
        if nbytes > 0:
            self.peak = max(self.peak, self.total)
        elif nbytes < 0:
            self.freed.fire()


class Account:
    """Bytes one session holds; every change moves its ledger's total too."""

    def __init__(self, ledger: Ledger) -> None:
        self.held = 0
        self._ledger = ledger

    def charge(self, nbytes: int) -> None:
        """Add ``nbytes`` (negative: give them back)."""
        self.held += nbytes
        self._ledger._move(nbytes)

    def close(self) -> None:
        """Give everything back (the session is dropped)."""
        self.charge(-self.held)
