"""Pooled connections are given back as they were taken.

The pools reset nothing on release (db/deadline.py ``left_as_it_is``): whatever a
request leaves on its connection (a SET, set_config(..., false), a LISTEN, a session
advisory lock, a cursor WITH HOLD, a temporary table, a PREPARE, a SET ROLE) would reach
the next request on it. After requests of every kind, successful and failed, every
connection of the primary's pool must show a fresh session's state.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from db.apply import DEFAULT_SERVICE_ROLE
from service.download_cache import LISTENER_NAME
from service.keys import DATABASE_CHECK, POOL
from tests.support import Audio, Client, basic, local, new_user, upload

# Long enough for a connection the service still holds (a sweep, say) to come back.
ACQUIRE_TIMEOUT_S = 10.0

# Everything RESET ALL, UNLISTEN *, CLOSE ALL, pg_advisory_unlock_all() (asyncpg's own
# reset) would undo, and what none of them does (temporary tables, SQL PREPARE, SET ROLE).
# source = 'session': SET / set_config(..., false); startup parameters ('client', asyncpg's
# server_settings) and role or database defaults are a fresh session's too.
LEFT_BEHIND = """
SELECT
    (SELECT coalesce(array_agg(name || '=' || setting ORDER BY name), '{}')
       FROM pg_settings WHERE source = 'session') AS settings,
    (SELECT coalesce(array_agg(channel), '{}') FROM pg_listening_channels() AS channel) AS channels,
    (SELECT count(*) FROM pg_cursors WHERE is_holdable) AS cursors,  -- WITH HOLD: not this query's own portal
    (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) AS prepared,
    (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory') AS advisory_locks,
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temporary_relations,
    current_user = session_user AS own_role
"""
FRESH: tuple[Any, ...] = ([], [], 0, 0, 0, 0, True)


async def test_requests_leave_no_session_state_on_pooled_connections(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """A SET or set_config(..., false) in a function's body, a LISTEN, a session advisory
    lock (helper-56 planted all three: this test saw them, and passed with the pools' reset
    put back) would reach whichever request the connection serves next."""
    user = await new_user(client, "state")
    wav = audio(seconds=2)
    stored = await upload(client, user, wav)
    assert stored.status == 201, await stored.text()
    url = local((await stored.json())["data"]["url"])
    assert (await client.get(url)).status == 200
    assert (await client.get(url.replace("/record?", "/record/waveform?"), headers=basic(*user))).status in (200, 202)
    assert (await client.get("/records", headers=basic(*user))).status == 200
    assert (await client.get("/users/me", headers=basic(*user))).status == 200
    broken = await client.post(
        "/record", data=b"RIFF" + b"\0" * 60_000, headers={**basic(*user), "Content-Type": "audio/wav"}
    )
    assert broken.status >= 400  # rolled back
    tus = {**basic(*user), "Tus-Resumable": "1.0.0"}
    created = await client.post("/uploads", headers={**tus, "Upload-Length": str(len(wav))})
    patch = {**tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    half = await client.patch(local(created.headers["Location"]), data=wav[: len(wav) // 2], headers=patch)
    assert half.status == 204, await half.text()
    assert (await client.head(local(created.headers["Location"]), headers=tus)).status == 200
    assert (await client.delete(local(created.headers["Location"]), headers=tus)).status == 204
    assert (await client.delete(url, headers=basic(*user))).status == 204
    assert (await client.get("/ready")).status == 200

    used = {
        pid
        for (pid,) in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND datname = current_database()"
            " AND application_name <> %s",  # the download cache's listener: a connection of its own
            [DEFAULT_SERVICE_ROLE, LISTENER_NAME],
        ).fetchall()
    }
    probed: dict[int, tuple[Any, ...]] = {}
    for pool in (client.app[POOL], client.app[DATABASE_CHECK].pool):
        held = [await pool.acquire(timeout=ACQUIRE_TIMEOUT_S) for _ in range(pool.get_size())]  # every one
        try:
            for connection in held:
                row = await connection.fetchrow(LEFT_BEHIND)
                assert row is not None
                probed[connection.get_server_pid()] = tuple(row)
        finally:
            await asyncio.gather(*(pool.release(connection) for connection in held))
    assert used <= set(probed), "some connection that served a request was not probed"
    assert {pid: row for pid, row in probed.items() if row != FRESH} == {}
