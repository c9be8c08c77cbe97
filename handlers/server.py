"""How the HTTP server treats connections, in one place: app.py serves with
``make_runner`` and the tests build their server with it too, so what they
prove about disconnects, stalls and limits is what users get."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import select
import socket
import struct
import termios
import uuid
from collections.abc import AsyncIterator, Callable

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

from handlers.errors import ApiError, BodyStopped, error_response
from service.keys import SETTINGS, SLOTS
from service.slots import Turn

log = logging.getLogger(__name__)

# After the uploads' grace period at shutdown: what other requests (downloads) still get.
LAST_REQUESTS_TIMEOUT_S = 2.0
# Request heads: aiohttp's limits, stated here so they are ours to see.
MAX_LINE_BYTES = 8190
MAX_HEADER_BYTES = 8190
MAX_HEADERS = 64
# After an answer to a request whose body was not read, how long the rest is
# read and dropped so the client sees the answer rather than a reset.
LINGERING_S = 5.0
# Connections waiting in the kernel for a place to be accepted (the listen backlog).
BACKLOG = 1024
# While a client waits for a place and none is idle, how often connections are looked at again.
IDLE_LOOKUP_S = 0.1
# A connection idle this long may be closed for a client that waits; one opened or
# answered less than this ago is left alone (a client about to send its request).
IDLE_BEFORE_LET_GO_S = 1.0
# An accept that failed for want of a resource (file descriptors, buffers) is tried again after this.
ACCEPT_RETRY_S = 0.5
# While a request waits without reading its body (for an upload place), how often its
# connection is looked at for its client gone (closed_once_its_client_goes).
GONE_LOOKUP_S = 0.05
# The one expectation the service meets: 100 Continue once a handler reads the body.
CONTINUE = "100-continue"
# What a request expected that the service does not meet, for refuse_unmet_expectations.
UNMET_EXPECTATION = web.RequestKey("unmet_expectation", str)
# Set while a client that sent Expect: 100-continue holds its body back, waiting to be asked.
CONTINUE_OWED = web.RequestKey("continue_owed", bool)


def make_runner(app: web.Application) -> web.AppRunner:
    return _Runner(
        app,
        # A client that goes away cancels its request at once, wherever it is
        # (waiting for a slot, converting, streaming): nothing it started lingers.
        # (A FIN after a whole request is a half-close: _Connection.eof_received.)
        handler_cancellation=True,
        # Also bounds the time to send a request's head: the timer starts when
        # the connection opens or the previous answer ends, and partial heads
        # do not reset it.
        keepalive_timeout=app[SETTINGS].idle_timeout_s,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_HEADER_BYTES,
        max_headers=MAX_HEADERS,
        # Bodies are taken as sent: a compressed upload would be work per byte
        # without bound (the handlers answer 415 to any Content-Encoding).
        auto_decompress=False,
        lingering_time=LINGERING_S,
        shutdown_timeout=LAST_REQUESTS_TIMEOUT_S,
        access_log=None,  # ours: handlers.observe.request_log
    )


class _Connection(RequestHandler):
    """aiohttp's connection, with four changes.

    Requests aiohttp refuses before any handler runs (a malformed request line
    or header, a header too long) are answered in the service's JSON envelope,
    and logged in one line: a client that sends garbage costs no traceback.

    And when the body of a request in progress breaks its framing (a malformed
    chunk), aiohttp's C parser drops the body without telling the handler, and
    the handler waits for bytes that can no longer come: an upload would hold
    its slot and FFmpeg until the read timeout. aiohttp's pure-Python parser
    reports the error to the body instead; this does the same. (aiohttp 3.14:
    the parser failure shows only as an error entry queued for the connection;
    tests/process/test_process.py::test_a_malformed_chunk_is_answered_400_and_frees_everything
    fails if a new aiohttp changes that.)

    And a request answered before its body was asked for (Expect: 100-continue,
    see continue_if_owed) ends its connection: the client may send the body next
    or never, so nothing after the answer could be read as a request.

    And a client that half-closes after a whole request is answered (eof_received).

    The last two, and BoundedSite's idea of an idle connection, read aiohttp's internals
    (``_waiter``: the wait for the next request; ``_messages``: requests parsed, not yet
    handled; ``close()`` cancels that wait). tests/unit/test_server.py and the half-close and
    MAX_CONNECTIONS tests in tests/process/test_process.py fail if a new aiohttp changes them.
    """

    __slots__ = ("half_closed", "idle_since", "last_body", "place")
    place: _Place  # set as it is made: _Server, BoundedSite
    idle_since: float  # the loop's time its last answer ended, or it opened
    # The body of the last request parsed: taken from the queue before aiohttp makes it
    # the current request (a turn of the loop later), it is in no attribute of aiohttp's.
    last_body: StreamReader | None
    half_closed: bool  # the client half-closed after requests still queued

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.idle_since = self._loop.time()
        self.last_body = None
        self.half_closed = False
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.place.release()  # the site's (BoundedSite); its socket is closed next

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio.Protocol: True keeps the writing side
        """A client that half-closes once its requests are whole (shutdown(SHUT_WR), as
        `nc -N` and socat do) still reads the answers: the connection stays open for them,
        and closes after the last. A FIN between requests, or before the last is whole, is
        a client gone: aiohttp cancels what it was doing for it. (As HAProxy without
        abortonclose: a FIN cannot tell a half-close from a client gone after its request,
        so a client that closes once every byte is sent has its upload stored all the same.)"""
        waiting_for_a_request = self._waiter is not None and not self._waiter.done()
        if waiting_for_a_request or self.last_body is None or not self.last_body.is_eof():
            # Nothing is owed, or nothing can be: asyncio closes the transport once it has
            # sent what it holds. (aiohttp's close() would cancel the wait for a request,
            # ending its task without closing the transport: the connection held for good.)
            return False
        if self._messages:
            self.half_closed = True  # finish_response closes after the last of them
        else:
            self.close()  # after the request in hand
        return True

    @property
    def idle(self) -> bool:
        """Waiting for its next request, or for the rest of its head (aiohttp's own test
        when its keep-alive timer fires), with all of its last answer handed to the kernel:
        closing it loses no answer. A request the client sends as it closes is lost, as on
        any keep-alive connection a server ends; clients send idempotent ones again."""
        waiting = self._waiter is not None and not self._waiter.done()
        return waiting and self.transport is not None and self.transport.get_write_buffer_size() == 0

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if self.half_closed and not self._messages:
            self.close()  # the last request before the client's FIN
        held_back = CONTINUE_OWED in request and not request.content.is_eof()
        if held_back:
            resp.force_close()  # says Connection: close
        answered = await super().finish_response(request, resp, start_time)
        self.idle_since = self._loop.time()
        if held_back and request.content.total_bytes == 0:
            # None of it came: closed after the answer rather than lingering for a
            # body that will not come. One that sends it anyway is read and dropped
            # as any refused body (LINGERING_S), so that it sees the answer.
            self.force_close()
        if isinstance(request.content.exception(), BodyStopped):
            # Not read on to its end, as a refused body is: that read would raise the answer
            # again, and aiohttp log it as an unhandled error.
            self.force_close()
        return answered

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer had begun: only the connection can end
            raise ConnectionError("a response had begun; the connection is closed instead")
        request_id = uuid.uuid4().hex  # a request that broke HTTP has no header worth taking one from
        if status >= 500:
            log.error(
                "error handling a request from %s", request.remote, exc_info=exc, extra={"request_id": request_id}
            )
            answer = "Internal error."
        else:
            log.info("refused a request from %s: %s", request.remote, message or exc, extra={"request_id": request_id})
            answer = "The request is malformed: its request line or headers break HTTP/1.1."
        response = error_response(status, answer)
        # No route was matched, so on_response_prepare does not run: what it gives every answer, here.
        response.headers["X-Request-Id"] = request_id
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.force_close()
        return response

    def data_received(self, data: bytes) -> None:
        request = self._current_request
        queued = len(self._messages)
        super().data_received(data)
        if self._messages:
            self.last_body = self._messages[-1][1]
        if request is None or len(self._messages) == queued:
            return
        if isinstance(self._messages[-1][0], _ErrInfo):
            # The handler answers (400) and the connection closes after it: the
            # queued error would only be a second, plain-text answer.
            self._messages.pop()
            if not request.content.is_eof():
                request.content.set_exception(RequestPayloadError("The request body's chunked framing is broken."))
                request.content.feed_eof()  # nothing more will come: no lingering read after the answer


@web.middleware
async def refuse_unmet_expectations(request: web.Request, handler: Handler) -> web.StreamResponse:
    """417 for an Expect other than 100-continue, as every other refusal: in the envelope,
    with the request's id and its access-log line (aiohttp would answer it in plain text
    before any middleware; the runner takes it from aiohttp's sight, see _Runner)."""
    if UNMET_EXPECTATION in request:
        raise ApiError(417, f"The only expectation this service meets is Expect: {CONTINUE}.")
    return await handler(request)


