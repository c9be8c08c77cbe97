"""handlers/server.py's BoundedSite, on a bare aiohttp app (no database, no FFmpeg)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from handlers import server
from service.keys import SETTINGS
from settings import Settings
from tests.support import free_port

BIG = 8 << 20


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * BIG)


@pytest.fixture
async def site() -> AsyncIterator[server.BoundedSite]:
    app = web.Application()
    app[SETTINGS] = Settings(database_url="postgresql://nobody@localhost/none")  # make_runner reads its timeouts
    app.router.add_get("/", hello)
    app.router.add_get("/big", big)
    runner = server.make_runner(app)
    await runner.setup()
    site = server.BoundedSite(runner, "127.0.0.1", free_port(), 1)
    await site.start()
    yield site
    await runner.cleanup()


def port(site: server.BoundedSite) -> int:
    return int(site.name.rsplit(":", 1)[1])


async def get(site: server.BoundedSite) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port(site))
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


async def test_a_client_that_half_closes_with_its_answer_still_on_the_way_gets_all_of_it_and_its_place_back(
    site: server.BoundedSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """helper-33: the answer handed to aiohttp whole, the connection waiting for its next
    request, the end of the answer still in the transport's buffer (the client reads
    slowly), the client half-closes. aiohttp's close() then cancelled the wait for a
    request and its task ended without closing the transport: the connection and its
    place (the only one here) were held for good, and the next client never got in."""
    made = server._Connection.connection_made

    def slow_path(self: server._Connection, transport: asyncio.BaseTransport) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        made(self, transport)

    monkeypatch.setattr(server._Connection, "connection_made", slow_path)
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await loop.sock_connect(client, ("127.0.0.1", port(site)))
    await loop.sock_sendall(client, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    received = 0
    while not answered_with_its_end_buffered(site):  # read slowly, as a slow link does
        received += len(await loop.sock_recv(client, 4096))
        assert received < BIG, "the answer was read whole before the window this test needs"
    client.shutdown(socket.SHUT_WR)
    async with asyncio.timeout(10):
        while chunk := await loop.sock_recv(client, 1 << 16):
            received += len(chunk)
    client.close()
    assert received > BIG  # the headers, and every byte of the body
    assert (await get(site)).startswith(b"HTTP/1.1 200")  # the place was given back


def answered_with_its_end_buffered(site: server.BoundedSite) -> bool:
    connections = site._runner.server.connections if site._runner.server is not None else []
    return any(
        isinstance(c, server._Connection)
        and c._waiter is not None
        and not c._waiter.done()
        and c.transport is not None
        and c.transport.get_write_buffer_size() > 0
        for c in connections
    )


async def test_a_flood_on_one_address_family_keeps_no_client_of_the_other_out() -> None:
    """HOST empty: a listener each for IPv4 and IPv6, one place. The accept loop stayed on a
    listener until its backlog was empty, so clients of the other family waited for all of
    them (helper-33: an IPv6 client served after fifteen IPv4 ones). The listeners take turns."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    served: list[str] = []
    turns: asyncio.Queue[None] = asyncio.Queue()

    async def one_at_a_time(request: web.Request) -> web.Response:
        served.append(request.headers["X-Who"])
        await turns.get()
        return web.Response(text="done")

    app = web.Application()
    app[SETTINGS] = Settings(database_url="postgresql://nobody@localhost/none")
    app.router.add_get("/", one_at_a_time)
    runner = server.make_runner(app)
    await runner.setup()
    site = server.BoundedSite(runner, "", free_port(), 1)
    await site.start()

    async def client(host: str, who: str) -> None:
        reader, writer = await asyncio.open_connection(host, port(site))
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\nX-Who: {who}\r\nConnection: close\r\n\r\n".encode())
        await reader.read()
        writer.close()

    try:
        clients = [asyncio.create_task(client("127.0.0.1", f"v4-{n}")) for n in range(5)]
        async with asyncio.timeout(10):
            while not served:  # noqa: ASYNC110 - the first has the place; the others wait in its backlog
                await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("::1", port(site))  # in the IPv6 backlog
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Who: v6\r\nConnection: close\r\n\r\n")
        for _ in range(6):
            turns.put_nowait(None)
        async with asyncio.timeout(10):
            await asyncio.gather(*clients, reader.read())
        writer.close()
    finally:
        await runner.cleanup()
    assert served.index("v6") <= 2, served  # served in its turn, not after the whole IPv4 backlog
