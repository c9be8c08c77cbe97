"""Every route of the service, in one table (the older clients' in handlers/legacy.py)."""

from __future__ import annotations

from aiohttp import web

from handlers.download import download
from handlers.legacy import setup_legacy_routes
from handlers.observe import health, metrics, ready, ready_for_downloads
from handlers.openapi import openapi_json
from handlers.page import page, page_script, page_style, setup_vendored
from handlers.records import delete_record, list_records, upload_record
from handlers.swagger import DOCS_INIT_PATH, docs, docs_init, setup_swagger_assets
from handlers.uploads import create_upload, delete_upload, get_upload, head_upload, patch_upload, tus_options
from handlers.users import create_user, current_user
from handlers.waveform import waveform


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/users", create_user)
    app.router.add_get("/users/me", current_user)
    app.router.add_post("/record", upload_record)
    app.router.add_get("/record", download)  # HEAD too
    app.router.add_delete("/record", delete_record)
    app.router.add_get("/record/waveform", waveform)
    app.router.add_get("/records", list_records)
    app.router.add_route("OPTIONS", "/uploads", tus_options)
    app.router.add_post("/uploads", create_upload)
    app.router.add_head("/uploads/{id}", head_upload)
    app.router.add_get("/uploads/{id}", get_upload, allow_head=False)
    app.router.add_patch("/uploads/{id}", patch_upload)
    app.router.add_delete("/uploads/{id}", delete_upload)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/ready/downloads", ready_for_downloads)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_get(DOCS_INIT_PATH, docs_init)
    setup_swagger_assets(app)
    app.router.add_get("/", page)
    app.router.add_get("/page.js", page_script)
    app.router.add_get("/page.css", page_style)
    setup_vendored(app)
    setup_legacy_routes(app)