async def continue_if_owed(request: web.BaseRequest) -> None:
    """100 Continue, when the client waits for it, as the handler first reads the body
    (handlers.body.PacedBody): whatever a handler refuses from the request's head
    (Content-Length over the limit, credentials, a tus offset) is answered before the
    client has sent a byte of it. RFC 9110 §10.1.1 lets a server answer a final status
    instead of 100; aiohttp's own expect handler would answer 100 before any handler runs."""
    if CONTINUE_OWED in request:
        del request[CONTINUE_OWED]
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp does: the answer itself has not begun


@contextlib.asynccontextmanager
async def closed_once_its_client_goes(request: web.BaseRequest) -> AsyncIterator[None]:
    """While the block runs, which reads none of the request's body (it waits for an upload
    place), the request's connection is looked at every GONE_LOOKUP_S and closed once its
    client is gone: a reset, or a FIN before its body could be whole. aiohttp then cancels
    the request, as it does whenever it sees its client go (make_runner). Alone it would not
    see it: once the body it holds fills its read buffer (128 KiB) it stops reading the
    socket, and a reset or FIN behind the bytes the kernel holds reaches it only when the
    handler reads them, after the wait (helper-49: a tus PATCH cut while it waited for its
    account's place left the upload marked as being patched, and its client's HEAD waited
    its whole 5 s). A FIN once the whole body has come (the kernel holds what aiohttp does not)
    is a half-close, as eof_received takes it: the request goes on."""
    watching = asyncio.ensure_future(_close_once_its_client_is_gone(request))
    try:
        yield
    finally:
        watching.cancel()


