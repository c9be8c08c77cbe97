"""A soak: the service under mixed good and hostile traffic for a while, its database
one network hop away, then a look at what is left.

    scripts/soak [MINUTES] [--delay-ms 30] [--fresh-starts N]

app.py runs as a process against a private PostgreSQL cluster behind a proxy that
holds each of PostgreSQL's replies ``--delay-ms`` (tests/support.py DelayingProxy).
Workers then send, for MINUTES: good uploads (raw, multipart, chunked, paced slowly),
downloads (whole, a Range, HEAD, If-None-Match), listings and deletes, and faults
(uploads abandoned with FIN and with RST, stalled, malformed chunked framing, a body
shorter than its Content-Length, a WAV whose header claims more samples than it
holds, bodies that are no WAV, wrong tokens). Every answer is checked against what
that request must get; anything else is an unexpected status.

At the end: no FFmpeg left, no session idle in a transaction, as many large objects
as records, every kept record downloads whole and hashes to its ETag, and the
service's RSS flat (the mean of the last third of the run at most 16 MiB above the
first third's). Exits non-zero when any of that fails.

``--fresh-starts N`` instead starts app.py N times afresh, each time two long uploads
at once (180 s mono 48 kHz at 320 kbit/s, 95 s stereo 44.1 kHz), and counts the
answers: how lost wake-ups were first seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg

from db.apply import DEFAULT_SERVICE_ROLE, Roles, apply
from settings import Settings
from tests.support import (
    FFMPEG,
    ROOT,
    DelayingProxy,
    ServiceProcess,
    basic,
    form,
    private_cluster,
    vm_rss_kib,
)

RSS_GROWTH_LIMIT_MIB = 16
UPLOAD_WORKERS = 2  # as many as the service's slots: a good upload never waits past the queue timeout
OTHER_WORKERS = 4
# Faults hold slots too (a stalled client, READ_TIMEOUT_S): good uploads queue behind them.
SERVICE_ENV = {"CONVERT_CONCURRENCY": "2", "READ_TIMEOUT_S": "5", "QUEUE_TIMEOUT_S": "60", "SHUTDOWN_TIMEOUT_S": "5"}
# (rate, channels, seconds): short and long, every MPEG version, mono and stereo.
RECORDINGS = [(44100, 2, 5), (48000, 1, 12), (44100, 1, 31), (48000, 2, 45), (22050, 2, 8), (44100, 2, 61),
              (8000, 1, 3), (32000, 2, 20)]  # fmt: skip
MUSIC = "aevalsrc='0.4*sin(2*PI*t*(220+40*sin(t)))*exp(-6*mod(t,0.37))+0.2*sin(2*PI*t*1375)':s={rate}:d={seconds}"


@dataclass
class Tally:
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (operation, answer)
    unexpected: list[str] = field(default_factory=list)

    def saw(self, operation: str, answer: int | str, expected: set[int | str]) -> None:
        self.answers[operation, str(answer)] += 1
        if answer not in expected:
            self.unexpected.append(f"{operation}: {answer} (expected {sorted(map(str, expected))})")


@dataclass
class Soak:
    service: ServiceProcess
    session: aiohttp.ClientSession
    wavs: list[bytes]
    users: list[tuple[int, str]]
    tally: Tally = field(default_factory=Tally)
    kept: dict[str, tuple[int, str]] = field(default_factory=dict)  # record id → (user, etag)
    stopping: float = 0.0

    @property
    def base(self) -> str:
        return self.service.base

    # --- good traffic ------------------------------------------------------------

    async def upload(self) -> None:
        kind = random.choice(["raw", "multipart", "chunked", "slow"])
        wav, user = random.choice(self.wavs), random.choice(self.users)
        headers = {**basic(*user), "Content-Type": "audio/wav"}
        body: object
        if kind == "multipart":
            body, headers = form(wav, user=user[0], token=user[1]), {}
        elif kind == "raw":
            body = wav
        else:
            body = paced(wav, 2 << 20 if kind == "chunked" else 256 << 10)
        async with self.session.post(f"{self.base}/record", data=body, headers=headers) as response:
            self.tally.saw(f"upload {kind}", response.status, {201})
            if response.status == 201:
                record = (await response.json())["data"]
                self.kept[record["id"]] = (user[0], "")

    async def download(self) -> None:
        if not self.kept:
            return
        record_id, (user_id, _) = random.choice(list(self.kept.items()))
        try:
            await self._download(record_id, user_id)
        except aiohttp.ClientPayloadError:
            if record_id in self.kept:
                raise
            # Deleted while it was being sent: the download breaks off, as it must (no second answer).
            self.tally.saw("download deleted meanwhile", "broken off", {"broken off"})

    async def _download(self, record_id: str, user_id: int) -> None:
        url = f"{self.base}/record?id={record_id}&user={user_id}"
        kind = random.choice(["whole", "range", "head", "not-modified"])
        deleted_meanwhile = {404}
        if kind == "whole":
            async with self.session.get(url) as response:
                body = await response.read()
                self.tally.saw("download whole", response.status, {200, *deleted_meanwhile})
                if response.status == 200 and response.headers["ETag"] != f'"{hashlib.sha256(body).hexdigest()}"':
                    self.tally.unexpected.append(f"download whole: {record_id} does not hash to its ETag")
        elif kind == "range":
            async with self.session.get(url, headers={"Range": "bytes=1000-4999"}) as response:
                body = await response.read()
                self.tally.saw("download range", response.status, {206, *deleted_meanwhile})
                if response.status == 206 and len(body) != 4000:
                    self.tally.unexpected.append(f"download range: {len(body)} bytes for 4000")
        elif kind == "head":
            async with self.session.head(url) as response:
                self.tally.saw("download head", response.status, {200, *deleted_meanwhile})
        else:
            async with self.session.head(url) as response:
                etag = response.headers.get("ETag", '"none"')
            async with self.session.get(url, headers={"If-None-Match": etag}) as response:
                self.tally.saw("download if-none-match", response.status, {304, *deleted_meanwhile})

    async def listing(self) -> None:
        user = random.choice(self.users)
        async with self.session.get(f"{self.base}/records?limit=20", headers=basic(*user)) as response:
            self.tally.saw("listing", response.status, {200})

    async def delete(self) -> None:
        if len(self.kept) < 20:
            return
        record_id, (user_id, _) = self.kept.popitem()
        user = next(user for user in self.users if user[0] == user_id)
        url = f"{self.base}/record?id={record_id}&user={user_id}"
        async with self.session.delete(url, headers=basic(*user)) as response:
            self.tally.saw("delete", response.status, {204})
        async with self.session.get(url) as response:
            self.tally.saw("download deleted", response.status, {404})

    # --- faults ------------------------------------------------------------------

    async def fault(self) -> None:
        kind = random.choice(
            ["abandon-fin", "abandon-rst", "stall", "malformed-chunk", "short-body", "wav-lies", "not-wav", "token"]
        )
        wav, user = random.choice(self.wavs), random.choice(self.users)
        if kind == "token":
            headers = {**basic(user[0], "00000000-0000-0000-0000-000000000000"), "Content-Type": "audio/wav"}
            async with self.session.post(f"{self.base}/record", data=wav[:4096], headers=headers) as response:
                self.tally.saw("fault wrong token", response.status, {401})
            return
        if kind == "not-wav":
            noise = random.randbytes(200_000)
            headers = {**basic(*user), "Content-Type": "audio/wav"}
            async with self.session.post(f"{self.base}/record", data=noise, headers=headers) as response:
                self.tally.saw("fault not a wav", response.status, {415})
            return
        if kind == "wav-lies":  # the header claims twice the samples sent: a truncated file, converted
            size_at = wav.index(b"data") + 4
            lying = wav[:size_at] + struct.pack("<I", 2 * (len(wav) - size_at - 4)) + wav[size_at + 4 :]
            headers = {**basic(*user), "Content-Type": "audio/wav"}
            async with self.session.post(f"{self.base}/record", data=lying, headers=headers) as response:
                self.tally.saw("fault header claims more", response.status, {201})
                if response.status == 201:
                    self.kept[(await response.json())["data"]["id"]] = (user[0], "")
            return
        chunked = kind == "malformed-chunk"
        head = upload_head(user, None if chunked else len(wav))
        reader, writer = await asyncio.open_connection(self.service.host, self.service.port)
        try:
            if chunked:
                chunk = wav[: 1 << 20]
                writer.write(head + b"%x\r\n" % len(chunk) + chunk + b"\r\nzz\r\nnot a chunk\r\n")
                await writer.drain()
                self.tally.saw("fault malformed chunk", await status_line(reader), {400})
            elif kind == "short-body":
                writer.write(head + wav[: len(wav) // 2])
                await writer.drain()
                writer.write_eof()  # and nothing more: the body ends short of its length
                self.tally.saw("fault body short of its length", await status_line(reader), {400, "closed"})
            elif kind == "stall":
                writer.write(head + wav[: len(wav) // 3])
                await writer.drain()
                self.tally.saw("fault stalled client", await status_line(reader), {408})
            else:
                writer.write(head + wav[: len(wav) // 2])
                await writer.drain()
                if kind == "abandon-rst":
                    linger = struct.pack("ii", 1, 0)
                    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.tally.saw(f"fault {kind}", "abandoned", {"abandoned"})
        finally:
            writer.close()

    # --- the run -----------------------------------------------------------------

    async def worker(self, operations: Sequence[Callable[[], Awaitable[None]]], weights: list[int]) -> None:
        while time.monotonic() < self.stopping:
            operation = random.choices(operations, weights)[0]
            try:
                await operation()
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                self.tally.unexpected.append(f"{operation.__name__}: {type(error).__name__}: {error}")


async def paced(wav: bytes, bytes_per_s: int) -> AsyncIterator[bytes]:
    step = 64 << 10
    for start in range(0, len(wav), step):
        yield wav[start : start + step]
        await asyncio.sleep(step / bytes_per_s)


def upload_head(user: tuple[int, str], length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /record HTTP/1.1\r\nHost: soak\r\nContent-Type: audio/wav\r\n{framing}\r\n"
        f"Authorization: {basic(*user)['Authorization']}\r\nConnection: close\r\n\r\n"
    ).encode()


async def status_line(reader: asyncio.StreamReader) -> int | str:
    async with asyncio.timeout(60):
        line = await reader.readline()
    return int(line.split()[1]) if line.startswith(b"HTTP/1.") else "closed"


def make_recordings(folder: Path) -> list[bytes]:
    wavs = []
    for rate, channels, seconds in RECORDINGS:
        target = folder / f"{rate}-{channels}-{seconds}.wav"
        subprocess.run(
            [FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", MUSIC.format(rate=rate, seconds=seconds),
             "-ac", str(channels), "-c:a", "pcm_s16le", str(target)],
            check=True,
        )  # fmt: skip
        wavs.append(target.read_bytes())
    return wavs


async def sample_rss(pid: int, samples: list[int]) -> None:
    while True:
        samples.append(vm_rss_kib(pid))
        await asyncio.sleep(1)


async def soak(minutes: float, service: ServiceProcess, owner_url: str, folder: Path) -> int:
    wavs = make_recordings(folder)
    rss: list[int] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        users = [await service.new_user(session, f"soak-{n}") for n in range(3)]
        run = Soak(service, session, wavs, users)
        run.stopping = time.monotonic() + minutes * 60
        assert service.process is not None
        sampling = asyncio.create_task(sample_rss(service.process.pid, rss))
        others = [run.download, run.listing, run.delete, run.fault]
        async with asyncio.TaskGroup() as workers:
            for _ in range(UPLOAD_WORKERS):
                workers.create_task(run.worker([run.upload], [1]))
            for _ in range(OTHER_WORKERS):
                workers.create_task(run.worker(others, [6, 2, 1, 3]))
        sampling.cancel()
        checks = await what_is_left(run, owner_url, rss)
    report(run, rss, checks, minutes)
    return 1 if run.tally.unexpected or not all(checks.values()) else 0


async def what_is_left(run: Soak, owner_url: str, rss: list[int]) -> dict[str, bool]:
    with psycopg.connect(owner_url, autocommit=True) as owner:

        def one(query: str) -> int:
            row = owner.execute(query).fetchone()
            return int(row[0]) if row else 0

        settled = time.monotonic() + 30
        while time.monotonic() < settled and (  # noqa: ASYNC110 - the service's state offers no event
            run.service.ffmpeg_children() or one(IDLE_IN_TRANSACTION) or one(RECORDS) != one(LARGE_OBJECTS)
        ):
            await asyncio.sleep(0.2)
        checks = {
            "no FFmpeg left": not run.service.ffmpeg_children(),
            "no session idle in a transaction": one(IDLE_IN_TRANSACTION) == 0,
            "as many large objects as records": one(RECORDS) == one(LARGE_OBJECTS),
        }
        stored = owner.execute("SELECT id::text, user_id, encode(sha256, 'hex') FROM app.records").fetchall()
    whole = True
    for record_id, user_id, digest in stored:
        async with run.session.get(f"{run.base}/record?id={record_id}&user={user_id}") as response:
            body = await response.read()
            whole &= response.status == 200 and response.headers["ETag"] == f'"{digest}"'
            whole &= hashlib.sha256(body).hexdigest() == digest
    checks[f"every kept record ({len(stored)}) downloads and hashes to its ETag"] = whole
    third = max(1, len(rss) // 3)
    growth_mib = (sum(rss[-third:]) / third - sum(rss[:third]) / third) / 1024
    checks[f"RSS flat: last third {growth_mib:+.1f} MiB on the first (limit {RSS_GROWTH_LIMIT_MIB})"] = (
        growth_mib <= RSS_GROWTH_LIMIT_MIB
    )
    return checks


IDLE_IN_TRANSACTION = (
    f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{DEFAULT_SERVICE_ROLE}' "
    "AND state LIKE 'idle in transaction%'"
)
RECORDS = "SELECT count(*) FROM app.records"
LARGE_OBJECTS = "SELECT count(*) FROM pg_largeobject_metadata"


def report(run: Soak, rss: list[int], checks: dict[str, bool], minutes: float) -> None:
    print(f"\n### Soak: {minutes:g} minutes, {sum(run.tally.answers.values())} requests\n")
    print("| request | answer | count |\n| --- | --- | --- |")
    for (operation, answer), number in sorted(run.tally.answers.items()):
        print(f"| {operation} | {answer} | {number} |")
    print(f"\nService RSS: {rss[0] / 1024:.1f} MiB at the start, {max(rss) / 1024:.1f} MiB at most, "
          f"{rss[-1] / 1024:.1f} MiB at the end ({len(rss)} samples, one a second).\n")  # fmt: skip
    print(f"Unexpected answers: {len(run.tally.unexpected)}")
    for line in run.tally.unexpected[:50]:
        print(f"- {line}")
    print()
    for check, held in checks.items():
        print(f"- [{'x' if held else ' '}] {check}")


async def fresh_starts(starts: int, settings: Settings, folder: Path) -> int:
    long_ones = [
        (make_sine(folder, 48000, 1, 180), {"bitrate": "320"}),
        (make_sine(folder, 44100, 2, 95), {}),
    ]
    answers: Counter[str] = Counter()
    for start in range(starts):
        service = ServiceProcess(settings, folder / f"service-{start}.log", **SERVICE_ENV)
        await service.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                user = await service.new_user(session, f"fresh-{start}")

                async def answer(
                    wav: bytes, options: dict[str, str], user: tuple[int, str] = user, base: str = service.base
                ) -> str:
                    data = form(wav, user=user[0], token=user[1], **options)
                    try:
                        async with session.post(f"{base}/record", data=data) as response:
                            return str(response.status)
                    except TimeoutError:
                        return "no answer in 60 s"

                got = await asyncio.gather(*(answer(wav, options) for wav, options in long_ones))
        finally:
            service.stop()
        print(f"start {start + 1}: {', '.join(got)}", flush=True)
        answers.update(got)
    print(f"\n{starts} fresh starts x 2 uploads: " + ", ".join(f"{n} x {a}" for a, n in sorted(answers.items())))
    return 0 if set(answers) == {"201"} else 1


def make_sine(folder: Path, rate: int, channels: int, seconds: int) -> bytes:
    target = folder / f"sine-{rate}-{channels}-{seconds}.wav"
    subprocess.run(
        [FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
         "-ar", str(rate), "-ac", str(channels), str(target)],
        check=True,
    )  # fmt: skip
    return target.read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("minutes", nargs="?", type=float, default=5.0)
    parser.add_argument("--delay-ms", type=float, default=30.0, help="how long PostgreSQL's replies are held")
    parser.add_argument("--fresh-starts", type=int, metavar="N", help="N fresh starts x 2 long uploads instead")
    arguments = parser.parse_args()
    with private_cluster() as (env, owner_url), tempfile.TemporaryDirectory(prefix="mp3-soak-") as temporary:
        folder = Path(temporary)
        password = Path(env["PGDATA_ROOT"], "service-password").read_text().strip()
        apply(owner_url, Roles(service_password=password))
        direct = f"postgresql://{DEFAULT_SERVICE_ROLE}:{password}@127.0.0.1:{env['PGPORT']}/mp3"
        proxy = DelayingProxy("127.0.0.1", int(env["PGPORT"]), arguments.delay_ms / 1000).start()
        settings = Settings(database_url=proxy.url(direct), ffmpeg_binary=FFMPEG)
        print(f"PostgreSQL's replies held {arguments.delay_ms:g} ms", flush=True)
        try:
            if arguments.fresh_starts:
                return asyncio.run(fresh_starts(arguments.fresh_starts, settings, folder))
            return asyncio.run(soak_service(arguments.minutes, settings, owner_url, folder))
        finally:
            proxy.stop()


async def soak_service(minutes: float, settings: Settings, owner_url: str, folder: Path) -> int:
    service = ServiceProcess(settings, folder / "service.log", **SERVICE_ENV)
    await service.start()
    try:
        return await soak(minutes, service, owner_url, folder)
    finally:
        service.stop()
        kept = ROOT / ".artifacts" / "soak-service.log"
        kept.parent.mkdir(exist_ok=True)
        shutil.copyfile(service.log, kept)
        print(f"\nThe service's log: {kept.relative_to(ROOT)}")
        errors = [line for line in kept.read_text().splitlines() if " ERROR " in line]
        print(f"\nERROR lines in the service's log: {len(errors)}")
        for line in errors[:20]:
            print(f"    {line}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
