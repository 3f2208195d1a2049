"""edgetok.scheduler: clients take turns on the worker threads, each within its cap."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edgetok.scheduler import FairScheduler


class Gates:
    """Jobs that record their start and wait for their own release (after
    ``release_all``, none waits)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._released: dict[str, threading.Event] = {}
        self._all = False
        self._lock = threading.Lock()

    def job(self, name: str) -> str:
        with self._lock:
            self.started.append(name)
            event = self._released.setdefault(name, threading.Event())
            if self._all:
                event.set()
        event.wait(10)
        return name

    def release(self, name: str) -> None:
        with self._lock:
            self._released.setdefault(name, threading.Event()).set()

    def release_all(self) -> None:
        with self._lock:
            self._all = True
            for event in self._released.values():
                event.set()


async def until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def test_the_least_recently_served_client_goes_next() -> None:
    """One thread; a hog queues h1..h3 behind its running h0, then b and c queue one job
    each: every client gets a turn before the hog's second job."""
    gates = Gates()

    async def main() -> list[str]:
        scheduler = FairScheduler(1)
        try:
            jobs = [asyncio.create_task(scheduler.run("hog", gates.job, f"h{i}")) for i in range(4)]
            await until(lambda: gates.started == ["h0"])
            jobs += [
                asyncio.create_task(scheduler.run(client, gates.job, client))
                for client in ("b", "c")
            ]
            await asyncio.sleep(0)
            for name in ("h0", "b", "h1", "c", "h2", "h3"):
                gates.release(name)
            return list(await asyncio.gather(*jobs))
        finally:
            gates.release_all()
            scheduler.close()

    assert asyncio.run(main()) == ["h0", "h1", "h2", "h3", "b", "c"]
    assert gates.started == ["h0", "b", "c", "h1", "h2", "h3"]


def test_a_client_holds_at_most_its_share_of_threads() -> None:
    """Two threads, one job per client: the hog's second job waits although a thread is
    free, which the other client's job takes."""
    gates = Gates()

    async def main() -> None:
        scheduler = FairScheduler(2, per_client=1)
        try:
            hog = [asyncio.create_task(scheduler.run("hog", gates.job, f"h{i}")) for i in range(2)]
            await until(lambda: gates.started == ["h0"])
            await asyncio.sleep(0.05)
            assert gates.started == ["h0"] and scheduler.busy == 1
            other = asyncio.create_task(scheduler.run("other", gates.job, "o"))
            await until(lambda: gates.started == ["h0", "o"])
            gates.release("o")
            assert await other == "o"
            assert gates.started == ["h0", "o"]  # h1 still waits for h0
            gates.release_all()
            assert await asyncio.gather(*hog) == ["h0", "h1"]
        finally:
            gates.release_all()
            scheduler.close()

    asyncio.run(main())


def test_a_cancelled_job_never_runs_and_errors_reach_the_caller() -> None:
    gates = Gates()

    def fail() -> None:
        raise RuntimeError("decoder broke")

    async def main() -> None:
        scheduler = FairScheduler(1)
        try:
            first = asyncio.create_task(scheduler.run("a", gates.job, "first"))
            await until(lambda: gates.started == ["first"])
            dropped = asyncio.create_task(scheduler.run("a", gates.job, "dropped"))
            failing = asyncio.create_task(scheduler.run("b", fail))
            await asyncio.sleep(0)
            dropped.cancel()
            gates.release_all()
            assert await first == "first"
            with pytest.raises(RuntimeError, match="decoder broke"):
                await failing
            with pytest.raises(asyncio.CancelledError):
                await dropped
            assert gates.started == ["first"]
            assert await scheduler.run("a", gates.job, "after") == "after"
        finally:
            gates.release_all()
            scheduler.close()

    asyncio.run(main())


def test_weights_run_together_only_within_the_capacity() -> None:
    """Three threads, capacity 10: a heavy job (8) runs with a light one (2) but not with
    another heavy one, which waits for it and is not overtaken by a later light job; a
    job heavier than the capacity runs alone."""
    gates = Gates()

    async def main() -> None:
        scheduler = FairScheduler(3, capacity=10)
        try:
            heavy = asyncio.create_task(scheduler.run("a", gates.job, "heavy", weight=8))
            light = asyncio.create_task(scheduler.run("b", gates.job, "light", weight=2))
            await until(lambda: gates.started == ["heavy", "light"])
            assert scheduler.load == 10
            second = asyncio.create_task(scheduler.run("c", gates.job, "second", weight=8))
            later = asyncio.create_task(scheduler.run("d", gates.job, "later", weight=1))
            await asyncio.sleep(0.05)
            assert gates.started == ["heavy", "light"] and scheduler.busy == 2
            gates.release("light")
            assert await light == "light"
            await asyncio.sleep(0.05)
            assert gates.started == ["heavy", "light"]  # "second" waits; "later" behind it
            gates.release("heavy")
            await until(lambda: gates.started == ["heavy", "light", "second", "later"])
            assert scheduler.load == 9
            gates.release_all()
            assert await asyncio.gather(heavy, second, later) == ["heavy", "second", "later"]
            assert scheduler.load == 0
            assert await scheduler.run("a", gates.job, "huge", weight=50) == "huge"
        finally:
            gates.release_all()
            scheduler.close()

    asyncio.run(main())
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        FairScheduler(1, capacity=0)
