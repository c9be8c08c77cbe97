"""A bounded number of conversions at once, and a bounded wait for a turn."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

from converter.pipeline import ConversionError


class NoFreeSlot(ConversionError):
    status = 503

    def __init__(self, retry_after: float) -> None:
        super().__init__("Every conversion slot is busy; try again shortly.")
        self.retry_after = max(1, math.ceil(retry_after))


class ConversionSlots:
    def __init__(self, size: int, queue_timeout: float) -> None:
        self.size = size
        self.queue_timeout = queue_timeout
        self.active = 0
        self.waiting = 0
        self.uploads = 0  # from the first byte read to the answer, slot or not
        self._semaphore = asyncio.Semaphore(size)
        self._no_uploads = asyncio.Event()
        self._no_uploads.set()

    @property
    def free(self) -> int:
        return self.size - self.active

    @contextlib.asynccontextmanager
    async def upload(self) -> AsyncIterator[None]:
        """Count an upload in progress, so a shutdown can wait for it."""
        self.uploads += 1
        self._no_uploads.clear()
        try:
            yield
        finally:
            self.uploads -= 1
            if self.uploads == 0:
                self._no_uploads.set()

    async def no_uploads(self) -> None:
        await self._no_uploads.wait()

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
            self.active -= 1
            self._semaphore.release()
