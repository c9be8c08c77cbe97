"""The api schema, called as a psql user would: through the service role."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from db import api
from db.apply import (
    DEFAULT_OWNER_ROLE,
    DEFAULT_REPLICATION_ROLE,
    DEFAULT_SERVICE_ROLE,
    MIGRATIONS_DIR,
    Roles,
    apply,
    function_files,
)
from tests.support import ROOT, finished_records, store_record, wait_until


def sqlstate_of(connection: psycopg.Connection, query: str, params: Any = None) -> str | None:
    with pytest.raises(psycopg.Error) as raised:
        connection.execute(query, params)
    return raised.value.sqlstate


def scalar(connection: psycopg.Connection, query: str, params: Any = None) -> Any:
    """The single value a query returns."""
    row = connection.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def create_user(service: psycopg.Connection, name: str = "alice") -> tuple[int, str]:
    row = service.execute("SELECT id, token FROM api.user_create(%s)", [name]).fetchone()
    assert row is not None
    return row[0], str(row[1])


def large_object_count(admin: psycopg.Connection) -> int:
    return int(scalar(admin, "SELECT count(*) FROM pg_largeobject_metadata"))


def record_count(admin: psycopg.Connection) -> int:
    return int(scalar(admin, "SELECT count(*) FROM app.records"))


def claimed_upload(service: psycopg.Connection, user: tuple[int, str], converted: bytes = b"") -> tuple[Any, int]:
    """A new resumable upload of the user's and the generation of a PATCH that claimed it;
    with ``converted``, that PATCH's first checkpoint stored it as the MP3 so far (the WAV's
    header and 100 bytes taken, 20 of them pending), and the upload was claimed again by a
    PATCH of 3 bytes, which keeps them as sent."""
    row = service.execute(
        "SELECT * FROM api.upload_create(%s, %s, 'take.wav', '{}', 100000, 3600, 16)", list(user)
    ).fetchone()
    assert row is not None
    claim = "SELECT generation FROM api.upload_claim(%s, %s, %s, %s, NULL, 3600, %s)"
    generation = scalar(service, claim, [*user, row[0], 0, None])
    if converted:
        checkpoint = "SELECT api.upload_checkpoint(%s, %s, 0, %s, 100, '{}', 'RIFF', 3600, NULL, %s)"
        service.execute(checkpoint, [row[0], generation, converted, b"p" * 20])
        generation = scalar(service, claim, [*user, row[0], 100, 3])
    return row[0], generation


# --- users and tokens ---------------------------------------------------------


def test_user_create_returns_the_token_once_and_stores_only_its_digest(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    row = service.execute("SELECT * FROM api.user_create('alice')").fetchone()
    assert row is not None
    user_id, username, token = row
    assert username == "alice"
    assert isinstance(token, uuid.UUID)
    assert token.version == 4

    stored = admin.execute("SELECT * FROM app.users WHERE id = %s", [user_id]).fetchone()
    assert stored is not None
    assert str(token) not in repr(stored)
    digest = scalar(admin, "SELECT token_sha256 FROM app.users WHERE id = %s", [user_id])
    assert bytes(digest) == hashlib.sha256(str(token).encode()).digest()

    # No api function ever gives the token back.
    rows = service.execute("SELECT * FROM api.user_check(%s, %s)", [user_id, str(token)]).fetchall()
    assert rows == [(user_id, "alice")]


def test_tokens_are_random_per_user(service: psycopg.Connection) -> None:
    tokens = {create_user(service, f"user{n}")[1] for n in range(20)}
    assert len(tokens) == 20


def test_username_is_trimmed(service: psycopg.Connection) -> None:
    row = service.execute("SELECT username FROM api.user_create(%s)", ["  bob \t"]).fetchone()
    assert row == ("bob",)


@pytest.mark.parametrize(
    "name",
    [None, "", "   ", "x" * 65, "bad\nname", "tab\tinside", "nul\x01byte", "\x7f"],
    ids=["null", "empty", "blank", "65-chars", "newline", "tab", "control", "delete"],
)
def test_invalid_usernames_are_refused_with_pt400(service: psycopg.Connection, name: str | None) -> None:
    assert sqlstate_of(service, "SELECT * FROM api.user_create(%s)", [name]) == "PT400"


def test_longest_and_unicode_usernames_are_accepted(service: psycopg.Connection) -> None:
    assert service.execute("SELECT username FROM api.user_create(%s)", ["x" * 64]).fetchone() == ("x" * 64,)
    assert service.execute("SELECT username FROM api.user_create(%s)", ["Zoë 李"]).fetchone() == ("Zoë 李",)


def test_username_taken_in_another_case_is_a_conflict(service: psycopg.Connection) -> None:
    create_user(service, "Alice")
    assert sqlstate_of(service, "SELECT * FROM api.user_create(%s)", ["aLICE"]) == "PT409"
    assert sqlstate_of(service, "SELECT * FROM api.user_create(%s)", [" alice "]) == "PT409"


FULL_WIDTH_ZOE = "\uff3a\uff2f\uff25"


@pytest.mark.parametrize(
    ("first", "second"),
    [("Zoe", FULL_WIDTH_ZOE), ("Straße", "STRASSE"), ("café", "cafe\u0301"), ("\ufb01sh", "FISH")],
    ids=["full-width", "sharp-s", "combining-accent", "ligature"],
)
def test_usernames_that_read_the_same_are_one_name(service: psycopg.Connection, first: str, second: str) -> None:
    create_user(service, first)
    assert sqlstate_of(service, "SELECT * FROM api.user_create(%s)", [second]) == "PT409"


@pytest.mark.parametrize(
    "name",
    ["Z\u200boe", "\u202eeoz", "\u00a0", "\u200b", "zo\u2066e", "zoe\ufeff", "\u3000\u00a0"],
    ids=["zero-width-space", "right-to-left-override", "no-break-space-only", "zero-width-only", "isolate", "bom",
         "wide-spaces-only"],
)  # fmt: skip
def test_invisible_and_direction_characters_are_refused(service: psycopg.Connection, name: str) -> None:
    assert sqlstate_of(service, "SELECT * FROM api.user_create(%s)", [name]) == "PT400"


def test_a_username_is_kept_in_its_nfkc_form(service: psycopg.Connection) -> None:
    assert scalar(service, "SELECT username FROM api.user_create(%s)", [FULL_WIDTH_ZOE]) == "ZOE"


def test_token_is_accepted_in_any_uuid_spelling(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    for spelling in (token.upper(), token.replace("-", ""), "{" + token + "}"):
        assert service.execute("SELECT id FROM api.user_check(%s, %s)", [user_id, spelling]).fetchone() == (user_id,)


def test_a_malformed_token_is_the_same_error_for_an_existing_user_and_a_missing_one(
    service: psycopg.Connection,
) -> None:
    """An unbalanced brace once failed the cast for existing users only: an oracle of user ids."""
    user_id, _ = create_user(service)
    for token in ("{00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000}", "{x}"):
        existing = sqlstate_of(service, "SELECT * FROM api.user_check(%s, %s)", [user_id, token])
        missing = sqlstate_of(service, "SELECT * FROM api.user_check(%s, %s)", [user_id + 1000, token])
        assert existing == missing == "PT401", token


def test_wrong_token_unknown_user_and_garbage_raise_the_same_error(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    other_id, _ = create_user(service, "bob")
    attempts = [
        (user_id, str(uuid.uuid4())),  # wrong token
        (999_999, token),  # unknown user
        (other_id, token),  # someone else's token
        (user_id, "not-a-uuid"),
        (user_id, "' OR 1=1 --"),
        (user_id, ""),
        (user_id, None),
        (None, token),
    ]
    errors = set()
    for attempt_user, attempt_token in attempts:
        with pytest.raises(psycopg.Error) as raised:
            service.execute("SELECT * FROM api.user_check(%s, %s)", [attempt_user, attempt_token])
        errors.add((raised.value.sqlstate, raised.value.diag.message_primary))
    assert errors == {("PT401", "Unknown user or wrong token.")}


# --- records ------------------------------------------------------------------


def test_record_written_in_chunks_reads_back_identical_whole_and_by_ranges(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    payload = os.urandom(700_000)
    chunks = [payload[i : i + 262_144] for i in range(0, len(payload), 262_144)]
    record_id = store_record(service, user_id, token, chunks)

    info = service.execute(
        "SELECT filename, size, sha256 FROM api.record_open(%s, %s)", [record_id, user_id]
    ).fetchone()
    assert info is not None
    assert info[0] == "song.mp3"
    assert info[1] == len(payload)
    assert bytes(info[2]) == hashlib.sha256(payload).digest()

    def read(start: int, count: int) -> bytes:
        return bytes(scalar(service, "SELECT api.record_read(%s, %s, %s, %s)", [record_id, user_id, start, count]))

    assert b"".join(read(start, 100_000) for start in range(0, len(payload), 100_000)) == payload
    for start, count in [(0, 1), (1, 7), (262_143, 2), (699_999, 1), (123_456, 300_000), (699_000, 5_000)]:
        assert read(start, count) == payload[start : start + count]
    assert read(len(payload), 10) == b""


def test_record_read_refuses_absurd_ranges(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    record_id = store_record(service, user_id, token, [b"abc"])
    for start, count in [(-1, 1), (0, -1), (0, 8_388_609), (None, 1)]:
        query = "SELECT api.record_read(%s, %s, %s, %s)"
        assert sqlstate_of(service, query, [record_id, user_id, start, count]) == "PT400"


def test_rolled_back_upload_leaves_no_record_and_no_large_object(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    user_id, token = create_user(service)
    objects_before = large_object_count(admin)
    service.autocommit = False
    record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
    service.execute("SELECT api.record_append(%s, %s)", [record_id, os.urandom(100_000)])
    assert large_object_count(admin) == objects_before  # not visible outside the transaction
    service.rollback()
    assert record_count(admin) == 0
    assert large_object_count(admin) == objects_before


def test_commit_without_finish_fails_and_leaves_nothing(service: psycopg.Connection, admin: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    objects_before = large_object_count(admin)
    service.autocommit = False
    record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
    service.execute("SELECT api.record_append(%s, 'partial')", [record_id])
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        service.commit()
    assert record_count(admin) == 0
    assert large_object_count(admin) == objects_before


def test_begin_in_autocommit_cannot_leave_a_half_record(service: psycopg.Connection, admin: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    assert sqlstate_of(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token]) == "23000"
    assert record_count(admin) == 0


def test_record_begin_needs_valid_credentials(service: psycopg.Connection) -> None:
    user_id, _ = create_user(service)
    query = "SELECT api.record_begin(%s, %s, 'a.wav')"
    assert sqlstate_of(service, query, [user_id, str(uuid.uuid4())]) == "PT401"


def test_finishing_an_empty_upload_is_no_audio(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    with service.transaction():
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
        query = "SELECT * FROM api.record_finish(%s, 1.0, 192000, 44100, 2)"
        assert sqlstate_of(service, query, [record_id]) == "PT422"
        raise psycopg.Rollback()


def test_finished_records_cannot_be_written_again(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    record_id = store_record(service, user_id, token, [b"original"])
    assert sqlstate_of(service, "SELECT api.record_append(%s, 'evil')", [record_id]) == "PT404"
    assert sqlstate_of(service, "SELECT * FROM api.record_finish(%s, 1, 1, 1, 1)", [record_id]) == "PT404"
    assert service.execute("SELECT api.record_read(%s, %s, 0, 100)", [record_id, user_id]).fetchone() == (b"original",)


def test_file_names_are_reduced_to_safe_base_names(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    cases = {
        "../../etc/passwd.wav": ("passwd.wav", "passwd.mp3"),
        "C:\\Users\\me\\take 1.WAV": ("take 1.WAV", "take 1.mp3"),
        "bad\nname.wav": ("badname.wav", "badname.mp3"),
        "": ("recording.wav", "recording.mp3"),
        "dir/": ("recording.wav", "recording.mp3"),
        "noextension": ("noextension", "noextension.mp3"),
        ".wav": (".wav", ".wav.mp3"),
        "é" * 300 + ".wav": ("é" * 255, "é" * 255 + ".mp3"),
    }
    for given, expected in cases.items():
        with service.transaction():
            record_id = scalar(service, "SELECT api.record_begin(%s, %s, %s)", [user_id, token, given])
            service.execute("SELECT api.record_append(%s, 'x')", [record_id])
            row = service.execute(
                "SELECT original_filename, filename FROM api.record_finish(%s, 1, 1, 1, 1)", [record_id]
            ).fetchone()
        assert row == expected, given


def test_records_list_is_the_users_own_newest_first(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    other_id, other_token = create_user(service, "bob")
    first = store_record(service, user_id, token, [b"1"])
    second = store_record(service, user_id, token, [b"2"])
    store_record(service, other_id, other_token, [b"3"])
    rows = service.execute("SELECT id, user_id FROM api.records_list(%s, %s)", [user_id, token]).fetchall()
    assert rows == [(second, user_id), (first, user_id)]
    assert sqlstate_of(service, "SELECT * FROM api.records_list(%s, %s)", [user_id, other_token]) == "PT401"


def walk(service: psycopg.Connection, user_id: int, token: str, page_size: int, during: Any = None) -> list[Any]:
    """Every page of a listing, following each last row's cursor; `during` runs between pages."""
    seen: list[Any] = []
    cursor = None
    while True:
        rows = service.execute(
            "SELECT id, created_at, cursor FROM api.records_list(%s, %s, %s, %s)", [user_id, token, page_size, cursor]
        ).fetchall()
        seen.extend(rows)
        if len(rows) < page_size:
            return seen
        cursor = rows[-1][2]
        if during is not None:
            during()


