"""The OpenAPI 3.1 description of every route, served at /openapi.json (and shown by
/docs, handlers/swagger.py): one builder per tag of routes."""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from converter.mp3 import LAME_CBR_KBPS, MP3_SAMPLE_RATES
from handlers.page import VENDORED, Vendored
from handlers.params import (
    CHANNEL_CHOICES,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_TAG_CHARACTERS,
    TAG_FIELDS,
    VBR_QUALITIES,
)
from handlers.records import WAV_TYPES
from handlers.shapes import RECORD_KEYS
from handlers.swagger import DOCS_ASSETS_PREFIX
from handlers.uploads import TUS_VERSION
from handlers.users import MAX_BODY_BYTES, MAX_USERNAME_CHARACTERS
from service.keys import SETTINGS

ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str, *headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR}}}
    if headers:
        answer["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return answer


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    envelope = {
        "type": "object",
        "required": ["status", "data"],
        "properties": {"status": {"const": "ok"}, "data": schema},
    }
    return {"description": description, "content": {"application/json": {"schema": envelope}}}


BAD_REQUEST = _error("Malformed JSON, form, ids or options, or credentials given twice and differently")
UNAUTHORIZED = _error("Missing or wrong credentials, or an unknown user (the same answer)", "WWW-Authenticate")
NOT_FOUND = _error("No such record, or another user's (the same answer)")
UNAVAILABLE = _error(
    "The database is unreachable, no upload place came free within QUEUE_TIMEOUT_S (MAX_UPLOADS, or the user's"
    " USER_MAX_UPLOADS; at once when MAX_UPLOADS wait already), a conversion stalled for STALL_TIMEOUT_S,"
    " or the service is stopping",
    "Retry-After",
)

CREDENTIALS: list[dict[str, list[str]]] = [{"basic": []}, {"userHeaders": []}]
RECORD_QUERY = [
    {"name": "id", "in": "query", "required": True, "schema": {"type": "string", "format": "uuid"}},
    {"name": "user", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 1}},
]
# DELETE /record and the waveform take the credentials' user when the query names none
# (handlers/params.py, owners_credentials); another user's is 404.
OWNERS_RECORD_QUERY = [
    RECORD_QUERY[0],
    RECORD_QUERY[1]
    | {"required": False, "description": "the record's owner: the credentials' user when left out (another's: 404)"},
]
LEGACY_RECORD_QUERY = [
    {"name": "record_id", "in": "query", "required": True, "schema": {"type": "string", "format": "uuid"}},
    {"name": "user_id", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 1}},
]


# Every fact below comes from the code that enforces it, never copied.
def upload_options(default_kbps: int) -> dict[str, dict[str, Any]]:
    """The conversion options, the bit rate's default being this service's MP3_BITRATE."""
    return {
        "bitrate": {
            "type": "integer",
            "enum": list(LAME_CBR_KBPS),
            "default": default_kbps,
            "description": "CBR bit rate, kbit/s (default: MP3_BITRATE)",
        },
        "quality": {
            "type": "integer",
            "minimum": min(VBR_QUALITIES),
            "maximum": max(VBR_QUALITIES),
            "description": "LAME VBR quality (-V), 0 best; instead of bitrate",
        },
        "sample_rate": {
            "type": "integer",
            "enum": list(MP3_SAMPLE_RATES),
            "description": "at most the WAV's own rate (422 otherwise)",
        },
        "channels": {"type": "integer", "enum": list(CHANNEL_CHOICES)},
        **{name: {"type": "string", "maxLength": MAX_TAG_CHARACTERS} for name in TAG_FIELDS},
    }


def upload_body(options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "user": {"type": "integer", "description": "with token: credentials, before the file"},
                        "token": {"type": "string", "format": "uuid"},
                        **options,
                        "file": {"type": "string", "format": "binary", "description": "the WAV (any field name)"},
                    },
                },
                "encoding": {"file": {"contentType": ", ".join(sorted(WAV_TYPES))}},
            },
            # The raw body: the WAV itself, credentials in headers.
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in sorted(WAV_TYPES)},
        },
    }


