"""The process layer: app.py as a real process, faulted, on a throwaway PostgreSQL."""

from tests.database import (  # noqa: F401 - fixtures, found by their names
    admin,
    client,
    database_delay_s,
    database_proxy,
    make_client,
    postgresql,
    postgresql_proc,
    service,
    service_process,
    service_settings,
)
