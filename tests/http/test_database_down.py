"""PostgreSQL stopped while the service runs, then started again."""

from __future__ import annotations

import asyncio

import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor

from tests.database import PG_CTL, MakeClient, load_schema
from tests.support import (
    Audio,
    basic,
    expect_error,
    local,
    new_user,
    upload,
)

# --- the database going away ------------------------------------------------------------

stoppable_postgresql_proc = factories.postgresql_proc(executable=str(PG_CTL), port=None, load=[load_schema])

pytestmark = pytest.mark.slow  # a PostgreSQL of its own, stopped and started


async def test_database_stopped_then_back_the_service_recovers_by_itself(
    stoppable_postgresql_proc: PostgreSQLExecutor, make_client: MakeClient, audio: Audio
) -> None:
    proc = stoppable_postgresql_proc
    url = f"postgresql://mp3_service@{proc.host}:{proc.port}/{proc.template_dbname}"
    client = await make_client(database_url=url)
    user = await new_user(client)
    stored = (await (await upload(client, user, audio())).json())["data"]

    await asyncio.to_thread(proc.stop)
    try:
        down = await client.get("/records", headers=basic(*user))
        await expect_error(down, 503)
        assert down.headers["Retry-After"]
        await expect_error(await client.get("/health"), 503)
        await expect_error(await client.get(local(stored["url"])), 503)
    finally:
        await asyncio.to_thread(proc.start)

    # PostgreSQL takes a moment to accept sessions after it starts: the service
    # must come back by itself within it, without a restart.
    async with asyncio.timeout(20):
        while (await client.get("/health")).status != 200:  # noqa: ASYNC110 - the service has no event for it
            await asyncio.sleep(0.05)
    assert (await client.get(local(stored["url"]))).status == 200
    assert (await upload(client, user, audio())).status == 201
