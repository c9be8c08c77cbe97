"""Request bodies, read under the service's bounds, and the forms parsed from them.

Every body is read through ``PacedBody``: its size is bounded on the wire
(413 from Content-Length before a byte is read, or as soon as a chunked body
passes the limit), and so is the client's pace. Each read may wait at most
the time the client has earned: READ_TIMEOUT_S to begin with and at most,
spent while we wait for the client and earned back at MIN_UPLOAD_KBPS per
byte received. A client that stops sends nothing for READ_TIMEOUT_S; one that
trickles runs out of time within READ_TIMEOUT_S of falling below the rate;
time we spend not reading (FFmpeg busy, a slot to wait for) is never counted.
A client that sent Expect: 100-continue is asked for its body (100 Continue) by
the first read, so whatever a handler refuses before reading is answered
before the client has sent any of it (handlers.server.continue_if_owed).

Multipart forms are parsed by python-multipart, fed from those reads: it
searches for boundaries with bytes.find, so a hostile body costs little CPU
per byte, and everything before the file (preamble, fields, part headers) is
bounded in bytes here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import hdrs, web
from aiohttp.helpers import parse_mimetype
from aiohttp.web_protocol import RequestPayloadError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from handlers.errors import ApiError
from handlers.server import continue_if_owed
from settings import Settings

READ_SIZE = 256 * 1024
# Before the first part: RFC 2046 allows a preamble; browsers and curl send none.
MAX_PREAMBLE_BYTES = 1024
MAX_FIELDS = 32
MAX_FIELD_BYTES = 4096
MAX_PART_HEADERS = 4
MAX_PART_HEADER_BYTES = 4096
# Everything a form may send before its file: fields and part headers.
MAX_FORM_HEAD_BYTES = 64 * 1024
# RFC 2046: 1 to 70 characters from this set.
BOUNDARY_CHARACTERS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
DEFAULT_FILENAME = "recording.wav"


@dataclass(frozen=True)
class Pace:
    """How slowly a client may send: see the module's docstring."""

    read_timeout_s: float
    min_bytes_per_s: float  # 0: only the read timeout


def pace_of(settings: Settings) -> Pace:
    return Pace(read_timeout_s=settings.read_timeout_s, min_bytes_per_s=settings.min_upload_kbps * 1000 / 8)


class PacedBody:
    """The request body, read in chunks under the size and pace bounds."""

    def __init__(
        self, request: web.Request, pace: Pace, max_bytes: int, refusal: Callable[[], ApiError] | None = None
    ) -> None:
        """``refusal``: the 413 for a body beyond ``max_bytes`` (else too_large's)."""
        refuse_content_encoding(request)
        self._refusal = refusal or (lambda: too_large(max_bytes))
        if request.content_length is not None and request.content_length > max_bytes:
            raise self._refusal()
        self._request = request
        self._content = request.content
        self._pace = pace
        self._max_bytes = max_bytes
        self._credit_s = pace.read_timeout_s
        self.received = 0

    async def read(self, size: int = READ_SIZE) -> bytes:
        """Up to ``size`` bytes as soon as some arrive; b"" at the end of the body."""
        await continue_if_owed(self._request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self._credit_s):
                chunk = await self._content.read(size)
        except TimeoutError:
            raise self._too_slow() from None
        except RequestPayloadError as error:  # broken framing (see handlers.server)
            raise ApiError(400, str(error), {"Connection": "close"}) from None
        waited = loop.time() - started
        self.received += len(chunk)
        if self.received > self._max_bytes:
            raise self._refusal()
        earned = len(chunk) / self._pace.min_bytes_per_s if self._pace.min_bytes_per_s else waited
        self._credit_s = min(self._pace.read_timeout_s, self._credit_s - waited + earned)
        return chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    async def read_all(self) -> bytes:
        """The whole body, for small ones (the limit given is what bounds it)."""
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def _too_slow(self) -> ApiError:
        pace = self._pace
        if self._credit_s >= pace.read_timeout_s or not pace.min_bytes_per_s:
            message = f"The upload sent nothing for {pace.read_timeout_s:g} s and was stopped."
        else:
            kbits = pace.min_bytes_per_s * 8 / 1000
            message = f"The upload arrived slower than {kbits:g} kbit/s and was stopped."
        return ApiError(408, message, {"Connection": "close"})


