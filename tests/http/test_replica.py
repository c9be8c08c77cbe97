"""Downloads and listings from a streaming replica (DATABASE_READ_URL): a real
hot standby of a primary of its own, made with pg_basebackup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor

from db.apply import DEFAULT_REPLICATION_ROLE, Roles, apply
from tests.database import PG_CTL, THROWAWAY, MakeClient, load_schema
from tests.support import (
    Audio,
    Client,
    basic,
    children_of,
    expect_error,
    free_port,
    local,
    new_user,
    until,
    upload,
)

pytestmark = pytest.mark.slow  # two clusters of their own, stopped and started

primary_proc = factories.postgresql_proc(
    executable=str(PG_CTL), port=None, load=[load_schema], postgres_options=THROWAWAY
)
PG_BIN = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])


def as_postgres(*command: str) -> list[str]:
    """PostgreSQL's programs refuse root: as root, run them as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@dataclass
class Replica:
    data: Path
    port: int

    def pg_ctl(self, *arguments: str) -> None:
        subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", *arguments), check=True,
                       capture_output=True)  # fmt: skip

    def start(self) -> None:
        self.pg_ctl("-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data}",
                    "-l", str(self.data.parent / "replica.log"), "start")  # fmt: skip

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def connect(self, dbname: str) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of the replica stopped (SIGSTOP), as a paused VM or a hung host is:
        the kernel still accepts connections, nothing answers on them."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        processes = [postmaster, *children_of(postmaster)]
        for pid in processes:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in reversed(processes):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def replica(primary_proc: PostgreSQLExecutor) -> Iterator[Replica]:
    folder = Path(tempfile.mkdtemp(prefix="mp3-replica-"))
    folder.chmod(0o755)
    subprocess.run(["chown", "postgres", str(folder)], check=os.geteuid() == 0)
    standby = Replica(folder / "data", free_port())
    # The replica copies and follows as the login the apply command makes for it.
    host, port = primary_proc.host, primary_proc.port
    apply(f"postgresql://{primary_proc.user}@{host}:{port}/{primary_proc.template_dbname}",
          Roles(replication_password="change-me-replication"))  # fmt: skip
    subprocess.run(
        as_postgres(str(PG_BIN / "pg_basebackup"), "-h", host, "-p", str(port), "-U", DEFAULT_REPLICATION_ROLE,
                    "-D", str(standby.data), "-R", "-X", "stream", "--checkpoint=fast"),
        check=True, capture_output=True,
    )  # fmt: skip
    standby.start()
    yield standby
    standby.stop()


@pytest.fixture
def make_replica_client(primary_proc: PostgreSQLExecutor, replica: Replica, make_client: MakeClient) -> MakeClient:
    """The service on the primary and its replica; keyword arguments override its settings."""
    database = primary_proc.template_dbname

    async def start(**overrides: Any) -> Client:
        return await make_client(
            database_url=f"postgresql://mp3_service@{primary_proc.host}:{primary_proc.port}/{database}",
            database_read_url=f"postgresql://mp3_service@127.0.0.1:{replica.port}/{database}",
            **overrides,
        )

    return start


@pytest.fixture
async def client(make_replica_client: MakeClient) -> Client:
    return await make_replica_client()


@pytest.fixture
def primary(primary_proc: PostgreSQLExecutor) -> Iterator[psycopg.Connection]:
    """The administrator's connection to the primary's database."""
    with psycopg.connect(host=primary_proc.host, port=primary_proc.port, user=primary_proc.user,
                         dbname=primary_proc.template_dbname, autocommit=True) as connection:  # fmt: skip
        yield connection


def replayed(standby: psycopg.Connection, record_id: str) -> bool:
    return standby.execute("SELECT count(*) FROM app.records WHERE id = %s", [record_id]).fetchone() == (1,)


async def downloads_read(client: Client) -> str:
    """Where downloads' bytes come from now, as /ready/downloads tells a balancer."""
    ready = await client.get("/ready/downloads")
    assert ready.status == 200, await ready.text()
    return str((await ready.json())["data"]["database"])


async def until_downloads_read(client: Client, database: str, seconds: float = 20) -> None:
    """Until the replica's watcher has seen what the test did to it (it asks every second or less)."""
    async with asyncio.timeout(seconds):
        while await downloads_read(client) != database:  # noqa: ASYNC110 - the watcher offers no event
            await asyncio.sleep(0.05)


def replica_sessions(replica: Replica) -> int:
    with replica.connect("postgres") as connection:
        row = connection.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'mp3_service'").fetchone()
    return int(row[0]) if row else 0


async def test_downloads_come_from_the_replica_and_a_listing_shows_an_upload_at_once(
    client: Client, audio: Audio, replica: Replica
) -> None:
    user = await new_user(client, "reader")
    stored = (await (await upload(client, user, audio())).json())["data"]
    listed = (await (await client.get("/records", headers=basic(*user))).json())["data"]["records"]
    assert [record["id"] for record in listed] == [stored["id"]]  # from the primary: never a moment stale
    await until_downloads_read(client, "replica")  # once the watcher has seen it caught up
    download = await client.get(local(stored["url"]))
    assert download.status == 200
    assert replica_sessions(replica) > 0  # the service read there


