"""A real, throwaway PostgreSQL for every test run.

pytest-postgresql starts a cluster from the local server binaries (through
``pg_ctl_as_postgres``, since PostgreSQL refuses to run as root), builds the
schema once into its template database with the project's own apply command,
and gives each test a fresh clone of it.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, cast

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient
from pytest_postgresql import factories

from app import init_app
from db.apply import DEFAULT_SERVICE_ROLE, Roles, apply, prepare_database
from handlers.server import make_runner
from service.logs import task_chains
from settings import Settings
from tests.support import FFMPEG, DelayingProxy, ServiceProcess

PG_CTL = Path(__file__).resolve().parent / "pg_ctl_as_postgres"


# --- a hung test fails in seconds, showing what it waits for ---------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool:
    """pytest-timeout's per-test bound (pyproject.toml), by SIGALRM as its signal method
    does, printing first what every asyncio task awaits: what made a hang diagnosable."""

    def on_timeout(signum: int, frame: FrameType | None) -> None:
        try:
            chains = task_chains()
        except RuntimeError:  # no event loop runs: the thread stacks below tell
            chains = "(no event loop running)"
        sys.stderr.write(f"\n+++ timeout after {settings.timeout:g} s; every task's await chain:\n{chains}\n")
        faulthandler.dump_traceback(sys.stderr)
        pytest.fail(f"Timeout: the test ran longer than {settings.timeout:g} s")

    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return True


def load_schema(host: str, port: int, user: str, dbname: str, **_: Any) -> None:
    apply(f"postgresql://{user}@{host}:{port}/{dbname}")


# A throwaway cluster: durability buys nothing here, and without fsync each
# test's copy of the template database takes a fraction of the time.
THROWAWAY = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
postgresql_proc = factories.postgresql_proc(executable=str(PG_CTL), load=[load_schema], postgres_options=THROWAWAY)

postgresql = factories.postgresql("postgresql_proc")


@pytest.fixture
def admin(postgresql: psycopg.Connection) -> psycopg.Connection:
    """The administrator's (a superuser's) connection to this test's database, for
    looking behind the api's back. The database is a copy of the template the
    apply command prepared; database-level rights are not copied, so they are
    prepared again, as the apply command does."""
    postgresql.autocommit = True
    prepare_database(postgresql, Roles())
    return postgresql


@pytest.fixture
def service(admin: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A connection as the service's login role, as a psql user would open one."""
    info = admin.info
    with psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user=DEFAULT_SERVICE_ROLE) as connection:
        connection.autocommit = True
        yield connection


# --- the HTTP service -----------------------------------------------------------

FFPROBE = shutil.which("ffprobe") or "ffprobe"


# The database's distance is a mode of the suite: TEST_DB_DELAY_MS=30 scripts/test runs
# every service test with PostgreSQL's replies held that long (a database a network hop
# away, where lost wake-ups show that localhost hides). Tests may choose their own.
SUITE_DB_DELAY_S = float(os.environ.get("TEST_DB_DELAY_MS") or 0) / 1000


@pytest.fixture
def database_delay_s() -> float:
    """How long PostgreSQL's replies take to reach the service (parametrize it to choose)."""
    return SUITE_DB_DELAY_S


@pytest.fixture
def database_proxy(admin: psycopg.Connection, database_delay_s: float) -> Iterator[DelayingProxy]:
    """A proxy in front of this test's database: replies delayed, and it can freeze."""
    proxy = DelayingProxy(admin.info.host, admin.info.port, database_delay_s).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def service_settings(admin: psycopg.Connection, database_delay_s: float, request: pytest.FixtureRequest) -> Settings:
    """Settings for a service connected, as its own role, to this test's database (through
    the delaying proxy when the database is to be a network hop away)."""
    info = admin.info
    url = f"postgresql://{DEFAULT_SERVICE_ROLE}@{info.host}:{info.port}/{info.dbname}"
    if database_delay_s:
        url = request.getfixturevalue("database_proxy").url(url)
    return Settings(database_url=url, ffmpeg_binary=FFMPEG, convert_concurrency=2, queue_timeout_s=5)


MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


class ServiceTestServer(TestServer):
    """aiohttp's test server, with the runner app.py serves with (not the test
    server's own settings: it cancels handlers and bounds connections its way)."""

    async def _make_runner(self, **ignored: Any) -> web.AppRunner:
        return make_runner(self.app)


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, service_settings: Settings) -> MakeClient:
    """Start the real application; keyword arguments override its settings."""

    async def start(**overrides: Any) -> TestClient[web.Request, web.Application]:
        server = ServiceTestServer(init_app(dataclasses.replace(service_settings, **overrides)))
        # pytest-aiohttp types a client of a server as having no app; ours has one.
        return cast(TestClient[web.Request, web.Application], await aiohttp_client(server))

    return start


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[web.Request, web.Application]:
    return await make_client()


@pytest.fixture
def service_process(service_settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    """app.py as a real process on this test's database (start it with ``await .start()``;
    its ``env`` may be changed before). Its log is in ``.log``."""
    service = ServiceProcess(
        service_settings, tmp_path / "service.log", SHUTDOWN_TIMEOUT_S="3", CONVERT_CONCURRENCY="2"
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., bytes]:
    """WAV (or other) bytes generated by FFmpeg: audio(seconds=1.0, rate=44100, channels=2, codec="pcm_s16le")."""
    folder = tmp_path_factory.mktemp("audio")
    made: dict[tuple[Any, ...], bytes] = {}

    def make(
        seconds: float = 1.0,
        rate: int = 44100,
        channels: int = 2,
        codec: str = "pcm_s16le",
        container: str = "wav",
        extra: tuple[str, ...] = (),
    ) -> bytes:
        key = (seconds, rate, channels, codec, container, extra)
        if key not in made:
            target = folder / f"{len(made)}.{container}"
            subprocess.run(
                [FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                 "-ar", str(rate), "-ac", str(channels), "-c:a", codec, *extra, "-f", container, str(target)],
                check=True,
            )  # fmt: skip
            made[key] = target.read_bytes()
        return made[key]

    return make


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
