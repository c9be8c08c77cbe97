"""Downloads and listings from a streaming replica (DATABASE_READ_URL): a real
hot standby of a primary of its own, made with pg_basebackup."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor

from db.apply import DEFAULT_REPLICATION_ROLE, Roles, apply
from tests.conftest import PG_CTL, THROWAWAY, MakeClient, load_schema
from tests.support import Audio, Client, basic, expect_error, free_port, local, new_user, until, upload

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
async def client(primary_proc: PostgreSQLExecutor, replica: Replica, make_client: MakeClient) -> Client:
    database = primary_proc.template_dbname
    return await make_client(
        database_url=f"postgresql://mp3_service@{primary_proc.host}:{primary_proc.port}/{database}",
        database_read_url=f"postgresql://mp3_service@127.0.0.1:{replica.port}/{database}",
    )


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
    ready = await client.get("/ready/downloads")
    assert (await ready.json())["data"]["database"] == "replica"
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
        await until(lambda: standby.execute("SELECT count(*) FROM app.records WHERE id = %s",
                                            [stored["id"]]).fetchone() == (1,))  # fmt: skip
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
