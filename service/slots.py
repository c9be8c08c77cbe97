"""Who may upload now, and who may encode now: admission by what an upload costs.

An upload in progress holds an FFmpeg and a database connection whatever its
pace: at most ``max_uploads`` at once, and ``per_user`` of one user's, each a
bounded wait (``queue_timeout``) and then 503; at most ``max_uploads`` wait for each. Encoding takes a core only while
samples arrive, so the ``size`` conversion slots are turns on the CPU, held
while an upload feeds its encoder: one that has waited for its client for
``IDLE_GRACE_S`` gives its turn back (a trickle holds none: two from one free
account once blocked every upload for an hour), and one that has held a turn
for ``QUANTUM_S`` while another upload waits goes to the back of the queue.
Turns are never refused: they come round.

Also the register of uploads in progress that a shutdown waits for, then cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator

from converter.progress import Changes

# An upload that waits this long for its client lends its turn (a fast client's next
# chunk is never that far off).
IDLE_GRACE_S = 0.25
# An upload holding a turn this long while another waits for one gives it up in turn.
QUANTUM_S = 1.0


class Unavailable(Exception):
    """No upload can start now; ``retry_after`` says in how many seconds to try again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class NoFreeSlot(Unavailable):
    """No upload place (``max_uploads``) came free in time; conversion turns are never refused."""

    def __init__(self, waited: float, places: int) -> None:
        super().__init__(f"All {places} upload places are taken (MAX_UPLOADS); try again shortly.", waited)


class TooManyOfYours(Unavailable):
    def __init__(self, waited: float, most: int) -> None:
        super().__init__(f"You have {most} uploads in progress already; let one finish first.", waited)


class ShuttingDown(Unavailable):
    def __init__(self) -> None:
        super().__init__("The service is shutting down; try again shortly.", 1)


class ConversionSlots:
    def __init__(
        self,
        size: int,
        queue_timeout: float,
        max_uploads: int | None = None,
        per_user: int = 2,
        start_grace_s: float = IDLE_GRACE_S,
    ) -> None:
        self.size = size
        self.queue_timeout = queue_timeout
        self.max_uploads = max_uploads or 4 * size
        self.per_user = per_user
        self.active = 0  # turns held: by uploads feeding their encoders, and by borrowed encoders
        self.waiting = 0  # uploads waiting for a turn
        self.waiting_for_account = 0  # uploads waiting for a place of their account's
        self.waiting_for_place = 0  # uploads waiting for a place of the service's
        # Uploads holding a place that have not asked for their first turn yet, each for
        # start_grace_s at most: a client that sends nothing must not keep helpers off.
        self.starting = 0
        self.start_grace_s = start_grace_s
        self.in_progress = 0  # uploads holding a place
        self.draining = False  # set at shutdown: no new upload starts
        # One permit per turn: taken by Turn.working() (FIFO: every waiter's turn comes)
        # or borrow() (never waits), given back exactly once by give_back().
        self._turns = asyncio.Semaphore(size)
        # One permit per upload place, taken by admitted() waiting queue_timeout at most.
        self._places = asyncio.Semaphore(self.max_uploads)
        # Places held per account, only of accounts holding one: an entry per account ever
        # admitted would grow for as long as the process runs.
        self._per_user: Counter[int] = Counter()
        # Noted whenever one of a user's uploads ends: a user's waiting upload re-checks.
        self._user_left = Changes()
        self._uploads: set[asyncio.Task[object]] = set()
        # Set exactly when _uploads is empty: both change together, with no await between.
        self._no_uploads = asyncio.Event()
        self._no_uploads.set()

    @property
    def free(self) -> int:
        """Uploads that would be admitted now (what /ready reports)."""
        return self.max_uploads - self.in_progress

    @property
    def queued(self) -> int:
        """Uploads waiting for a place, their account's or the service's (/ready, /metrics)."""
        return self.waiting_for_account + self.waiting_for_place

    @property
    def uploads(self) -> int:
        """Uploads from the first byte read to the answer, admitted or not."""
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
        clean up (kill FFmpeg, keep a resumable upload's last checkpoint, roll
        back). Their clients get no answer."""
        tasks = list(self._uploads)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=cleanup_s)

    @contextlib.asynccontextmanager
    async def admitted(self, user_id: int) -> AsyncIterator[Turn]:
        """A place for this user's upload for the block (NoFreeSlot, TooManyOfYours after
        queue_timeout), and its turn on the CPU, taken as it works (see Turn)."""
        if self.draining:
            raise ShuttingDown
        await self._queued_for_a_place(user_id)
        self.in_progress += 1
        turn = Turn(self)
        try:
            yield turn
        finally:
            turn.end()
            self.in_progress -= 1
            self._places.release()
            self._users_upload_ended(user_id)

    async def _queued_for_a_place(self, user_id: int) -> None:
        """Until the user has fewer than per_user places and one of the service's is free,
        within queue_timeout, waiting in two lines: for a place of the account's, then for
        one of the service's. Counted in them until its wait ends, however it ends.

        Each line holds at most max_uploads: a waiting upload holds what its client sent
        before it was admitted (hundreds of KiB), so an account with its places taken could
        otherwise park hundreds of uploads and their memory. One that would wait beyond that
        is refused at once; one that can start at once never waits. The lines are apart so
        that one account's uploads waiting for its own places keep no other account from
        waiting for the service's. A shutdown begun while it waited refuses it."""
        if self._per_user[user_id] >= self.per_user and self.waiting_for_account >= self.max_uploads:
            raise TooManyOfYours(self.queue_timeout, self.per_user)
        deadline = asyncio.timeout(self.queue_timeout)
        self.waiting_for_account += 1
        try:
            async with deadline:
                await self._a_place_of_the_accounts(user_id)
        except TimeoutError:
            raise TooManyOfYours(self.queue_timeout, self.per_user) from None
        finally:
            self.waiting_for_account -= 1
        try:
            await self._a_place_of_the_services(deadline.when())
        except BaseException:
            self._users_upload_ended(user_id)
            raise

    async def _a_place_of_the_accounts(self, user_id: int) -> None:
        while True:
            seen = self._user_left.seen()
            if self._per_user[user_id] < self.per_user:
                self._per_user[user_id] += 1  # no await since the look: the place is this upload's
                return
            await self._user_left.after(seen)

    async def _a_place_of_the_services(self, deadline: float | None) -> None:
        if self.draining:
            raise ShuttingDown
        if self._places.locked() and self.waiting_for_place >= self.max_uploads:
            raise NoFreeSlot(self.queue_timeout, self.max_uploads)
        self.waiting_for_place += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self._places.acquire()
        except TimeoutError:
            raise NoFreeSlot(self.queue_timeout, self.max_uploads) from None
        finally:
            self.waiting_for_place -= 1
        if self.draining:
            self._places.release()
            raise ShuttingDown

    def _users_upload_ended(self, user_id: int) -> None:
        """The user's place free, and said so, with no await in between: a cancellation that
        comes as an upload ends (a shutdown, say) cannot leave a waiting upload unwoken."""
        self._per_user[user_id] -= 1
        if not self._per_user[user_id]:
            del self._per_user[user_id]
        self._user_left.note()

    # A conversion's further encoders (converter/segments.py's SpareSlots): only
    # turns free with nobody waiting, given back as soon as someone does. An upload
    # starting (admitted, its first samples not read) will want a turn any moment: a
    # helper started now would only share its core and pay an FFmpeg's start-up and
    # its segment's pre- and post-roll for nothing.
    async def borrow(self) -> bool:
        if self.waiting or self.starting or self.draining or self._turns.locked():
            return False
        await self._turns.acquire()  # free: returns at once
        self.active += 1
        return True

    def give_back(self) -> None:
        self.active -= 1
        self._turns.release()

    @property
    def contended(self) -> bool:
        return self.waiting > 0

    async def _take_turn(self) -> None:
        self.waiting += 1
        try:
            await self._turns.acquire()
        finally:
            self.waiting -= 1
        self.active += 1


