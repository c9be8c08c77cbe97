"""Repeat downloads from the local cache: only verified bytes, never past the ownership
check, bounded, disposable. Units of the cache first (no PostgreSQL, no FFmpeg), then
the service, then app.py as a real process."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from service.download_cache import LISTENER_NAME, DownloadCache
from service.keys import DOWNLOAD_CACHE
from tests.conftest import MakeClient
from tests.support import Audio, Client, ServiceProcess, basic, local, new_user, until, upload

# --- the cache alone ---------------------------------------------------------------


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def filled(cache: DownloadCache, data: bytes, digest: str | None = None) -> bool:
    """A first download of ``data`` written through the cache; whether it was admitted."""
    fill = cache.fill(digest or digest_of(data), len(data))
    if fill is None:
        return False
    for start in range(0, len(data), 1000):
        await fill.add(data[start : start + 1000])
    fill.finish()
    return cache.open(digest or digest_of(data)) is not None


async def test_only_bytes_that_hash_to_the_records_digest_are_admitted(tmp_path: Path) -> None:
    cache = DownloadCache(10_000, str(tmp_path))
    data = bytes(range(256)) * 10
    assert not await filled(cache, data, digest_of(b"other bytes"))
    assert list(cache.directory.iterdir()) == []  # nothing left of the refused file
    assert cache.used_bytes == 0
    assert await filled(cache, data)
    cached = cache.open(digest_of(data))
    assert cached is not None
    with cached:
        assert cached.read() == data


async def test_the_least_recently_used_go_first_and_the_bound_holds(tmp_path: Path) -> None:
    cache = DownloadCache(2500, str(tmp_path))
    first, second, third = (bytes([n]) * 1000 for n in range(3))
    assert await filled(cache, first)
    assert await filled(cache, second)
    opened = cache.open(digest_of(first))  # first is now the most recently used
    assert opened is not None
    opened.close()
    assert await filled(cache, third)
    assert cache.open(digest_of(second)) is None
    assert sorted(path.name for path in cache.directory.iterdir()) == sorted([digest_of(first), digest_of(third)])
    assert cache.used_bytes <= 2500
    assert cache.fill(digest_of(b"x" * 3000), 3000) is None  # bigger than the whole cache


async def test_one_download_fills_and_an_abandoned_one_gives_its_room_back(tmp_path: Path) -> None:
    cache = DownloadCache(2000, str(tmp_path))
    data = b"a" * 1500
    fill = cache.fill(digest_of(data), len(data))
    assert fill is not None
    assert cache.fill(digest_of(data), len(data)) is None  # a second concurrent download only streams
    await fill.add(data[:700])
    fill.abandon()  # its client went away
    assert cache.used_bytes == 0
    assert list(cache.directory.iterdir()) == []
    assert await filled(cache, data)


async def test_a_failing_disk_only_means_not_cached(tmp_path: Path) -> None:
    cache = DownloadCache(10_000, str(tmp_path))
    data = b"b" * 3000
    fill = cache.fill(digest_of(data), len(data))
    assert fill is not None
    await fill.add(data[:1000])
    cache.close()  # the directory is gone under the writer
    (tmp_path / "elsewhere").mkdir()
    await fill.add(data[1000:])
    fill.finish()
    assert cache.open(digest_of(data)) is None


async def test_a_cache_directory_that_is_gone_holds_no_room_and_nothing_is_cached(tmp_path: Path) -> None:
    cache = DownloadCache(10_000, str(tmp_path))
    data = b"c" * 3000
    shutil.rmtree(cache.directory)  # a tmp cleaner
    assert cache.fill(digest_of(data), len(data)) is None
    assert cache.used_bytes == 0
    cache.directory.mkdir()
    assert await filled(cache, data)  # not held back by the failed attempt


async def test_a_dropped_digest_leaves_the_cache_and_one_being_written_is_not_admitted(tmp_path: Path) -> None:
    cache = DownloadCache(10_000, str(tmp_path))
    kept, deleted, filling = b"k" * 1000, b"d" * 1000, b"f" * 1000
    assert await filled(cache, kept)
    assert await filled(cache, deleted)
    fill = cache.fill(digest_of(filling), len(filling))
    assert fill is not None
    await fill.add(filling)
    cache.drop(digest_of(deleted))
    cache.drop(digest_of(filling))  # its record deleted while a first download writes it
    cache.drop("../../etc/passwd")  # anyone may announce any text: it names no file
    fill.finish()
    assert [path.name for path in cache.directory.iterdir()] == [digest_of(kept)]
    assert cache.used_bytes == len(kept)
    assert await filled(cache, filling)  # a record with those bytes, uploaded again, is cached again
    cache.clear()
    assert (list(cache.directory.iterdir()), cache.used_bytes) == ([], 0)


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
