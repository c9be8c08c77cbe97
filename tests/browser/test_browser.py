"""The web page in a real headless Chromium, against the application configured as app.py
runs it: a new user converts, plays, seeks, downloads and deletes; a returning user signs
in with the pair the API gave, uploads with the API's options, pages the library, signs out."""

from __future__ import annotations

import io
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from mutagen.mp3 import MP3, BitrateMode
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Response,
    ViewportSize,
    async_playwright,
    expect,
)

from converter.wav import NOT_A_WAV
from tests.support import (
    ROOT,
    Audio,
    Client,
    basic,
    count,
    decoded,
    finished_records,
    local,
    new_user,
    probe,
    until,
    upload,
    wav_header,
)  # fmt: skip

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / ".artifacts"
# Flags that keep a headless Chromium off the network it cannot reach here, and let it play audio.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
PHONE = ViewportSize(width=390, height=844)
STORED_KEY = "mp3-converter-user"

if not os.access(CHROMIUM, os.X_OK) and os.environ.get("CI") != "true":
    pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it", allow_module_level=True)

pytestmark = pytest.mark.slow  # a headless browser


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def test_a_new_user_converts_plays_seeks_downloads_and_deletes(
    client: Client, audio: Audio, browser: Browser, tmp_path: Path
) -> None:
    wav = tmp_path / "Evening Take.wav"
    wav.write_bytes(audio(seconds=4))
    base = f"http://{client.host}:{client.port}"
    page = await (await browser.new_context(accept_downloads=True)).new_page()
    await page.goto(base + "/")
    await page.get_by_label("Username").fill("browser-user")
    await page.click("text=Create user")
    await expect(page.locator("#token")).to_have_text(
        re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    )
    await expect(page.locator("#token-new")).to_be_visible()  # the one time it is shown
    await expect(page.locator("#who")).to_have_text("browser-user")

    await page.set_input_files("#files", str(wav))
    await expect(page.locator(".upload .outcome")).to_have_text("Done: Evening Take.mp3")
    row = page.locator("#records tr", has_text="Evening Take.mp3")
    await expect(row).to_have_count(1)
    await expect(row.locator("td").nth(1)).to_have_text("0:04")
    await expect(page.locator("#storage-text")).to_have_text(re.compile(r"^1 recording, [0-9.]+ KB; no quota\.$"))

    await play_and_seek(page)

    async with page.expect_download() as downloading:
        await row.locator("text=Download").click()
    download = await downloading.value
    saved = tmp_path / "downloaded.mp3"
    await download.save_as(saved)
    url = await row.locator("audio").get_attribute("src")
    assert url is not None
    direct = await client.get(url.removeprefix(base))
    assert saved.read_bytes() == await direct.read()

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)

    await row.get_by_role("button", name="Delete Evening Take.mp3").click()
    await expect(page.locator("#records tr")).to_have_count(0)
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator("#storage-text")).to_have_text("0 recordings, 0 bytes; no quota.")


