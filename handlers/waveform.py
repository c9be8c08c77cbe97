"""GET /record/waveform?id=<uuid>&user=<id>: a record's waveform, in audiowaveform's own
formats so the players that read them (peaks.js, wavesurfer.js, audiowaveform itself)
read it unchanged: the binary `.dat` (version 2, 8-bit) or its JSON, chosen by
`?format=dat|json`, else by Accept (JSON when it asks for application/json).

Measured from the samples as they streamed through the converter (converter/analysis.py),
stored with the record, gone with it. With credentials (SPEC), checked in
api.record_waveform with the ownership: 401 for wrong ones, 404 for a record that is
not theirs, as DELETE /record answers.
"""

from __future__ import annotations

import struct

from aiohttp import web

from db import api
from handlers.errors import ApiError
from handlers.params import owners_credentials, record_id_from
from handlers.reads import read_fresh

FORMATS = ("dat", "json")
DAT_HEADER = struct.Struct("<iIiiIi")  # version, flags, sample rate, samples per pixel, length, channels


async def waveform(request: web.Request) -> web.StreamResponse:
    record_id = record_id_from(request.query.get("id"))
    credentials = owners_credentials(request, "No such record, or it has no waveform.")  # api.record_waveform's
    wanted = _format_of(request)
    found = await read_fresh(
        request, lambda db: api.record_waveform(db, credentials.user_id, credentials.token, record_id)
    )
    etag = f'"{found.sha256.hex()}-waveform-{wanted}"'  # one per representation of these bytes
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable", "Vary": "Accept, Authorization"}
    if any(tag.value in (etag.strip('"'), "*") for tag in request.if_none_match or ()):
        return web.Response(status=304, headers=headers)
    if wanted == "dat":
        return web.Response(body=found.waveform, content_type="application/octet-stream", headers=headers)
    return web.json_response(waveform_json(found.waveform), headers=headers)


def waveform_json(dat: bytes) -> dict[str, object]:
    """audiowaveform's JSON format of a `.dat` of version 2 (doc/DataFormat.md)."""
    version, flags, sample_rate, samples_per_pixel, length, channels = DAT_HEADER.unpack_from(dat)
    data = dat[DAT_HEADER.size :]
    return {
        "version": version,
        "channels": channels,
        "sample_rate": sample_rate,
        "samples_per_pixel": samples_per_pixel,
        "bits": 8 if flags & 1 else 16,
        "length": length,
        "data": list(struct.unpack(f"<{len(data)}b", data)),
    }


def _format_of(request: web.Request) -> str:
    chosen = request.query.get("format")
    if chosen is not None:
        if chosen not in FORMATS:
            raise ApiError(400, "The parameter format must be dat or json.")
        return chosen
    return "json" if "application/json" in request.headers.get("Accept", "") else "dat"
