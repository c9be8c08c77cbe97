"""Whether the primary answers, for /health and the readiness checks.

Asked on a connection of its own (a pool of one), never the shared pool's: clients
that hold every shared connection (a flood of anonymous 404s and 401s, each a round
trip) make the service slow, not the database silent, and a balancer that took every
replica out for it would turn a cheap flood into an outage. Checks asked while one is
on its way share its answer, so a flood of /health costs one round trip at a time and
never queues for the connection.
"""

from __future__ import annotations

import asyncio

import asyncpg

from db import api
from db.deadline import within

# How long the database has to answer a check: a connection (when the last one was
# lost), then the round trip.
DATABASE_CHECK_TIMEOUT_S = 2.0


class DatabaseCheck:
    """The check's pool of one (closed with the others at exit), and the round trip on its way."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # Done when the round trip answered or failed, within DATABASE_CHECK_TIMEOUT_S
        # whatever the server does (``within``); no waiter can cancel it (shield).
        self._asking: asyncio.Future[None] | None = None

    async def answers(self) -> None:
        """Returns once the database answered a round trip begun at most
        DATABASE_CHECK_TIMEOUT_S ago; TimeoutError or the database's error when it did
        not. A lost connection is opened again by the pool."""
        asking = self._asking
        if asking is None or asking.done():
            asking = self._asking = asyncio.ensure_future(within(DATABASE_CHECK_TIMEOUT_S, self.pool, api.ping))
            asking.add_done_callback(_retrieve)
        await asyncio.shield(asking)


def _retrieve(asking: asyncio.Future[None]) -> None:
    if not asking.cancelled():
        asking.exception()  # retrieved even when every waiter went away first
