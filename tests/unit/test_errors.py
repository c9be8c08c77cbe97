"""handlers/errors.py alone: what a failure answers."""

from __future__ import annotations

import asyncpg
import pytest

from handlers.errors import api_error_for


@pytest.mark.parametrize("rolled_back", [asyncpg.DeadlockDetectedError, asyncpg.SerializationError])
def test_work_the_database_undid_to_let_another_transaction_go_on_is_answered_try_again(
    rolled_back: type[asyncpg.PostgresError],
) -> None:
    """PostgreSQL breaks a deadlock by rolling one transaction back (an administrator's
    deletion in pgAdmin against an upload's checkpoint, say): nothing of it was kept, and
    the same request again may well succeed. It was a 500, which clients do not retry."""
    answer = api_error_for(rolled_back("deadlock detected"))
    assert answer.status == 503
    assert answer.headers["Retry-After"].isdigit()
    assert "try again" in answer.message


def test_a_database_that_cannot_be_reached_is_answered_try_again_as_before() -> None:
    answer = api_error_for(asyncpg.TooManyConnectionsError("sorry, too many clients already"))
    assert (answer.status, answer.message) == (503, "The database is unavailable; try again shortly.")
    assert answer.headers["Retry-After"].isdigit()
