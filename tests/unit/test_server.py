"""handlers/server.py's BoundedSite, on a bare aiohttp app (no database, no FFmpeg)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from handlers import server
from service.keys import SETTINGS
from settings import Settings
from tests.support import free_port


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def site() -> AsyncIterator[server.BoundedSite]:
    app = web.Application()
    app[SETTINGS] = Settings(database_url="postgresql://nobody@localhost/none")  # make_runner reads its timeouts
    app.router.add_get("/", hello)
    runner = server.make_runner(app)
    await runner.setup()
    site = server.BoundedSite(runner, "127.0.0.1", free_port(), 4)
    await site.start()
    yield site
    await runner.cleanup()


async def get(site: server.BoundedSite) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(site.name.rsplit(":", 1)[1]))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_an_error_accepting_one_connection_leaves_the_site_accepting(
    site: server.BoundedSite, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug (here: making the connection's protocol raises, once) is logged with its
    traceback and costs that one connection; it ended the accept loop for good, silently."""
    make = server._Server.__call__
    failures = [RuntimeError("a bug")]

    def failing_once(self: server._Server) -> RequestHandler:
        if failures:
            raise failures.pop()
        return make(self)

    monkeypatch.setattr(server._Server, "__call__", failing_once)
    assert await get(site) == b""  # that connection is closed unanswered
    assert (await get(site)).startswith(b"HTTP/1.1 200")
    assert "accepting a connection failed" in caplog.text
