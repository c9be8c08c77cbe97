"""Bring a database up to date: ``python -m db.apply [ADMIN_DATABASE_URL]``.

Run it as the database's administrator (a superuser: the cluster's
``postgres``, compose's ``POSTGRES_USER``). Nothing the service touches is
owned by that administrator: it all belongs to the owner role (``OWNER_ROLE``,
default ``mp3_owner``), which is no superuser and cannot log in, and the api
functions run with that role's rights (SECURITY DEFINER).

1. As the administrator: the owner role and the service's login role
   (``SERVICE_ROLE``, default ``mp3_service``; its password from
   ``SERVICE_ROLE_PASSWORD`` when set), neither a superuser; with
   ``REPLICATION_PASSWORD``, a streaming replica's login (``REPLICATION_ROLE``,
   default ``mp3_replication``), which may replicate and nothing else; the database
   handed to the owner; PUBLIC's rights taken away (connecting, temporary
   tables, creating and importing large objects); objects an earlier version
   left to another role handed to the owner; lz4 for what the database's new
   sessions store, where the server has it.
2. Drops the ``api`` schema and the private code of ``db/private`` (views and
   helper functions of ``app`` that hold no data), so none of it stands in the
   way of a migration (three api functions return the view ``app.record_info``).
3. As the owner from here on, applies the pending yoyo migrations of
   ``db/migrations``: tables, their triggers and data, append-only.
4. Loads every ``db/private`` file, then every ``db/functions`` file into a
   new ``api`` schema, in one transaction, on every run: yoyo's own hooks run
   only when a migration is pending, and recreating the code is what makes a
   changed or retyped function take effect without a migration (a renamed
   private one is dropped by the migration that renames it). The service role
   may EXECUTE the api functions, nothing else.
5. Stores ``USER_QUOTA_MB`` and ``STORAGE_MAX_GB`` (when set; 0 = none) in
   ``app.settings``, where the api functions enforce them.

With ``CONFINE_CLUSTER=1`` (the deployments this project makes set it: the
private cluster of ``scripts/run``, both compose files), the cluster is taken
to serve this service alone, and PUBLIC also loses the right to connect to its
other databases (``postgres``, ``template1``, ...) and to make temporary tables
there: the rights on large objects are per database, so a login that could
reach ``postgres`` could create large objects and temporary tables in it.
Left off by default: on a cluster shared with others, other logins may rely on
those rights.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

DB_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = DB_DIR / "migrations"
FUNCTIONS_DIR = DB_DIR / "functions"
PRIVATE_DIR = DB_DIR / "private"

DEFAULT_OWNER_ROLE = "mp3_owner"
DEFAULT_SERVICE_ROLE = "mp3_service"
DEFAULT_REPLICATION_ROLE = "mp3_replication"

# Large-object functions PUBLIC may call by default. The service must not
# create objects of its own (they would outlive any record), nor import files;
# the owner keeps lo_create, which api.record_begin calls.
LARGE_OBJECT_CREATION = ("lo_create(oid)", "lo_creat(integer)", "lo_from_bytea(oid, bytea)")
LARGE_OBJECT_IMPORT = ("lo_import(text)", "lo_import(text, oid)")


class UnusableUrl(ValueError):
    """The database URL given cannot apply migrations; the message says why."""


@dataclass(frozen=True)
class Roles:
    owner: str = DEFAULT_OWNER_ROLE
    service: str = DEFAULT_SERVICE_ROLE
    service_password: str | None = None
    # A streaming replica's login (made only when it has a password): it may
    # replicate, and not even connect to the database.
    replication: str = DEFAULT_REPLICATION_ROLE
    replication_password: str | None = None


def apply(
    admin_url: str,
    roles: Roles = Roles(),
    migrations_dir: Path = MIGRATIONS_DIR,
    user_quota_mb: int | None = None,
    storage_max_gb: int | None = None,
    confine_cluster: bool = False,
) -> None:
    """Prepare the database as the administrator, then migrate and reload the api as the owner."""
    owner_url = as_role(admin_url, roles.owner)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        prepare_database(admin, roles)
        if confine_cluster:
            close_other_databases(admin)
        # The code goes before the migrations only when they may change what it reads, or
        # when an earlier version let another role own the schema: otherwise the services
        # already running keep calling it until the reload swaps it in one transaction.
        if migrations_pending(owner_url, migrations_dir) or not owns_api(admin, roles.owner):
            admin.execute("DROP SCHEMA IF EXISTS api CASCADE")
            drop_private_code(admin)
    apply_migrations(owner_url, migrations_dir)
    with psycopg.connect(owner_url) as owner:
        reload_functions(owner, roles.service)
        if user_quota_mb is not None:
            owner.execute("UPDATE app.settings SET user_quota_bytes = %s", [user_quota_mb << 20])
        if storage_max_gb is not None:
            owner.execute("UPDATE app.settings SET storage_max_bytes = %s", [storage_max_gb << 30])


def prepare_database(admin: psycopg.Connection, roles: Roles) -> None:
    """The roles, who owns what, and what PUBLIC may not do in this database.

    Database-level rights are not copied when a database is created from a
    template, so this is also what a copy needs (the tests' databases are)."""
    if admin.info.user in (roles.owner, roles.service):
        raise UnusableUrl(
            f"run the apply command as an administrator (a superuser), not as {admin.info.user}"
            " (scripts/run takes that URL from MIGRATE_DATABASE_URL)"
        )
    ensure_role(admin, roles.owner, login=False)
    ensure_role(admin, roles.service, login=True, password=roles.service_password)
    if roles.replication_password is not None:
        ensure_role(admin, roles.replication, login=True, password=roles.replication_password, replication=True)
    database, owner, service = (sql.Identifier(name) for name in (admin.info.dbname, roles.owner, roles.service))
    admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, owner))
    admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
    admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, service))
    for function in LARGE_OBJECT_CREATION + LARGE_OBJECT_IMPORT:
        admin.execute(sql.SQL(f"REVOKE EXECUTE ON FUNCTION pg_catalog.{function} FROM PUBLIC"))
    admin.execute(sql.SQL("GRANT EXECUTE ON FUNCTION pg_catalog.lo_create(oid) TO {}").format(owner))
    compress_with_lz4(admin)
    hand_over(admin, roles.owner)


