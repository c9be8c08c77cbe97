"""HEADs that wait for a PATCH at work on their upload (handlers/uploads.py), sharing the wait.

A client asks HEAD the moment its PATCH is cut off, and the answer waits for the cut
PATCH's last checkpoint (app.patch_busy_lease), so that the client resumes from the
offset that PATCH leaves. Each HEAD authenticates with a query of its own; those that
find a PATCH at work then share one watch of the upload: one poll of the database
every BUSY_POLL_S for the upload, however many HEADs wait on it, on the credentials
of the HEAD that began the watch (every HEAD sharing it was checked for that same
user and upload). A HEAD is answered with a poll begun after it joined, never with
one its own query may have overtaken.

What a hostile client can make of it: its HEADs cost one query each and then wait
on the watch, whatever their number. At most MOST_WATCHED uploads are watched at
once in a process, MOST_WATCHED_PER_USER of one user's; a HEAD beyond those answers
at once with what its own query found (the offset before the last checkpoint,
which the client's next PATCH learns with a 409). So the polls of the whole process
hold at most MOST_WATCHED of the pool's connections, however many uploads and
accounts a client has, and downloads, listings and uploads keep the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

import asyncpg

from db import api
from db.deadline import within

# A HEAD waits at most this long from its start, its own query and the polls' waits for a
# connection included (a PATCH cut off stores what it brought within the converter's 3 s grace).
HEAD_WAITS_S = 5.0
BUSY_POLL_S = 0.05  # how often a watched upload is asked for
MOST_WATCHED = 4
MOST_WATCHED_PER_USER = 2

WatchKey = tuple[int, UUID]  # (user id, upload id)


def at_rest(upload: api.ResumableUpload) -> bool:
    """No PATCH is at work on it whose last checkpoint may still move its offset on."""
    return upload.patch_busy_s <= 0 or upload.record_id is not None


class _Watch:
    """One upload's polls, the newest answer they gave, and who waits for them."""

    def __init__(self, seen: api.ResumableUpload, deadline: float) -> None:
        self.latest = seen  # the newest answer: the first HEAD's own query's, then each poll's
        self.latest_round = 0  # the poll that gave it (0: that first HEAD's query)
        self.rounds = 0  # polls begun
        self.needed = 1  # the round the HEADs waiting need: one begun after the last of them joined
        self.waiting = 0  # HEADs waiting on it
        self.until = deadline  # the latest of their deadlines: no poll waits past it
        # Done (None, or the failure every HEAD waiting answers) once ``latest`` is at rest
        # from a round every HEAD waiting needs, or none waits any more; set once, never reset.
        self.polling: asyncio.Task[None] | None = None


class BusyUploads:
    """The uploads this process's HEADs wait on, each watched by one task."""

    def __init__(self) -> None:
        self._watches: dict[WatchKey, _Watch] = {}
        self.unwatched = 0  # HEADs answered at once, a PATCH at work, as many uploads watched as may be

    @property
    def waiting(self) -> int:
        """HEADs waiting for a PATCH at work, on all uploads together."""
        return sum(watch.waiting for watch in self._watches.values())

    async def at_rest(
        self, pool: asyncpg.Pool, user_id: int, token: str, upload_id: UUID, seen: api.ResumableUpload, deadline: float
    ) -> api.ResumableUpload:
        """The upload once no PATCH is at work on it, as a poll begun after ``seen`` was
        answered found it, ``seen`` being what the HEAD's own query of these credentials
        answered. At ``deadline`` (the event loop's clock), the newest answer known since
        ``seen``, else ``seen``; ``seen`` at once when as many uploads are watched as may be."""
        loop = asyncio.get_running_loop()
        if at_rest(seen) or loop.time() >= deadline:
            return seen
        key = (user_id, upload_id)
        watch = self._watches.get(key)
        if watch is None:
            if not self._room_for(user_id):
                self.unwatched += 1
                return seen
            watch = self._watches[key] = _Watch(seen, deadline)
            watch.polling = asyncio.create_task(self._poll(key, watch, pool, token))
            watch.polling.add_done_callback(_failure_seen)
        assert watch.polling is not None
        polling = watch.polling
        need = watch.rounds + 1  # the poll under way, if one is, may have been asked before ``seen``
        watch.needed = max(watch.needed, need)
        watch.until = max(watch.until, deadline)
        watch.waiting += 1
        try:
            await asyncio.wait({polling}, timeout=deadline - loop.time())
        finally:
            watch.waiting -= 1
        if polling.done() and not polling.cancelled() and (failure := polling.exception()) is not None:
            raise failure  # the upload deleted or expired meanwhile, the database unreachable
        return watch.latest if watch.latest_round >= need else seen

    async def close(self) -> None:
        """Every watch ended (the service stopping: no HEAD waits any more)."""
        watching = [watch.polling for watch in self._watches.values() if watch.polling is not None]
        for polling in watching:
            polling.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
        self._watches.clear()  # those cancelled before their first step never removed themselves

    def _room_for(self, user_id: int) -> bool:
        users = [user for user, _ in self._watches]
        return len(users) < MOST_WATCHED and users.count(user_id) < MOST_WATCHED_PER_USER

    async def _poll(self, key: WatchKey, watch: _Watch, pool: asyncpg.Pool, token: str) -> None:
        """Asks for the upload every BUSY_POLL_S (sooner if its PATCH's mark lapses sooner)
        while HEADs wait on it, until it is at rest as a round every one of them needs saw it."""
        loop = asyncio.get_running_loop()
        user_id, upload_id = key
        try:
            while watch.waiting and not (at_rest(watch.latest) and watch.latest_round >= watch.needed):
                if not at_rest(watch.latest):  # at rest, but asked before a HEAD joined: at once
                    await asyncio.sleep(min(BUSY_POLL_S, watch.latest.patch_busy_s))
                left = watch.until - loop.time()
                if not watch.waiting or left <= 0:
                    return
                watch.rounds += 1
                this_round = watch.rounds
                with contextlib.suppress(TimeoutError):  # not answered by the last deadline: asks again if any waits
                    watch.latest = await within(left, pool, lambda db: api.upload_open(db, user_id, token, upload_id))
                    watch.latest_round = this_round
        finally:
            del self._watches[key]  # in the step that ends the task: no HEAD joins a watch that ended


def _failure_seen(polling: asyncio.Task[None]) -> None:
    """A watch's failure is its HEADs' answer; one that ended with none left waiting is dropped."""
    if not polling.cancelled():
        polling.exception()
