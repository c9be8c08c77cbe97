"""Reads on the read replica when there is one, and on the primary when it must.

Downloads (``read``) go to the replica: they are the heavy reads. The replica
replays the primary's commits a moment later, so what it has not seen yet may
exist: a record uploaded a moment ago (PT404), a user just created (PT401).
On such a miss the primary is asked, so a download right after its upload's
201 never fails for the replica's lag; it costs a second lookup only for what
truly does not exist. (Waiting for the upload's commit LSN would need the
client to carry it, and would wait as long as the lag.) When the replica does
not answer at all, the primary serves.

Listings (``read_fresh``) go to the primary: a listing right after an upload
must show it, and a replica cannot know what it has not seen. They turn to
the replica only when the primary does not answer, so a listing still works,
a moment stale, while the primary is down.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from aiohttp import web

from handlers.keys import POOL, READ_POOL

T = TypeVar("T")

# A replica that cannot answer: gone, starting up, unreachable.
UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)
NOT_SEEN_YET = frozenset({"PT404", "PT401"})


async def read_fresh(request: web.Request, call: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """``call`` on the primary, else (the primary down) on the replica."""
    replica, primary = request.app[READ_POOL], request.app[POOL]
    try:
        return await call(primary)
    except UNREACHABLE:
        if replica is primary:
            raise
    return await call(replica)


async def read(request: web.Request, call: Callable[[asyncpg.Pool], Awaitable[T]]) -> tuple[T, asyncpg.Pool]:
    """``call`` on the replica, else on the primary; its result and the pool that gave it."""
    replica, primary = request.app[READ_POOL], request.app[POOL]
    if replica is not primary:
        try:
            return await call(replica), replica
        except UNREACHABLE:
            pass
        except asyncpg.PostgresError as error:
            if error.sqlstate not in NOT_SEEN_YET:
                raise
    return await call(primary), primary
