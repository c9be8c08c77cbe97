"""Every route of the service, in one table."""

from __future__ import annotations

from aiohttp import web

from handlers.download import download, download_legacy
from handlers.observe import health, metrics, ready
from handlers.openapi import DOCS_ASSETS_PREFIX, docs, docs_asset, openapi_json
from handlers.page import page, page_script, page_style
from handlers.records import delete_record, list_records, upload_record, upload_record_legacy
from handlers.users import create_user, create_user_legacy


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/users", create_user)
    app.router.add_post("/record", upload_record)
    app.router.add_get("/record", download)  # HEAD too
    app.router.add_delete("/record", delete_record)
    app.router.add_get("/records", list_records)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_get(DOCS_ASSETS_PREFIX + "/{filename}", docs_asset)
    app.router.add_get("/", page)
    app.router.add_get("/page.js", page_script)
    app.router.add_get("/page.css", page_style)
    # The older clients' routes.
    app.router.add_post("/users.create", create_user_legacy)
    app.router.add_post("/files.convert", upload_record_legacy)
    app.router.add_get("/files.record", download_legacy)
