"""The repository's own commands, run as a developer runs them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support import ROOT, free_port, private_cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def developers_cluster() -> Iterator[tuple[dict[str, str], str]]:
    with private_cluster() as cluster:
        yield cluster


def test_a_second_start_on_another_port_leaves_the_running_cluster_where_it_is(
    developers_cluster: tuple[dict[str, str], str],
) -> None:
    """A second scripts/run with another PGPORT once restarted the shared cluster on its
    own port and cut the first service off; now it refuses and says which port to use."""
    env, owner_url = developers_cluster
    with psycopg.connect(owner_url) as first_service:
        moved = subprocess.run(
            [ROOT / "scripts/local-postgres", "start"],
            env={**env, "PGPORT": str(free_port())},
            capture_output=True,
            text=True,
        )
        assert moved.returncode != 0
        assert f"already runs on port {env['PGPORT']}" in moved.stderr
        assert f"PGPORT={env['PGPORT']}" in moved.stderr
        assert first_service.execute("SELECT 1").fetchone() == (1,)  # still connected

    again = subprocess.run(
        [ROOT / "scripts/local-postgres", "start"], env=env, capture_output=True, text=True, check=True
    )
    assert f"OWNER_URL={owner_url}" in again.stdout.split()


def test_api_fuzz_leaves_a_developers_cluster_running_and_its_own_stopped(
    developers_cluster: tuple[dict[str, str], str],
) -> None:
    env, owner_url = developers_cluster
    fuzz_env = {**env, "FUZZ_PORT": str(free_port()), "FUZZ_PGPORT": str(free_port()), "FUZZ_EXAMPLES": "1"}
    fuzz_env.pop("PGDATA_ROOT")
    fuzzed = subprocess.run([ROOT / "scripts/api-fuzz"], env=fuzz_env, capture_output=True, text=True)
    assert fuzzed.returncode == 0, fuzzed.stdout[-2000:] + fuzzed.stderr[-2000:]

    with psycopg.connect(owner_url) as connection:  # the developer's cluster still answers
        assert connection.execute("SELECT 1").fetchone() == (1,)
    status = subprocess.run(
        ["runuser", "-u", "postgres", "--", *_pg_ctl(), "-D", str(ROOT / ".pgdata-fuzz/data"), "status"],
        capture_output=True,
    )
    assert status.returncode == 3, status.stdout  # pg_ctl: no server running there


def _pg_ctl() -> list[str]:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return [str(versions[-1])]