@contextlib.asynccontextmanager
async def admitted(request: web.Request, user_id: int) -> AsyncIterator[Turn]:
    """An upload place for the request's user for the block (ConversionSlots.admitted),
    its wait ended at once by its client gone (closed_once_its_client_goes): it has taken
    nothing in yet, so it keeps no place in the line that its client no longer waits for.
    A PATCH then says at once that it is done (handlers/uploads.py _settled), so its
    client's HEAD answers at once the offset it claimed from; it waited blind to its
    client until a place came free or QUEUE_TIMEOUT_S passed, the HEAD its whole 5 s."""
    async with contextlib.AsyncExitStack() as place:
        async with closed_once_its_client_goes(request):
            turn = await place.enter_async_context(request.app[SLOTS].admitted(user_id))
        yield turn


async def _close_once_its_client_is_gone(request: web.BaseRequest) -> None:
    transport = request.transport
    connection = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or connection is None:
        return
    descriptor = connection.fileno()
    looking = select.poll()
    looking.register(descriptor, select.POLLRDHUP)  # POLLHUP and POLLERR come unasked
    while True:
        await asyncio.sleep(GONE_LOOKUP_S)
        if transport.is_closing():  # checked before each look: the descriptor is still this connection's
            return
        events = looking.poll(0)
        if not events:
            continue
        _, seen = events[0]
        if seen & (select.POLLHUP | select.POLLERR) or not _body_may_still_end(request, descriptor):
            transport.close()  # as asyncio does on a FIN eof_received does not keep: connection_lost next
            return


