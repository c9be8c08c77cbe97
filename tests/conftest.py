"""A real, throwaway PostgreSQL for every test run.

pytest-postgresql starts a cluster from the local server binaries (through
``pg_ctl_as_postgres``, since PostgreSQL refuses to run as root), builds the
schema once into its template database with the project's own apply command,
and gives each test a fresh clone of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pytest_postgresql import factories

from db.apply import DEFAULT_SERVICE_ROLE, apply

PG_CTL = Path(__file__).resolve().parent / "pg_ctl_as_postgres"


def load_schema(host: str, port: int, user: str, dbname: str, **_: Any) -> None:
    apply(f"postgresql://{user}@{host}:{port}/{dbname}")


postgresql_proc = factories.postgresql_proc(executable=str(PG_CTL), load=[load_schema])
postgresql = factories.postgresql("postgresql_proc")


@pytest.fixture
def owner(postgresql: psycopg.Connection) -> psycopg.Connection:
    """The schema owner's connection, for looking behind the api's back."""
    postgresql.autocommit = True
    return postgresql


@pytest.fixture
def service(postgresql: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A connection as the service's login role, as a psql user would open one."""
    info = postgresql.info
    with psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user=DEFAULT_SERVICE_ROLE) as connection:
        connection.autocommit = True
        yield connection
