"""A real ``edgetok serve`` in a child process: its address, log lines and memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["Served", "served"]

_MIB = 1 << 20


class Served:
    """The running server: ``url``, every stderr line so far, its resident memory."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, lines: list[str]) -> None:
        self.process, self.url, self.lines = process, url, lines

    @property
    def address(self) -> tuple[str, int]:
        """Host and port of ``url``."""
        host, port = self.url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
        return host, int(port)

    def _status(self, key: str) -> float:
        """A ``/proc/PID/status`` memory figure in MiB (0 once the process is gone)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024 / _MIB
        return 0.0

    def rss_mib(self) -> float:
        """Resident memory now."""
        return self._status("VmRSS")

    def hwm_mib(self) -> float:
        """The peak resident memory since the server started."""
        return self._status("VmHWM")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def count(self, text: str) -> int:
        """Log lines containing ``text``."""
        return sum(text in line for line in self.lines)

    async def sample_rss(self, peak: list[float], every_s: float = 0.05) -> None:
        """Keep ``peak[0]`` at the highest resident memory seen, until cancelled."""
        while True:
            peak[0] = max(peak[0], self.rss_mib())
            await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def served(
    bundle: Path, token: str, *options: str, nofile: int | None = None
) -> AsyncIterator[Served]:
    """``python -m edgetok serve --bundle BUNDLE --port 0 OPTIONS`` with ``token`` from
    the environment (and ``nofile`` file descriptors at most), until the block exits;
    then SIGTERM, and the rest of its log is read."""

    def limit_fds() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    command = [sys.executable, "-m", "edgetok", "serve", "--bundle", str(bundle), "--port", "0"]
    process = await asyncio.create_subprocess_exec(
        *command,
        *options,
        env=os.environ | {"EDGETOK_TOKEN": token},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit_fds,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        while not (line := (await process.stderr.readline()).decode()).startswith("serving"):
            if not line:
                raise RuntimeError(f"edgetok serve exited: {''.join(lines)[-2000:]}")
            lines.append(line)
        lines.append(line)
        url = line.split()[-1]

        async def drain() -> None:
            assert process.stderr is not None
            while line := await process.stderr.readline():
                lines.append(line.decode(errors="replace"))

        reader = asyncio.create_task(drain())
        yield Served(process, url, lines)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 300)
        await reader
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
