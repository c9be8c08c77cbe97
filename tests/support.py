"""What the tests share: requests as clients make them, the database as an
operator looks at it, and app.py run as a real process. The benchmark (bench/)
and the scripts' checks run app.py, make audio and watch processes with these
same helpers."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg
import requests
from aiohttp import ClientResponse, FormData, web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.uploader.uploader import Uploader
from yarl import URL

from converter.command import EncoderPlan
from converter.mp3 import id3v2_size, parse_header
from converter.options import EncodeOptions
from converter.wav import FORMAT_PCM, WavFormat, WavHeader
from service.slots import ConversionSlots
from settings import Settings, find_ffmpeg

ROOT = Path(__file__).resolve().parent.parent
FFMPEG = find_ffmpeg(None)
FFPROBE = shutil.which("ffprobe") or "ffprobe"

Client = TestClient[web.Request, web.Application]
Audio = Callable[..., bytes]
Found = TypeVar("Found")


def decoded(mp3: bytes, channels: int) -> array[int]:
    """The samples a player plays: FFmpeg trims LAME's delay and padding as the header
    frame says (from a file: through a pipe it cannot reach the padding at the end)."""
    with tempfile.NamedTemporaryFile(suffix=".mp3") as file:
        file.write(mp3)
        file.flush()
        result = subprocess.run(
            [FFMPEG, "-v", "error", "-f", "mp3", "-i", file.name, "-f", "s16le", "-ac", str(channels), "pipe:1"],
            capture_output=True, check=True,
        )  # fmt: skip
    assert result.stderr == b"", result.stderr  # no decoding errors
    return array("h", result.stdout)


def reference_peaks(wav: bytes, channels: int, samples_per_pixel: int) -> bytes:
    """audiowaveform's peaks of a WAV as FFmpeg decodes it: per pixel the lowest and highest sample of
    any channel, in 8 bits rounded outwards (floor of the lowest x 128, ceiling of the highest x 128,
    within -128..127); the last pixel holds what is left, however few samples that is."""
    command = [FFMPEG, "-v", "error", "-i", "-", "-f", "f64le", "-c:a", "pcm_f64le", "-"]
    values = array("d", subprocess.run(command, input=wav, capture_output=True, check=True).stdout)
    pixels = bytearray()
    for start in range(0, len(values), samples_per_pixel * channels):
        window = values[start : start + samples_per_pixel * channels]
        low, high = math.floor(min(window) * 128), math.ceil(max(window) * 128)
        pixels += struct.pack("bb", max(-128, min(127, low)), max(-128, min(127, high)))
    return bytes(pixels)


async def new_user(client: Client, name: str = "alice") -> tuple[int, str]:
    response = await client.post("/users", json={"username": name})
    assert response.status == 201, await response.text()
    data = (await response.json())["data"]
    return data["id"], data["token"]


def basic(user_id: int | str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user_id}:{token}".encode()).decode()}


def form(wav: bytes, filename: str = "song.wav", field: str = "file", **fields: Any) -> FormData:
    data = FormData()
    for name, value in fields.items():
        data.add_field(name, str(value))
    data.add_field(field, wav, filename=filename, content_type="audio/wav")
    return data


async def upload(client: Client, user: tuple[int, str], wav: bytes, **fields: Any) -> ClientResponse:
    user_id, token = user
    return await client.post("/record", data=form(wav, user=user_id, token=token, **fields))


def local(url: str) -> str:
    """The path and query of a link the service gave, for the test client."""
    return str(URL(url).relative())


async def expect_error(response: ClientResponse, status: int) -> dict[str, Any]:
    """The response is the JSON error envelope with this status."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert set(body) == {"code", "status", "message", "data"}
    assert body["code"] == status
    assert body["data"] == {}
    assert body["message"]
    assert "Traceback" not in body["message"]
    assert "SELECT" not in body["message"]
    return body


