"""Calls on a pool that a frozen server cannot hold up past their deadline.

A frozen server (SIGSTOP, a paused VM, a network that drops packets) answers
nothing, and asyncpg waits on it without end: for a new connection, for a
query on a pooled one, and, once a query is given up (asyncio.timeout), for
the cancel request it sends, which the pool waits for before it takes the
connection back. So asyncio.timeout around a pool call does not bound it.
``within`` does: the caller stops waiting at the deadline whatever the server
does, and the abandoned call ends in the background, its connection released
within the acquire timeout or dropped.
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

# Calls given up on, finishing their cleanup (bounded by the pool's timeouts).
_abandoned: set[asyncio.Future[Any]] = set()


async def within(timeout_s: float, pool: asyncpg.Pool, call: Callable[[PoolConnectionProxy], Awaitable[T]]) -> T:
    """``call`` on a connection of ``pool``; TimeoutError when it has not answered in ``timeout_s``."""

    async def on_a_connection() -> T:
        async with pool.acquire(timeout=timeout_s) as connection:  # also bounds the release
            return await call(connection)

    # Done when the call answered or failed; if the caller stops waiting first, it is
    # cancelled and kept in _abandoned until its connection is released or dropped.
    task = asyncio.ensure_future(on_a_connection())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            raise TimeoutError(f"no answer from the database in {timeout_s:g} s")
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            _abandoned.add(task)
            task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: it was given up on, and said so
