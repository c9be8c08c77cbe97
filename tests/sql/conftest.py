"""The sql layer: every api function called as the service role, on a throwaway PostgreSQL."""

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
