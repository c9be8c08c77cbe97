"""How a conversion waits: for a change it cannot miss, and never longer than its stall bound.

``Changes`` counts changes. A waiter notes the count before it looks at the
state, and waits only for a count past that: a change made while it was busy
elsewhere (awaiting the database, say) is seen at once. An ``asyncio.Event``
cleared before waiting would have wiped it, and the waiter slept forever.

``Progress`` is the conversion's watchdog. Every step that moves the upload on
(samples read from the client, samples taken by FFmpeg, frames produced, bytes
stored) says so; when none does for ``stall_s``, the conversion fails with
``ConversionStalled``, naming what it was waiting for. While it waits for the
client nothing is counted: the client's pace has bounds of its own. A step may
stall while others still move (the database stops while the encoders run on):
its own deadline, the database statement's, then ends the conversion the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import NoReturn, TypeVar

from converter.errors import ConversionStalled
from converter.options import CpuShare

T = TypeVar("T")

# What a conversion can be waiting for, the likeliest culprit of a stall first.
STORING = "the database to store the MP3"
ENCODER_INPUT = "FFmpeg to take the samples"
ENCODER_OUTPUT = "FFmpeg to produce frames"
JOINING = "the encoders' frames to join"
CLIENT = "the client to send"
TURN = "its turn on the CPU"  # other uploads are encoding meanwhile: not a stall either
STAGES = (STORING, ENCODER_INPUT, ENCODER_OUTPUT, JOINING)


class Changes:
    """A count of changes to some state, to wait on without missing one."""

    def __init__(self) -> None:
        self._count = 0
        # Set at every change; cleared only by a waiter that has just seen the count
        # unchanged, with no await in between, so a set() is never wiped unseen.
        self._changed = asyncio.Event()

    def note(self) -> None:
        self._count += 1
        self._changed.set()

    def seen(self) -> int:
        """The count now: take it before looking at the state, wait with it after."""
        return self._count

    async def after(self, seen: int) -> None:
        """Return once a change beyond ``seen`` was noted (at once if one already was)."""
        while self._count == seen:
            self._changed.clear()
            await self._changed.wait()


class Progress:
    """When the conversion last moved on, and what it waits for now (see the module)."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._loop = asyncio.get_running_loop()
        self._moved_at = self._loop.time()
        self._waiting: Counter[str] = Counter()

    def moved(self) -> None:
        self._moved_at = self._loop.time()

    @contextlib.contextmanager
    def waiting_for(self, stage: str) -> Iterator[None]:
        """Around an await: what the conversion waits for meanwhile. A deadline of the
        awaited step's own (a database statement's, which is ``stall_s`` too) is this
        stage stalling."""
        self._waiting[stage] += 1
        try:
            yield
        except TimeoutError as error:
            raise ConversionStalled(self.stall_s, stage) from error
        finally:
            self._waiting[stage] -= 1

    async def from_client(self, upload: AsyncIterator[T], share: CpuShare | None = None) -> AsyncIterator[T]:
        """The upload's chunks, each once the upload has its ``share`` of the CPU; the time
        spent waiting for them, and for its turn, is not the conversion's."""
        while True:
            if share is not None:
                share.waiting()
            with self.waiting_for(CLIENT):
                try:
                    chunk = await anext(upload)
                except StopAsyncIteration:
                    break
            self.moved()
            if share is not None:
                with self.waiting_for(TURN):
                    await share.working()
                self.moved()
            yield chunk
        if share is not None:
            share.finishing()

    async def watched(self, work: Awaitable[T]) -> T:
        """``work``'s result; ConversionStalled when nothing moves for ``stall_s``."""
        async with asyncio.TaskGroup() as group:
            watchdog = group.create_task(self._watch())
            try:
                return await work
            finally:
                watchdog.cancel()

    async def _watch(self) -> NoReturn:
        while True:
            await asyncio.sleep(max(0.0, self._moved_at + self.stall_s - self._loop.time()))
            if self._waiting[CLIENT] or self._waiting[TURN]:
                self.moved()  # the client's silence is bounded where its body is read; turns come round
            elif self._loop.time() - self._moved_at >= self.stall_s:
                raise ConversionStalled(self.stall_s, self.stalled_stage())

    def stalled_stage(self) -> str:
        return next((stage for stage in STAGES if self._waiting[stage]), "nothing it knows of")
