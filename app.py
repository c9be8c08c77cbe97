"""The HTTP service: ``python app.py`` (configuration from the environment, see docs/operations.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from converter.options import ConverterConfig
from db import api
from db.deadline import UNREACHABLE, left_as_it_is, within
from handlers.errors import error_envelope
from handlers.observe import add_request_id, request_log
from handlers.page import security_headers
from handlers.params import refuse_encoded_paths, refuse_tokens_in_urls
from handlers.routes import setup_routes
from handlers.server import BoundedSite, make_runner, refuse_unmet_expectations
from handlers.uploads import tus_resumable
from service.busy_uploads import BusyUploads
from service.database_check import DATABASE_CHECK_TIMEOUT_S, DatabaseCheck
from service.download_cache import DownloadCache, dropping_deleted_records
from service.file_sender import FileSender
from service.keys import (
    BUSY_UPLOADS,
    CONVERTER,
    DATABASE_CHECK,
    DOWNLOAD_CACHE,
    DOWNLOAD_READS,
    FILE_SENDER,
    METRICS,
    PATCHES,
    POOL,
    REPLICA,
    SETTINGS,
    SLOTS,
)  # fmt: skip
from service.logs import configure_logging, log_task_chains
from service.metrics import Metrics
from service.open_files import BESIDES, PER_FFMPEG, fit_connections
from service.patches_at_work import PatchesAtWork
from service.replica import ReadReplica, replica_pool
from service.slots import ConversionSlots
from settings import ConfigError, Settings

# Connections beyond the uploads', for downloads, listings and user creation.
SPARE_CONNECTIONS = 8
# Of those, what downloads can never take: listings and sign-ins stay quick however
# many clients download. (/health asks on a connection of its own: DatabaseCheck.)
KEPT_FROM_DOWNLOADS = 2
CONNECT_TIMEOUT_S = 5.0
# How long cancelled uploads get to kill FFmpeg and roll back, and the pool to close.
CANCEL_TIMEOUT_S = 3.0
# Expired resumable uploads are removed this often, by every process (api.uploads_sweep
# skips the rows another one is removing), at most SWEEP_BATCH to a statement.
SWEEP_INTERVAL_S = 60.0
SWEEP_BATCH = 100

log = logging.getLogger("app")


def init_app(settings: Settings) -> web.Application:
    # request_log outermost: it logs the status the envelope finally answered; then the
    # refusals any request may meet, before its handler.
    refusals = [refuse_unmet_expectations, refuse_encoded_paths, refuse_tokens_in_urls]
    app = web.Application(middlewares=[request_log, error_envelope, *refusals])
    app[SETTINGS] = settings
    app[SLOTS] = ConversionSlots(
        settings.convert_concurrency, settings.queue_timeout_s, settings.uploads_at_once, settings.user_max_uploads
    )
    app[CONVERTER] = ConverterConfig(
        ffmpeg=settings.ffmpeg_binary,
        time_limit_s=settings.ffmpeg_timeout_s,
        max_seconds=settings.max_duration_s,
        stall_timeout_s=settings.stall_timeout_s,
        analyse=settings.audio_analysis,
        parallel_segments=settings.parallel_segments,
        spare=app[SLOTS],
    )
    app[BUSY_UPLOADS] = BusyUploads()
    app[PATCHES] = PatchesAtWork()
    app[METRICS] = Metrics(app[SLOTS], app[BUSY_UPLOADS])
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(security_headers)
    app.on_response_prepare.append(tus_resumable)
    # Each permit is held for one large-object read, which has the statements' deadline
    # (STALL_TIMEOUT_S): a download waits for a permit no longer than those reads take.
    app[DOWNLOAD_READS] = asyncio.Semaphore(SPARE_CONNECTIONS - KEPT_FROM_DOWNLOADS)
    app.cleanup_ctx.append(database_pool)
    app.cleanup_ctx.append(busy_uploads)
    app.cleanup_ctx.append(upload_sweeper)
    app.cleanup_ctx.append(download_cache)
    setup_routes(app)
    return app


def primary_pool_size(settings: Settings) -> int:
    return settings.uploads_at_once + SPARE_CONNECTIONS  # an upload holds one throughout


async def database_pool(app: web.Application) -> AsyncIterator[None]:
    """The pools open after migrations ran (the run command applies them first): the
    primary's, the health checks' pool of one on the primary (service/database_check.py),
    and the read replica's when DATABASE_READ_URL names one, with its watcher
    (service/replica.py), which measures it once before the first request."""
    settings = app[SETTINGS]
    app[POOL] = await _pool(settings.database_url, primary_pool_size(settings), settings.stall_timeout_s)
    app[DATABASE_CHECK] = DatabaseCheck(await _pool(settings.database_url, 1, DATABASE_CHECK_TIMEOUT_S))
    pools = [app[POOL], app[DATABASE_CHECK].pool]
    watcher = None
    if settings.database_read_url:
        pools.append(await replica_pool(settings.database_read_url, SPARE_CONNECTIONS))
        app[REPLICA] = replica = ReadReplica(pools[-1], settings.replica_max_lag_s)
        await replica.probe(app[POOL])
        # Runs until cancelled below; it catches its own failures, so it never ends unseen.
        watcher = asyncio.create_task(replica.watch(app[POOL]))
    yield
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    for pool in pools:
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                await pool.close()
        except TimeoutError:
            log.warning("closing a database pool took longer than %g s; terminated", CANCEL_TIMEOUT_S)
            pool.terminate()


async def busy_uploads(app: web.Application) -> AsyncIterator[None]:
    """The polls of the uploads HEADs wait on (service/busy_uploads.py) ended before the pool closes."""
    yield
    await app[BUSY_UPLOADS].close()


async def upload_sweeper(app: web.Application) -> AsyncIterator[None]:
    """Expired resumable uploads (UPLOAD_EXPIRY_S without a PATCH) removed with their MP3s
    so far, every SWEEP_INTERVAL_S, while the pool is open."""
    # Runs until cancelled below; a sweep that fails is logged and the next one tried.
    sweeper = asyncio.create_task(sweep_expired_uploads(app[POOL], app[SETTINGS].stall_timeout_s))
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper


async def sweep_expired_uploads(pool: asyncpg.Pool, deadline_s: float) -> None:
    """Never ends but by cancellation: a sweep that fails (the database down, frozen or
    refusing) is logged, and the next one tries again."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        removed = 0
        try:
            while True:  # a backlog a batch at a time, each statement within the deadline
                swept = await within(deadline_s, pool, lambda db: api.uploads_sweep(db, SWEEP_BATCH))
                removed += swept
                if swept < SWEEP_BATCH:
                    break
        except (*UNREACHABLE, asyncpg.PostgresError) as error:
            log.warning("sweeping expired uploads failed (%s: %s); trying again in %g s",
                        type(error).__name__, error, SWEEP_INTERVAL_S)  # fmt: skip
        except Exception:  # a bug: logged, and the sweeper goes on
            log.exception("sweeping expired uploads failed")
        if removed:
            log.info("removed %d expired upload(s) and their MP3s so far", removed)


