"""Operability: request ids, one access-log line per request, /ready and /metrics."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from db import api
from db.deadline import within
from handlers.errors import RETRY_AFTER_S, error_response
from handlers.reads import where_downloads_read
from handlers.shapes import ok
from service.database_check import DATABASE_CHECK_TIMEOUT_S
from service.keys import BROKEN_OFF, DATABASE_CHECK, METRICS, POOL, SETTINGS, SLOTS
from settings import IpNetwork

access_log = logging.getLogger("mp3.access")

REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Proxies in a row a forwarded address may have passed (more is a forgery, or a loop).
MAX_FORWARDING_HOPS = 8


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format. The storage figures are asked on the shared
    pool, not the health checks' connection, so scrapes never hold /health up; while the
    pool is busy past DATABASE_CHECK_TIMEOUT_S they keep their last values."""
    app_metrics = request.app[METRICS]
    try:
        stored = await within(DATABASE_CHECK_TIMEOUT_S, request.app[POOL], api.storage_stats)  # running totals
        app_metrics.stored_records.set(stored.records)
        app_metrics.stored_bytes.set(stored.bytes)
        app_metrics.storage_max_bytes.set(stored.max_bytes)
    except Exception:
        logging.getLogger(__name__).warning("storage figures unavailable for /metrics")
    body = generate_latest(app_metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def ready(request: web.Request) -> web.Response:
    """GET /ready: the database answers, FFmpeg is there, and an upload place (MAX_UPLOADS) is
    free; conversion turns are never refused (service/slots.py), so they are not asked."""
    problems = await health_problems(request)
    slots = request.app[SLOTS]
    if slots.free == 0:
        problems.append(f"all {slots.max_uploads} upload places are taken")
    if problems:
        return error_response(503, f"Not ready: {'; '.join(problems)}.", {"Retry-After": RETRY_AFTER_S})
    return ok(
        {"database": "ok", "ffmpeg": "ok", "free_slots": slots.free, "slots": slots.max_uploads, "queued": slots.queued}
    )


async def ready_for_downloads(request: web.Request) -> web.Response:
    """GET /ready/downloads: downloads and listings can be served (from the read replica
    or the primary), whether or not uploads can: a balancer's check for read traffic.
    A frozen replica holds it up not at all, a frozen primary DATABASE_CHECK_TIMEOUT_S."""
    try:
        database = await where_downloads_read(request)
    except Exception:
        return error_response(503, "Not ready: no database answers.", {"Retry-After": RETRY_AFTER_S})
    return ok({"database": database})


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 when the database answers and FFmpeg is there, else 503; however
    busy the shared pool is (the check has a connection of its own)."""
    problems = await health_problems(request)
    if problems:
        return error_response(503, f"Unhealthy: {'; '.join(problems)}.", {"Retry-After": RETRY_AFTER_S})
    return ok({"database": "ok", "ffmpeg": "ok"})


async def health_problems(request: web.Request) -> list[str]:
    problems = []
    try:
        await request.app[DATABASE_CHECK].answers()
    except Exception:
        problems.append("the database does not answer")
    if not os.access(request.app[SETTINGS].ffmpeg_binary, os.X_OK):
        problems.append("FFmpeg is missing")
    return problems


@web.middleware
async def request_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (the client's X-Request-Id when it is sane) and log it once,
    also when it ends without a complete answer (the client left, the answer broke off)."""
    given = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = given if CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    started = time.perf_counter()
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        _log_access(request, started, None, "cancelled: the client went away or the service is stopping")
        raise
    _log_access(request, started, response, request.get(BROKEN_OFF))
    return response


def _log_access(
    request: web.Request, started: float, response: web.StreamResponse | None, broken_off: str | None
) -> None:
    status = response.status if response is not None else None
    sent = response.body_length if response is not None and response.prepared else None
    outcome = str(status) if status is not None else "-"
    if broken_off is not None:
        outcome += f" broken off {broken_off}" if status is not None else f" {broken_off}"
    access_log.info(
        "%s %s %s",
        request.method,
        request.path,  # never the query or headers: no credential is ever logged
        outcome,
        extra={
            "request_id": request[REQUEST_ID],
            "method": request.method,
            "path": request.path,
            "status": status,
            "broken_off": broken_off,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "bytes": sent,
            "remote": request.remote,
            # The client behind the balancer, beside the peer (remote): only what a
            # trusted proxy says, since anyone may send the header.
            "forwarded_for": forwarded_client(request, request.app[SETTINGS].trusted_proxies),
        },
    )


def forwarded_client(request: web.Request, trusted: tuple[IpNetwork, ...]) -> str | None:
    """The client's address as trusted proxies forwarded it (TRUSTED_PROXIES), or None when
    the peer is no trusted proxy. Read from the right, as the proxies appended it: the
    first address that is no trusted proxy's is the client, whatever the client wrote
    before it (every header line counts, the client's own ones included)."""
    if not _within(request.remote, trusted):
        return None
    hops = ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")
    client = None
    for hop in reversed(hops[-MAX_FORWARDING_HOPS:]):
        address = _address(hop.strip())
        if address is None:
            return None  # garbled: no proxy of ours wrote this
        client = str(address)
        if not any(address in network for network in trusted):
            return client
    return client  # every hop a trusted proxy: the first of them is where it came from


def _within(peer: str | None, networks: tuple[IpNetwork, ...]) -> bool:
    address = _address(peer or "")
    return address is not None and any(address in network for network in networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response carries its request's id, streamed ones too."""
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]