class Turn:
    """One upload's turn on the CPU (converter/options.py's CpuShare)."""

    def __init__(self, slots: ConversionSlots) -> None:
        self._slots = slots
        self._loop = asyncio.get_running_loop()
        self._held_since: float | None = None  # None: not held
        self._lending: asyncio.TimerHandle | None = None
        # Counted in slots.starting until it first asks for a turn, ends, or has waited
        # start_grace_s for its client's first bytes.
        slots.starting += 1
        self._starting: asyncio.TimerHandle | None = self._loop.call_later(slots.start_grace_s, self._started)

    async def working(self) -> None:
        """Until this upload may feed its encoder: at once while it holds its turn
        (unless it has had it QUANTUM_S and another upload waits), else when its turn comes."""
        self._started()
        self._keep()
        if self._held_since is not None:
            if not (self._slots.contended and self._loop.time() - self._held_since > QUANTUM_S):
                return
            self._give_back()
        await self._slots._take_turn()
        self._held_since = self._loop.time()

    def waiting(self) -> None:
        """The upload waits for its client: past IDLE_GRACE_S its turn goes to another."""
        if self._held_since is not None and self._lending is None:
            self._lending = self._loop.call_later(IDLE_GRACE_S, self._give_back)

    def finishing(self) -> None:
        """The body is all in, not a slow client: the turn, if held, is not lent. Its encoders
        still have the read-ahead to encode, and a helper started on a lent turn would only
        share a core with them. (Nor is a turn taken again: the tail needs none to go on.)"""
        self._keep()

    def encoded(self) -> None:
        """The upload's encoders have ended: its last writes and its commit need no core
        (with the database 30 ms away, they would hold a turn idle for a tenth of a second)."""
        self._keep()
        self._give_back()

    def end(self) -> None:
        self._started()
        self._keep()
        self._give_back()

    def _keep(self) -> None:
        """No lending of the turn pending (the upload is not waiting for its client)."""
        if self._lending is not None:
            self._lending.cancel()
            self._lending = None

    def _started(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            self._starting = None
            self._slots.starting -= 1

    def _give_back(self) -> None:
        self._lending = None
        if self._held_since is not None:
            self._held_since = None
            self._slots.give_back()