async def test_a_returning_user_signs_in_uploads_with_options_pages_and_signs_out(
    client: Client, audio: Audio, admin: psycopg.Connection, browser: Browser, tmp_path: Path
) -> None:
    user_id, token = await new_user(client, "curl-user")  # created the primary way, with the API
    assert (await upload(client, (user_id, token), audio(seconds=2))).status == 201
    finished_records(admin, user_id, 60)  # older than the upload: more than one page of 50
    admin.execute("UPDATE app.settings SET user_quota_bytes = 50000000")
    wav = audio(seconds=10)  # and a resumable upload left unfinished: it counts against the quota
    tus = {**basic(user_id, token), "Tus-Resumable": "1.0.0"}
    created = await client.post("/uploads", headers={**tus, "Upload-Length": str(len(wav))})
    patch = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    unfinished = local(created.headers["Location"])
    assert (await client.patch(unfinished, data=wav[: len(wav) * 4 // 5], headers=patch)).ok
    base = f"http://{client.host}:{client.port}"
    page = await (await browser.new_context(viewport=PHONE, accept_downloads=True)).new_page()
    await page.goto(base + "/")

    # A wrong pair: the service's 401 message, and nothing kept in the browser.
    await sign_in_by_keyboard(page, user_id, str(uuid.uuid4()))
    await expect(page.locator("#account-error")).to_have_text("Unknown user or wrong token.")
    assert await page.evaluate(f"localStorage.getItem('{STORED_KEY}')") is None
    await expect(page.locator("#signed-in")).to_be_hidden()

    await sign_in_by_keyboard(page, user_id, token)
    await expect(page.locator("#who")).to_have_text("curl-user")
    await expect(page.locator("#account-error")).to_have_text("")
    await expect(page.locator("#storage-text")).to_have_text(
        re.compile(r"^61 recordings, [0-9.]+ KB \(and [0-9.]+ KB in unfinished uploads\) of 50 MB allowed\.$")
    )
    assert (await client.delete(unfinished, headers=tus)).status == 204
    await expect(page.locator("#records tr")).to_have_count(50)  # the first page, newest first
    await expect(page.locator("#records tr").first).to_contain_text("song.mp3")
    await page.locator("#more").scroll_into_view_if_needed()  # the next page comes by itself
    await expect(page.locator("#records tr")).to_have_count(61)
    await expect(page.locator("#more")).to_be_hidden()

    # The API's options, as the API takes them, in one drop with a file the service refuses
    # and one the page refuses before sending.
    await page.get_by_label("Encoding").select_option(label="V2")
    await page.get_by_label("Sample rate").select_option(label="22050 Hz")
    await page.get_by_label("Channels").select_option(label="Mono")
    await page.get_by_label("Title").fill("Morning Song")
    await page.get_by_label("Artist").fill("Zoë Quartet")
    await page.get_by_label("Album").fill("Dawn")
    good = tmp_path / "take one.wav"
    good.write_bytes(audio(seconds=3))
    adpcm = tmp_path / "adpcm.wav"
    adpcm.write_bytes(wav_header(tag=2, bits=4, data_size=4000) + bytes(4000))
    photo = tmp_path / "photo.wav"
    photo.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, named .wav")
    await page.set_input_files("#files", [str(good), str(adpcm), str(photo)])
    outcomes = page.locator(".upload")
    await expect(outcomes.filter(has_text="take one.wav").locator(".outcome")).to_have_text("Done: take one.mp3")
    await expect(outcomes.filter(has_text="adpcm.wav").locator(".error")).to_have_text(
        "WAV encoding 0x0002 is not supported: send PCM or floating-point samples."
    )
    await expect(outcomes.filter(has_text="photo.wav").locator(".error")).to_have_text(NOT_A_WAV)
    # The refused upload is ended at the service too: nothing left counting against the quota.
    await until(lambda: count(admin, "SELECT count(*) FROM app.uploads WHERE record_id IS NULL") == 0)
    await expect(page.locator("#records tr")).to_have_count(50)  # back to the first page, the new one on top

    row = page.locator("#records tr", has_text="take one.mp3")
    async with page.expect_download() as downloading:
        await row.locator("text=Download").click()
    mp3 = (await (await downloading.value).path()).read_bytes()
    heard = probe(mp3)
    assert (heard["sample_rate"], heard["channels"]) == (22050, 1)
    assert {name: heard["tags"].get(name) for name in ("title", "artist", "album")} == {
        "title": "Morning Song", "artist": "Zoë Quartet", "album": "Dawn",
    }  # fmt: skip
    info = MP3(io.BytesIO(mp3)).info  # type: ignore[no-untyped-call]
    assert info is not None
    assert info.bitrate_mode == BitrateMode.VBR

    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing off-screen
    ARTIFACTS.mkdir(exist_ok=True)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / "web-page-phone.png"))

    # Sign out: nothing left in the browser; sign back in: the library is there again.
    await page.get_by_role("button", name="Forget this browser").click()
    await expect(page.locator("#sign-in")).to_be_visible()
    assert await page.evaluate(f"localStorage.getItem('{STORED_KEY}')") is None
    await sign_in_by_keyboard(page, user_id, token)
    await expect(page.locator("#records tr").first).to_contain_text("take one.mp3")
    await page.reload()  # a returning visit: the kept pair is checked again, and still works
    await expect(page.locator("#who")).to_have_text("curl-user")


async def sign_in_by_keyboard(page: Page, user_id: int, token: str) -> None:
    """The labelled fields, filled and sent from the keyboard alone."""
    await page.get_by_label("User id").fill(str(user_id))
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Token")).to_be_focused()
    await page.keyboard.type(token)
    await page.keyboard.press("Enter")


async def play_and_seek(page: Page) -> None:
    """Playback starts, and seeking works because downloads honour Range."""
    played = await page.evaluate(
        """async () => {
            const audio = document.querySelector('#records audio');
            await audio.play();
            await new Promise((done) => audio.addEventListener('timeupdate', done, {once: true}));
            const playing = !audio.paused;
            audio.pause();
            audio.currentTime = 3.0;
            await new Promise((done) => audio.addEventListener('seeked', done, {once: true}));
            return {playing, position: audio.currentTime, duration: audio.duration,
                    seekable: audio.seekable.length ? audio.seekable.end(0) : 0};
        }"""
    )
    assert played["playing"]
    assert played["position"] == pytest.approx(3.0, abs=0.05)
    assert played["duration"] == pytest.approx(4.0, abs=0.1)
    assert played["seekable"] == pytest.approx(played["duration"], abs=0.1)


# --- uploads with tus: a dropped network and a reload go on from what the service kept ---------

# A deadline for an upload of tens of megabytes, converted on a busy machine.
UPLOAD_DEADLINE_MS = 120_000
CD_BYTES_PER_S = 44100 * 2 * 2


class TusTraffic:
    """The page's requests to /uploads, in order: what each sent and what it was answered."""

    def __init__(self, context: BrowserContext) -> None:
        self.sent: list[tuple[str, int | None]] = []  # method, Upload-Offset
        self.answered: list[tuple[str, int | None, int | None]] = []  # method, its Upload-Offset, the answer's
        context.on("request", self._sent)
        context.on("response", self._answered)

    def methods(self, method: str) -> list[tuple[str, int | None]]:
        return [sent for sent in self.sent if sent[0] == method]

    def sent_after_last(self, method: str) -> list[tuple[str, int | None]]:
        last = max(at for at, (sent, _) in enumerate(self.sent) if sent == method)
        return self.sent[last + 1 :]

    def answers(self, method: str) -> list[int | None]:
        return [answer for sent, _, answer in self.answered if sent == method]

    def _sent(self, request: Request) -> None:
        if urlsplit(request.url).path.startswith("/uploads"):
            self.sent.append((request.method, _offset(request.headers)))

    def _answered(self, response: Response) -> None:
        request = response.request
        if urlsplit(request.url).path.startswith("/uploads"):
            self.answered.append((request.method, _offset(request.headers), _offset(response.headers)))


def _offset(headers: dict[str, str]) -> int | None:
    value = headers.get("upload-offset")
    return None if value is None else int(value)


def is_later_patch(request: Request) -> bool:
    """A PATCH after the first: it sends on from what the first one's answer said was kept."""
    return request.method == "PATCH" and request.headers.get("upload-offset", "0") != "0"


async def signed_in_page(client: Client, context: BrowserContext, name: str) -> Page:
    user_id, token = await new_user(client, name)
    page = await context.new_page()
    await page.goto(f"http://{client.host}:{client.port}/")
    await sign_in_by_keyboard(page, user_id, token)
    await expect(page.locator("#who")).to_have_text(name)
    return page


async def finished_and_playing(page: Page, filename: str) -> bytes:
    """The record's row plays in the page; its MP3, downloaded with the page's link."""
    row = page.locator("#records tr", has_text=filename)
    await expect(row).to_have_count(1)
    playing = await row.locator("audio").evaluate(
        """async (audio) => {
            await audio.play();
            await new Promise((done) => audio.addEventListener('timeupdate', done, {once: true}));
            const playing = !audio.paused;
            audio.pause();
            return playing;
        }"""
    )
    assert playing
    async with page.expect_download() as downloading:
        await row.locator("text=Download").click()
    return (await (await downloading.value).path()).read_bytes()


async def test_an_upload_cut_off_by_the_network_goes_on_from_what_was_kept(
    client: Client, audio: Audio, browser: Browser, tmp_path: Path
) -> None:
    seconds = 180  # 31.8 MB: four of the page's PATCHes (8 MiB)
    wav = tmp_path / "Long Take.wav"
    wav.write_bytes(audio(seconds=seconds))
    context = await browser.new_context(accept_downloads=True)
    traffic = TusTraffic(context)
    page = await signed_in_page(client, context, "traveller")

    # The network goes while the second PATCH is on its way (it carries 26 % to 52 % of the
    # file), and comes back once the page says it waits for it.
    async with page.expect_request(is_later_patch):
        await page.set_input_files("#files", str(wav))
    await page.wait_for_function(
        "() => Number((/([0-9]+) % sent/.exec(document.querySelector('.upload .outcome').textContent) || [])[1]) >= 35"
    )
    await context.set_offline(True)
    upload_row = page.locator(".upload", has_text="Long Take.wav")
    await expect(upload_row.locator(".outcome")).to_contain_text("Offline: it goes on when the network is back.")
    await context.set_offline(False)

    await expect(upload_row.locator(".outcome")).to_have_text("Done: Long Take.mp3", timeout=UPLOAD_DEADLINE_MS)
    assert len(traffic.methods("POST")) == 1  # one upload, resumed: not started again
    first_kept, resumed_at = traffic.answers("PATCH")[0], traffic.answers("HEAD")[-1]
    assert first_kept is not None
    assert resumed_at is not None
    assert 0 < first_kept <= resumed_at < wav.stat().st_size
    assert traffic.sent_after_last("HEAD")[0] == ("PATCH", resumed_at)  # on from what was kept
    await expect(upload_row.locator(".note")).to_have_text(f"Resumed at {resumed_at * 100 // wav.stat().st_size} %.")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "web-page-resumed.png"), full_page=True)
    mp3 = await finished_and_playing(page, "Long Take.mp3")
    assert len(decoded(mp3, 2)) == seconds * 44100 * 2  # every sample, once


