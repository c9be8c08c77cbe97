"""Bring a database up to date: ``python -m db.apply [DATABASE_URL]``.

1. Drops the ``api`` schema, so no function stands in the way of a migration
   (a function's return type depends on the view it returns, say).
2. Applies the pending yoyo migrations of ``db/migrations`` (tables, append-only).
3. Loads every ``db/functions`` file into a new ``api`` schema, on every run:
   yoyo's own hooks run only when a migration is pending, and recreating the
   schema is what makes a renamed or retyped function disappear instead of
   lingering beside its successor.
4. Makes sure the service's login role exists and may do nothing but EXECUTE
   the ``api`` functions.

Run it as the role that should own the schema (the database owner); the
functions run with that role's rights (SECURITY DEFINER).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

DB_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = DB_DIR / "migrations"
FUNCTIONS_DIR = DB_DIR / "functions"

DEFAULT_SERVICE_ROLE = "mp3_service"


def apply(
    database_url: str,
    service_role: str = DEFAULT_SERVICE_ROLE,
    service_password: str | None = None,
    migrations_dir: Path = MIGRATIONS_DIR,
) -> None:
    """Migrate, reload the api functions and (re)grant the service role."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA IF EXISTS api CASCADE")
    apply_migrations(database_url, migrations_dir)
    with psycopg.connect(database_url) as connection:
        ensure_login_role(connection, service_role, service_password)
        reload_functions(connection, service_role)


def apply_migrations(database_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> None:
    backend = get_backend(yoyo_url(database_url))
    migrations = read_migrations(str(migrations_dir))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations))


def yoyo_url(database_url: str) -> str:
    """yoyo picks its driver from the URL scheme; ours is psycopg 3."""
    scheme, separator, rest = database_url.partition("://")
    if not separator or scheme not in {"postgres", "postgresql", "postgresql+psycopg"}:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {scheme!r}")
    return f"postgresql+psycopg://{rest}"


def ensure_login_role(connection: psycopg.Connection, role: str, password: str | None) -> None:
    """Create the service role when missing; set its password when one is given."""
    exists = connection.execute("SELECT FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    if exists is None:
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    if password is not None:
        connection.execute(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
    connection.commit()


def reload_functions(connection: psycopg.Connection, service_role: str) -> None:
    """Recreate schema ``api`` from the function files, in one transaction."""
    role = sql.Identifier(service_role)
    with connection.transaction():
        connection.execute("DROP SCHEMA IF EXISTS api CASCADE")
        connection.execute("CREATE SCHEMA api")
        connection.execute("COMMENT ON SCHEMA api IS 'Everything a client may do. See README.md.'")
        for path in function_files():
            # Executed whole, never split: the bodies are dollar-quoted.
            connection.execute(path.read_text(encoding="utf-8").encode())
        # New functions are executable by PUBLIC by default; only the service may.
        connection.execute("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api FROM PUBLIC")
        connection.execute(sql.SQL("GRANT USAGE ON SCHEMA api TO {}").format(role))
        connection.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA api TO {}").format(role))


def function_files() -> list[Path]:
    return sorted(FUNCTIONS_DIR.glob("*.sql"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m db.apply", description=__doc__.splitlines()[0])
    parser.add_argument(
        "database_url",
        nargs="?",
        default=os.environ.get("DATABASE_URL"),
        help="postgresql:// URL of the owner role (default: $DATABASE_URL)",
    )
    parser.add_argument(
        "--service-role",
        default=os.environ.get("SERVICE_ROLE", DEFAULT_SERVICE_ROLE),
        help="login role that may only EXECUTE api functions (default: $SERVICE_ROLE or %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("give a database URL or set DATABASE_URL")
    apply(args.database_url, args.service_role, os.environ.get("SERVICE_ROLE_PASSWORD"))
    print(f"database up to date; api reloaded from {len(function_files())} files; role {args.service_role} granted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
