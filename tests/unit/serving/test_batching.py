"""The /predict batcher (services/serving/batching.py): no batching window, and batches that follow the load.

Counted in event-loop turns and batches, never in time: a batcher that waited on a clock (a
batching window, a polling tick) lets a spinning coroutine run hundreds of turns first.
"""

from __future__ import annotations

import asyncio

from services.serving.batching import GATHER_TURNS, Batcher


class Recorder:
    """A batch function that answers each record with itself doubled and remembers each batch."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    async def __call__(self, records: list[int]) -> list[int]:
        self.batches.append(list(records))
        if self.fail_on in records:
            raise ValueError(f"record {self.fail_on} breaks the model")
        return [2 * r for r in records]


async def _turns_until(awaitable: asyncio.Future | asyncio.Task) -> int:
    """Loop turns a spinning coroutine gets before ``awaitable`` is done."""
    turns = 0
    while not awaitable.done():
        await asyncio.sleep(0)
        turns += 1
    return turns


def test_a_request_alone_is_answered_within_a_few_loop_turns() -> None:
    async def scenario() -> tuple[int, list[int]]:
        batcher = Batcher(Recorder(), max_batch_records=512)
        task = asyncio.ensure_future(batcher.submit([1, 2]))
        turns = await _turns_until(task)
        return turns, task.result()

    turns, answer = asyncio.run(scenario())
    assert answer == [2, 4]
    assert turns <= 3  # a 1 ms tick would have let the spinner run hundreds of turns


def test_requests_already_being_read_join_the_batch_that_starts_meanwhile() -> None:
    recorder = Recorder()

    async def request(batcher: Batcher, records: list[int], reading_turns: int) -> list[int]:
        with batcher.expect():  # as the gate does when the request enters
            for _ in range(reading_turns):  # parsing and validating the body takes a few turns
                await asyncio.sleep(0)
            return await batcher.submit(records)

    async def scenario() -> list[list[int]]:
        batcher = Batcher(recorder, max_batch_records=512)
        return await asyncio.gather(*(request(batcher, [10 * i, 10 * i + 1], i) for i in range(6)))

    answers = asyncio.run(scenario())
    assert answers == [[20 * i, 20 * i + 2] for i in range(6)]  # each request gets its own records' answers
    assert len(recorder.batches) == 1  # the first request waited for the five still being read, not for a clock
    assert sorted(recorder.batches[0]) == sorted(r for i in range(6) for r in (10 * i, 10 * i + 1))


def test_a_request_that_leaves_before_queueing_does_not_hold_the_batch() -> None:
    recorder = Recorder()

    async def refused(batcher: Batcher, left: asyncio.Event) -> None:
        with batcher.expect():
            await asyncio.sleep(0)
        left.set()  # refused while parsed (a 400): it never queues

    async def scenario() -> tuple[list[int], bool]:
        batcher = Batcher(recorder, max_batch_records=512)
        left = asyncio.Event()
        leaving = asyncio.ensure_future(refused(batcher, left))
        answer = await batcher.submit([3])
        await leaving
        return answer, batcher.expected == 0

    answer, settled = asyncio.run(scenario())
    assert answer == [6]
    assert settled


def test_a_request_that_never_arrives_holds_a_batch_for_a_bounded_number_of_turns() -> None:
    async def scenario() -> int:
        batcher = Batcher(Recorder(), max_batch_records=512)
        with batcher.expect():  # a client that sends its body slowly: it stays expected throughout
            task = asyncio.ensure_future(batcher.submit([1]))
            return await _turns_until(task)

    assert asyncio.run(scenario()) <= GATHER_TURNS + 3


def test_a_batch_holds_whole_requests_up_to_its_limit() -> None:
    recorder = Recorder()

    async def scenario() -> list[list[int]]:
        batcher = Batcher(recorder, max_batch_records=4)
        return await asyncio.gather(*(batcher.submit([i] * 3) for i in range(3)))

    answers = asyncio.run(scenario())
    assert answers == [[0] * 3, [2] * 3, [4] * 3]
    assert [len(b) for b in recorder.batches] == [3, 3, 3]  # 3 + 3 > 4: never a request split across batches


def test_a_failed_batch_fails_its_requests_and_the_next_batch_runs() -> None:
    recorder = Recorder(fail_on=7)

    async def scenario() -> tuple[list[int], list[int]]:
        batcher = Batcher(recorder, max_batch_records=512)
        broken = asyncio.gather(batcher.submit([7]), batcher.submit([8]), return_exceptions=True)
        results = await broken
        return results, await batcher.submit([5])

    results, after = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) for r in results)
    assert after == [10]