async def test_a_reload_mid_upload_resumes_when_the_same_file_is_chosen_again(
    client: Client, audio: Audio, admin: psycopg.Connection, browser: Browser, tmp_path: Path
) -> None:
    seconds = 120  # 21.2 MB: three of the page's PATCHes
    wav = tmp_path / "Rehearsal.wav"
    wav.write_bytes(audio(seconds=seconds))
    context = await browser.new_context(accept_downloads=True)
    traffic = TusTraffic(context)
    page = await signed_in_page(client, context, "reloader")

    async with page.expect_request(is_later_patch) as second_patch:
        await page.set_input_files("#files", str(wav))
    first_kept = _offset((await second_patch.value).headers)
    await page.reload()  # the second PATCH is cut off with the page
    await expect(page.locator("#who")).to_have_text("reloader")
    assert len(await page.evaluate("Object.keys(localStorage).filter((key) => key.startsWith('tus::'))")) == 1
    await expect(page.locator("#unfinished")).to_have_text(
        re.compile(r"^Not finished: Rehearsal\.wav \([0-9]+ % saved\)\. Choose the same file again to go on")
    )

    await page.set_input_files("#files", str(wav))
    upload_row = page.locator(".upload", has_text="Rehearsal.wav")
    await expect(upload_row.locator(".outcome")).to_have_text("Done: Rehearsal.mp3", timeout=UPLOAD_DEADLINE_MS)
    resumed_at = traffic.answers("HEAD")[-1]
    assert first_kept is not None
    assert resumed_at is not None
    assert 0 < first_kept <= resumed_at < wav.stat().st_size
    assert traffic.sent_after_last("HEAD")[0] == ("PATCH", resumed_at)  # on from what was kept
    await expect(upload_row.locator(".note")).to_have_text(f"Resumed at {resumed_at * 100 // wav.stat().st_size} %.")
    assert len(traffic.methods("POST")) == 1
    assert count(admin, "SELECT count(*) FROM app.uploads") == 1  # the same upload, finished
    # Finished: nothing left in the browser to resume.
    assert await page.evaluate("Object.keys(localStorage).filter((key) => key.startsWith('tus::'))") == []
    await expect(page.locator("#unfinished")).to_be_hidden()
    mp3 = await finished_and_playing(page, "Rehearsal.mp3")
    assert len(decoded(mp3, 2)) == seconds * 44100 * 2


