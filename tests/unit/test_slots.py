"""service/slots.py alone: admission by account, in one event loop, no service around it."""

from __future__ import annotations

import asyncio
import tracemalloc

from service.slots import ConversionSlots


async def test_an_account_whose_uploads_have_ended_leaves_nothing_behind() -> None:
    """Each account holding a place was counted, and its count stayed when its uploads ended:
    memory that grew with every account that ever uploaded, for as long as the process ran
    (accounts are free to make). 20,000 accounts' uploads, one after another."""
    slots = ConversionSlots(2, queue_timeout=30)

    async def upload_of(user_id: int) -> None:
        async with slots.admitted(user_id):
            pass

    await upload_of(0)  # what the first upload allocates once
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for user_id in range(1, 20_001):
            await upload_of(user_id)
            await asyncio.sleep(0)  # a turn of the loop, which drops the deadlines' cancelled timers
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 20,000 accounts' uploads ended"


async def test_an_accounts_waiting_upload_takes_the_place_one_of_its_uploads_leaves() -> None:
    slots = ConversionSlots(2, queue_timeout=3600, per_user=1)
    first_admitted, first_may_end = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with slots.admitted(7):
            first_admitted.set()
            await first_may_end.wait()

    async def second() -> int:
        async with slots.admitted(7):
            return slots.in_progress

    async with asyncio.timeout(30):  # a hang guard: the place comes at once or never
        holding = asyncio.create_task(first())
        await first_admitted.wait()
        waiting = asyncio.create_task(second())
        await asyncio.sleep(0)  # it queues for the account's place
        assert slots.queued == 1
        assert not waiting.done()
        first_may_end.set()
        await holding
        assert await waiting == 1
    assert slots.queued == 0
    assert slots.free == slots.max_uploads