def compress_with_lz4(admin: psycopg.Connection) -> None:
    """New sessions in this database compress what they store with lz4, where the server was
    built with it (Debian's and the official images are). Each 2 KB page of a large object is
    just past the size at which PostgreSQL tries to compress a row, and MP3 bytes do not
    compress: pglz spent a quarter of PostgreSQL's CPU over concurrent uploads failing to
    (perf). With lz4 a backend stores an MP3 with a third less CPU (bench.toast_compression),
    and the same bytes."""
    offered = admin.execute("SELECT enumvals FROM pg_catalog.pg_settings WHERE name = 'default_toast_compression'")
    methods = offered.fetchone()
    if methods is not None and "lz4" in methods[0]:
        database = sql.Identifier(admin.info.dbname)
        admin.execute(sql.SQL("ALTER DATABASE {} SET default_toast_compression = lz4").format(database))


def close_other_databases(admin: psycopg.Connection) -> None:
    """PUBLIC may neither connect to the cluster's other databases nor make temporary tables
    in them: the service's and the replica's logins then reach this database alone (the
    replica streams over replication connections, which need no database)."""
    others = admin.execute(
        "SELECT datname FROM pg_database WHERE datname <> current_database() AND datallowconn"
    ).fetchall()
    for (name,) in others:
        admin.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))


def ensure_role(
    admin: psycopg.Connection, role: str, *, login: bool, password: str | None = None, replication: bool = False
) -> None:
    """Create the role when missing, and make sure it has no power beyond what it is granted."""
    name = sql.Identifier(role)
    if admin.execute("SELECT FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
        admin.execute(sql.SQL("CREATE ROLE {}").format(name))
    attributes = ("LOGIN" if login else "NOLOGIN") + (" REPLICATION" if replication else " NOREPLICATION")
    admin.execute(sql.SQL(f"ALTER ROLE {{}} {attributes} NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS").format(name))
    if password is not None:
        admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(password)))


# Objects an earlier version of this command left owned by the administrator:
# the app schema and what is in it, yoyo's bookkeeping, the large objects.
HAND_OVER = """
SELECT format('ALTER SCHEMA %%I OWNER TO %%I', n.nspname, %(owner)s::text)
FROM pg_namespace AS n
WHERE n.nspname = 'app' AND n.nspowner <> to_regrole(%(owner)s::text)
UNION ALL
SELECT format('ALTER %%s %%I.%%I OWNER TO %%I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
              n.nspname, c.relname, %(owner)s::text)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relowner <> to_regrole(%(owner)s::text)
  AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
  AND (n.nspname = 'app' OR (n.nspname = 'public' AND c.relname LIKE ANY (ARRAY['\\_yoyo%%', 'yoyo\\_%%'])))
  -- identity sequences follow their table
  AND NOT EXISTS (SELECT FROM pg_depend AS d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))
UNION ALL
SELECT format('ALTER FUNCTION %%s OWNER TO %%I', p.oid::regprocedure, %(owner)s::text)
FROM pg_proc AS p
WHERE p.pronamespace = to_regnamespace('app') AND p.proowner <> to_regrole(%(owner)s::text)
UNION ALL
SELECT format('ALTER LARGE OBJECT %%s OWNER TO %%I', m.oid, %(owner)s::text)
FROM pg_largeobject_metadata AS m
WHERE m.lomowner <> to_regrole(%(owner)s::text)
"""


def hand_over(admin: psycopg.Connection, owner: str) -> None:
    for (statement,) in admin.execute(HAND_OVER, {"owner": owner}).fetchall():
        admin.execute(statement)