async def test_a_wav_the_service_resamples_goes_up_in_chunks_each_kept_whole(
    client: Client, audio: Audio, browser: Browser, tmp_path: Path
) -> None:
    """A 96 kHz WAV becomes a 48 kHz MP3: each PATCH of it moves the offset to its last byte,
    as any other WAV's does (converter/command.py: its frames begin on a source sample)."""
    wav = tmp_path / "Studio.wav"
    wav.write_bytes(audio(seconds=30, rate=96000))  # 11.5 MB
    context = await browser.new_context(accept_downloads=True)
    traffic = TusTraffic(context)
    page = await signed_in_page(client, context, "studio")
    await page.set_input_files("#files", str(wav))
    upload_row = page.locator(".upload", has_text="Studio.wav")
    await expect(upload_row.locator(".outcome")).to_have_text("Done: Studio.mp3", timeout=UPLOAD_DEADLINE_MS)
    assert traffic.answers("PATCH") == [8 << 20, wav.stat().st_size]
    mp3 = await finished_and_playing(page, "Studio.mp3")
    assert len(decoded(mp3, 2)) == 30 * 48000 * 2


# --- what a recording looks and sounds like ---------------------------------------------------


async def test_each_recording_shows_its_waveform_seeks_where_clicked_and_says_how_loud_it_is(
    client: Client, audio: Audio, browser: Browser, tmp_path: Path
) -> None:
    quiet = tmp_path / "Quiet Take.wav"  # lavfi's sine, -21.75 LUFS: between podcast and broadcast
    quiet.write_bytes(audio(seconds=8))
    # The same tone 24 dB up (clipped at full scale) for four seconds, then silence.
    loud = tmp_path / "Loud Take.wav"
    loud.write_bytes(audio(seconds=8, extra=("-af", "volume=24dB,afade=t=out:st=4:d=0.01")))
    context = await browser.new_context()
    page = await signed_in_page(client, context, "listener")
    await page.set_input_files("#files", [str(quiet), str(loud)])
    await expect(page.locator("#records tr")).to_have_count(2, timeout=UPLOAD_DEADLINE_MS)

    quiet_row = page.locator("#records tr", has_text="Quiet Take.mp3")
    await expect(quiet_row.locator(".loudness")).to_have_text("\u221221.8 LUFS between podcast and broadcast level")
    loud_row = page.locator("#records tr", has_text="Loud Take.mp3")
    await expect(loud_row.locator(".loudness .hint")).to_have_text(re.compile(r"^clips at \+\d\.\d dBTP$"))

    canvas = loud_row.locator("canvas.waveform")
    await expect(canvas).to_have_attribute("data-pixels", "800")  # 8 s of 1/100 s
    # Each column's drawn height, in canvas pixels: sound for the first half (full height: it
    # clips), then silence, a line one pixel high; every column drawn.
    heights, height = await canvas.evaluate(
        """(canvas) => {
            const {width, height} = canvas;
            const pixels = canvas.getContext('2d').getImageData(0, 0, width, height).data;
            const heights = [];
            for (let x = 0; x < width; x += 1) {
                let drawn = 0;
                for (let y = 0; y < height; y += 1) drawn += pixels[(y * width + x) * 4 + 3] > 0;
                heights.push(drawn);
            }
            return [heights, height];
        }"""
    )
    assert min(heights) >= 1
    assert heights[len(heights) // 4] >= 0.9 * height
    assert heights[3 * len(heights) // 4] <= 2

    player = await loud_row.locator("audio").element_handle()
    await page.wait_for_function("(audio) => audio.duration > 0", arg=player, timeout=20_000)
    box = await canvas.bounding_box()
    assert box is not None
    await canvas.click(position={"x": box["width"] * 0.75, "y": box["height"] / 2})
    await page.wait_for_function("(audio) => !audio.seeking && audio.currentTime > 0", arg=player, timeout=20_000)
    position = await player.evaluate("(audio) => { audio.pause(); return audio.currentTime; }")
    assert position == pytest.approx(6.0, abs=0.3)
