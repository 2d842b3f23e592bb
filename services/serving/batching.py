"""Batching of /predict without a batching window: a batch takes what the worker has already read.

BentoML's adaptive batcher (its CorkDispatcher) polls its queue on 1 ms ticks and holds a
request back while its latency model expects more to come: with one client, each request
waited for ticks that never brought a second one (the service's p50 at one client was about
twice FastAPI's, benchmarks/serving.py). Here nothing waits on a clock:

- a request that finds no batch running starts one, and it runs once the requests the worker
  has already begun reading (``expect``: counted by the gate as they enter) have joined it or
  left; with one client that is at once;
- requests that arrive while a batch runs (the model call and the log append run on the event
  loop) queue, and the next batch takes all of them, up to ``max_batch_records`` records.

So the batch size follows the load, as BentoML's does, with no latency model to train and no
window to tune. The batch function is called with the records of whole requests, in order, and
returns one answer per record.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
# loop turns a batch may give requests still being read (parsed, validated) before it runs without them:
# a bound, so a client that sends its body slowly holds the others back by at most this many turns
GATHER_TURNS = 32


class _Arrival:
    """One request on its way to the batcher: counted as expected until it queues or leaves."""

    __slots__ = ("batcher", "pending")

    def __init__(self, batcher: Batcher[Any, Any]) -> None:
        self.batcher = batcher
        self.pending = True

    def settle(self) -> None:
        if self.pending:
            self.pending = False
            self.batcher.expected -= 1


_arrival: ContextVar[_Arrival | None] = ContextVar("flywheel_batch_arrival", default=None)


class Batcher(Generic[T, R]):
    """Runs ``run`` over the records of the requests queued since the last batch; one batch at a time."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], max_batch_records: int) -> None:
        self.run = run
        self.max_batch_records = max_batch_records
        self.expected = 0  # requests that entered and have neither queued nor left
        self._queue: deque[tuple[list[T], asyncio.Future[list[R]]]] = deque()
        self._runner: asyncio.Task[None] | None = None

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Around a request's handling (the gate): a batch that starts meanwhile gives it a chance to join."""
        arrival = _Arrival(self)
        self.expected += 1
        token = _arrival.set(arrival)
        try:
            yield
        finally:
            _arrival.reset(token)
            arrival.settle()

    async def submit(self, records: list[T]) -> list[R]:
        """The answers to one request's records, from the batch it joins."""
        arrival = _arrival.get()
        if arrival is not None and arrival.batcher is self:
            arrival.settle()
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append((records, future))
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                turns = 0
                while self.expected > 0 and turns < GATHER_TURNS and self._queued() < self.max_batch_records:
                    await asyncio.sleep(0)  # one loop turn: requests being read move on; no timer
                    turns += 1
                await self._run_one(self._take())
        finally:
            self._runner = None

    def _queued(self) -> int:
        return sum(len(records) for records, _ in self._queue)

    def _take(self) -> list[tuple[list[T], asyncio.Future[list[R]]]]:
        """Whole requests from the head of the queue, up to the batch limit (always at least one)."""
        taken = [self._queue.popleft()]
        size = len(taken[0][0])
        while self._queue and size + len(self._queue[0][0]) <= self.max_batch_records:
            size += len(self._queue[0][0])
            taken.append(self._queue.popleft())
        return taken

    async def _run_one(self, taken: list[tuple[list[T], asyncio.Future[list[R]]]]) -> None:
        flat = [record for records, _ in taken for record in records]
        try:
            answers = await self.run(flat)
            if len(answers) != len(flat):
                raise RuntimeError(f"the batch function answered {len(answers)} of {len(flat)} records")
        except Exception as exc:  # noqa: BLE001 - the batch's error is each of its requests' error, raised in each
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the worker stops): so are its requests
            for _, future in taken:
                future.cancel()
            raise
        k = 0
        for records, future in taken:
            if not future.done():  # its request may have been cancelled (the deadline)
                future.set_result(answers[k:k + len(records)])
            k += len(records)