async def download_cache(app: web.Application) -> AsyncIterator[None]:
    """The cache of repeat downloads, when DOWNLOAD_CACHE_MB allows one; removed at exit."""
    size = app[SETTINGS].download_cache_bytes
    if size == 0:
        yield
        return
    try:
        cache = DownloadCache(size)
    except OSError as error:  # a read-only file system: serve every download from the database
        log.warning("no download cache: %s", error)
        yield
        return
    app[DOWNLOAD_CACHE] = cache
    app[FILE_SENDER] = sender = FileSender()
    sender.start()
    try:
        async with dropping_deleted_records(cache, app[SETTINGS].database_url):
            yield
    finally:
        sender.close()
        cache.close()


async def _pool(url: str, size: int, statement_timeout_s: float) -> asyncpg.Pool:
    # min_size=0: the service starts (and /health says 503) while the database is down.
    # command_timeout: no statement waits for ever on a server that stopped answering;
    # with connects bounded too, a wait for a pooled connection ends when a statement does.
    return await asyncpg.create_pool(
        url,
        min_size=0,
        max_size=size,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=statement_timeout_s,
        reset=left_as_it_is,  # no round trip to give a connection back (db/deadline.py)
    )


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain: no new connections or uploads,
    uploads in flight get shutdown_timeout_s to finish, and whatever remains is
    cancelled (a cancelled upload kills FFmpeg and rolls back).

    Not web.run_app: on shutdown aiohttp stops reading request bodies at once,
    so an upload still arriving could never finish in the grace period."""
    app = init_app(settings)
    runner = make_runner(app)
    await runner.setup()
    site = BoundedSite(runner, settings.host, settings.port, settings.max_connections)
    await site.start()
    log.info("serving on http://%s:%d, %d connections at once", settings.host, settings.port, settings.max_connections)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    # kill -USR1: every task's await chain to the log, to see what a hung request waits for.
    loop.add_signal_handler(signal.SIGUSR1, log_task_chains)
    await stop.wait()  # set by a signal handler only: nothing can set it before this wait

    slots = app[SLOTS]
    log.info("stopping: waiting up to %g s for %d upload(s)", settings.shutdown_timeout_s, slots.uploads)
    slots.draining = True  # new uploads are refused with 503 from now on
    await site.stop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settings.shutdown_timeout_s):
            await slots.no_uploads()
    # Whatever is left, whether its client still sends, stalls or is long gone.
    await slots.cancel_uploads(CANCEL_TIMEOUT_S)
    await runner.cleanup()


def open_files_besides_connections(settings: Settings) -> int:
    """File descriptors the service needs besides its connections' (service/open_files.py):
    its database connections, and the pipes of every FFmpeg it may run at once (one per
    upload in progress, and the segment encoders borrowed on free conversion slots)."""
    pools = primary_pool_size(settings) + SPARE_CONNECTIONS + 1  # and the replica's, the check's
    ffmpegs = settings.uploads_at_once + settings.convert_concurrency
    return pools + PER_FFMPEG * ffmpegs + BESIDES


def main() -> None:
    parser = argparse.ArgumentParser(description="The WAV to MP3 service; settings from the environment.")
    parser.add_argument("--log-format", choices=("text", "json"), help="overrides LOG_FORMAT")
    arguments = parser.parse_args()
    try:
        settings = Settings.from_env()
        connections = fit_connections(settings.max_connections, open_files_besides_connections(settings))
        settings = dataclasses.replace(settings, max_connections=connections)
    except ConfigError as error:
        sys.exit(f"configuration error: {error}")
    configure_logging(arguments.log_format or settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