def test_records_list_pages_see_every_record_once_newest_first_while_more_are_added(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    user_id, token = create_user(service)
    finished_records(admin, user_id, 2500)
    before = {row[0] for row in service.execute("SELECT id FROM api.records_list(%s, %s)", [user_id, token])}
    added: list[uuid.UUID] = []
    seen = walk(
        service, user_id, token, 100, during=lambda: added.append(store_record(service, user_id, token, [b"n"]))
    )
    ids = [row[0] for row in seen]
    assert len(ids) == len(set(ids))  # none twice
    assert before <= set(ids)  # every record that was there, once
    assert set(ids) - before <= set(added)  # and nothing else
    order = [(row[1], row[0]) for row in seen]
    assert order == sorted(order, reverse=True)  # newest first, ties by id
    assert len(added) == 25


def test_a_page_is_read_from_the_index_however_deep_it_is(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    user_id, token = create_user(service)
    finished_records(admin, user_id, 2500)
    admin.execute("ANALYZE app.records")
    deep = service.execute(
        "SELECT cursor FROM api.records_list(%s, %s) OFFSET 1200 LIMIT 1", [user_id, token]
    ).fetchone()
    assert deep is not None
    position = admin.execute("SELECT created_at, id FROM app.listing_cursor(%s)", [deep[0]]).fetchone()
    assert position is not None
    # The query api.records_list runs, with the position its cursor names.
    plan = admin.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM app.record_info AS i"
        " WHERE i.user_id = %s AND (i.created_at, i.id) < (%s, %s) ORDER BY i.created_at DESC, i.id DESC LIMIT 100",
        [user_id, *position],
    ).fetchone()
    assert plan is not None
    scans = list(plan_nodes(plan[0][0]["Plan"]))
    index_scans = [node for node in scans if node.get("Index Name") == "records_listing_idx"]
    # The position is an index condition: only the page's rows are read, not those before it.
    assert any("ROW(created_at, id) < ROW(" in node.get("Index Cond", "") for node in index_scans), scans
    assert all(node["Actual Rows"] <= 100 for node in index_scans)


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def test_records_list_refuses_a_cursor_it_did_not_give_and_a_page_size_below_one(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    call = "SELECT * FROM api.records_list(%s, %s, %s, %s)"
    # The last: a well-formed cursor of a time past what a timestamp holds.
    for cursor in ("", "not a cursor", "A" * 31, "/" * 32, "'; DROP TABLE app.users; --", "g" + "A" * 31):
        assert sqlstate_of(service, call, [user_id, token, 10, cursor]) == "PT400", cursor
    assert sqlstate_of(service, call, [user_id, token, 0, None]) == "PT400"
    # Credentials come first: a stranger learns nothing about cursors.
    assert sqlstate_of(service, call, [user_id, "wrong", 10, "junk"]) == "PT401"


def test_delete_unlinks_the_large_object(service: psycopg.Connection, admin: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    objects_before = large_object_count(admin)
    record_id = store_record(service, user_id, token, [os.urandom(1000)])
    assert large_object_count(admin) == objects_before + 1
    service.execute("SELECT api.record_delete(%s, %s, %s)", [user_id, token, record_id])
    assert record_count(admin) == 0
    assert large_object_count(admin) == objects_before
    assert sqlstate_of(service, "SELECT * FROM api.record_open(%s, %s)", [record_id, user_id]) == "PT404"


def test_deleting_rows_by_hand_also_unlinks_their_objects(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """An admin in pgAdmin deleting a user must not orphan the MP3s."""
    user_id, token = create_user(service)
    objects_before = large_object_count(admin)
    store_record(service, user_id, token, [b"a"])
    store_record(service, user_id, token, [b"b"])
    admin.execute("DELETE FROM app.users WHERE id = %s", [user_id])
    assert large_object_count(admin) == objects_before
    assert record_count(admin) == 0


def test_every_deletion_of_a_finished_record_is_announced_with_its_digest(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """On mp3_record_deleted, at commit: the services drop the file from their download caches."""
    user_id, token = create_user(service)
    first = store_record(service, user_id, token, [b"first"])
    store_record(service, user_id, token, [b"second"])
    service.execute("LISTEN mp3_record_deleted")
    service.execute("SELECT api.record_delete(%s, %s, %s)", [user_id, token, first])
    admin.execute("DELETE FROM app.users WHERE id = %s", [user_id])  # by hand, cascading
    announced = [notify.payload for notify in service.notifies(timeout=10, stop_after=2)]
    assert announced == [hashlib.sha256(b"first").hexdigest(), hashlib.sha256(b"second").hexdigest()]


def test_another_users_record_is_indistinguishable_from_a_missing_one(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    other_id, other_token = create_user(service, "mallory")
    record_id = store_record(service, user_id, token, [b"secret"])
    missing = uuid.uuid4()

    def error_of(query: str, params: list[Any]) -> tuple[str | None, str | None]:
        with pytest.raises(psycopg.Error) as raised:
            service.execute(query, params)
        return raised.value.sqlstate, raised.value.diag.message_primary

    for target in (record_id, missing):
        assert error_of("SELECT * FROM api.record_open(%s, %s)", [target, other_id]) == ("PT404", "No such record.")
        assert error_of("SELECT api.record_read(%s, %s, 0, 10)", [target, other_id]) == ("PT404", "No such record.")
        assert error_of("SELECT api.record_delete(%s, %s, %s)", [other_id, other_token, target]) == (
            "PT404",
            "No such record.",
        )
    # And its owner still has it.
    assert service.execute("SELECT api.record_read(%s, %s, 0, 10)", [record_id, user_id]).fetchone() == (b"secret",)


# --- privileges ---------------------------------------------------------------


def test_service_role_cannot_touch_tables_or_large_objects(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    user_id, token = create_user(service)
    record_id = store_record(service, user_id, token, [b"mp3 bytes"])
    object_id = scalar(admin, "SELECT lo_oid FROM app.records WHERE id = %s", [record_id])

    denied = "42501"
    assert sqlstate_of(service, "SELECT * FROM app.users") == denied
    assert sqlstate_of(service, "SELECT * FROM app.records") == denied
    assert sqlstate_of(service, "SELECT * FROM app.record_info") == denied
    assert sqlstate_of(service, "DELETE FROM app.records") == denied
    assert sqlstate_of(service, "SELECT lo_get(%s)", [object_id]) == denied
    assert sqlstate_of(service, "SELECT lo_put(%s, 0, 'evil')", [object_id]) == denied
    assert sqlstate_of(service, "SELECT lo_unlink(%s)", [object_id]) == denied
    assert sqlstate_of(service, "SELECT * FROM _yoyo_migration") == denied
    assert sqlstate_of(service, "SELECT app.upload_in_progress(%s)", [record_id]) == denied


def test_the_service_role_can_create_no_large_object_nor_temporary_table(service: psycopg.Connection) -> None:
    """Objects of its own would outlive any record, and lo_import reads files of the server."""
    denied = "42501"
    assert sqlstate_of(service, "SELECT lo_create(0)") == denied
    assert sqlstate_of(service, "SELECT lo_creat(-1)") == denied
    assert sqlstate_of(service, "SELECT lo_from_bytea(0, 'x')") == denied
    assert sqlstate_of(service, "SELECT lo_import('/etc/passwd')") == denied
    assert sqlstate_of(service, "CREATE TEMP TABLE scratch (x int)") == denied


def test_everything_the_service_touches_belongs_to_an_owner_that_is_no_superuser(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    user_id, token = create_user(service)
    store_record(service, user_id, token, [b"mp3"])
    owners = admin.execute(
        """
        SELECT DISTINCT r.rolname, r.rolsuper, r.rolcanlogin
        FROM (
            SELECT nspowner AS owner FROM pg_namespace WHERE nspname IN ('app', 'api')
            UNION ALL SELECT relowner FROM pg_class WHERE relnamespace IN ('app'::regnamespace, 'api'::regnamespace)
            UNION ALL SELECT proowner FROM pg_proc WHERE pronamespace IN ('app'::regnamespace, 'api'::regnamespace)
            UNION ALL SELECT lomowner FROM pg_largeobject_metadata
            UNION ALL SELECT datdba FROM pg_database WHERE datname = current_database()
        ) AS o
        JOIN pg_roles AS r ON r.oid = o.owner
        """
    ).fetchall()
    assert owners == [(DEFAULT_OWNER_ROLE, False, False)]
    assert scalar(admin, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", [DEFAULT_SERVICE_ROLE]) is False


def test_apply_hands_over_what_an_earlier_version_left_to_the_administrator(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    user_id, token = create_user(service)
    store_record(service, user_id, token, [b"mp3"])
    object_id = scalar(admin, "SELECT lo_oid FROM app.records")
    for statement in (
        "ALTER SCHEMA app OWNER TO postgres",
        "ALTER TABLE app.users OWNER TO postgres",
        "ALTER VIEW app.record_info OWNER TO postgres",
        "ALTER SCHEMA api OWNER TO postgres",
        "ALTER FUNCTION app.upload_in_progress(uuid) OWNER TO postgres",
        "ALTER TABLE _yoyo_migration OWNER TO postgres",
        f"ALTER LARGE OBJECT {object_id} OWNER TO postgres",
    ):
        admin.execute(statement)  # fmt: skip
    info = admin.info
    apply(f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}")
    owned_by_admin = admin.execute(
        """
        SELECT count(*) FROM (
            SELECT nspowner AS owner FROM pg_namespace WHERE nspname IN ('app', 'api')
            UNION ALL SELECT relowner FROM pg_class WHERE relnamespace = 'app'::regnamespace OR relname LIKE '%%yoyo%%'
            UNION ALL SELECT proowner FROM pg_proc WHERE pronamespace IN ('app'::regnamespace, 'api'::regnamespace)
            UNION ALL SELECT lomowner FROM pg_largeobject_metadata
        ) AS o WHERE o.owner = 'postgres'::regrole
        """
    ).fetchone()
    assert owned_by_admin == (0,)
    assert service.execute("SELECT api.record_read(r.id, %s, 0, 10) FROM api.records_list(%s, %s) AS r",
                           [user_id, user_id, token]).fetchone() == (b"mp3",)  # fmt: skip


def test_api_functions_are_not_executable_by_public(admin: psycopg.Connection) -> None:
    """Even a role let into the database (PUBLIC is not) may call no api function."""
    admin.execute("CREATE ROLE stranger LOGIN")
    admin.execute(f"GRANT CONNECT ON DATABASE {admin.info.dbname} TO stranger")
    info = admin.info
    with psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user="stranger") as stranger:
        assert sqlstate_of(stranger, "SELECT * FROM api.user_create('eve')") == "42501"


def test_every_api_function_is_security_definer_with_a_fixed_search_path(admin: psycopg.Connection) -> None:
    rows = admin.execute(
        """
        SELECT p.proname, p.prosecdef, p.proconfig, obj_description(p.oid, 'pg_proc')
        FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
        WHERE n.nspname = 'api'
        """
    ).fetchall()
    assert len(rows) == len(function_files())
    for name, definer, config, comment in rows:
        assert definer, name
        assert config == ["search_path=pg_catalog, pg_temp"], name
        assert comment, name


# --- the apply command ----------------------------------------------------------


def test_apply_is_repeatable_and_drops_functions_that_no_longer_have_a_file(
    admin: psycopg.Connection, service: psycopg.Connection
) -> None:
    user_id, token = create_user(service)
    admin.execute("CREATE FUNCTION api.renamed_long_ago() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    info = admin.info
    apply(f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}")
    apply(f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}")
    assert admin.execute("SELECT to_regprocedure('api.renamed_long_ago()')").fetchone() == (None,)
    # Data survives and the service role is granted again.
    assert service.execute("SELECT id FROM api.user_check(%s, %s)", [user_id, token]).fetchone() == (user_id,)
    assert admin.execute("SELECT count(*) FROM _yoyo_migration").fetchone() == (
        len(list(MIGRATIONS_DIR.glob("*.sql"))),
    )
    assert admin.execute("SELECT rolname FROM pg_roles WHERE rolname = %s", [DEFAULT_SERVICE_ROLE]).fetchone()


def test_applying_a_release_without_migrations_leaves_the_api_to_running_services(
    admin: psycopg.Connection, service: psycopg.Connection
) -> None:
    """A rolling deploy applies its release beside services still running: while its
    migrations wait (here for yoyo's lock, which this test holds), they call the api as before."""
    user_id, token = create_user(service)
    info = admin.info
    holder = psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user=info.user)
    holder.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 0)")  # held until rollback
    failures: list[BaseException] = []

    def applying() -> None:
        try:
            apply(f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}")
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=applying)
    thread.start()
    try:
        wait_until(lambda: scalar(admin, WAITING_FOR_THE_LOCK), 20)
        assert service.execute("SELECT id FROM api.user_check(%s, %s)", [user_id, token]).fetchone() == (user_id,)
    finally:
        holder.rollback()
        holder.close()
        thread.join(30)
    assert not thread.is_alive()
    assert failures == []


WAITING_FOR_THE_LOCK = """
    SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%%yoyo_lock%%'
"""


def test_the_replication_login_may_replicate_and_not_even_connect_to_the_database(admin: psycopg.Connection) -> None:
    info = admin.info
    apply(f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}", Roles(replication_password="secret"))
    row = admin.execute(
        "SELECT rolcanlogin, rolreplication, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls"
        " FROM pg_roles WHERE rolname = %s",
        [DEFAULT_REPLICATION_ROLE],
    ).fetchone()
    assert row == (True, True, False, False, False, False)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user=DEFAULT_REPLICATION_ROLE,
                        password="secret")  # fmt: skip
    apply(f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}")  # without the password: left alone
    assert scalar(admin, "SELECT rolreplication FROM pg_roles WHERE rolname = %s", [DEFAULT_REPLICATION_ROLE])


def test_a_migration_may_change_what_the_api_and_its_view_read(
    admin: psycopg.Connection, service: psycopg.Connection, tmp_path: Path
) -> None:
    """The api schema and the private code (the view three api functions return) go
    before migrations run and come back after: a column they read can change type."""
    user_id, token = create_user(service)
    record_id = store_record(service, user_id, token, [b"mp3"])
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    (migrations / "9999.longer-file-names.sql").write_text(
        "ALTER TABLE app.records ALTER COLUMN original_filename TYPE varchar(300);\n"
    )
    info = admin.info
    apply(f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}", migrations_dir=migrations)
    row = service.execute("SELECT filename FROM api.record_open(%s, %s)", [record_id, user_id]).fetchone()
    assert row == ("song.mp3",)


def test_the_stored_digest_is_the_sha256_of_the_stored_bytes_whoever_finishes(service: psycopg.Connection) -> None:
    """What sha256sum prints for the download: computed by the database, overwrite included."""
    user_id, token = create_user(service)
    with service.transaction():
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
        service.execute("SELECT api.record_append(%s, %s)", [record_id, b"ID3" + bytes(100)])
        service.execute("SELECT api.record_append(%s, %s)", [record_id, b"audio" * 1000])
        service.execute("SELECT api.record_overwrite(%s, 3, %s)", [record_id, b"HEADER"])
        digest = scalar(service, "SELECT sha256 FROM api.record_finish(%s, 1, 1, 1, 1)", [record_id])
    stored = scalar(service, "SELECT api.record_read(%s, %s, 0, 100000)", [record_id, user_id])
    assert bytes(digest) == hashlib.sha256(stored).digest()
    assert stored[:9] == b"ID3HEADER"


def test_record_finish_writes_the_header_frame_and_the_measurements_it_is_given(service: psycopg.Connection) -> None:
    """As the service finishes an upload, in one statement (a psql user names the arguments):
    the header frame written before the digest is computed, the waveform and loudness stored.
    Each is checked as api.record_overwrite and api.record_measure check it, and a refusal
    finishes nothing."""
    user_id, token = create_user(service)
    dat = struct.pack("<iIiiIi", 2, 1, 44100, 256, 1, 1) + bytes([0, 0])
    finish = """SELECT sha256, loudness, loudness_range, true_peak, has_waveform
                FROM api.record_finish(%s, 1, 1, 1, 1, header_at => %s, header_frame => %s, waveform => %s,
                                       loudness => -23.5, loudness_range => 4.25, true_peak => -1.5)"""
    with service.transaction():
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
        service.execute("SELECT api.record_append(%s, %s)", [record_id, b"ID3" + bytes(100)])
        for refused in ([98, b"HEADER", dat], [3, b"HEADER", b"no .dat"], [3, None, dat], [None, b"HEADER", dat]):
            with pytest.raises(psycopg.Error) as raised, service.transaction():  # a savepoint: the upload goes on
                service.execute(finish, [record_id, *refused])
            assert raised.value.sqlstate == "PT400"
        finished = service.execute(finish, [record_id, 3, b"HEADER", dat]).fetchone()
    assert finished is not None
    digest, *measured = finished
    stored = scalar(service, "SELECT api.record_read(%s, %s, 0, 100000)", [record_id, user_id])
    assert stored[:9] == b"ID3HEADER"
    assert bytes(digest) == hashlib.sha256(stored).digest()
    assert measured == [-23.5, 4.25, -1.5, True]
    waveform = scalar(service, "SELECT waveform FROM api.record_waveform(%s, %s, %s)", [user_id, token, record_id])
    assert bytes(waveform) == dat


def test_record_finish_appends_the_last_bytes_it_is_given_within_the_quota(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """The service's last MP3 bytes go with api.record_finish (tail), appended before the
    header frame is written and the digest computed, and checked as api.record_append checks
    them: past the user's quota, PT413, and nothing is finished."""
    user_id, token = create_user(service)
    finish = (
        "SELECT sha256, size FROM api.record_finish(%s, 1, 1, 1, 1, header_at => 3, header_frame => %s, tail => %s)"
    )
    with service.transaction():
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
        service.execute("SELECT api.record_append(%s, %s)", [record_id, b"ID3" + bytes(10)])
        set_quota(admin, 1000)
        with pytest.raises(psycopg.Error) as raised, service.transaction():  # a savepoint: the upload goes on
            service.execute(finish, [record_id, b"HEADER", bytes(1000)])
        assert raised.value.sqlstate == "PT413"
        set_quota(admin, 1 << 30)
        finished = service.execute(finish, [record_id, b"HEADER", b"the last frames"]).fetchone()
    assert finished is not None
    stored = scalar(service, "SELECT api.record_read(%s, %s, 0, 100000)", [record_id, user_id])
    assert stored == b"ID3HEADER" + bytes(4) + b"the last frames"
    assert (bytes(finished[0]), finished[1]) == (hashlib.sha256(stored).digest(), len(stored))


# --- storage quota ----------------------------------------------------------------


LIMITS_IN_WORDS = [
    (0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (1536, "1.5 KiB"), (1048575, "1.0 MiB"),
    (5 << 20, "5.0 MiB"), ((1 << 30) - 1, "1.0 GiB"), (100 << 30, "100.0 GiB"),
]  # fmt: skip


@pytest.mark.parametrize(("size", "words"), LIMITS_IN_WORDS)
def test_limits_are_stated_in_the_unit_that_fits_them(admin: psycopg.Connection, size: int, words: str) -> None:
    """The quota's and the storage bound's messages: a limit set small by hand in psql once
    read "its limit is 0.0 GiB"."""
    assert scalar(admin, "SELECT app.size_in_words(%s)", [size]) == words


def set_quota(admin: psycopg.Connection, quota_bytes: int) -> None:
    admin.execute("UPDATE app.settings SET user_quota_bytes = %s", [quota_bytes])


def test_the_quota_is_kept_at_begin_while_appending_and_at_finish(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    user_id, token = create_user(service)
    set_quota(admin, 1000)
    store_record(service, user_id, token, [b"x" * 600])
    assert service.execute("SELECT * FROM api.user_storage(%s, %s)", [user_id, token]).fetchone() == (
        "alice",
        1,
        600,
        1000,
        0,
    )

    # Past the quota while streaming: stopped at the append that passes it, nothing kept.
    with service.transaction(force_rollback=True):
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'b.wav')", [user_id, token])
        service.execute("SELECT api.record_append(%s, %s)", [record_id, b"y" * 300])
        with pytest.raises(psycopg.Error) as raised:
            service.execute("SELECT api.record_append(%s, %s)", [record_id, b"y" * 300])
    assert raised.value.sqlstate == "PT413"
    assert "past its quota of 1000 bytes" in (raised.value.diag.message_primary or "")  # not "0.0 MiB"
    assert record_count(admin) == large_object_count(admin) == 1

    store_record(service, user_id, token, [b"z" * 400])  # exactly up to the quota
    assert sqlstate_of(service, "SELECT api.record_begin(%s, %s, 'c.wav')", [user_id, token]) == "PT413"

    # Deleting frees the room; by hand in pgAdmin too.
    admin.execute("DELETE FROM app.records WHERE size = 400")
    assert service.execute("SELECT bytes FROM api.user_storage(%s, %s)", [user_id, token]).fetchone() == (600,)
    set_quota(admin, 0)  # no quota
    store_record(service, user_id, token, [b"w" * 5000])


def test_unfinished_resumable_uploads_count_against_the_quota(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """A resumable upload's MP3 so far is the user's storage too: its checkpoints, as a
    PATCH writes them, stop at the quota with the records and the other unfinished uploads,
    and so do a record that POST /record begins meanwhile and a new upload."""
    user_id, token = create_user(service)
    set_quota(admin, 1000)
    store_record(service, user_id, token, [b"x" * 600])

    checkpoint = "SELECT api.upload_checkpoint(%s, %s, 0, %s, 78, '{}', %s, 3600)"
    first, second = claimed_upload(service, (user_id, token)), claimed_upload(service, (user_id, token))
    assert sqlstate_of(service, checkpoint, [*first, b"m" * 401, b"RIFF"]) == "PT413"
    service.execute(checkpoint, [*first, b"m" * 400, b"RIFF"])  # exactly up to the quota
    service.execute(checkpoint, [*first, b"m" * 400, b"RIFF"])  # again: its own bytes are not counted twice
    storage = "SELECT bytes, uploading_bytes FROM api.user_storage(%s, %s)"
    assert service.execute(storage, [user_id, token]).fetchone() == (600, 400)  # what the user is told
    assert sqlstate_of(service, checkpoint, [*second, b"n", b"RIFF"]) == "PT413"
    begin = "SELECT api.record_begin(%s, %s, 'b.wav')"
    assert sqlstate_of(service, begin, [user_id, token]) == "PT413"  # as POST /record begins one
    create = "SELECT api.upload_create(%s, %s, 'more.wav', '{}', 100000, 3600, 16)"
    assert sqlstate_of(service, create, [user_id, token]) == "PT413"
    service.execute("SELECT api.upload_delete(%s, %s, %s)", [user_id, token, first[0]])
    service.execute(checkpoint, [*second, b"n" * 400, b"RIFF"])  # the room the first held is free


def service_sessions(service: psycopg.Connection) -> tuple[psycopg.Connection, psycopg.Connection]:
    """Two more sessions of the service role, each in a transaction of its own until it commits."""
    info = service.info
    first, second = (
        psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user=DEFAULT_SERVICE_ROLE) for _ in range(2)
    )
    return first, second


def sqlstate_once_first_commits(
    admin: psycopg.Connection,
    first: psycopg.Connection,
    second: psycopg.Connection,
    query: str,
    params: Any,
    first_goes_on: Callable[[], object] = lambda: None,
) -> str | None:
    """What ``query`` on ``second`` raises (None: nothing) when it runs while ``first`` holds
    its work uncommitted: once ``second`` waits for one of ``first``'s locks (or is done,
    having waited for none), ``first`` goes on and commits. ``second`` is rolled back after."""
    outcome: list[psycopg.Error] = []

    def run_second() -> None:
        try:
            second.execute(query, params)
        except psycopg.Error as error:
            outcome.append(error)

    running = threading.Thread(target=run_second)
    running.start()
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'"
    deadline = time.monotonic() + 30
    while running.is_alive() and scalar(admin, waiting, [second.info.backend_pid]) == 0:
        assert time.monotonic() < deadline, "the second call neither ended nor waited for a lock"
    first_goes_on()
    first.commit()
    running.join(timeout=30)
    assert not running.is_alive(), "the second call still waits after the first committed"
    second.rollback()
    return outcome[0].sqlstate if outcome else None


def test_a_piece_kept_as_sent_is_refused_once_the_quota_leaves_no_room_to_convert_it(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """The quota counts MP3s, and pieces kept as sent are WAV: with the user's MP3s at the
    quota, a PATCH could still leave up to 2 MiB of them, to be refused only when converted."""
    user = create_user(service)
    upload = claimed_upload(service, user, b"mp3")  # 3 bytes of MP3; claimed by a PATCH of 3 bytes
    store_record(service, *user, [b"x" * 97])
    append = "SELECT api.upload_append(%s, %s, 100, %s, 3600)"
    set_quota(admin, 100)
    assert sqlstate_of(service, append, [*upload, b"abc"]) == "PT413"
    set_quota(admin, 101)
    service.execute(append, [*upload, b"abc"])  # room for a byte more of MP3: kept, to be converted


def test_two_uploads_finishing_at_once_cannot_both_pass_the_quota(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """Each fits alone; the second to finish waits for the first to commit, then sees its bytes."""
    user_id, token = create_user(service)
    set_quota(admin, 1000)
    first, second = service_sessions(service)
    with first, second:
        uploads = []
        for connection in (first, second):
            record_id = scalar(connection, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
            connection.execute("SELECT api.record_append(%s, %s)", [record_id, b"a" * 700])
            uploads.append(record_id)
        finish = "SELECT * FROM api.record_finish(%s, 1, 1, 1, 1)"
        first.execute(finish, [uploads[0]])
        assert sqlstate_once_first_commits(admin, first, second, finish, [uploads[1]]) == "PT413"
    assert scalar(admin, "SELECT stored_bytes FROM app.users WHERE id = %s", [user_id]) == 700
    assert record_count(admin) == large_object_count(admin) == 1


def test_two_resumable_uploads_checkpointing_at_once_cannot_both_pass_the_quota(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """Each checkpoint fits alone: checked at once, each against what was committed, both
    passed, and the user held 1,200 bytes of a 1,000-byte quota. The second now waits for
    the first to commit, then sees its bytes."""
    user = create_user(service)
    set_quota(admin, 1000)
    uploads = [claimed_upload(service, user) for _ in range(2)]
    checkpoint = "SELECT api.upload_checkpoint(%s, %s, 0, %s, 78, '{}', 'RIFF', 3600)"
    first, second = service_sessions(service)
    with first, second:
        first.execute(checkpoint, [*uploads[0], b"m" * 600])
        assert sqlstate_once_first_commits(admin, first, second, checkpoint, [*uploads[1], b"n" * 600]) == "PT413"
    storage = "SELECT bytes, uploading_bytes FROM api.user_storage(%s, %s)"
    assert service.execute(storage, list(user)).fetchone() == (0, 600)


def test_stored_bytes_follow_every_way_a_record_goes(service: psycopg.Connection, admin: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    other_id, other_token = create_user(service, "bob")
    for size in (100, 200):
        store_record(service, user_id, token, [b"x" * size])
    store_record(service, other_id, other_token, [b"x" * 50])
    record_id = scalar(admin, "SELECT id FROM app.records WHERE size = 100")
    service.execute("SELECT api.record_delete(%s, %s, %s)", [user_id, token, record_id])
    assert scalar(admin, "SELECT stored_bytes FROM app.users WHERE id = %s", [user_id]) == 200
    admin.execute("DELETE FROM app.users WHERE id = %s", [user_id])  # cascades to the records
    assert scalar(admin, "SELECT stored_bytes FROM app.users WHERE id = %s", [other_id]) == 50
    assert large_object_count(admin) == 1


def test_apply_stores_the_quota_it_is_given(admin: psycopg.Connection) -> None:
    info = admin.info
    apply(f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}", user_quota_mb=5)
    assert scalar(admin, "SELECT user_quota_bytes FROM app.settings") == 5 << 20
    apply(f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}")  # not given: kept
    assert scalar(admin, "SELECT user_quota_bytes FROM app.settings") == 5 << 20


def test_overwrite_changes_only_bytes_already_written_of_an_upload_in_progress(service: psycopg.Connection) -> None:
    user_id, token = create_user(service)
    with service.transaction():
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
        service.execute("SELECT api.record_append(%s, %s)", [record_id, b"\x00" * 10 + b"tail"])
        service.execute("SELECT api.record_overwrite(%s, 2, %s)", [record_id, b"HEAD"])
        for at, chunk in [(12, b"xyz"), (-1, b"x"), (None, b"x"), (0, None)]:
            with pytest.raises(psycopg.Error) as raised, service.transaction():  # a savepoint: the upload goes on
                service.execute("SELECT api.record_overwrite(%s, %s, %s)", [record_id, at, chunk])
            assert raised.value.sqlstate == "PT400"
        service.execute("SELECT * FROM api.record_finish(%s, 1, 1, 1, 1)", [record_id])
    assert (
        scalar(service, "SELECT api.record_read(%s, %s, 0, 100)", [record_id, user_id])
        == b"\x00\x00HEAD" + bytes(4) + b"tail"
    )
    assert sqlstate_of(service, "SELECT api.record_overwrite(%s, 0, 'evil')", [record_id]) == "PT404"


# --- what one upload may cost the database ----------------------------------------


@pytest.mark.parametrize("duration", ["NaN", "Infinity"])
def test_a_duration_that_is_no_finite_number_is_refused(service: psycopg.Connection, duration: str) -> None:
    """NaN passed `duration <= 0`, and a record holding it made GET /records answer invalid JSON."""
    user_id, token = create_user(service)
    with service.transaction(force_rollback=True):
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
        service.execute("SELECT api.record_append(%s, 'mp3')", [record_id])
        finish = "SELECT * FROM api.record_finish(%s, %s::float8, 1, 1, 1)"
        assert sqlstate_of(service, finish, [record_id, duration]) == "PT400"


def test_what_the_api_stores_is_compressed_with_lz4_where_the_server_has_it(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """Each 2 KB page of a large object is just past the size at which PostgreSQL tries to
    compress a row: with pglz, failing to compress MP3 bytes took a quarter of its CPU."""
    methods = scalar(admin, "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    if "lz4" not in methods:
        pytest.skip("this PostgreSQL was built without lz4")
    assert scalar(service, "SHOW default_toast_compression") == "lz4"
    user_id, token = create_user(service)
    with service.transaction():
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
        service.execute("SELECT api.record_append(%s, %s)", [record_id, b"\xff\xfb\x90\x64" * 4096])  # compressible
        service.execute("SELECT * FROM api.record_finish(%s, 1, 1, 1, 1)", [record_id])
    pages = """SELECT DISTINCT pg_column_compression(l.data) FROM pg_largeobject AS l
               JOIN app.records AS r ON r.lo_oid = l.loid WHERE r.id = %s"""
    assert admin.execute(pages, [record_id]).fetchall() == [("lz4",)]


def test_the_digest_the_service_measured_is_stored_and_the_database_hashes_only_small_mp3s_itself(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    user_id, token = create_user(service)
    with service.transaction():
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'a.wav')", [user_id, token])
        service.execute("SELECT api.record_append(%s, 'mp3')", [record_id])
        assert scalar(service, "SELECT api.record_read_back(%s, 1, 100)", [record_id]) == b"p3"
        with pytest.raises(psycopg.Error) as raised, service.transaction():  # a savepoint
            service.execute("SELECT * FROM api.record_finish(%s, 1, 1, 1, 1, 'short')", [record_id])
        assert raised.value.sqlstate == "PT400"
        measured = hashlib.sha256(b"mp3").digest()
        digest = scalar(service, "SELECT sha256 FROM api.record_finish(%s, 1, 1, 1, 1, %s)", [record_id, measured])
    assert bytes(digest) == measured
    assert sqlstate_of(service, "SELECT api.record_read_back(%s, 0, 3)", [record_id]) == "PT404"  # finished

    # Without the digest, past 64 MiB: refused rather than held whole in the backend's memory.
    with admin.transaction(force_rollback=True):
        record_id = scalar(admin, "SELECT api.record_begin(%s, %s, 'big.wav')", [user_id, token])
        admin.execute("SELECT lo_put(lo_oid, %s, 'end') FROM app.records WHERE id = %s", [64 << 20, record_id])
        assert sqlstate_of(admin, "SELECT * FROM api.record_finish(%s, 1, 1, 1, 1)", [record_id]) == "PT400"


@pytest.mark.slow
async def test_an_mp3_larger_than_any_postgresql_value_is_finished_and_hashed_a_piece_at_a_time(
    admin: psycopg.Connection,
) -> None:
    """The service's finish (db.api.record_finish) never holds the MP3 as one value: one of
    more than 1 GiB, which no PostgreSQL value can hold, is stored with its true SHA-256.
    Made sparse by the administrator, so no GiB is written."""
    user_id, token = create_user(admin)
    info = admin.info
    connection = await asyncpg.connect(host=info.host, port=info.port, user=info.user, database=info.dbname)
    try:
        async with connection.transaction():
            record_id = await api.record_begin(connection, user_id, token, "long.wav")
            await api.record_append(connection, record_id, b"ID3")
            sparse = "SELECT lo_put(lo_oid, $2, 'end') FROM app.records WHERE id = $1"
            await connection.execute(sparse, record_id, 1 << 30)
            record = await api.record_finish(connection, record_id, 4 * 3600.0, 320000, 44100, 2)
    finally:
        await connection.close()
    expected = hashlib.sha256(b"ID3")  # then zeros up to 1 GiB, then "end"
    zeros = bytes(1 << 20)
    for _ in range((1 << 10) - 1):
        expected.update(zeros)
    expected.update(zeros[:-3] + b"end")
    assert record.size == (1 << 30) + 3
    assert record.sha256 == expected.digest()


def set_storage_bound(admin: psycopg.Connection, max_bytes: int) -> None:
    admin.execute("UPDATE app.settings SET storage_max_bytes = %s", [max_bytes])


def test_the_storage_bound_counts_every_user_at_begin_while_appending_and_at_finish(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    alice, bob = create_user(service), create_user(service, "bob")
    set_storage_bound(admin, 1000)
    store_record(service, *alice, [b"x" * 600])

    # Another user's upload passing the bound while streaming: stopped there, nothing kept.
    with service.transaction(force_rollback=True):
        record_id = scalar(service, "SELECT api.record_begin(%s, %s, 'b.wav')", list(bob))
        service.execute("SELECT api.record_append(%s, %s)", [record_id, b"y" * 300])
        with pytest.raises(psycopg.Error) as raised:
            service.execute("SELECT api.record_append(%s, %s)", [record_id, b"y" * 300])
    assert raised.value.sqlstate == "PT507"
    assert "storage is full (its limit is 1000 bytes)" in (raised.value.diag.message_primary or "")  # not "0.0 GiB"
    assert record_count(admin) == large_object_count(admin) == 1

    store_record(service, *bob, [b"z" * 400])  # exactly up to the bound
    assert sqlstate_of(service, "SELECT api.record_begin(%s, %s, 'c.wav')", list(alice)) == "PT507"
    assert service.execute("SELECT * FROM api.storage_stats()").fetchone() == (2, 1000, 1000)

    # Deleting frees the room, however it goes; 0: no bound.
    admin.execute("DELETE FROM app.records WHERE size = 400")
    store_record(service, *alice, [b"w" * 400])
    admin.execute("DELETE FROM app.users WHERE username = 'alice'")  # cascades to the records
    assert service.execute("SELECT * FROM api.storage_stats()").fetchone() == (0, 0, 1000)
    set_storage_bound(admin, 0)
    store_record(service, *bob, [b"v" * 5000])


def test_unfinished_uploads_of_every_user_count_against_the_storage_bound(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """Accounts are free: uploads left unfinished must not be room without a bound. Every
    user's count, with the WAV bytes each keeps to resume from, and one written again is
    not counted twice."""
    alice, bob, carol = create_user(service), create_user(service, "bob"), create_user(service, "carol")
    set_storage_bound(admin, 1000)
    store_record(service, *alice, [b"x" * 300])

    checkpoint = "SELECT api.upload_checkpoint(%s, %s, 0, %s, 78, '{}', 'RIFF', 3600, NULL, %s)"
    bobs, carols = claimed_upload(service, bob), claimed_upload(service, carol)
    service.execute(checkpoint, [*bobs, b"m" * 300, b"w" * 70])  # 374 bytes held
    service.execute(checkpoint, [*bobs, b"m" * 300, b"w" * 70])  # again: its own bytes are not counted twice
    assert sqlstate_of(service, checkpoint, [*carols, b"n" * 323, None]) == "PT507"
    service.execute(checkpoint, [*carols, b"n" * 322, None])  # 300 + 374 + 326: exactly up to the bound
    assert sqlstate_of(service, checkpoint, [*carols, b"n" * 322, b"w"]) == "PT507"  # its WAV bytes count
    assert sqlstate_of(service, "SELECT api.record_begin(%s, %s, 'b.wav')", list(alice)) == "PT507"
    create = "SELECT api.upload_create(%s, %s, 'more.wav', '{}', 100000, 3600, 16)"
    assert sqlstate_of(service, create, list(alice)) == "PT507"
    service.execute("SELECT api.upload_delete(%s, %s, %s)", [*bob, bobs[0]])
    store_record(service, *alice, [b"z" * 374])  # the room bob's upload held is free


def test_a_short_patch_keeps_its_bytes_as_sent_until_a_conversion_takes_them(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """A PATCH gives its claim its length: one too short to be worth converting keeps its
    bytes as sent (api.upload_append), a row at the offset, which moves past them; the next
    claim that converts gets them back after the pending bytes, and its first checkpoint
    replaces them. Only once the header is stored, never the upload's last byte, under
    2 MiB unconverted and 64 pieces; they count against the storage bound."""
    user = create_user(service)
    upload_id = scalar(service, "SELECT id FROM api.upload_create(%s, %s, 'take.wav', '{}', 4000000, 3600, 16)", user)
    claim = "SELECT generation, wav_pending, keeps_as_sent FROM api.upload_claim(%s, %s, %s, %s, NULL, 3600, %s)"
    append = "SELECT api.upload_append(%s, %s, %s, %s, 3600)"
    checkpoint = "SELECT api.upload_checkpoint(%s, %s, 0, 'mp3', %s, '{}', 'RIFF', 3600, NULL, %s)"
    offset = "SELECT upload_offset FROM api.upload_open(%s, %s, %s)"

    def claimed(at: int, sending: int | None) -> tuple[int, bytes | None, bool]:
        row = service.execute(claim, [*user, upload_id, at, sending]).fetchone()
        assert row is not None
        return row[0], row[1], row[2]

    first, _, keeps = claimed(0, 3)
    assert not keeps  # the first PATCH converts: the samples' format must be known
    assert sqlstate_of(service, append, [upload_id, first, 0, b"RIF"]) == "PT400"
    service.execute(checkpoint, [upload_id, first, 100, b"p" * 20])  # offset 100: 80 converted, 20 pending
    assert claimed(100, None)[2] is False  # no Content-Length: converted
    assert claimed(100, 4_000_000 - 100)[2] is False  # the upload's last byte
    assert claimed(100, (2 << 20) - 20 + 1)[2] is False  # past 2 MiB unconverted
    assert claimed(100, (2 << 20) - 20)[2] is True  # 2 MiB unconverted in all
    assert (claimed(100, 0)[2], claimed(100, -1)[2]) == (True, False)
    second, pending, keeps = claimed(100, 3)
    assert (pending, keeps) == (None, True)  # it needs no pending bytes: it keeps its own
    assert sqlstate_of(service, append, [upload_id, second, 99, b"a"]) == "PT409"
    assert sqlstate_of(service, append, [upload_id, second, 100, b""]) == "PT400"
    assert sqlstate_of(service, append, [upload_id, None, 100, b"a"]) == "PT423"  # no generation, no writing
    service.execute(append, [upload_id, second, 100, b"aaa"])
    assert scalar(service, offset, [*user, upload_id]) == 103

    third, _, _ = claimed(103, 1)
    assert sqlstate_of(service, append, [upload_id, second, 103, b"b"]) == "PT423"  # the older PATCH
    for at in range(103, 103 + 63):
        service.execute(append, [upload_id, third, at, b"b"])
    assert sqlstate_of(service, append, [upload_id, third, 166, b"c"]) == "PT400"  # 64 pieces: convert them
    fourth, pending, keeps = claimed(166, 1)
    assert (pending, keeps) == (b"p" * 20 + b"aaa" + b"b" * 63, False)

    assert scalar(admin, "SELECT app.uploads_held_bytes()") == 3 + 4 + 20 + 3 + 63  # MP3, header, pending, pieces
    service.execute(checkpoint, [upload_id, fourth, 166, b"q" * 30])
    assert scalar(admin, "SELECT count(*) FROM app.upload_pieces") == 0
    assert claimed(166, None)[1] == b"q" * 30

    fifth, _, _ = claimed(166, 3)
    set_storage_bound(admin, 3 + 4 + 30 + 2)
    assert sqlstate_of(service, append, [upload_id, fifth, 166, b"ddd"]) == "PT507"
    service.execute(append, [upload_id, fifth, 166, b"dd"])  # exactly up to the bound
    service.execute("SELECT api.upload_delete(%s, %s, %s)", [*user, upload_id])
    assert scalar(admin, "SELECT count(*) FROM app.upload_pieces") == 0

    # A deferred length: kept while the upload's end is unknown, converted once the PATCH ends it.
    upload_id = scalar(service, "SELECT id FROM api.upload_create(%s, %s, 'take.wav', '{}', NULL, 3600, 16)", user)
    service.execute(checkpoint, [upload_id, claimed(0, 100)[0], 100, b"p" * 20])
    assert claimed(100, 3)[2] is True
    given = "SELECT keeps_as_sent FROM api.upload_claim(%s, %s, %s, 100, 103, 3600, 3)"
    assert scalar(service, given, [*user, upload_id]) is False


@pytest.mark.parametrize("lifetime", ["0", "-1", "0.001", "2592001", "1e12", "1e300", "NaN", "Infinity", None])
def test_an_upload_lifetime_beyond_what_uploads_may_be_given_is_refused_wherever_it_is_given(
    service: psycopg.Connection, lifetime: str | None
) -> None:
    """From psql, a lifetime under a second made an upload that had expired already, which
    the sweep would take in the middle of its PATCH; a huge one, NaN or infinity one that
    never would, or failed on PostgreSQL's own range. From 1 s to 30 days, as UPLOAD_EXPIRY_S."""
    user = create_user(service)
    create = "SELECT id FROM api.upload_create(%s, %s, 'take.wav', '{}', 4000000, %s::float8, 16)"
    claim = "SELECT generation FROM api.upload_claim(%s, %s, %s, %s, NULL, %s::float8, %s)"
    checkpoint = "SELECT api.upload_checkpoint(%s, %s, 0, 'mp3', 100, '{}', 'RIFF', %s::float8, NULL, %s)"
    append = "SELECT api.upload_append(%s, %s, 100, 'a', %s::float8)"
    expiry = "SELECT expires_at FROM api.upload_open(%s, %s, %s)"

    assert sqlstate_of(service, create, [*user, lifetime]) == "PT400"
    upload_id = scalar(service, create, [*user, 3600])
    assert sqlstate_of(service, claim, [*user, upload_id, 0, lifetime, None]) == "PT400"
    generation = scalar(service, claim, [*user, upload_id, 0, 3600, None])
    assert sqlstate_of(service, checkpoint, [upload_id, generation, lifetime, b"p" * 20]) == "PT400"
    service.execute(checkpoint, [upload_id, generation, 3600, b"p" * 20])
    generation = scalar(service, claim, [*user, upload_id, 100, 3600, 1])
    expires_at = scalar(service, expiry, [*user, upload_id])
    assert sqlstate_of(service, append, [upload_id, generation, lifetime]) == "PT400"
    assert scalar(service, expiry, [*user, upload_id]) == expires_at


def test_two_uploads_of_two_users_finishing_at_once_cannot_both_pass_the_storage_bound(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    users = [create_user(service), create_user(service, "bob")]
    set_storage_bound(admin, 1000)
    first, second = service_sessions(service)
    with first, second:
        uploads = []
        for connection, user in zip((first, second), users, strict=True):
            record_id = scalar(connection, "SELECT api.record_begin(%s, %s, 'a.wav')", list(user))
            connection.execute("SELECT api.record_append(%s, %s)", [record_id, b"a" * 700])
            uploads.append(record_id)
        finish = "SELECT * FROM api.record_finish(%s, 1, 1, 1, 1)"
        first.execute(finish, [uploads[0]])
        assert sqlstate_once_first_commits(admin, first, second, finish, [uploads[1]]) == "PT507"
    assert record_count(admin) == large_object_count(admin) == 1


@pytest.mark.parametrize("adding", ["checkpoint", "piece kept as sent"])
def test_two_users_resumable_uploads_adding_at_once_cannot_both_pass_the_storage_bound(
    service: psycopg.Connection, admin: psycopg.Connection, adding: str
) -> None:
    """Accounts are free, so any number of users' PATCHes can add bytes at once, each
    checking the bound against what was committed before it: all of them passed it
    together. The second of two now waits for the first to commit, then sees its bytes."""
    if adding == "checkpoint":
        uploads = [claimed_upload(service, create_user(service, name)) for name in ("bob", "carol")]
        add = "SELECT api.upload_checkpoint(%s, %s, 0, %s, 78, '{}', 'RIFF', 3600)"
        held, added = 0, 4 + 600  # the WAV's header with the first checkpoint
    else:
        uploads = [claimed_upload(service, create_user(service, name), b"mp3") for name in ("bob", "carol")]
        add = "SELECT api.upload_append(%s, %s, 100, %s, 3600)"
        held, added = 2 * (3 + 4 + 20), 600  # each upload's MP3, WAV header and pending bytes
    set_storage_bound(admin, held + 1000)
    first, second = service_sessions(service)
    with first, second:
        first.execute(add, [*uploads[0], b"m" * 600])
        assert sqlstate_once_first_commits(admin, first, second, add, [*uploads[1], b"n" * 600]) == "PT507"
    assert scalar(admin, "SELECT app.uploads_held_bytes()") == held + added


def test_upload_finish_ends_a_resumable_upload_in_one_call_or_leaves_it_as_it_was(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """The service's last PATCH, when it hashed its own copy of the MP3: the last bytes
    written, the MP3 made a record and finished, in one statement. A psql user calls it as
    the service does. Refused (another PATCH took the upload, no audio, past the quota),
    it changes nothing: the upload stays at its offset, its MP3 as it was, no record."""
    user = create_user(service)
    upload, generation = claimed_upload(service, user, b"ID3" + bytes(10))  # offset 100, MP3 13 bytes
    mp3 = b"ID3HEADER" + bytes(4) + b"the last frames"
    finish = """SELECT id, size, sha256, loudness FROM api.upload_finish(
                    %s, %s, 13, 'the last frames', 3600, %s, 1, 1, 1, %s, 3, 'HEADER', loudness => -20)"""
    stale, no_audio = [upload, generation - 1, 1, hashlib.sha256(mp3).digest()], [upload, generation, 0, None]
    assert sqlstate_of(service, finish, stale) == "PT423"
    assert sqlstate_of(service, finish, no_audio) == "PT422"
    set_quota(admin, 20)
    assert sqlstate_of(service, finish, [upload, generation, 1, hashlib.sha256(mp3).digest()]) == "PT413"
    open_upload = "SELECT upload_offset, record_id FROM api.upload_open(%s, %s, %s)"
    assert service.execute(open_upload, [*user, upload]).fetchone() == (100, None)
    assert bytes(
        scalar(service, "SELECT api.upload_read_back(%s, %s, 0, 100)", [upload, generation])
    ) == b"ID3" + bytes(10)
    assert scalar(admin, "SELECT count(*) FROM app.records") == 0

    set_quota(admin, 1 << 30)
    finished = service.execute(finish, [upload, generation, 1, hashlib.sha256(mp3).digest()]).fetchone()
    assert finished is not None
    record_id, size, digest, loudness = finished
    assert (size, bytes(digest), loudness) == (len(mp3), hashlib.sha256(mp3).digest(), -20)
    assert bytes(scalar(service, "SELECT api.record_read(%s, %s, 0, 1000)", [record_id, user[0]])) == mp3
    assert service.execute(open_upload, [*user, upload]).fetchone() == (100000, record_id)


def test_upload_finish_needs_the_uploads_length(service: psycopg.Connection) -> None:
    """An upload created with its length deferred cannot end before its length is stated."""
    user = create_user(service)
    upload = scalar(service, "SELECT id FROM api.upload_create(%s, %s, 'take.wav', '{}', NULL, 3600, 16)", list(user))
    claim = "SELECT generation FROM api.upload_claim(%s, %s, %s, 0, NULL, 3600, NULL)"
    generation = scalar(service, claim, [*user, upload])
    finish = "SELECT * FROM api.upload_finish(%s, %s, 0, 'mp3', 3600, 1, 1, 1, 1)"
    assert sqlstate_of(service, finish, [upload, generation]) == "PT400"


@pytest.mark.parametrize("rule", ["storage bound", "quota"])
def test_a_resumable_upload_finishing_holds_up_no_other_upload_nor_its_users_deletions(
    service: psycopg.Connection, admin: psycopg.Connection, rule: str
) -> None:
    """The service finishes a resumable upload in one transaction: its last checkpoint, the
    record begun, the header frame, the digest (hashed meanwhile, or read back), then
    api.record_finish, which checks the record with the totals and the user's row locked.
    Had the checkpoint locked them first, another user's checkpoint would wait for the whole
    finish (1.2 s for a 64 MiB read-back 30 ms from the database), and with a quota alone the
    user's row, taken before the totals, deadlocked with the user's own deletions."""
    alice, bob = create_user(service), create_user(service, "bob")
    kept = store_record(service, *alice, [b"x" * 100])
    finishing, other = service_sessions(service)
    uploads = [claimed_upload(service, user) for user in (alice, bob)]
    if rule == "storage bound":
        set_storage_bound(admin, 1 << 20)
        held_up, call = "SELECT api.upload_checkpoint(%s, %s, 0, %s, 78, '{}', 'RIFF', 3600)", [*uploads[1], b"n"]
    else:
        set_quota(admin, 1 << 20)
        held_up, call = "SELECT api.record_delete(%s, %s, %s)", [*alice, kept]
    with finishing, other:
        last = "SELECT api.upload_checkpoint(%s, %s, 0, %s, 100000, '{}', 'RIFF', 3600)"
        finishing.execute(last, [*uploads[0], b"m" * 600])
        record_id = scalar(finishing, "SELECT api.upload_record_begin(%s, %s)", list(uploads[0]))
        other.execute("SET lock_timeout = '10s'")  # 55P03 instead of waiting for the finish to end
        other.execute(held_up, call)
        other.commit()
        finishing.execute("SELECT * FROM api.record_finish(%s, 1, 1, 1, 1, %s)", [record_id, bytes(32)])
        finishing.commit()
    assert scalar(admin, "SELECT count(*) FROM app.records WHERE user_id = %s", [alice[0]]) == 2 - (rule == "quota")


def test_an_upload_finished_from_psql_after_any_checkpoint_deadlocks_with_no_deletion(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """From psql an upload may be made a record in the transaction of any checkpoint, not
    only of its last bytes'. That checkpoint locks, then api.record_finish: with a quota alone,
    it locked the user's row only, and the totals came second, with record_finish; the
    user's record deletion, meanwhile, takes the totals, then the user's row. Each waited
    for the other (40P01). The checkpoint now takes the totals first too."""
    user = create_user(service)
    kept = store_record(service, *user, [b"x" * 100])
    set_quota(admin, 1 << 20)
    upload = claimed_upload(service, user)
    first, second = service_sessions(service)
    with first, second:
        first.execute("SELECT api.upload_checkpoint(%s, %s, 0, %s, 78, '{}', 'RIFF', 3600)", [*upload, b"m" * 600])
        record_id = scalar(first, "SELECT api.upload_record_begin(%s, %s)", list(upload))
        finish = "SELECT * FROM api.record_finish(%s, 1, 1, 1, 1, %s)"
        delete = "SELECT api.record_delete(%s, %s, %s)"
        finishing = lambda: first.execute(finish, [record_id, bytes(32)])  # noqa: E731
        assert sqlstate_once_first_commits(admin, first, second, delete, [*user, kept], finishing) is None
    assert scalar(admin, "SELECT count(*) FROM app.records WHERE id = %s", [record_id]) == 1


def test_storage_stats_read_running_totals_and_never_the_records(
    service: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """/metrics asks it on every scrape, unauthenticated: its cost may not grow with the records."""
    user_id, token = create_user(service)
    finished_records(admin, user_id, 3)  # by hand, as rows: counted too
    store_record(service, user_id, token, [b"x" * 10])
    info = service.info
    # A session of its own: what a backend counts is reported for all its transactions together.
    with psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user=DEFAULT_SERVICE_ROLE) as fresh:
        assert fresh.execute("SELECT records, bytes FROM api.storage_stats()").fetchone() == (4, 13)
        reads = fresh.execute(
            "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables"
            " WHERE schemaname = 'app' AND relname = 'records'"
        ).fetchone()
    assert reads == (0, 0)


def test_apply_stores_the_storage_bound_it_is_given(admin: psycopg.Connection) -> None:
    info = admin.info
    environment = {**os.environ, "STORAGE_MAX_GB": "3"}
    url = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
    subprocess.run([sys.executable, "-m", "db.apply", url], cwd=ROOT, env=environment, check=True, capture_output=True)
    assert scalar(admin, "SELECT storage_max_bytes FROM app.settings") == 3 << 30
    refused = subprocess.run([sys.executable, "-m", "db.apply", url], cwd=ROOT, capture_output=True, text=True,
                             env={**environment, "STORAGE_MAX_GB": "lots"})  # fmt: skip
    assert refused.returncode != 0
    assert "STORAGE_MAX_GB must be a whole number of GiB" in refused.stderr


def test_apply_given_the_service_roles_url_says_which_url_it_needs(admin: psycopg.Connection) -> None:
    """The mistake scripts/run invites with DATABASE_URL set and no MIGRATE_DATABASE_URL: a
    usage error naming the role and what to give instead, not a traceback."""
    info = admin.info
    url = f"postgresql://{DEFAULT_SERVICE_ROLE}@{info.host}:{info.port}/{info.dbname}"
    refused = subprocess.run([sys.executable, "-m", "db.apply", url], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2  # argparse's usage error
    assert f"error: run the apply command as an administrator (a superuser), not as {DEFAULT_SERVICE_ROLE}" in (
        refused.stderr
    )
    assert "MIGRATE_DATABASE_URL" in refused.stderr
    assert "Traceback" not in refused.stderr


# --- the cluster around the database ------------------------------------------------


@pytest.fixture
def cluster_reopened_afterwards(admin: psycopg.Connection) -> Iterator[None]:
    """The test cluster is shared by every test: its other databases are opened again."""
    yield
    for name in ("postgres", "template1"):
        admin.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {name} TO PUBLIC")


@pytest.mark.usefixtures("cluster_reopened_afterwards")
def test_a_confined_cluster_lets_the_service_and_replication_logins_into_no_other_database(
    admin: psycopg.Connection,
) -> None:
    """Large-object and temporary-table rights are taken per database: a login that can reach
    `postgres` or `template1` could make them there. With CONFINE_CLUSTER=1 (scripts/run's
    private cluster, both compose files) it cannot connect there at all."""
    info = admin.info
    url = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
    environment = {**os.environ, "CONFINE_CLUSTER": "1", "REPLICATION_PASSWORD": "secret"}
    subprocess.run([sys.executable, "-m", "db.apply", url], cwd=ROOT, env=environment, check=True, capture_output=True)
    for database in ("postgres", "template1"):
        for role, password in ((DEFAULT_SERVICE_ROLE, None), (DEFAULT_REPLICATION_ROLE, "secret")):
            with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                psycopg.connect(host=info.host, port=info.port, dbname=database, user=role, password=password)
    with psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user=DEFAULT_SERVICE_ROLE) as service:
        assert service.execute("SELECT 1").fetchone() == (1,)  # its own database still
