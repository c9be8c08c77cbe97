"""A bounded number of conversions at once, a bounded wait for a turn, and
the register of uploads in progress that a shutdown waits for, then cancels."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator


class Unavailable(Exception):
    """No upload can start now; ``retry_after`` says in how many seconds to try again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class NoFreeSlot(Unavailable):
    def __init__(self, waited: float) -> None:
        super().__init__("Every conversion slot is busy; try again shortly.", waited)


class ShuttingDown(Unavailable):
    def __init__(self) -> None:
        super().__init__("The service is shutting down; try again shortly.", 1)


class ConversionSlots:
    def __init__(self, size: int, queue_timeout: float) -> None:
        self.size = size
        self.queue_timeout = queue_timeout
        self.active = 0
        self.waiting = 0
        self.draining = False  # set at shutdown: no new upload starts
        # One permit per conversion slot: taken by turn() (waiting queue_timeout at most)
        # or borrow() (never waits), given back exactly once by give_back().
        self._semaphore = asyncio.Semaphore(size)
        self._uploads: set[asyncio.Task[object]] = set()
        # Set exactly when _uploads is empty: both change together, with no await between.
        self._no_uploads = asyncio.Event()
        self._no_uploads.set()

    @property
    def free(self) -> int:
        return self.size - self.active

    @property
    def uploads(self) -> int:
        """Uploads from the first byte read to the answer, with a slot or not."""
        return len(self._uploads)

    @contextlib.asynccontextmanager
    async def upload(self) -> AsyncIterator[None]:
        """Register the upload this task runs, so a shutdown can wait for it and then cancel it."""
        if self.draining:
            raise ShuttingDown
        task = asyncio.current_task()
        assert task is not None
        self._uploads.add(task)
        self._no_uploads.clear()
        try:
            yield
        finally:
            self._uploads.discard(task)
            if not self._uploads:
                self._no_uploads.set()

    async def no_uploads(self) -> None:
        """Until no upload is registered (the caller bounds it: the shutdown's grace)."""
        await self._no_uploads.wait()

    async def cancel_uploads(self, cleanup_s: float) -> None:
        """Cancel every upload still in progress and give them ``cleanup_s`` to
        clean up (kill FFmpeg, roll back). Their clients get no answer."""
        tasks = list(self._uploads)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=cleanup_s)

    # A conversion's further encoders (converter/segments.py's SpareSlots): only
    # slots free with nobody waiting, given back as soon as someone does.
    async def borrow(self) -> bool:
        if self.waiting or self.draining or self._semaphore.locked():
            return False
        await self._semaphore.acquire()  # free: returns at once
        self.active += 1
        return True

    def give_back(self) -> None:
        self.active -= 1
        self._semaphore.release()

    @property
    def contended(self) -> bool:
        return self.waiting > 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold a slot for the block; NoFreeSlot after waiting queue_timeout for one."""
        self.waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._semaphore.acquire()
        except TimeoutError:
            raise NoFreeSlot(self.queue_timeout) from None
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.give_back()