def _body_may_still_end(request: web.BaseRequest, descriptor: int) -> bool:
    """After its client's FIN: whether the body aiohttp has taken and the bytes the kernel
    holds for it come to the request's Content-Length (a body of unknown length may)."""
    length = request.content_length
    if length is None:
        return True
    held: int = struct.unpack("i", fcntl.ioctl(descriptor, termios.FIONREAD, b"\0\0\0\0"))[0]
    taken: int = request.content.total_bytes  # every byte of the body fed to it, read or not
    return taken + held >= length


def _without_expectations(message: RawRequestMessage) -> tuple[RawRequestMessage, str | None]:
    """The request without its Expect headers, and what they asked: the first
    expectation the service does not meet, else 100-continue; None without one."""
    if hdrs.EXPECT not in message.headers:  # also aiohttp's stand-in for a request it could not parse
        return message, None
    unmet = [value for value in message.headers.getall(hdrs.EXPECT) if value.strip().lower() != CONTINUE]
    headers = CIMultiDict((name, value) for name, value in message.headers.items() if name.lower() != "expect")
    raw_headers = tuple((name, value) for name, value in message.raw_headers if name.lower() != b"expect")
    stripped = message._replace(headers=CIMultiDictProxy(headers), raw_headers=raw_headers)
    return stripped, unmet[0] if unmet else CONTINUE


class _Place:
    """A connection's place in the BoundedSite's count, given back once however its connection ends."""

    __slots__ = ("_give_back",)

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Callable[[], None] | None = give_back  # None once it has been

    def release(self) -> None:
        if self._give_back is not None:
            give_back, self._give_back = self._give_back, None
            give_back()


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        connection = _Connection(self, loop=self._loop, **self._kwargs)
        connection.place = _Place(lambda: None)  # a BoundedSite sets its own
        return connection