def wav_header(channels: int = 2, rate: int = 44100, bits: int = 16, data_size: int = 0, tag: int = 1) -> bytes:
    block_align = channels * ((bits + 7) // 8)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block_align) & 0xFFFFFFFF, block_align & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_size)
    return b"RIFF" + struct.pack("<I", len(body) + data_size) + body


def count(admin: psycopg.Connection, query: str) -> int:
    row = admin.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def statements_calling(admin: psycopg.Connection, function: str) -> int:
    """How many statements calling ``function`` this test's database has run so far, as
    pg_stat_statements counts them (the test cluster preloads it): each is counted as it
    ends, before its answer leaves, unlike pg_stat_database's figures, which a backend
    reports a second or more later."""
    admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    row = admin.execute(
        """SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
           WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query LIKE %s""",
        [f"%{function}(%"],
    ).fetchone()
    return int(row[0]) if row else 0


async def chunked(data: bytes, size: int = 100_003) -> AsyncIterator[bytes]:
    """``data`` as a body of unstated length (sent chunked), in pieces of ``size``."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def seek_table_finds_its_frames(mp3: bytes) -> bool:
    """The header frame's seek table (its Xing or Info frame's) says where each hundredth of
    the frames begins, as a 256th of the bytes after the ID3 tag, as a player seeking reads
    it; and counts the frames that follow it."""
    start = id3v2_size(mp3[:10]) or 0
    header_frame = parse_header(mp3[start : start + 4])
    assert header_frame is not None
    marker = max(mp3.find(b"Xing", start, start + 64), mp3.find(b"Info", start, start + 64))
    frames, total = struct.unpack(">II", mp3[marker + 8 : marker + 16])
    offsets, at = [], start + header_frame.length
    while at + 4 <= len(mp3):
        header = parse_header(mp3[at : at + 4])
        assert header is not None, at
        offsets.append(at - start - header_frame.length)
        at += header.length
    expected = [
        min(255, (header_frame.length + offsets[min(frames - 1, i * frames // 100)]) * 256 // total) for i in range(100)
    ]
    return len(offsets) == frames and list(mp3[marker + 16 : marker + 116]) == expected


def nothing_stored(admin: psycopg.Connection) -> bool:
    records = count(admin, "SELECT count(*) FROM app.records")
    objects = count(admin, "SELECT count(*) FROM pg_largeobject_metadata")
    return records == 0 and objects == 0


@asynccontextmanager
async def disk_that_hangs(folder: Path) -> AsyncIterator[None]:
    """While it lasts, tempfile.TemporaryFile gives a FIFO nobody reads: a write to it blocks
    once the pipe holds 64 KiB, as on a disk that stopped answering. At its end the FIFO is
    drained until its last writer has closed it (the service's file, once its thread let go)."""
    fifo = folder / "disk-that-hangs"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    made = tempfile.TemporaryFile
    tempfile.TemporaryFile = lambda *_, **__: open(os.open(fifo, os.O_RDWR), "wb")  # type: ignore[assignment]  # noqa: SIM115

    def drained_to_its_end() -> bool:  # b"" once no writer is left
        try:
            return not os.read(reader, 1 << 20)
        except BlockingIOError:
            return False

    try:
        yield
    finally:
        tempfile.TemporaryFile = made
        try:
            await until(drained_to_its_end)
        finally:
            os.close(reader)


async def held_body(wav: bytes, release: asyncio.Event, head: int = 8192) -> AsyncIterator[bytes]:
    """An upload body that sends the WAV's first bytes, then nothing until release is set."""
    yield wav[:head]
    await release.wait()
    yield wav[head:]


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Wait for something the server does in the background; fail if it never happens."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - the server's state offers no event to wait on
            await asyncio.sleep(0.02)


class NextInLine:
    """Another upload, waiting for its turn on ``slots`` once the upload under test holds it
    (``behind`` passes that upload's chunks on, and makes it ask after the first), and noting
    when its turn comes: ``has_its_turn`` is set once, never cleared."""

    def __init__(self, slots: ConversionSlots) -> None:
        self.slots = slots
        self.has_its_turn = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def behind(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield chunk  # taken once the upload under test has its turn
            if self.task is None:
                self.task = asyncio.create_task(self._upload())
                await until(lambda: self.slots.waiting == 1)

    async def done(self) -> None:
        assert self.task is not None
        async with asyncio.timeout(30):
            await self.task

    async def _upload(self) -> None:
        async with self.slots.admitted(user_id=2) as turn:
            await turn.working()
            self.has_its_turn.set()


def wait_until(condition: Callable[[], Found | None], seconds: float, every: float = 0.02) -> Found:
    """``until`` for code without an event loop: polls ``condition`` until it answers
    something true, and returns that; TimeoutError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {seconds:g} s")
        time.sleep(every)


def make_audio(
    target: Path,
    source: str,
    rate: int = 44100,
    channels: int = 2,
    codec: str = "pcm_s16le",
    container: str = "wav",
    extra: tuple[str, ...] = (),
) -> Path:
    """Audio made by FFmpeg from a lavfi ``source`` (a filter graph that sets its own
    duration, e.g. ``sine=frequency=440:duration=5``), written to ``target``."""
    subprocess.run(
        [FFMPEG, "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-ar", str(rate), "-ac", str(channels),
         "-c:a", codec, *extra, "-f", container, str(target)],
        check=True,
    )  # fmt: skip
    return target


async def raw_request(client: Client | ServiceProcess, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes as they are (no client library tidying them up); the answer's bytes."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 30)
    writer.close()
    return answer


@dataclass
class RawAnswer:
    """One answer read off a raw connection."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    def envelope(self) -> dict[str, Any]:
        """The JSON error envelope it carries (as expect_error checks one)."""
        assert self.headers["Content-Type"].startswith("application/json"), self
        body: dict[str, Any] = json.loads(self.body)
        assert set(body) == {"code", "status", "message", "data"}, body
        assert body["code"] == self.status, body
        return body


async def answer_of(reader: asyncio.StreamReader) -> RawAnswer:
    """The next answer on a raw connection (an interim 100 Continue is one): its head, and its body
    by Content-Length."""
    async with asyncio.timeout(30):
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").rstrip("\r\n").split("\r\n")
        headers = CIMultiDict[str]((name, value) for name, _, value in (line.partition(": ") for line in lines))
        body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    return RawAnswer(int(status_line.split()[1]), headers, body)


def multipart_head(boundary: str, length: int, user: tuple[int, str] | None = None) -> bytes:
    auth = "".join(f"{k}: {v}\r\n" for k, v in basic(*user).items()) if user else ""
    return (
        f"POST /record HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n{auth}Connection: close\r\n\r\n"
    ).encode()


# --- the database, as an operator sees it ---------------------------------------


def idle_in_transaction(admin: psycopg.Connection) -> int:
    """The service's sessions left in an open transaction (an upload not rolled back)."""
    return count(
        admin,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'mp3_service' AND state LIKE 'idle in transaction%'",
    )


def finished_records(admin: psycopg.Connection, user_id: int, count: int) -> None:
    """Many finished records at once, as rows (uploading 2,500 through the api
    would test the upload, not the listing); several share a created_at."""
    admin.execute(
        """
        WITH made AS (
            SELECT n, lo_from_bytea(0, '\\x00') AS lo_oid FROM generate_series(1, %(count)s) AS n
        )
        INSERT INTO app.records (user_id, lo_oid, original_filename, size, duration, bitrate, sample_rate,
                                 channels, sha256, created_at)
        SELECT %(user)s, lo_oid, 'take-' || n || '.wav', 1, 1, 192000, 44100, 2, sha256('\\x00'),
               timestamptz '2026-01-01' + (n / 3) * interval '1 second'
        FROM made
        """,
        {"user": user_id, "count": count},
    )


def store_record(service: psycopg.Connection, user_id: int, token: str, chunks: list[bytes]) -> uuid.UUID:
    """A record of these bytes, stored as the service stores an upload, from psql."""
    with service.transaction():
        row = service.execute("SELECT api.record_begin(%s, %s, %s)", [user_id, token, "song.wav"]).fetchone()
        assert row is not None
        record_id: uuid.UUID = row[0]
        for chunk in chunks:
            service.execute("SELECT api.record_append(%s, %s)", [record_id, chunk])
        service.execute("SELECT * FROM api.record_finish(%s, 12.5, 192000, 44100, 2)", [record_id])
    return record_id


def records_match_large_objects(admin: psycopg.Connection) -> bool:
    """Every record has its MP3, and no MP3 is left without a record."""
    return count(admin, "SELECT count(*) FROM app.records") == count(
        admin, "SELECT count(*) FROM pg_largeobject_metadata"
    )


# --- app.py as a real process -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


class ServiceProcess:
    """app.py as a real process, started the way it runs in production; its log goes to ``log``."""

    def __init__(self, settings: Settings, log: Path, **env: str) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.base = f"http://{self.host}:{self.port}"
        self.log = log
        self.env = {**os.environ, "DATABASE_URL": settings.database_url, "PORT": str(self.port),
                    "HOST": self.host, "FFMPEG_BINARY": settings.ffmpeg_binary, **env}  # fmt: skip
        self.open_files_limit: int | None = None  # soft and hard RLIMIT_NOFILE, as a container may set them
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> None:
        # prlimit execs the service: the same process, its limit set before it starts.
        limit = [] if self.open_files_limit is None else ["prlimit", f"--nofile={self.open_files_limit}", "--"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*limit, sys.executable, "app.py"], cwd=ROOT, env=self.env, stderr=log)

    async def start(self) -> None:
        await asyncio.to_thread(self.start_blocking)

    def start_blocking(self, seconds: float = 30) -> None:
        """``start`` for code without an event loop: spawn, then wait until /health answers."""
        self.spawn()
        wait_until(self._healthy, seconds, every=0.05)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"app.py ended with {self.process.returncode} as it started; see {self.log}")
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    async def new_user(self, session: aiohttp.ClientSession, name: str) -> tuple[int, str]:
        created = await (await session.post(f"{self.base}/users", json={"username": name})).json()
        return created["data"]["id"], created["data"]["token"]

    async def all_slots_free(self, session: aiohttp.ClientSession) -> bool:
        """What /ready tells a load balancer: no upload holds a place, none waits for one."""
        async with session.get(f"{self.base}/ready") as response:
            data = (await response.json())["data"] if response.status == 200 else {}
            return bool(data) and data["free_slots"] == data["slots"] and data["queued"] == 0

    def ffmpeg_children(self) -> list[int]:
        """FFmpeg processes the service has started and not yet reaped."""
        return ffmpeg_children(self.pid)

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, seconds: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout=seconds)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# /proc/net/tcp's states (include/net/tcp_states.h) of a connection whose other end is still open:
# ESTABLISHED, and FIN_WAIT1 and FIN_WAIT2 after this end closed.
PEER_STILL_OPEN = frozenset({"01", "04", "05"})