async def test_a_download_right_after_its_upload_does_not_wait_for_the_replica(
    client: Client, audio: Audio, replica: Replica, primary_proc: PostgreSQLExecutor
) -> None:
    """The replica is held back: the new user and record exist on the primary only."""
    with replica.connect(primary_proc.template_dbname) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            user = await new_user(client, "impatient")
            stored = (await (await upload(client, user, audio())).json())["data"]
            download = await client.get(local(stored["url"]))
            assert download.status == 200
            assert len(await download.read()) == stored["size"]
            assert (await client.get("/records", headers=basic(*user))).status == 200  # its user too
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


async def test_with_the_replica_down_everything_is_served_by_the_primary(
    client: Client, audio: Audio, replica: Replica
) -> None:
    user = await new_user(client, "fallback")
    stored = (await (await upload(client, user, audio())).json())["data"]
    await asyncio.to_thread(replica.stop)
    try:
        assert (await client.get(local(stored["url"]))).status == 200
        assert (await client.get("/records", headers=basic(*user))).status == 200
        assert (await (await client.get("/ready/downloads")).json())["data"]["database"] == "primary"
    finally:
        await asyncio.to_thread(replica.start)


async def test_with_the_primary_down_downloads_go_on_and_uploads_are_503(
    client: Client, audio: Audio, primary_proc: PostgreSQLExecutor, replica: Replica
) -> None:
    user = await new_user(client, "survivor")
    stored = (await (await upload(client, user, audio())).json())["data"]
    with replica.connect(primary_proc.template_dbname) as standby:  # the replica has caught up
        await until(lambda: replayed(standby, stored["id"]))
    await asyncio.to_thread(primary_proc.stop)
    try:
        download = await client.get(local(stored["url"]))
        assert download.status == 200
        assert len(await download.read()) == stored["size"]
        assert (await client.get("/records", headers=basic(*user))).status == 200
        assert (await client.get("/ready/downloads")).status == 200
        refused = await upload(client, user, audio())
        await expect_error(refused, 503)
        assert refused.headers["Retry-After"]
        await expect_error(await client.get("/ready"), 503)
    finally:
        await asyncio.to_thread(primary_proc.start)


async def test_a_frozen_replica_holds_no_request_up_and_the_primary_serves(
    make_replica_client: MakeClient, audio: Audio, replica: Replica
) -> None:
    client = await make_replica_client(download_cache_bytes=0)  # every download reads a database
    user = await new_user(client, "patient")
    stored = (await (await upload(client, user, audio())).json())["data"]
    await until_downloads_read(client, "replica")
    assert (await client.get(local(stored["url"]))).status == 200  # the pool keeps replica connections open
    with replica.frozen():
        async with asyncio.timeout(30):  # it hung until the replica woke
            download = await client.get(local(stored["url"]))
            assert download.status == 200
            assert len(await download.read()) == stored["size"]
            assert await downloads_read(client) == "primary"  # the replica failed: it is not asked again
            assert (await client.get(local(stored["url"]), headers={"Range": "bytes=0-99"})).status == 206
            assert (await client.get("/records", headers=basic(*user))).status == 200
    await until_downloads_read(client, "replica")  # awake again: it serves again


async def test_a_deleted_record_is_gone_at_once_however_far_behind_the_replica_is(
    client: Client, audio: Audio, replica: Replica, primary_proc: PostgreSQLExecutor
) -> None:
    user = await new_user(client, "forgetful")
    stored = (await (await upload(client, user, audio())).json())["data"]
    with replica.connect(primary_proc.template_dbname) as standby:
        await until(lambda: replayed(standby, stored["id"]))
        assert (await client.get(local(stored["url"]))).status == 200  # and now in the download cache
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            deleted = await client.delete(f"/record?id={stored['id']}", headers=basic(*user))
            assert deleted.status == 204
            assert replayed(standby, stored["id"])  # the replica still has it
            await expect_error(await client.get(local(stored["url"])), 404)
            await expect_error(await client.get(local(stored["url"]), headers={"Range": "bytes=0-99"}), 404)
            assert (await client.head(local(stored["url"]))).status == 404
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


async def test_a_replica_lagging_past_replica_max_lag_serves_no_bytes_until_it_catches_up(
    make_replica_client: MakeClient,
    audio: Audio,
    replica: Replica,
    primary_proc: PostgreSQLExecutor,
    primary: psycopg.Connection,
) -> None:
    client = await make_replica_client(replica_max_lag_s=1, download_cache_bytes=0)
    user = await new_user(client, "stickler")
    stored = (await (await upload(client, user, audio())).json())["data"]
    await until_downloads_read(client, "replica")
    with replica.connect(primary_proc.template_dbname) as standby:
        await until(lambda: replayed(standby, stored["id"]))
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            # The MP3's first bytes changed on the primary (by hand, as an operator could):
            # the replica, paused, still has the old ones.
            primary.execute(
                "SELECT lo_put(lo_oid, 0, '\\x00000000000000000000'::bytea) FROM app.records WHERE id = %s",
                [stored["id"]],
            )
            await until_downloads_read(client, "primary")
            download = await client.get(local(stored["url"]))
            assert download.status == 200
            assert (await download.read())[:10] == bytes(10)  # the primary's bytes
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
    await until_downloads_read(client, "replica")  # caught up: it serves again