UPLOAD_ERRORS = {
    "400": BAD_REQUEST,
    "401": UNAUTHORIZED,
    "408": _error("The body sent nothing for READ_TIMEOUT_S, or arrived slower than MIN_UPLOAD_KBPS"),
    "413": _error("Larger than MAX_UPLOAD_MB, longer than MAX_DURATION_S, or past the user's quota"),
    "415": _error("Neither multipart nor WAV, the file is not a RIFF/RF64 WAVE, or a Content-Encoding was given"),
    "422": _error("A WAV that cannot be converted, holds no audio, or took longer than FFMPEG_TIMEOUT_S"),
    "503": UNAVAILABLE,
    "507": _error("The service's storage is full (STORAGE_MAX_GB)"),
}
DOWNLOAD_RESPONSES = {
    "200": {
        "description": "The MP3",
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in ("ETag", "Content-Disposition")},
        "content": {"audio/mpeg": {"schema": {"type": "string", "format": "binary"}}},
    },
    "206": {"description": "One byte range of the MP3", "content": {"audio/mpeg": {"schema": {"type": "string"}}}},
    "304": {"description": "If-None-Match matched the ETag"},
    "400": BAD_REQUEST,
    "404": NOT_FOUND,
    "412": _error("If-Match names none of the record's ETag"),
    "416": _error("The range is outside the file"),
    "503": UNAVAILABLE,
}
DOWNLOAD_HEADERS = [
    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}, "example": "bytes=0-1023"},
    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
    {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}},
]


def _user_created(token_key: str, description: str) -> dict[str, Any]:
    return {
        "tags": ["users"],
        "summary": description,
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": {"$ref": "#/components/schemas/NewUser"}}
                for media in ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
            },
        },
        "responses": {
            "201": _ok(
                {
                    "type": "object",
                    "required": ["id", "username", token_key],
                    "properties": {
                        "id": {"type": "integer"},
                        "username": {"type": "string"},
                        token_key: {"type": "string", "format": "uuid", "description": "shown this once"},
                    },
                },
                "The user, with its token",
            ),
            "400": BAD_REQUEST,
            "403": _error("Sign-up is closed (SIGNUP=closed): an administrator creates accounts"),
            "408": _error("The body sent nothing for READ_TIMEOUT_S, or arrived slower than MIN_UPLOAD_KBPS"),
            "409": _error("The username is taken (without regard to case)"),
            "413": _error(f"A body larger than {MAX_BODY_BYTES >> 10} KiB"),
            "415": _error("A Content-Encoding was given"),
            "503": UNAVAILABLE,
        },
    }


def _download(summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tags": ["records"],
        "summary": summary,
        "parameters": parameters + DOWNLOAD_HEADERS,
        "responses": DOWNLOAD_RESPONSES,
    }


def _status(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "tags": ["operations"],
        "summary": summary,
        "responses": {"200": _ok(schema, "Healthy"), "503": _error("Not healthy, or not ready", "Retry-After")},
    }


def _page(summary: str, media: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {media: {"schema": schema or {"type": "string"}}}
    return {"tags": ["pages"], "summary": summary, "responses": {"200": {"description": summary, "content": content}}}


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[SETTINGS].mp3_bitrate_kbps))