def let_go_of(connection: tuple[tuple[str, int], tuple[str, int]]) -> bool:
    """Whether the other end of a connection this host closed (its (local, remote) ends,
    IPv4) has closed its socket too, as a server does once it has seen the client go:
    the closing end waits in FIN_WAIT2 until then (/proc/net/tcp)."""
    (local_host, local_port), (remote_host, remote_port) = connection
    wanted = (_proc_net_address(local_host, local_port), _proc_net_address(remote_host, remote_port))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            return fields[3] not in PEER_STILL_OPEN
    return True  # gone: its TIME_WAIT is over


def _proc_net_address(host: str, port: int) -> str:
    return f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"


def waiting_for_a_lock(admin: psycopg.Connection, call: str) -> int:
    """The database sessions whose statement calls ``call`` (an api function) and waits for a lock."""
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() "
        "AND query LIKE %s",
        [f"%{call}(%"],
    ).fetchone()
    return int((row or (0,))[0])


def vm_rss_kib(pid: int) -> int:
    """A process's resident memory, KiB, as the kernel counts it."""
    return _status_kib(pid, "VmRSS:")


def vm_hwm_kib(pid: int) -> int:
    """The most resident memory the process has had (its high-water mark), KiB."""
    return _status_kib(pid, "VmHWM:")