def refuse_content_encoding(request: web.Request) -> None:
    """Bodies are taken as sent: decoding one would be work per byte without a bound."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(415, "Send the body without Content-Encoding: compressed uploads are not accepted.")


def too_large(max_bytes: int) -> ApiError:
    limit = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes >> 10} KiB"
    return ApiError(413, f"The upload is larger than the limit of {limit}.", {"Connection": "close"})


# --- multipart/form-data ----------------------------------------------------------


def multipart_boundary(request: web.Request) -> str | None:
    """The boundary of a multipart/form-data body, None for any other body; 400 for a bad one."""
    if request.content_type != "multipart/form-data":
        return None
    parameters = parse_mimetype(request.headers.get(hdrs.CONTENT_TYPE, "")).parameters
    boundaries = parameters.getall("boundary", [])
    if not boundaries:
        raise ApiError(400, "A multipart/form-data body needs a boundary in its Content-Type.")
    boundary = boundaries[0]
    if len(boundaries) > 1 or not 1 <= len(boundary) <= 70 or not set(boundary) <= BOUNDARY_CHARACTERS:
        raise ApiError(400, "The multipart boundary must be given once, as 1 to 70 of the characters RFC 2046 allows.")
    refuse_other_charsets(parameters.get("charset"))
    return str(boundary)


def refuse_other_charsets(charset: str | None) -> None:
    """Form text is read as UTF-8 (what browsers send from a UTF-8 page); another charset is refused, not guessed."""
    if charset is not None and charset.strip().lower() not in {"utf-8", "utf8", "us-ascii"}:
        raise ApiError(400, "Send form fields as UTF-8 text: other charsets are not accepted.")


@dataclass
class Part:
    """One part's headers as they came: its field name, a file name when it has one, its charset."""

    name: str
    filename: str | None
    charset: str | None


@dataclass
class _Parsing:
    """What python-multipart's callbacks report, queued for the reader to take in order."""

    events: deque[Part | bytes | None] = field(default_factory=deque)  # a part, its data, None at its end
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    head_bytes: int = 0
    parts: int = 0
    finished: bool = False


