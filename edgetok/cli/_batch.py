"""A batch of files that outlives its failures and stops gracefully on SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

import click

GRACE_S = 5.0
"""Seconds the utterances in flight get to finish after SIGTERM."""
TERMINATED = 128 + signal.SIGTERM
"""The exit status after SIGTERM, as a shell reports a process it terminated."""


class Closable(Protocol):
    def close(self) -> None: ...


class Termination:
    """SIGTERM while a batch runs: ``requested`` is set and the current ``source`` is
    closed, so no more audio is read while what is in flight finishes. If that takes more
    than ``grace_s`` seconds the process exits with status ``TERMINATED`` (stdout flushed).

    A context manager; the previous handler is back on exit. Off the main thread (where
    Python cannot take signals) it does nothing.
    """

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.requested = False
        self.source: Closable | None = None
        self._timer: threading.Timer | None = None
        self._previous: signal.Handlers | None = None
        self._installed = False

    def __enter__(self) -> Termination:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            return
        self.requested = True
        if self.source is not None:
            self.source.close()
        self._timer = threading.Timer(self.grace_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        sys.stdout.flush()
        sys.stderr.write(
            f"Error: stopped by SIGTERM; the utterances in flight did not finish within "
            f"{self.grace_s:g} s\n"
        )
        sys.stderr.flush()
        os._exit(TERMINATED)


@dataclass
class Failures:
    """The files of a batch that failed, each with one line saying why."""

    files: int
    lines: list[str] = field(default_factory=list)

    def add(self, path: Path, reason: str) -> None:
        """Record and report (on stderr) that ``path`` failed; ``reason`` may already
        start with the path."""
        line = reason if reason.startswith(str(path)) else f"{path}: {reason}"
        self.lines.append(line)
        click.echo(f"Error: {line}", err=True)

    def report(self) -> None:
        """The failures again, together, after the batch (nothing when there were none)."""
        if not self.lines:
            return
        click.echo(f"{len(self.lines)} of {self.files} files failed:", err=True)
        for line in self.lines:
            click.echo(f"  {line}", err=True)
