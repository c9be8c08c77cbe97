"""Statements on the primary, within a deadline; reads on the read replica when it may
serve them, and on the primary when it must.

A handler's statement of its own (a credential check, a deletion, a listing) goes
through ``on_primary``: answered or given up within STALL_TIMEOUT_S however the server
behaves (db/deadline.py). On the pool directly, a frozen server held it for twice that:
asyncpg waits for the cancel of a statement that timed out as long again.

A download is authorised on the primary (``open_for_download``): a record
deleted there is 404 at once, however far behind the replica is. Its bytes,
the heavy part, come from the replica while it serves (service/replica.py:
it answers, and lags by at most REPLICA_MAX_LAG_S), so a download under way
when its record is deleted stops within that bound too. A chunk the replica
has not replayed yet (an upload of a moment ago) is read from the primary, so
a download right after its upload's 201 never waits for the replica's lag.
While the primary does not answer, the replica authorises and serves alone.

Listings (``read_fresh``) go to the primary: a listing right after an upload
must show it, and a replica cannot know what it has not seen. They turn to
the replica only when the primary does not answer, so a listing still works,
a moment stale, while the primary is down.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar
from uuid import UUID

import asyncpg
from aiohttp import web

from db import api
from db.deadline import UNREACHABLE, within
from service.keys import DATABASE_CHECK, POOL, REPLICA, SETTINGS

T = TypeVar("T")

# A record the replica has not replayed yet, or (deleted and replayed) no more.
NOT_THERE = "PT404"


async def on_primary(request: web.Request, call: Callable[[api.Database], Awaitable[T]]) -> T:
    """``call`` on a connection of the primary's pool; TimeoutError (503) when it has not
    answered within STALL_TIMEOUT_S, a wait for a free connection included."""
    return await within(request.app[SETTINGS].stall_timeout_s, request.app[POOL], call)


async def read_fresh(request: web.Request, call: Callable[[api.Database], Awaitable[T]]) -> T:
    """``call`` on the primary, else (the primary down) on the replica."""
    replica = request.app.get(REPLICA)
    try:
        return await on_primary(request, call)
    except UNREACHABLE:
        if replica is None or not replica.answers:
            raise
    return await replica.call(call)


async def open_for_download(request: web.Request, record_id: UUID, user_id: int) -> api.Record:
    """The record, as the primary has it now; as the replica has it while the primary is down."""
    return await read_fresh(request, lambda db: api.record_open(db, record_id, user_id))


async def read_bytes(request: web.Request, record_id: UUID, user_id: int, offset: int, count: int) -> bytes:
    """Bytes of a record's MP3: from the replica while it serves, else from the primary
    (or, the primary down, from the replica whatever its lag)."""
    replica = request.app.get(REPLICA)
    if replica is not None and replica.serves():
        try:
            return await replica.call(lambda db: api.record_read(db, record_id, user_id, offset, count))
        except UNREACHABLE:
            pass
        except asyncpg.PostgresError as error:
            if error.sqlstate != NOT_THERE:
                raise
    return await read_fresh(request, lambda db: api.record_read(db, record_id, user_id, offset, count))


async def where_downloads_read(request: web.Request) -> str:
    """Where downloads' bytes come from now, "replica" or "primary", asked of no server
    while the replica serves (its watcher knows); TimeoutError or the database's error
    when neither answers: the primary within DATABASE_CHECK_TIMEOUT_S, on the health
    checks' connection (service/database_check.py), the replica within REPLICA_TIMEOUT_S."""
    replica = request.app.get(REPLICA)
    if replica is not None and replica.serves():
        return "replica"
    try:
        await request.app[DATABASE_CHECK].answers()
        return "primary"
    except Exception:
        if replica is None or not replica.answers:
            raise
    await replica.call(api.ping)  # the primary down: the replica serves alone
    return "replica"