class MultipartForm:
    """A multipart/form-data body, parsed while it streams in."""

    def __init__(self, body: PacedBody, boundary: str) -> None:
        self._body = body
        self._state = _Parsing()
        state = self._state
        self._parser = MultipartParser(
            boundary.encode("ascii"),
            callbacks={
                "on_part_begin": self._part_begins,
                "on_header_field": lambda data, start, end: state.header_name.extend(data[start:end]),
                "on_header_value": lambda data, start, end: state.header_value.extend(data[start:end]),
                "on_header_end": self._header_ends,
                "on_headers_finished": self._headers_end,
                "on_part_data": lambda data, start, end: state.events.append(data[start:end]),
                "on_part_end": lambda: state.events.append(None),
                "on_end": self._form_ends,
            },
            max_header_count=MAX_PART_HEADERS,
            max_header_size=MAX_PART_HEADER_BYTES,
        )
        self._at_end = False

    async def fields_until_file(self, fields: dict[str, str]) -> Part | None:
        """Read text fields into ``fields`` up to the first part with a file name,
        and return that part (its data comes from ``file_data``); None when the form has no file."""
        while (part := await self._next_part()) is not None:
            if part.filename is not None:
                return part
            value = await self._field_value(part)
            if part.name:
                fields[part.name] = value
        return None

    async def file_data(self) -> AsyncIterator[bytes]:
        """The data of the part ``fields_until_file`` returned; then the form must end."""
        while (data := await self._next_event()) is not None:
            assert isinstance(data, bytes)
            if data:
                yield data
        # Anything after the file would be ignored, and an option silently
        # ignored is a wrong MP3: refuse it (the conversion is rolled back).
        following = await self._next_part()
        if following is not None:
            what = "a second file" if following.filename is not None else f"the field {following.name or 'a part'}"
            raise ApiError(400, f"Send one file, after the other fields: {what} came after the file.")

    async def all_fields(self) -> dict[str, str]:
        """Every text field of the form; files are read past."""
        fields: dict[str, str] = {}
        while (part := await self._next_part()) is not None:
            if part.filename is None:
                fields[part.name] = await self._field_value(part)
            else:
                while await self._next_event() is not None:
                    pass
        return fields

    async def _field_value(self, part: Part) -> str:
        refuse_other_charsets(part.charset)
        value = bytearray()
        while (data := await self._next_event()) is not None:
            assert isinstance(data, bytes)
            value += data
            self._state.head_bytes += len(data)
            if len(value) > MAX_FIELD_BYTES:
                raise ApiError(400, f"The form field {part.name} is longer than {MAX_FIELD_BYTES} bytes.")
        self._bound_head()
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"The form field {part.name} is not UTF-8 text.") from None

    async def _next_part(self) -> Part | None:
        event = await self._next_event(at_end=True)
        if event is None:
            return None
        assert isinstance(event, Part), event
        return event

    async def _next_event(self, at_end: bool = False) -> Part | bytes | None:
        """The next thing the body holds; at_end: None means the closing boundary, not a part's end."""
        state = self._state
        while not state.events:
            if state.finished and at_end:
                return None
            # Small reads until the first part begins, so the preamble bound is exact.
            chunk = await self._body.read(MAX_PREAMBLE_BYTES if state.parts == 0 else READ_SIZE)
            if not chunk:
                raise ApiError(400, "The multipart body ended before its closing boundary.")
            try:
                self._parser.write(chunk)
            except MultipartParseError:
                raise ApiError(400, "The multipart body is malformed.") from None
            if state.parts == 0 and not state.finished and self._body.received >= MAX_PREAMBLE_BYTES:
                raise ApiError(400, f"The multipart body has no part in its first {MAX_PREAMBLE_BYTES} bytes.")
        return state.events.popleft()

    def _part_begins(self) -> None:
        state = self._state
        state.parts += 1
        if state.parts > MAX_FIELDS + 1:
            raise ApiError(400, f"At most {MAX_FIELDS} form fields may come before the file.")
        state.headers.clear()

    def _header_ends(self) -> None:
        state = self._state
        state.head_bytes += len(state.header_name) + len(state.header_value)
        self._bound_head()
        state.headers.append((bytes(state.header_name).strip().lower(), bytes(state.header_value).strip()))
        state.header_name.clear()
        state.header_value.clear()

    def _headers_end(self) -> None:
        headers = dict(self._state.headers)
        kind, options = parse_options_header(headers.get(b"content-disposition", b"").decode("latin-1"))
        if kind != b"form-data":
            raise ApiError(400, "Every part of the form needs a Content-Disposition of form-data.")
        name = _text(options.get(b"name", b""))
        raw_filename = options.get(b"filename")
        filename = None if raw_filename is None else _readable_filename(raw_filename)
        charset = parse_options_header(headers.get(b"content-type", b"").decode("latin-1"))[1].get(b"charset")
        self._state.events.append(Part(name, filename, None if charset is None else _text(charset)))

    def _form_ends(self) -> None:
        self._state.finished = True

    def _bound_head(self) -> None:
        if self._state.head_bytes > MAX_FORM_HEAD_BYTES:
            raise ApiError(400, f"The form's fields and part headers take more than {MAX_FORM_HEAD_BYTES} bytes.")


def _text(raw: bytes) -> str:
    """Header bytes as text: UTF-8 as browsers send it, undecodable bytes as U+FFFD."""
    return raw.decode("utf-8", "replace")


def _readable_filename(raw: bytes) -> str:
    """The part's file name as text PostgreSQL accepts (api.record_begin makes it a safe base name)."""
    # Browsers percent-encode some characters of the name (", CR, LF), aiohttp's client all
    # but letters and digits, curl none: decoded, as most names are meant. (A name whose own
    # text holds %XX loses it: Take%2F1.wav becomes 1.mp3.)
    return unquote(_text(raw)) or DEFAULT_FILENAME
