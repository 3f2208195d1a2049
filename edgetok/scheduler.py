"""Blocking calls from many clients on a few worker threads, the clients taking turns.

``FairScheduler.run(client, fn, *args)`` queues ``fn(*args)`` in ``client``'s own FIFO
queue. A free worker takes the first job of the client served least recently among those
with jobs waiting (a client new to the queue before any served one): a round-robin over
the clients. No client runs more than ``per_client`` jobs at once. A client with many
long jobs thus never holds more than ``per_client`` workers, and another client's job
waits at most for the jobs already running and one job of each client ahead of it in
turn, whatever their queues hold.

With a ``capacity``, each job also has a ``weight`` (a decode: its segments, which its
working memory grows with) and jobs run together only while their weights add up to at
most the capacity; a heavier job runs alone. The job whose turn it is waits for running
ones to end rather than be overtaken, so none waits for ever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["FairScheduler"]

_T = TypeVar("_T")


@dataclass(eq=False)
class _Job:
    future: asyncio.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    weight: int = 0


class FairScheduler:
    """``threads`` workers shared round-robin by clients, ``per_client`` each at most,
    running jobs whose weights add up to ``capacity`` at most (None: no bound)."""

    def __init__(
        self,
        threads: int,
        per_client: int = 1,
        *,
        capacity: int | None = None,
        name: str = "worker",
    ) -> None:
        if threads < 1 or per_client < 1 or (capacity is not None and capacity < 1):
            raise ValueError("threads, per_client and capacity must be >= 1")
        self.threads, self.per_client, self.capacity = threads, per_client, capacity
        self.load = 0
        """The weights of the jobs running."""
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._free = threads
        self._waiting: dict[Hashable, deque[_Job]] = {}
        """Clients with jobs waiting, in the order they came."""
        self._running: dict[Hashable, int] = {}
        self._served: dict[Hashable, int] = {}
        """The turn in which each client still waiting or running last started a job."""
        self._turns = 0

    @property
    def busy(self) -> int:
        """Workers running a job."""
        return self.threads - self._free

    async def run(self, client: Hashable, fn: Callable[..., _T], *args: Any, weight: int = 0) -> _T:
        """``fn(*args)`` on a worker, in ``client``'s turn (and, with a capacity, when
        ``weight`` fits). Cancelling the caller drops a job still waiting; a running one
        finishes on its thread, its result dropped."""
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        job = _Job(future, fn, args, weight)
        queue = self._waiting.setdefault(client, deque())
        queue.append(job)
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            if job in queue:  # never started: forget it (and the arguments it holds)
                queue.remove(job)
            raise

    def close(self) -> None:
        """Stop the workers once their running jobs end; jobs still waiting never run."""
        for queue in self._waiting.values():
            for job in queue:
                job.future.cancel()
        self._waiting.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self) -> None:
        """Start jobs while workers are free and some client may run one."""
        while self._free > 0:
            job = self._next()
            if job is None:
                return
            client, started = job
            self._free -= 1
            self._running[client] = self._running.get(client, 0) + 1
            self.load += started.weight
            work = asyncio.get_running_loop().run_in_executor(self._pool, started.fn, *started.args)
            work.add_done_callback(lambda done, c=client, j=started: self._finished(c, j, done))

    def _next(self) -> tuple[Hashable, _Job] | None:
        """The first live job of the least recently served client below ``per_client``."""
        turn: Hashable | None = None
        for client, queue in list(self._waiting.items()):
            while queue and queue[0].future.done():  # cancelled while waiting
                queue.popleft()
            if not queue:
                del self._waiting[client]
                self._forget(client)
            elif self._running.get(client, 0) < self.per_client and (
                turn is None or self._served.get(client, -1) < self._served.get(turn, -1)
            ):
                turn = client
        if turn is None:
            return None
        queue = self._waiting[turn]
        if self.capacity is not None and self.load and self.load + queue[0].weight > self.capacity:
            return None  # it waits for running jobs to end; no later job overtakes it
        job = queue.popleft()
        if not queue:
            del self._waiting[turn]
        self._turns += 1
        self._served[turn] = self._turns
        return turn, job

    def _forget(self, client: Hashable) -> None:
        """A client with nothing waiting or running starts afresh next time."""
        if client not in self._waiting and not self._running.get(client):
            self._running.pop(client, None)
            self._served.pop(client, None)

    def _finished(self, client: Hashable, job: _Job, done: asyncio.Future[Any]) -> None:
        self._free += 1
        self._running[client] -= 1
        self.load -= job.weight
        self._forget(client)
        future = job.future
        if not future.done():
            if done.cancelled():
                future.cancel()
            elif done.exception() is not None:
                future.set_exception(done.exception())
            else:
                future.set_result(done.result())
        self._dispatch()