def reset_high_water_mark(pid: int) -> None:
    """From now on, vm_hwm_kib counts from the process's present memory (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # the task ended meanwhile
            continue
    return found


def ffmpeg_children(pid: int) -> list[int]:
    """The FFmpeg processes ``pid`` has started and not yet reaped: the system's ``ffmpeg``,
    or imageio-ffmpeg's ``ffmpeg-linux-x86_64-v…`` (settings.py's fallback) as its name begins."""
    return [child for child in children_of(pid) if _command_of(child).startswith("ffmpeg")]


def _command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """A process that still runs (a zombie has ended: its parent just has not reaped it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- the database one network hop away -----------------------------------------------


class DelayingProxy:
    """A TCP proxy in front of PostgreSQL that holds each of its replies for ``delay_s``
    before passing it on, as a database one network hop away does (a container, another
    host, a managed service), and that can freeze: hold every byte, both ways, until thawed.

    It runs on an event loop of its own in a thread, so it serves the service whether
    that runs in the test's loop, in a process of its own, or behind psycopg's blocking calls.
    """

    def __init__(self, target_host: str, target_port: int, delay_s: float) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.host = "127.0.0.1"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delaying-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        # Set while bytes may flow; each pump re-checks it before every write, so a
        # freeze made while a pump waits for data still holds that data.
        self._flowing = asyncio.Event()
        self._connections: set[asyncio.StreamWriter] = set()
        # Each new connection is cut once its client has sent this many bytes: the client's
        # side is reset (a network that drops mid-request), the server's closed once what the
        # proxy took has reached it (it sees its request end early, as behind a balancer that
        # lost the client). None: never. A function chooses for each connection from the
        # first bytes its client sends (a request's head, say).
        self.cut_after_bytes: int | Callable[[bytes], int | None] | None = None
        # For each connection cut, in order: how many of its client's bytes had reached the
        # server when the cut came (what was still on its way is lost with the connection).
        self.delivered_before_cut: list[int] = []
        # The proxy freezes (as freeze() does) the moment a client sends bytes holding this,
        # and holds them: a statement's text, sent when a connection first prepares it.
        self.freeze_when_sent: bytes | None = None

    def start(self) -> DelayingProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port this proxy's."""
        parts = urlsplit(database_url)
        credentials = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{credentials}@{self.host}:{self.port}".lstrip("@")))

    def freeze(self) -> None:
        """From now on no byte passes either way, as with a server that hangs."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def _call(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(10)

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.transport.abort()
        serving = asyncio.all_tasks() - {asyncio.current_task()}
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._connections |= {client_writer, server_writer}
        try:
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(client_reader, server_writer, 0.0, self.cut_after_bytes))
                pumps.create_task(self._pump(server_reader, client_writer, self.delay_s))
        except* OSError:
            pass  # one side went away: so does the other
        except* asyncio.CancelledError:
            pass  # the proxy stops
        finally:
            for writer in (client_writer, server_writer):
                self._connections.discard(writer)
                writer.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay_s: float,
        cut_after: int | Callable[[bytes], int | None] | None = None,
    ) -> None:
        """Bytes from ``reader`` to ``writer`` in order, each ``delay_s`` after it arrived;
        after ``cut_after`` bytes the connection is reset."""
        loop = asyncio.get_running_loop()
        in_transit: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()  # (due, bytes); b"" at the end
        cutting = False

        async def deliver() -> None:
            written = 0
            while True:
                due, data = await in_transit.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                await self._flowing.wait()
                if not data:
                    if cutting:
                        self.delivered_before_cut.append(written)  # the kernel sends the rest, then a FIN
                    writer.transport.abort()
                    return
                writer.write(data)
                written += len(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            passed = 0
            while True:
                data = await reader.read(65536)
                if self.freeze_when_sent is not None and self.freeze_when_sent in data:
                    self.freeze_when_sent = None
                    self._flowing.clear()
                if callable(cut_after):
                    cut_after = cut_after(data)
                if cut_after is not None and passed + len(data) >= cut_after:
                    cutting = True
                    in_transit.put_nowait((loop.time() + delay_s, data[: cut_after - passed]))
                    in_transit.put_nowait((loop.time() + delay_s, b""))  # then a reset, that way
                    await delivering
                    raise ConnectionResetError("the proxy cut the connection")
                passed += len(data)
                in_transit.put_nowait((loop.time() + delay_s, data))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()


# --- tus, as tuspy (a real client) speaks it ------------------------------------------------


def tus_uploader(
    base: str, user: tuple[int, str], wav: bytes, url: str | None = None, chunk_size: int | None = None
) -> Uploader:
    """tuspy's uploader of this WAV, no retries, one PATCH for what is left (its default) or
    ``chunk_size`` bytes each; with ``url``, for an upload begun before (it asks HEAD first)."""
    client = TusClient(f"{base}/uploads", headers=basic(*user))
    sizing = {} if chunk_size is None else {"chunk_size": chunk_size}
    return client.uploader(file_stream=io.BytesIO(wav), url=url, metadata={"filename": "take.wav"}, **sizing)


def uploads_with_cuts(
    user: tuple[int, str], wav: bytes, proxy: DelayingProxy, cuts: Sequence[int | Callable[[bytes], int | None]]
) -> str:
    """Upload through ``proxy``, the network dropping as each of ``cuts`` says (after so many
    bytes of a request, or as a function of its first bytes chooses), resuming each time;
    the record's link."""
    url = None
    failures: list[str] = []
    attempts = [*cuts, None]
    while attempts and len(failures) <= len(cuts) + 3:
        proxy.cut_after_bytes = attempts[0]
        uploader = tus_uploader(f"http://{proxy.host}:{proxy.port}", user, wav, url)
        try:
            uploader.upload()
        except (TusCommunicationError, TusUploadFailed, requests.RequestException) as failure:
            failures.append(f"cut after {attempts[0]} bytes: {failure!r}")
            url = uploader.url
            # A 409: the dropped PATCH's last checkpoint landed after this one's HEAD, moving the
            # offset on. tus sends the client back to HEAD (tus-js-client does; tuspy with retries).
            if "status 409" not in str(failure):
                attempts.pop(0)
            continue
        assert uploader.request is not None
        return str(uploader.request.response_headers["record-location"])
    raise AssertionError("the upload did not finish:\n" + "\n".join(failures))


@contextmanager
def private_cluster() -> Iterator[tuple[dict[str, str], str]]:
    """A private cluster as scripts/run starts one, in a folder of its own (removed after):
    the environment that names it (PGDATA_ROOT, PGPORT) and its administrator's URL."""
    folder = Path(tempfile.mkdtemp(prefix="mp3-dev-"))
    folder.chmod(0o755)  # PostgreSQL runs as the postgres user
    env = {**os.environ, "PGDATA_ROOT": str(folder / "pgdata"), "PGPORT": str(free_port())}
    started = subprocess.run(
        [ROOT / "scripts/local-postgres", "start"], env=env, capture_output=True, text=True, check=True
    )
    owner_url = dict(line.split("=", 1) for line in started.stdout.split())["OWNER_URL"]
    try:
        yield env, owner_url
    finally:
        subprocess.run([ROOT / "scripts/local-postgres", "stop"], env=env, check=True)
        shutil.rmtree(folder)


def probe(mp3: bytes) -> dict[str, Any]:
    """What a player sees in an MP3: codec, sample rate and channels (ffprobe), and the
    duration of the audio it decodes (FFmpeg, which trims what the LAME tag says to)."""
    # From a file, not a pipe: a player can seek, and ffprobe reads the duration the way it does.
    with tempfile.NamedTemporaryFile(suffix=".mp3") as file:
        file.write(mp3)
        file.flush()
        result = subprocess.run(
            [FFPROBE, "-v", "error", "-show_entries",
             "format=duration,format_name:format_tags:stream=codec_name,sample_rate,channels",
             "-of", "json", file.name],
            capture_output=True, check=True,
        )  # fmt: skip
        decoded = subprocess.run(
            [FFMPEG, "-v", "error", "-i", file.name, "-f", "s16le", "-ac", "1", "pipe:1"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
    found = json.loads(result.stdout)
    stream = found["streams"][0]
    return {
        "format": found["format"]["format_name"],
        "header_duration": float(found["format"]["duration"]),
        "tags": {name.lower(): value for name, value in found["format"].get("tags", {}).items()},
        "duration": len(decoded) / 2 / int(stream["sample_rate"]),
        "codec": stream["codec_name"],
        "sample_rate": int(stream["sample_rate"]),
        "channels": int(stream["channels"]),
    }


# --- music, for the converter's tests ---------------------------------------------------

MUSIC_SECONDS = 16.0  # music()'s length
# Decaying tones (LAME switches to short blocks for their attacks) over pink noise.
MUSIC = (
    "aevalsrc='0.5*sin(2*PI*t*(220+40*sin(t)))*exp(-6*mod(t,0.37))+0.3*sin(2*PI*t*1375)*exp(-30*mod(t,0.23))"
    "|0.5*sin(2*PI*t*330)*exp(-8*mod(t,0.41))+0.2*sin(2*PI*t*2750)*exp(-40*mod(t,0.29))':s=48000:d={seconds}"
)


def music(folder: Path, rate: int, channels: int) -> bytes:
    target = folder / f"music-{rate}-{channels}.wav"
    if not target.exists():
        subprocess.run(
            [FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", MUSIC.format(seconds=MUSIC_SECONDS),
             "-f", "lavfi", "-i", f"anoisesrc=d={MUSIC_SECONDS}:c=pink:a=0.05:r=48000:seed=1",
             "-filter_complex", "[0][1]amix=inputs=2:normalize=0", "-ar", str(rate), "-ac", str(channels),
             "-c:a", "pcm_s16le", str(target)],
            check=True,
        )  # fmt: skip
    return target.read_bytes()


class Spares:
    """Slots to borrow, all free (ConversionSlots without other uploads)."""

    def __init__(self) -> None:
        self.lent = 0

    async def borrow(self) -> bool:
        self.lent += 1
        return True

    def give_back(self) -> None:
        self.lent -= 1

    @property
    def contended(self) -> bool:
        return False


def samples_of(wav: bytes) -> array[int]:
    return array("h", wav[wav.index(b"data") + 8 :])


def resampled(wav: bytes, rate: int) -> array[int]:
    """The WAV's 16-bit samples at ``rate``, as FFmpeg's resampler makes them: those that fall
    within the recording, made with silence after it (alone, FFmpeg's resampler makes nothing of
    fewer samples than its filter spans, about 32 at ``rate``, and not all of a few more)."""
    header = WavHeader()
    header.feed(wav)
    assert header.format is not None
    source_rate, channels = header.format.sample_rate, header.format.channels
    padding = f"apad=pad_len={math.ceil(64 * source_rate / rate)}"
    command = [FFMPEG, "-v", "error", "-i", "-", "-af", padding, "-ar", str(rate), "-f", "s16le", "-"]
    samples = array("h", subprocess.run(command, input=wav, capture_output=True, check=True).stdout)
    return samples[: math.ceil(header.sample_frames * rate / source_rate) * channels]


def snr_db(reference: array[int], test: array[int], start: int = 0, stop: int | None = None) -> float:
    stop = min(len(reference), len(test)) if stop is None else stop
    signal = sum(value * value for value in reference[start:stop])
    noise = sum((a - b) * (a - b) for a, b in zip(reference[start:stop], test[start:stop], strict=True))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def plan_of(rate: int, channels: int, out_rate: int | None = None, out_channels: int | None = None) -> EncoderPlan:
    """The encoders' plan for 16-bit samples at this rate (converter/command.py), into an MP3
    at ``out_rate`` (else the same) with ``out_channels`` (else the same, at most two)."""
    options = EncodeOptions(sample_rate=out_rate or rate, channels=out_channels or min(channels, 2))
    return EncoderPlan(FFMPEG, WavFormat(FORMAT_PCM, channels, rate, 2 * channels, 16), options)
