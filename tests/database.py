"""A real, throwaway PostgreSQL for the layers that need one, and the service on it.

pytest-postgresql starts a cluster from the local server binaries (through
``pg_ctl_as_postgres``, since PostgreSQL refuses to run as root), builds the
schema once into its template database with the project's own apply command,
and gives each test a fresh clone of it. The conftest of each layer that needs
them (sql, http, process, browser) imports these fixtures.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
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
from settings import Settings
from tests.support import FFMPEG, DelayingProxy, ServiceProcess

PG_CTL = Path(__file__).resolve().parent / "pg_ctl_as_postgres"


def load_schema(host: str, port: int, user: str, dbname: str, **_: Any) -> None:
    apply(f"postgresql://{user}@{host}:{port}/{dbname}")


# A throwaway cluster: durability buys nothing here, and without fsync each
# test's copy of the template database takes a fraction of the time. It counts
# the statements it runs (tests/support.py's ``statements_calling``).
THROWAWAY = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
THROWAWAY += " -c shared_preload_libraries=pg_stat_statements"
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


# The database's distance is a mode of the suite: TEST_DB_DELAY_MS=30 scripts/test runs
# every service test with PostgreSQL's replies held that long (a database a network hop
# away, where lost wake-ups show that localhost hides). Tests may choose their own.
SUITE_DB_DELAY_S = float(os.environ.get("TEST_DB_DELAY_MS") or 0) / 1000
# The distance of the tests about the database's distance: 30 ms, or the suite's where that is
# farther, so that TEST_DB_DELAY_MS=100 takes them there too (helper-51 ran the suite so).
FAR_S = max(0.03, SUITE_DB_DELAY_S)
FAR = f"{FAR_S * 1000:g}ms-away"


@pytest.fixture
def database_delay_s(request: pytest.FixtureRequest) -> float:
    """How long PostgreSQL's replies take to reach the service: parametrize it to choose,
    directly or with ``indirect=True`` (which would otherwise be ignored without a word)."""
    delay: float = getattr(request, "param", SUITE_DB_DELAY_S)
    return delay


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