@functools.cache
def openapi_document(default_kbps: int) -> dict[str, Any]:
    """The document for a service whose MP3_BITRATE is default_kbps (built once; never changed)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MP3 converter",
            "version": "1.0.0",
            "description": "Upload WAV recordings, get MP3 download links. Every JSON answer uses one envelope.",
        },
        "paths": _users()
        | _records(default_kbps)
        | _resumable_uploads()
        | _older_clients(default_kbps)
        | _operations()
        | _pages(),
        "components": _components(),
    }


RECORD = {"$ref": "#/components/schemas/Record"}


def _users() -> dict[str, Any]:
    return {
        "/users": {"post": _user_created("token", "Create a user")},
        "/users/me": {
            "get": {
                "tags": ["users"],
                "summary": "Who the credentials name, and what they store (also how to check a pair)",
                "security": CREDENTIALS,
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "required": ["id", "username", "records", "bytes", "quota_bytes", "uploading_bytes"],
                            "properties": {
                                "id": {"type": "integer"},
                                "username": {"type": "string"},
                                "records": {"type": "integer", "description": "finished records"},
                                "bytes": {"type": "integer", "description": "their MP3 bytes"},
                                "quota_bytes": {"type": "integer", "description": "USER_QUOTA_MB; 0: none"},
                                "uploading_bytes": {
                                    "type": "integer",
                                    "description": "MP3 bytes of unfinished uploads, counted against the quota",
                                },
                            },
                        },
                        "The user and their storage",
                    ),
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "503": UNAVAILABLE,
                },
            },
        },
    }


def _upload(default_kbps: int) -> dict[str, Any]:
    options = upload_options(default_kbps)
    return {
        "tags": ["records"],
        "summary": "Upload a WAV; it is converted to MP3 and stored",
        "security": [*CREDENTIALS, {}],
        "parameters": [
            *({"name": name, "in": "query", "required": False, "schema": schema} for name, schema in options.items()),
            {"name": "filename", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
        "requestBody": upload_body(options),
        "responses": {
            "201": _ok(RECORD, "The stored record") | {"headers": {"Location": {"schema": {"type": "string"}}}},
            **UPLOAD_ERRORS,
        },
    }


def _records(default_kbps: int) -> dict[str, Any]:
    return {
        "/record/waveform": {
            "get": {
                "tags": ["records"],
                "summary": "The record's waveform, in audiowaveform's .dat (v2, 8-bit) or JSON",
                "security": CREDENTIALS,
                "parameters": [
                    *OWNERS_RECORD_QUERY,
                    {"name": "format", "in": "query", "required": False, "schema": {"enum": ["dat", "json"]}},
                ],
                "responses": {
                    "200": {
                        "description": "The peaks: one channel, min and max of any channel per pixel",
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "application/json": {"schema": {"type": "object"}},
                        },
                    },
                    "304": {"description": "Not modified (If-None-Match)"},
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "404": _error("No such record, another user's, or one with no waveform"),
                    "503": UNAVAILABLE,
                },
            }
        },
        "/record": {
            "post": _upload(default_kbps),
            "get": _download("Download an MP3 (the record id is the secret)", RECORD_QUERY),
            "head": _download("The download's headers", RECORD_QUERY),
            "delete": {
                "tags": ["records"],
                "summary": "Delete a record and its MP3",
                "security": CREDENTIALS,
                "parameters": OWNERS_RECORD_QUERY,
                "responses": {
                    "204": {"description": "Deleted"},
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                    "503": UNAVAILABLE,
                },
            },
        },
        "/records": {
            "get": {
                "tags": ["records"],
                "summary": "The user's records, newest first, a page at a time",
                "security": CREDENTIALS,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE_SIZE,
                            "default": DEFAULT_PAGE_SIZE,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "the previous page's next",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{32}$"},
                    },
                ],
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "required": ["records", "next"],
                            "properties": {
                                "records": {"type": "array", "items": RECORD},
                                "next": {
                                    "type": ["string", "null"],
                                    "description": "the cursor of the next page; null on the last",
                                },
                            },
                        },
                        "A page of records",
                    )
                    | {
                        "headers": {
                            "Link": {
                                "description": '<...>; rel="next" while a next page exists',
                                "schema": {"type": "string"},
                            }
                        }
                    },
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "503": UNAVAILABLE,
                },
            },
        },
    }


def _resumable_uploads() -> dict[str, Any]:
    """tus 1.0.0 (handlers/uploads.py); its headers are the protocol's, documented there."""
    tus = {"name": "Tus-Resumable", "in": "header", "required": True, "schema": {"const": TUS_VERSION}}
    upload_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    unsupported = _error("Another Tus-Resumable than 1.0.0", "Tus-Version")
    gone = _error("Expired: UPLOAD_EXPIRY_S without a request writing to it")
    # A PATCH's 410 has a second cause: handlers/uploads.py _cannot_go_on.
    patch_gone = _error(
        "Expired; or checkpointed by an earlier version of the service in a form this one cannot go on"
        " from, and deleted (its HEAD then answers 404): create a new upload"
    )
    statuses = {"400": BAD_REQUEST, "401": UNAUTHORIZED, "412": unsupported}
    # Only an operation on an upload named by its id can miss it or find it expired: the POST
    # that creates one answers neither.
    of_an_upload = {"404": NOT_FOUND, "410": gone}

    def tus_operation(summary: str, responses: dict[str, Any], *parameters: dict[str, Any]) -> dict[str, Any]:
        named = of_an_upload if upload_id in parameters else {}
        return {
            "tags": ["resumable uploads"],
            "summary": summary,
            "security": CREDENTIALS,
            "parameters": [tus, *parameters],
            "responses": statuses | named | responses | {"503": UNAVAILABLE},
        }

    def header(name: str, description: str, required: bool = False) -> dict[str, Any]:
        schema = {"type": "string", "pattern": "^[0-9]{1,19}$"}
        return {"name": name, "in": "header", "required": required, "description": description, "schema": schema}

    length = header("Upload-Length", "the WAV's size in bytes")
    return {
        "/uploads": {
            "options": {
                "tags": ["resumable uploads"],
                "summary": "What this server speaks: Tus-Version, Tus-Extension, Tus-Max-Size",
                "responses": {"204": {"description": "Discovery"}},
            },
            "post": tus_operation(
                "Create an upload (options and filename in Upload-Metadata)",
                {
                    "201": {"description": "Created: its URL in Location"},
                    "413": _error("Upload-Length over MAX_UPLOAD_MB, or past the user's quota", "Tus-Max-Size"),
                    "429": _error("The user has 16 uploads in progress already"),
                    "507": _error("The service's storage is full (STORAGE_MAX_GB)"),
                },
                length,
                {"name": "Upload-Defer-Length", "in": "header", "required": False, "schema": {"const": "1"}},
                {"name": "Upload-Metadata", "in": "header", "required": False, "schema": {"type": "string"}},
            ),
        },
        "/uploads/{id}": {
            "head": tus_operation(
                "The upload's offset: what is durable", {"200": {"description": "Its offset"}}, upload_id
            ),
            "patch": tus_operation(
                "Send the WAV on from the upload's offset",
                {
                    "204": {"description": "The offset now; Record-Location once the upload is finished"},
                    "408": UPLOAD_ERRORS["408"],
                    "409": _error("Upload-Offset is not the upload's"),
                    "410": patch_gone,
                    "413": UPLOAD_ERRORS["413"],
                    "415": _error("Not application/offset+octet-stream, or the WAV is no WAV"),
                    "422": UPLOAD_ERRORS["422"],
                    "423": _error("Another request took the upload over"),
                    "507": UPLOAD_ERRORS["507"],
                },
                upload_id,
                header("Upload-Offset", "the upload's offset, as HEAD answers it", required=True),
                length,
            ),
            "delete": tus_operation("End the upload (termination)", {"204": {"description": "Ended"}}, upload_id),
            "get": {
                "tags": ["resumable uploads"],
                "summary": "A finished upload's record, as POST /record answers it",
                "security": CREDENTIALS,
                "parameters": [upload_id],
                "responses": {
                    "200": _ok(RECORD, "The record"),
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                    "409": _error("Not finished yet"),
                    "410": gone,
                    "503": UNAVAILABLE,
                },
            },
        },
    }


