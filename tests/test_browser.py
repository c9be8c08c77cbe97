"""The web page in a real headless Chromium: create a user, upload, play, seek, download, delete."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.support import Audio, Client

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts"
# Flags that keep a headless Chromium off the network it cannot reach here, and let it play audio.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip

if not os.access(CHROMIUM, os.X_OK) and os.environ.get("CI") != "true":
    pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it", allow_module_level=True)

pytestmark = pytest.mark.slow  # a headless browser


async def test_a_new_user_converts_plays_seeks_downloads_and_deletes(
    client: Client, audio: Audio, tmp_path: Path
) -> None:
    wav = tmp_path / "Evening Take.wav"
    wav.write_bytes(audio(seconds=4))
    base = f"http://{client.host}:{client.port}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(accept_downloads=True)
        page = await context.new_page()
        try:
            await page.goto(base + "/")
            await page.fill("#username", "browser-user")
            await page.click("text=Create user")
            await expect(page.locator("#token")).to_have_text(
                re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
            )
            await expect(page.locator("#who")).to_have_text("browser-user")

            await page.set_input_files("#files", str(wav))
            await expect(page.locator(".upload .percent")).to_have_text("100 %")
            row = page.locator("#records tr", has_text="Evening Take.mp3")
            await expect(row).to_have_count(1)
            await expect(row.locator("td").nth(1)).to_have_text("0:04")

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

            await row.locator("text=Delete").click()
            await expect(page.locator("#records tr")).to_have_count(0)
            await expect(page.locator("#empty")).to_be_visible()

            # Errors are the service's own words.
            bad = tmp_path / "notes.wav"
            bad.write_text("not audio")
            await page.set_input_files("#files", str(bad))
            await expect(page.locator(".upload .error")).to_have_text(
                "The file is not a WAV: expected a RIFF or RF64 file of type WAVE."
            )
        finally:
            await browser.close()


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
