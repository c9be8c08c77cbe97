"""Repeat downloads from the local cache, through the service: never past the ownership
check, gone with their record, disposable (the cache alone: tests/unit/test_download_cache.py);
then app.py as a real process."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from service.download_cache import LISTENER_NAME
from service.keys import DOWNLOAD_CACHE
from tests.database import MakeClient
from tests.support import Audio, Client, ServiceProcess, basic, local, new_user, until, upload


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the service ------------------------------------------------------------------------


def overwrite_stored_mp3(admin: psycopg.Connection, record_id: str) -> None:
    """Change the large object's bytes behind the service's back (same length): a download
    that still gives the original bytes did not read the database."""
    admin.execute(
        "SELECT lo_put(lo_oid, 0, '\\x00000000000000000000'::bytea) FROM app.records WHERE id = %s", [record_id]
    )


async def downloaded(client: Client, url: str, **headers: str) -> tuple[int, bytes]:
    response = await client.get(local(url), headers=headers)
    return response.status, await response.read()


async def test_a_repeat_download_comes_from_the_cache_byte_for_byte(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user = await new_user(client)
    data: dict[str, Any] = (await (await upload(client, user, audio(seconds=3))).json())["data"]
    status, first = await downloaded(client, data["url"])
    assert status == 200
    cache = client.app[DOWNLOAD_CACHE]
    assert [path.name for path in cache.directory.iterdir()] == [digest_of(first)]

    overwrite_stored_mp3(admin, data["id"])
    assert await downloaded(client, data["url"]) == (200, first)
    status, part = await downloaded(client, data["url"], Range="bytes=100-1099")
    assert (status, part) == (206, first[100:1100])
    head = await client.head(local(data["url"]))
    assert head.headers["ETag"] == f'"{digest_of(first)}"'


async def test_a_cache_that_cannot_be_written_serves_the_download_whole_and_uncached(
    client: Client, audio: Audio
) -> None:
    """A first download while the cache's directory is gone (a tmp cleaner, a full
    disk): the MP3 alone, exactly, never an error inside its body."""
    user = await new_user(client)
    data: dict[str, Any] = (await (await upload(client, user, audio(seconds=2))).json())["data"]
    cache = client.app[DOWNLOAD_CACHE]
    shutil.rmtree(cache.directory)
    response = await client.get(local(data["url"]))
    body = await response.read()
    assert response.status == 200
    assert len(body) == data["size"]
    assert response.headers["ETag"] == f'"{digest_of(body)}"'
    assert cache.used_bytes == 0  # nothing held for a file that was never written

    cache.directory.mkdir()  # the directory is back: the record is cached again
    assert await downloaded(client, data["url"]) == (200, body)
    assert [path.name for path in cache.directory.iterdir()] == [digest_of(body)]


async def test_the_cache_never_serves_past_the_ownership_check(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user = await new_user(client)
    data: dict[str, Any] = (await (await upload(client, user, audio(seconds=2))).json())["data"]
    assert (await downloaded(client, data["url"]))[0] == 200  # now cached
    other, _ = await new_user(client, "bob")
    assert (await client.get(f"/record?id={data['id']}&user={other}")).status == 404
    deleted = await client.delete(f"/record?id={data['id']}", headers=basic(*user))
    assert deleted.status == 204
    assert (await downloaded(client, data["url"]))[0] == 404


async def test_a_deleted_records_file_leaves_the_cache_however_it_was_deleted(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """By the api, or by an admin deleting its user in pgAdmin: the MP3 does not stay on
    the service's disk until it happens to be evicted."""
    cache = client.app[DOWNLOAD_CACHE]
    user = await new_user(client)
    other = await new_user(client, "bob")
    mine: dict[str, Any] = (await (await upload(client, user, audio(seconds=2))).json())["data"]
    theirs: dict[str, Any] = (await (await upload(client, other, audio(seconds=3))).json())["data"]
    for record in (mine, theirs):
        assert (await downloaded(client, record["url"]))[0] == 200
    assert len(list(cache.directory.iterdir())) == 2

    assert (await client.delete(f"/record?id={mine['id']}", headers=basic(*user))).status == 204
    await until(lambda: len(list(cache.directory.iterdir())) == 1)
    admin.execute("DELETE FROM app.users WHERE id = %s", [other[0]])
    await until(lambda: list(cache.directory.iterdir()) == [])
    assert cache.used_bytes == 0


async def test_deletions_it_could_not_hear_of_empty_the_cache_when_it_hears_again(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """The database restarted (its sessions ended): a deletion announced meanwhile reached no one."""
    cache = client.app[DOWNLOAD_CACHE]
    user = await new_user(client)
    data: dict[str, Any] = (await (await upload(client, user, audio(seconds=2))).json())["data"]
    assert (await downloaded(client, data["url"]))[0] == 200
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [LISTENER_NAME])
    assert (await client.delete(f"/record?id={data['id']}", headers=basic(*user))).status == 204
    await until(lambda: list(cache.directory.iterdir()) == [])


async def test_a_range_first_download_streams_without_filling_and_zero_turns_it_off(
    make_client: MakeClient, audio: Audio
) -> None:
    client = await make_client()
    user = await new_user(client)
    data: dict[str, Any] = (await (await upload(client, user, audio(seconds=2))).json())["data"]
    assert (await downloaded(client, data["url"], Range="bytes=0-99"))[0] == 206
    assert list(client.app[DOWNLOAD_CACHE].directory.iterdir()) == []  # a part is not the record's bytes

    off = await make_client(download_cache_bytes=0)
    assert DOWNLOAD_CACHE not in off.app
    assert (await downloaded(off, data["url"]))[0] == 200


# --- app.py as it runs ---------------------------------------------------------------


async def test_the_running_service_keeps_its_cache_in_one_directory_and_removes_it_at_exit(
    service_process: ServiceProcess, audio: Audio, tmp_path: Path
) -> None:
    parent = tmp_path / "tmp"
    parent.mkdir()
    service_process.env["TMPDIR"] = str(parent)
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "alice")
        form = aiohttp.FormData()
        form.add_field("file", audio(seconds=2), filename="a.wav", content_type="audio/wav")
        async with session.post(f"{service_process.base}/record", data=form, headers=basic(*user)) as response:
            url = (await response.json())["data"]["url"]
        async with session.get(url) as response:
            mp3 = await response.read()
    (directory,) = parent.iterdir()
    assert [path.name for path in directory.iterdir()] == [digest_of(mp3)]
    service_process.signal(signal.SIGTERM)
    assert service_process.wait() == 0
    assert list(parent.iterdir()) == []
