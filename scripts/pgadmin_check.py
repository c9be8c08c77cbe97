"""pgAdmin, used as a DB admin would, in a headless Chromium.

    scripts/pgadmin-check [--servers deploy/pgadmin/servers.scale.json]
                          [--screenshot docs/pgadmin.png]

Against a stack started with `--profile admin` (pgAdmin on 127.0.0.1:5050):
logs in with PGADMIN_EMAIL / PGADMIN_PASSWORD (the documented defaults),
finds every server the servers file preconfigures, connects to the first with
POSTGRES_PASSWORD, opens schema app's tables, and calls an api function from
the Query Tool. Exits non-zero when a step fails.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import sys
from pathlib import Path

from playwright.async_api import Frame, Locator, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
QUERY = "SELECT * FROM api.storage_stats();"


async def check(base: str, servers: list[str], screenshot: Path) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            await walk_through(page, base, servers, screenshot)
        except Exception:
            failed = Path(".artifacts/pgadmin-failed.png")
            failed.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(failed))
            print(f"failed; the page as it was: {failed}", file=sys.stderr)
            raise
        finally:
            await browser.close()


async def walk_through(page: Page, base: str, servers: list[str], screenshot: Path) -> None:
    await page.goto(base)
    await page.fill("input[name=email]", os.environ.get("PGADMIN_EMAIL", "admin@example.com"))
    await page.fill("input[name=password]", os.environ.get("PGADMIN_PASSWORD", "change-me-pgadmin"))
    await page.keyboard.press("Enter")
    await open_node(page, "Servers", servers[0])
    for name in servers:
        await tree_node(page, name).wait_for(timeout=10_000)
    print(f"logged in; preconfigured: {', '.join(servers)}")

    await tree_node(page, servers[0]).dblclick()
    await page.get_by_text("Please enter the password").wait_for(timeout=15_000)
    await page.locator("input[type=password]").last.fill(os.environ.get("POSTGRES_PASSWORD", "change-me-owner"))
    await page.keyboard.press("Enter")
    await page.get_by_text("Server connected").wait_for(timeout=20_000)
    print("connected to the primary")

    path = ("Databases", "mp3", "Schemas", "app", "Tables", "records")
    for label, child in itertools.pairwise(path):
        await open_node(page, label, child)
    for table in ("records", "settings", "users"):
        await tree_node(page, table).wait_for(timeout=10_000)
    print("schema app's tables: records, settings, users")

    await tree_node(page, "mp3").click()
    await page.locator("[aria-label='Query Tool'], [title='Query Tool']").first.click()
    editor = await query_tool(page)
    await editor.locator(".cm-content").last.click()
    await page.keyboard.type(QUERY)
    await page.keyboard.press("F5")
    await editor.get_by_text("Query complete").wait_for(timeout=20_000)
    await editor.get_by_text("records", exact=True).wait_for(timeout=5_000)
    print(f"Query Tool: {QUERY} answered")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")


def tree_node(page: Page, label: str) -> Locator:
    """A node of the Object Explorer by its label ("Tables" also as "Tables (3)")."""
    return page.locator("span.file-name", has_text=re.compile("^" + re.escape(label) + r"( \(\d+\))?$")).first


async def open_node(page: Page, label: str, child: str) -> None:
    """Opens a node until `child` shows; the tree ignores keys while it loads."""
    node = tree_node(page, label)
    await node.wait_for(timeout=20_000)
    for _ in range(10):
        await node.click()
        await page.keyboard.press("ArrowRight")  # opens it, and leaves it open if it was
        try:
            await tree_node(page, child).wait_for(timeout=3_000)
            return
        except PlaywrightTimeout:
            continue
    raise TimeoutError(f"{label} did not open to show {child}")


async def query_tool(page: Page) -> Frame:
    """The Query Tool opens in a frame of its own; the newest one."""
    for _ in range(100):
        frames = [frame for frame in page.frames if "/sqleditor/panel/" in frame.url]
        if frames and await frames[-1].locator(".cm-content").count():
            return frames[-1]
        await asyncio.sleep(0.2)
    raise TimeoutError("the Query Tool did not open")


def main() -> int:
    parser = argparse.ArgumentParser(description="Use pgAdmin as a DB admin would.")
    parser.add_argument("--base", default="http://127.0.0.1:5050/")
    parser.add_argument("--servers", type=Path, default=Path("deploy/pgadmin/servers.json"),
                        help="the servers file the stack gave pgAdmin")  # fmt: skip
    parser.add_argument("--screenshot", type=Path, default=Path(".artifacts/pgadmin.png"))
    args = parser.parse_args()
    servers = json.loads(args.servers.read_text())["Servers"]
    names = [server["Name"] for _, server in sorted(servers.items(), key=lambda item: int(item[0]))]
    asyncio.run(check(args.base, names, args.screenshot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