def as_role(url: str, role: str) -> str:
    """The same connection, acting as ``role`` from its start (libpq's options)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} -c role={role}".strip()
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))  # libpq: %20, not +


def migrations_pending(database_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> bool:
    backend = get_backend(yoyo_url(database_url))
    try:
        return bool(backend.to_apply(read_migrations(str(migrations_dir))))
    finally:
        backend.connection.close()  # not left idle in its transaction, holding yoyo's tables


def owns_api(admin: psycopg.Connection, owner: str) -> bool:
    """Whether ``owner`` owns schema api (true too when there is none yet: nothing to drop)."""
    found = admin.execute(
        "SELECT n.nspowner = r.oid FROM pg_namespace AS n, pg_roles AS r WHERE n.nspname = 'api' AND r.rolname = %s",
        [owner],
    ).fetchone()
    return found is None or bool(found[0])


def apply_migrations(database_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> None:
    backend = get_backend(yoyo_url(database_url))
    migrations = read_migrations(str(migrations_dir))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations))


def yoyo_url(database_url: str) -> str:
    """yoyo picks its driver from the URL scheme; ours is psycopg 3."""
    scheme, separator, rest = database_url.partition("://")
    if not separator or scheme not in {"postgres", "postgresql", "postgresql+psycopg"}:
        raise UnusableUrl(f"DATABASE_URL must be a postgresql:// URL, not {scheme!r}")
    return f"postgresql+psycopg://{rest}"


def reload_functions(connection: psycopg.Connection, service_role: str) -> None:
    """Recreate the private code and schema ``api`` from their files, in one transaction."""
    role = sql.Identifier(service_role)
    with connection.transaction():
        connection.execute("DROP SCHEMA IF EXISTS api CASCADE")
        drop_private_code(connection)
        for path in private_files():
            connection.execute(path.read_text(encoding="utf-8").encode())
        connection.execute("CREATE SCHEMA api")
        connection.execute("COMMENT ON SCHEMA api IS 'Everything a client may do. See db/README.md.'")
        for path in function_files():
            # Executed whole, never split: the bodies are dollar-quoted.
            connection.execute(path.read_text(encoding="utf-8").encode())
        # New functions are executable by PUBLIC by default; only the service may.
        connection.execute("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api FROM PUBLIC")
        connection.execute(sql.SQL("GRANT USAGE ON SCHEMA api TO {}").format(role))
        connection.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA api TO {}").format(role))


def drop_private_code(connection: psycopg.Connection) -> None:
    """Drop the view or functions each ``db/private`` file defines (named ``app.<name>.sql``),
    in the reverse of the order they load in: a file may use those before it."""
    for path in reversed(private_files()):
        name = path.stem.removeprefix("app.")
        connection.execute(sql.SQL("DROP VIEW IF EXISTS app.{}").format(sql.Identifier(name)))
        functions = connection.execute(
            "SELECT oid::regprocedure::text FROM pg_proc WHERE pronamespace = to_regnamespace('app') AND proname = %s",
            [name],
        ).fetchall()
        for (signature,) in functions:
            connection.execute(sql.SQL(f"DROP FUNCTION {signature}"))  # a regprocedure's text: quoted as needed


def private_files() -> list[Path]:
    return sorted(PRIVATE_DIR.glob("app.*.sql"))


def function_files() -> list[Path]:
    return sorted(FUNCTIONS_DIR.glob("*.sql"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m db.apply", description=__doc__.splitlines()[0])
    parser.add_argument(
        "database_url",
        nargs="?",
        default=os.environ.get("DATABASE_URL"),
        help="postgresql:// URL of an administrator (superuser) of the database (default: $DATABASE_URL)",
    )
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("give a database URL or set DATABASE_URL")
    roles = Roles(
        owner=os.environ.get("OWNER_ROLE") or DEFAULT_OWNER_ROLE,
        service=os.environ.get("SERVICE_ROLE") or DEFAULT_SERVICE_ROLE,
        service_password=os.environ.get("SERVICE_ROLE_PASSWORD") or None,
        replication=os.environ.get("REPLICATION_ROLE") or DEFAULT_REPLICATION_ROLE,
        replication_password=os.environ.get("REPLICATION_PASSWORD") or None,
    )
    confine = os.environ.get("CONFINE_CLUSTER") or "0"
    if confine not in {"0", "1"}:
        parser.error(f"CONFINE_CLUSTER must be 1 (the cluster serves this service alone) or 0, not {confine!r}")
    try:
        apply(
            args.database_url,
            roles,
            user_quota_mb=_whole_number(parser, "USER_QUOTA_MB", "MiB (0: no quota)"),
            storage_max_gb=_whole_number(parser, "STORAGE_MAX_GB", "GiB (0: no bound)"),
            confine_cluster=confine == "1",
        )
    except UnusableUrl as error:  # an operator's mistake: a message, not a traceback
        parser.error(str(error))
    print(
        f"database up to date; api reloaded from {len(function_files())} files, owned by {roles.owner};"
        f" role {roles.service} granted"
    )
    return 0


def _whole_number(parser: argparse.ArgumentParser, name: str, unit: str) -> int | None:
    """A size setting of the environment; None when unset or empty (the database's stays)."""
    raw = os.environ.get(name) or ""
    if raw == "":
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        parser.error(f"{name} must be a whole number of {unit}, not {raw!r}")
    return int(raw)


if __name__ == "__main__":
    sys.exit(main())
