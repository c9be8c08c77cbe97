"""Reading what a request says, alone: ranges, options, ids, tokens, links.
Requests are built in memory; no server, FFmpeg or PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from converter.mp3 import LAME_CBR_KBPS
from handlers.download import _wanted_range, content_disposition
from handlers.errors import ApiError
from handlers.params import TOKEN, encode_options_from, header_credentials, user_id_from
from handlers.shapes import link_base
from service.keys import SETTINGS
from settings import Settings

SIZE = 1000
ETAG = '"abc"'


def request(headers: dict[str, str] | None = None, public_url: str | None = None) -> web.Request:
    app = web.Application()
    app[SETTINGS] = Settings(database_url="postgresql://x", public_url=public_url)
    return make_mocked_request("GET", "/", headers=headers or {}, app=app)


def status_of(error: pytest.ExceptionInfo[ApiError]) -> int:
    return error.value.status


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        ("bytes=0-0", (0, 0)),
        ("bytes=100-", (100, SIZE - 1)),
        ("bytes=-100", (SIZE - 100, SIZE - 1)),
        ("bytes=-5000", (0, SIZE - 1)),  # more than there is: all of it
        ("bytes=5-99999999", (5, SIZE - 1)),
        ("bytes=9-3", None),  # last before first: ignored, the whole file
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("bytes=\u0663-", None),  # a digit, but not ASCII
        ("items=0-1", None),
        ("bytes=0-" + "9" * 5000, (0, SIZE - 1)),  # past Python's int() limit
    ],
)
def test_a_range_is_served_or_ignored(header: str, wanted: tuple[int, int] | None) -> None:
    assert _wanted_range(request({"Range": header}), ETAG, SIZE) == wanted


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", "bytes=-0", "bytes=" + "9" * 5000 + "-"])
def test_a_range_beyond_the_file_is_416(header: str) -> None:
    with pytest.raises(ApiError) as raised:
        _wanted_range(request({"Range": header}), ETAG, SIZE)
    assert status_of(raised) == 416
    assert raised.value.headers["Content-Range"] == f"bytes */{SIZE}"


def test_a_range_for_another_version_is_ignored() -> None:
    assert _wanted_range(request({"Range": "bytes=0-9", "If-Range": '"old"'}), ETAG, SIZE) is None
    assert _wanted_range(request({"Range": "bytes=0-9", "If-Range": ETAG}), ETAG, SIZE) == (0, 9)


@pytest.mark.parametrize("raw", ["", "0", "-1", "1.0", "\u0661", " 1", str(2**63), "9" * 5000])
def test_what_is_not_a_user_id(raw: str) -> None:
    with pytest.raises(ApiError) as raised:
        user_id_from(raw)
    assert status_of(raised) == 400


def test_the_largest_user_id() -> None:
    assert user_id_from(str(2**63 - 1)) == 2**63 - 1


@pytest.mark.parametrize(
    ("token", "valid"),
    [
        ("9c9d1b11-dbbf-4344-a721-dc83a2e2b620", True),
        ("9C9D1B11DBBF4344A721DC83A2E2B620", True),
        ("{9c9d1b11-dbbf-4344-a721-dc83a2e2b620}", True),
        ("{9c9d1b11-dbbf-4344-a721-dc83a2e2b620", False),  # an unbalanced brace: once an oracle
        ("9c9d1b11-dbbf-4344-a721-dc83a2e2b620}", False),
        ("urn:uuid:9c9d1b11-dbbf-4344-a721-dc83a2e2b620", False),
        ("' OR 1=1 --", False),
    ],
)
def test_the_token_forms_api_user_check_reads(token: str, valid: bool) -> None:
    assert bool(TOKEN.fullmatch(token)) is valid


@pytest.mark.parametrize(
    "authorization",
    ["Basic !!!", "Basic " + "é", "Basic bm9jb2xvbg==", "Bearer x"],  # "nocolon"
    ids=["not-base64", "not-ascii", "no-colon", "other-scheme"],
)
def test_credentials_that_cannot_be_read_are_401(authorization: str) -> None:
    with pytest.raises(ApiError) as raised:
        header_credentials(request({"Authorization": authorization}))
    assert status_of(raised) == 401
    assert raised.value.headers["WWW-Authenticate"].startswith("Basic")


def options(**values: str) -> Any:
    return encode_options_from(values, 192, "Morning Song.wav")


def test_each_lame_bit_rate_and_no_other() -> None:
    for kbps in LAME_CBR_KBPS:
        assert options(bitrate=str(kbps)).bitrate_kbps == kbps
    for bad in ("100", "abc", "999999999999", "-128"):
        with pytest.raises(ApiError):
            options(bitrate=bad)


def test_bitrate_and_quality_exclude_each_other() -> None:
    assert options(quality="0").vbr_quality == 0
    with pytest.raises(ApiError, match="not both"):
        options(bitrate="128", quality="2")


def test_the_title_falls_back_to_the_file_name_and_tags_are_bounded() -> None:
    assert options().default_title == "Morning Song"
    assert options(title=" Dawn\x07 ").tags == {"title": "Dawn"}
    with pytest.raises(ApiError, match="at most 255"):
        options(artist="x" * 256)


def test_download_names_are_ascii_with_the_real_one_beside() -> None:
    assert content_disposition("song.mp3") == 'attachment; filename="song.mp3"'
    assert content_disposition('Zoë "live".mp3') == (
        "attachment; filename=\"Zo_ _live_.mp3\"; filename*=UTF-8''Zo%C3%AB%20%22live%22.mp3"
    )


@pytest.mark.parametrize(
    ("host", "base"),
    [
        ("mp3.example.org", "http://mp3.example.org"),
        ("0.0.0.0:8080", "http://localhost:8080"),
        ("[::1]:81", "http://[::1]:81"),
    ],
)
def test_links_point_where_the_client_came(host: str, base: str) -> None:
    assert str(link_base(request({"Host": host}))) == base


@pytest.mark.parametrize("host", ["x:99999", "[::1", "x:-1", "a b", "[zz::1]"])
def test_a_host_no_link_can_point_to_is_400(host: str) -> None:
    with pytest.raises(ApiError) as raised:
        link_base(request({"Host": host}))
    assert status_of(raised) == 400


def test_public_url_wins_over_the_host() -> None:
    assert str(link_base(request({"Host": "x:99999"}, public_url="https://mp3.example.org/base"))) == (
        "https://mp3.example.org/base"
    )