def _older_clients(default_kbps: int) -> dict[str, Any]:
    legacy_upload = _upload(default_kbps) | {
        "summary": "Older clients' upload: answers {status, url}",
        "responses": {
            "201": {
                "description": "Stored",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["status", "url"],
                            "properties": {"status": {"const": "ok"}, "url": {"type": "string"}},
                        }
                    }
                },
            },
            **UPLOAD_ERRORS,
        },
    }
    return {
        "/users.create": {"post": _user_created("uuid", "Older clients' user creation (the token as uuid)")},
        "/files.convert": {"post": legacy_upload},
        "/files.record": {
            "get": _download("Older clients' download", LEGACY_RECORD_QUERY),
            "head": _download("Older clients' download headers", LEGACY_RECORD_QUERY),
        },
    }


def _operations() -> dict[str, Any]:
    return {
        "/health": {"get": _status("Liveness: the database answers, FFmpeg is there", {"type": "object"})},
        "/ready": {"get": _status("Readiness for uploads: also a free upload place (MAX_UPLOADS)", {"type": "object"})},
        "/ready/downloads": {
            "get": _status("Readiness for downloads and listings: the read replica or the primary", {"type": "object"})
        },
        "/metrics": {"get": _page("Prometheus metrics", "text/plain")},
    }


