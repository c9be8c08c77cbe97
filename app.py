"""The HTTP service: ``python app.py`` (configuration from the environment, see README.md)."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from converter.slots import ConversionSlots
from handlers.errors import error_envelope
from handlers.keys import POOL, SETTINGS, SLOTS
from handlers.routes import setup_routes
from settings import ConfigError, Settings

# Connections beyond the conversion slots, for downloads, listings and user creation.
SPARE_CONNECTIONS = 8
CONNECT_TIMEOUT_S = 5.0


def init_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_envelope])
    app[SETTINGS] = settings
    app[SLOTS] = ConversionSlots(settings.convert_concurrency, settings.queue_timeout_s)
    app.cleanup_ctx.append(database_pool)
    setup_routes(app)
    return app


async def database_pool(app: web.Application) -> AsyncIterator[None]:
    """The pool opens after migrations ran (the run command applies them first)."""
    settings = app[SETTINGS]
    app[POOL] = await asyncpg.create_pool(
        settings.database_url,
        # min_size=0: the service starts (and /health says 503) while the database is down.
        min_size=0,
        max_size=settings.convert_concurrency + SPARE_CONNECTIONS,
        timeout=CONNECT_TIMEOUT_S,
    )
    yield
    await app[POOL].close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        sys.exit(f"configuration error: {error}")
    web.run_app(init_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