class BoundedSite(web.BaseSite):
    """Listens on host:port and accepts a connection only while fewer than ``max_connections``
    are open (MAX_CONNECTIONS). Beyond that, connections wait in the kernel's listen backlog,
    as a balancer's maxconn holds them, and are accepted in turn as others end or go
    idle (_take_place): they cost the service no file descriptor and no memory, and the
    descriptors its uploads need (FFmpeg's pipes, database connections) are never taken
    by sockets. aiohttp's TCPSite accepts until the process runs out of descriptors, and
    then uploads fail with 500.

    One task accepts on every listener (IPv4 and IPv6 may be two), and takes a place
    only once a client waits. The invariant: every place taken is given back exactly
    once, when its accept fails or when the accepted connection is lost (_Place)."""

    __slots__ = ("_accepting", "_host", "_listeners", "_places", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections} (see fit_connections)")
        super().__init__(runner, backlog=BACKLOG)
        self._host = host
        self._port = port
        self._places = asyncio.Semaphore(max_connections)
        self._listeners: list[socket.socket] = []
        self._accepting: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._listeners = _listen(self._host, self._port, self._backlog)
        self._accepting = asyncio.create_task(self._accept())

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for listener in self._listeners:
            listener.close()  # connections still in its backlog are reset
        await super().stop()

    async def _accept(self) -> None:
        while True:
            place: _Place | None = None
            try:
                listener = await self._client_waiting()
                if not await self._take_place(listener):
                    continue  # that client left meanwhile
                place = _Place(self._places.release)
                client, _ = listener.accept()
                await self._hand_to_aiohttp(client, place)
                place = None
            except BlockingIOError:  # it left between the look and the accept
                pass
            except OSError as error:
                if error.errno in _SHORT_OF_RESOURCES:
                    log.warning("could not accept a connection (%s); trying again in %g s", error, ACCEPT_RETRY_S)
                    await asyncio.sleep(ACCEPT_RETRY_S)
                # else that client is gone (ECONNABORTED): the next one's turn
            except Exception:  # a bug: logged, and the service goes on accepting
                log.exception("accepting a connection failed; trying again in %g s", ACCEPT_RETRY_S)
                await asyncio.sleep(ACCEPT_RETRY_S)
            finally:
                if place is not None:
                    place.release()  # if the connection was made and lost already, it gave the place back

    async def _hand_to_aiohttp(self, client: socket.socket, place: _Place) -> None:
        server = self._runner.server
        assert server is not None  # runner.setup() ran: BaseSite checks it

        def connection() -> RequestHandler:
            made = server()
            assert isinstance(made, _Connection)
            made.place = place
            return made

        try:
            await asyncio.get_running_loop().connect_accepted_socket(connection, client)
        except BaseException:
            client.close()
            raise

    async def _client_waiting(self) -> socket.socket:
        """A listener with a client in its backlog. One client is accepted at a time and the
        listeners take turns, so a flood on one (IPv4) keeps none out on the other (IPv6)."""
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[socket.socket] = loop.create_future()
        try:
            for listener in self._listeners:
                loop.add_reader(listener.fileno(), _found, waiting, listener)
            found = await waiting
        finally:
            for listener in self._listeners:
                loop.remove_reader(listener.fileno())
        self._listeners.remove(found)
        self._listeners.append(found)  # the other's turn next, if both have clients waiting
        return found

    async def _take_place(self, listener: socket.socket) -> bool:
        """A place for the client waiting on ``listener``: a free one, else, while it still
        waits, the first given back or the place of the connection idle longest, once
        idle IDLE_BEFORE_LET_GO_S (nginx reuses keep-alive connections so when it runs
        short). Idle sockets, the cheapest thing a client can hold, thus never keep a
        waiting client out for long. False once no client waits there."""
        while _readable(listener):
            if not self._places.locked():
                await self._places.acquire()  # at once
                return True
            self._let_idle_connection_go()  # its place is given back as it is lost, next
            # A connection at work becomes idle with no event to say so: looked for again.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_LOOKUP_S):
                    await self._places.acquire()
                    return True
        return False

    def _let_idle_connection_go(self) -> None:
        """Closes the connection idle longest, if it has been idle IDLE_BEFORE_LET_GO_S."""
        server = self._runner.server
        assert server is not None
        ours = [connection for connection in server.connections if isinstance(connection, _Connection)]
        longest = min((c for c in ours if c.idle), key=lambda c: c.idle_since, default=None)
        if longest is not None and longest.idle_since <= asyncio.get_running_loop().time() - IDLE_BEFORE_LET_GO_S:
            log.debug("closing an idle connection from %s: a new one waits for its place", _peer(longest))
            longest.force_close()


def _found(future: asyncio.Future[socket.socket], listener: socket.socket) -> None:
    if not future.done():
        future.set_result(listener)


def _readable(listener: socket.socket) -> bool:
    """Whether a client waits in the listener's backlog (poll, not select: any descriptor number)."""
    poll = select.poll()
    poll.register(listener, select.POLLIN)
    return bool(poll.poll(0))


def _peer(connection: RequestHandler) -> object:
    return connection.transport.get_extra_info("peername") if connection.transport is not None else None


# Accept errors that are the service's own shortage rather than one client's.
_SHORT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def _listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` names, as asyncio's create_server makes them."""
    addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    for family, kind, protocol, _, address in dict.fromkeys(addresses):
        listener = socket.socket(family, kind, protocol)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # its IPv4 twin, if any, is a listener of its own
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(address)
        listener.listen(backlog)
        listener.setblocking(False)
        listeners.append(listener)
    return listeners


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server, making _Connection's
        make_request = server.request_factory

        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> BaseRequest:
            # aiohttp acts on Expect before any middleware or handler runs: 417 in plain
            # text to one it does not know, 100 Continue to 100-continue. It is shown
            # none: the middleware answers the first, continue_if_owed the second.
            # (An HTTP/1.0 client's 100-continue is ignored, as RFC 9110 says.)
            message, expected = _without_expectations(message)
            request = make_request(message, payload, protocol, writer, task)
            if expected == CONTINUE:
                if message.version == HttpVersion11:
                    request[CONTINUE_OWED] = True
            elif expected is not None:
                request[UNMET_EXPECTATION] = expected
            return request

        server.request_factory = request_factory
        return server
