"""Calls on a pool that a frozen server cannot hold up past their deadline.

A frozen server (SIGSTOP, a paused VM, a network that drops packets) answers
nothing, and asyncpg waits on it without end: for a new connection, for a
query on a pooled one, and, once a query is given up (asyncio.timeout), for
the cancel request it sends, which the pool waits for before it takes the
connection back. So asyncio.timeout around a pool call does not bound it.
``within`` does: the caller stops waiting at the deadline whatever the server
does, and the abandoned call ends in the background, its connection released
within the call's deadline (at least RELEASE_FLOOR_S) or dropped. An answer in
time is returned at once: the release that follows it (a round trip when it
must roll back, or wait for a cancel) is not the caller's to wait for, and has
that budget of its own, not what is left of the call's.

The service's pools are made with ``reset=left_as_it_is``: asyncpg's own reset
of a connection given back (``SELECT pg_advisory_unlock_all(); CLOSE ALL;
UNLISTEN *; RESET ALL``) is a round trip on every release, which a caller of
``pool.acquire()`` as a context (db/api.py ``transaction``) waits for: with the
database 30 ms away, 30 ms more at the end of every upload. Nothing the
service does leaves session state on a pooled connection for it to undo: no
SET (its functions set their own search_path), no LISTEN (the download cache
listens on a connection of its own), no session advisory lock, no cursor
outside a transaction. A transaction left open is still rolled back: asyncpg
does that before ``reset``, whatever it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

T = TypeVar("T")

# A server that cannot answer: gone, starting up, unreachable, frozen.
UNREACHABLE = (
    OSError,  # TimeoutError too
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)


async def left_as_it_is(connection: asyncpg.Connection) -> None:
    """A pool's ``reset``: nothing to undo (see above)."""


# Giving a connection back after a call takes at most its deadline, or this when that is
# shorter: asyncpg waits for a cancel, or rolls back a transaction left open (a round trip),
# and drops it past that. A poll may be given what is left of a HEAD's wait, a few ms.
RELEASE_FLOOR_S = 1.0

# Calls on their way, answered or given up on, until their connection is released or
# dropped: referenced, so that the event loop does not lose them, and their failures retrieved.
_unfinished: set[asyncio.Future[Any]] = set()


async def within(timeout_s: float, pool: asyncpg.Pool, call: Callable[[PoolConnectionProxy], Awaitable[T]]) -> T:
    """``call`` on a connection of ``pool``; TimeoutError when it has not answered in ``timeout_s``."""
    answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    answer.add_done_callback(_retrieved)  # the caller may be gone when it fails

    async def on_a_connection() -> None:
        connection = None
        try:
            connection = await pool.acquire(timeout=timeout_s)
            answer.set_result(await call(connection))
        except asyncio.CancelledError:
            answer.cancel()  # given up on by the caller, or cancelled from within
            raise
        except BaseException as error:
            answer.set_exception(error)
            raise
        finally:
            if connection is not None:
                await pool.release(connection, timeout=max(timeout_s, RELEASE_FLOOR_S))

    task = asyncio.ensure_future(on_a_connection())
    _unfinished.add(task)
    task.add_done_callback(_forget)
    try:
        done, _ = await asyncio.wait({answer}, timeout=timeout_s)
        if not done:
            raise TimeoutError(f"no answer from the database in {timeout_s:g} s")
        return answer.result()
    finally:
        if not answer.done():  # given up on: the call is cancelled, its connection released after
            task.cancel()


def _retrieved(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()


def _forget(task: asyncio.Future[Any]) -> None:
    _unfinished.discard(task)
    if not task.cancelled():
        task.exception()  # the call's failure, told to its caller; or a release that failed
