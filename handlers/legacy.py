"""The older clients' routes, in one place so retiring them is one deletion.

POST /users.create (the token under the key "uuid"), POST /files.convert
(answers {"status": "ok", "url": ...}), GET /files.record?record_id=&user_id=.
They behave as the routes they stand for.
"""

from __future__ import annotations

from aiohttp import web

from handlers.download import serve_record
from handlers.params import record_id_from, user_id_from
from handlers.records import stored_upload
from handlers.shapes import ok, record_url
from handlers.users import new_user


def setup_legacy_routes(app: web.Application) -> None:
    app.router.add_post("/users.create", create_user_legacy)
    app.router.add_post("/files.convert", upload_record_legacy)
    app.router.add_get("/files.record", download_legacy)


async def create_user_legacy(request: web.Request) -> web.Response:
    user = await new_user(request)
    return ok({"id": user.id, "username": user.username, "uuid": str(user.token)}, status=201)


async def upload_record_legacy(request: web.Request) -> web.Response:
    record, links = await stored_upload(request)
    url = record_url(links, record.id, record.user_id)
    return web.json_response({"status": "ok", "url": url}, status=201, headers={"Location": url})


async def download_legacy(request: web.Request) -> web.StreamResponse:
    record_id = record_id_from(request.query.get("record_id"), "record_id")
    return await serve_record(request, record_id, user_id_from(request.query.get("user_id"), "user_id"))