def _pages() -> dict[str, Any]:
    return {
        "/openapi.json": {"get": _page("This document", "application/json")},
        "/docs": {"get": _page("Swagger UI for this document", "text/html")},
        DOCS_ASSETS_PREFIX + "/{filename}": {
            "get": {
                "tags": ["pages"],
                "summary": "Swagger UI's own files, served locally",
                "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "A file"}, "404": _error("No such file")},
            },
        },
        "/": {"get": _page("The web page: create a user, upload, play, download, delete", "text/html")},
        "/page.js": {"get": _page("The web page's script", "text/javascript")},
        "/page.css": {"get": _page("The web page's style", "text/css")},
    } | {route: {"get": _vendored(vendored)} for route, vendored in VENDORED.items()}


def _vendored(vendored: Vendored) -> dict[str, Any]:
    """A third-party file: a source map is a JSON object, the others text."""
    schema = {"type": "object"} if vendored.media_type == "application/json" else None
    return _page(vendored.summary, vendored.media_type, schema)


def _components() -> dict[str, Any]:
    return {
        "securitySchemes": {
            "basic": {"type": "http", "scheme": "basic", "description": "user id : token"},
            "userHeaders": {
                "type": "apiKey",
                "in": "header",
                "name": "user_uuid",
                "description": "the token, with the user id in the header user_id",
            },
        },
        "headers": {
            "WWW-Authenticate": {"schema": {"type": "string"}},
            "Retry-After": {"schema": {"type": "integer"}},
            "ETag": {"schema": {"type": "string"}},
            "Content-Disposition": {"schema": {"type": "string"}},
            "Tus-Version": {"description": "the tus versions this server speaks", "schema": {"const": TUS_VERSION}},
            "Tus-Max-Size": {
                "description": "the largest Upload-Length accepted, in bytes (MAX_UPLOAD_MB)",
                "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
            },
        },
        "schemas": {
            "NewUser": {
                "type": "object",
                "required": ["username"],
                "properties": {"username": {"type": "string", "minLength": 1, "maxLength": MAX_USERNAME_CHARACTERS}},
            },
            "Record": {
                "type": "object",
                "required": list(RECORD_KEYS),
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "user": {"type": "integer"},
                    "url": {"type": "string", "description": "the download link"},
                    "filename": {"type": "string"},
                    "size": {"type": "integer", "description": "MP3 bytes"},
                    "duration": {"type": "number", "description": "seconds"},
                    "bitrate": {"type": "integer", "description": "bit/s (average for VBR)"},
                    "sample_rate": {"type": "integer"},
                    "channels": {"type": "integer", "enum": list(CHANNEL_CHOICES)},
                    "created_at": {"type": "string", "format": "date-time"},
                    "loudness": {
                        "type": "object",
                        "description": "ITU-R BS.1770-4 / EBU R128; null: not measured, or silence",
                        "required": ["integrated", "range", "true_peak"],
                        "properties": {
                            "integrated": {"type": ["number", "null"], "description": "LUFS"},
                            "range": {"type": ["number", "null"], "description": "LU"},
                            "true_peak": {"type": ["number", "null"], "description": "dBTP"},
                        },
                    },
                    "waveform": {"type": ["string", "null"], "description": "the waveform's link (null: none)"},
                },
            },
            "Error": {
                "type": "object",
                "required": ["code", "status", "message", "data"],
                "properties": {
                    "code": {"type": "integer", "description": "the HTTP status"},
                    "status": {"type": "string", "description": "snake_case reason"},
                    "message": {"type": "string", "description": "a human sentence"},
                    "data": {"type": "object", "maxProperties": 0},
                },
            },
        },
    }
