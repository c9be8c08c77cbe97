"""Requests per second (wrk for 10 s each) of user creation and of a small download."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap

from tests.support import vm_rss_kib

from .harness import Bench, timed_upload

TARGETS: dict[str, str] = {}


def request_rate(bench: Bench) -> None:
    report, service = bench.report, bench.service
    if shutil.which("wrk") is None:
        report.say("## Request rate\n\nwrk is not installed (apt-get install wrk); skipped.\n")
        return
    small = timed_upload(service, bench.wav(0.1))[1]["data"]["url"]
    script = bench.folder / "users.lua"
    script.write_text(
        textwrap.dedent("""
        -- Each wrk thread has its own Lua state: a table's address tells them apart.
        counter = 0
        thread_tag = string.sub(tostring({}), -8)
        request = function()
          counter = counter + 1
          local body = '{"username": "wrk-' .. thread_tag .. '-' .. counter .. '"}'
          return wrk.format("POST", "/users", {["Content-Type"] = "application/json"}, body)
        end
    """)
    )
    service.settle()
    rss_before = vm_rss_kib(service.pid)
    report.say("## Request rate (wrk, 2 threads, 16 connections, 10 s each)\n")
    report.say("| request | requests/s | non-2xx or errors |")
    report.say("| --- | --- | --- |")
    for name, command in (
        ("POST /users", ["wrk", "-t2", "-c16", "-d10s", "-s", str(script), service.base]),
        ("GET small download", ["wrk", "-t2", "-c16", "-d10s", small]),
    ):
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
        errors = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: [^\n]+)", output)
        report.say(f"| {name} | {float(rate.group(1)) if rate else float('nan'):.0f} | {'; '.join(errors) or '0'} |")
    rss_after = vm_rss_kib(service.pid)
    report.say(f"\nServer RSS: {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB after.\n")
