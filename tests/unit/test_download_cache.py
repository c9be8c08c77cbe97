"""The download cache alone (service/download_cache.py): only verified bytes are admitted,
bounded, least recently used first, a failing disk only means not cached."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from service.download_cache import DownloadCache

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


def test_emptying_the_cache_tells_a_download_whose_file_was_evicted_already(tmp_path: Path) -> None:
    """After the deletion listener was away (deletions unheard), every download still sending
    a file must ask whether its record is gone, also one whose file the cache has let go."""
    cache = DownloadCache(1 << 20, parent=str(tmp_path))
    told: list[str] = []
    with cache.watching("ab" * 32, lambda: told.append("evicted file's download")):
        cache.clear()
    assert told == ["evicted file's download"]
    cache.close()
