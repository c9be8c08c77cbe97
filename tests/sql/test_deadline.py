"""db/deadline.within, the bound on every call the service makes on its pool, against a
PostgreSQL a network hop away."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest

from db.apply import DEFAULT_SERVICE_ROLE
from db.deadline import within
from tests.database import FAR, FAR_S
from tests.support import DelayingProxy


@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR])
async def test_a_call_answered_in_time_is_not_given_up_for_the_release_after_it(
    admin: psycopg.Connection, database_proxy: DelayingProxy
) -> None:
    """The answer is returned as it comes; the connection's reset after it (a round trip)
    is given a budget of its own. With what was left of the call's, a call answered well
    within a deadline shorter than that round trip raised TimeoutError, its connection was
    dropped, and asyncio logged "Task exception was never retrieved" (found by helper-38:
    service/busy_uploads.py polls with what is left of a HEAD's wait, down to a few ms)."""
    failures: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: failures.append(context))
    url = f"postgresql://{DEFAULT_SERVICE_ROLE}@{admin.info.host}:{admin.info.port}/{admin.info.dbname}"
    pool = await asyncpg.create_pool(database_proxy.url(url), min_size=1, max_size=1)
    try:
        backend = await pool.fetchval("SELECT pg_backend_pid()")
        for _ in range(5):
            answered = await within(0.02, pool, lambda db: asyncio.sleep(0.005, "answered"))
            assert answered == "answered"
            await pool.fetchval("SELECT 1")  # waits for the release: one connection
        assert await pool.fetchval("SELECT pg_backend_pid()") == backend  # kept, not dropped
    finally:
        await pool.close()
    assert failures == []


@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR])
async def test_a_call_given_up_on_fails_alone_and_its_connection_comes_back(
    admin: psycopg.Connection, database_proxy: DelayingProxy
) -> None:
    """A call past its deadline is a TimeoutError to its caller, and is cancelled in the
    background; a call that fails is its caller's error; neither leaves the pool short."""
    failures: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: failures.append(context))
    url = f"postgresql://{DEFAULT_SERVICE_ROLE}@{admin.info.host}:{admin.info.port}/{admin.info.dbname}"
    pool = await asyncpg.create_pool(database_proxy.url(url), min_size=1, max_size=1)
    try:
        with pytest.raises(TimeoutError):
            await within(0.2, pool, lambda db: db.execute("SELECT pg_sleep(5)"))
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await within(5, pool, lambda db: db.execute("SELECT no_such_function()"))
        assert await within(5, pool, lambda db: db.fetchval("SELECT 42")) == 42
    finally:
        await pool.close()
    assert failures == []
