"""Resumable uploads (tus at /uploads): the longest WAV through tuspy in one PATCH against
POST /record with `curl -T`, alternating; and a 10-minute tus upload whose connection
is cut several times: what is sent again after each cut, and how soon the service
reads on after the client reconnects."""

from __future__ import annotations

import re
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

from tests.support import DelayingProxy, tus_uploader, uploads_with_cuts

from .harness import Bench, Service, peak_growth_kib, upload_time

RATIO = "tus upload (tuspy, one PATCH) / POST /record, longest upload"
MEMORY = "server RSS growth, tus upload of the longest WAV"
TARGETS = {RATIO: "≤ 1.05", MEMORY: "≤ 16 MiB"}
CUTS = 6
# The service has read this much of a resumed PATCH's body: more than aiohttp and the
# kernel hold for it before its handler reads, so the handler is reading.
READING = 1 << 20
SAMPLE_S = 0.002  # how often the service's sockets are read while a resume is pending


def against_post(bench: Bench) -> None:
    report, service, wav = bench.report, bench.service, bench.wav(bench.longest)
    data = wav.read_bytes()
    seconds: dict[str, list[float]] = {"tus": [], "post": []}
    growth: dict[str, list[int]] = {"tus": [], "post": []}  # KiB
    # What the service takes once, on its first upload of each kind (its pool's connections,
    # its threads), is not what an upload costs: both kinds are made once before measuring.
    tus_upload_time(service, bench.wav(1).read_bytes())
    upload_time(service, bench.wav(1))
    for _ in range(bench.rounds):
        for way, upload in (
            ("tus", lambda: tus_upload_time(service, data)),
            ("post", lambda: upload_time(service, wav)),
        ):
            service.settle()
            grew, took = peak_growth_kib(service.pid, upload)
            seconds[way].append(took)
            growth[way].append(grew)
    tus, post = (statistics.median(values) for values in seconds.values())
    tus_growth, post_growth = (max(values) / 1024 for values in growth.values())
    report.say(f"## Resumable uploads: tus against POST /record ({bench.longest} minutes, "
               f"{len(data) / 1e6:.0f} MB, medians)\n")  # fmt: skip
    report.say("| client | upload → record | server peak RSS growth (most of the rounds) |")
    report.say("| --- | --- | --- |")
    report.say(f"| tuspy: POST /uploads, then one PATCH of the whole WAV | {tus:.2f} s | {tus_growth:.1f} MiB |")
    report.say(f"| `curl -T` to POST /record | {post:.2f} s | {post_growth:.1f} MiB |")
    report.say(f"\ntus / POST: **{tus / post:.3f}**. Alternating, the same service. tuspy reads the file into")
    report.say("memory before its PATCH (its way; not counted apart); the service checkpoints the tus upload's")
    report.say("MP3 as it converts (converter/resume.py), which POST /record does not. Peak RSS growth: the")
    report.say("server's VmHWM during the upload (reset before it) over its RSS before, the largest of the")
    report.say("rounds, after one 1-minute upload of each kind (what a fresh service takes once).\n")
    report.figures[RATIO] = f"{tus / post:.3f}"
    report.figures[MEMORY] = f"{tus_growth:.1f} MiB"


def tus_upload_time(service: Service, data: bytes) -> float:
    """Seconds from tuspy's creation request to its PATCH's 204 naming the record."""
    started = time.perf_counter()
    uploader = tus_uploader(service.base, (service.user_id, service.token), data)
    uploader.upload()
    seconds = time.perf_counter() - started
    if uploader.request is None or "record-location" not in uploader.request.response_headers:
        raise RuntimeError("the tus upload did not end in a record")
    return seconds


@dataclass
class Request:
    """A request as the network between tuspy and the service saw it."""

    at: float  # perf_counter when its first bytes came
    method: str
    offset: int | None = None  # a PATCH's Upload-Offset
    head: int = 0  # bytes of its head
    cut: int | None = None  # to be cut after this many of its bytes
    delivered: int | None = None  # once cut: how many of them the proxy passed on


@dataclass
class CutNetwork:
    """Chooses, from each request's first bytes, where the network drops it: until it has
    cut ``cuts`` times, a PATCH is cut once it has carried the WAV past the first of
    ``points`` (offsets in the WAV) at least ``gap`` bytes beyond its offset (so a point
    just cut is not cut again when the next offset falls short of it by what was lost)."""

    proxy: DelayingProxy
    cuts: int
    points: list[int]
    gap: int
    seen: list[Request] = field(default_factory=list)

    def __call__(self, first: bytes) -> int | None:
        # A cut is over (the proxy counted it) before its client can send anything more.
        made = self.proxy.delivered_before_cut
        cut_so_far = [request for request in self.seen if request.delivered is not None]
        if len(made) > len(cut_so_far):  # the last PATCH to be cut was
            last = next(request for request in reversed(self.seen) if request.cut is not None)
            last.delivered = made[-1]
        head_end = first.find(b"\r\n\r\n")
        request = Request(time.perf_counter(), first.split(b" ", 1)[0].decode(), head=head_end + 4)
        offset = re.search(rb"(?im)^upload-offset:\s*(\d+)", first[:head_end])
        if request.method == "PATCH" and offset:
            request.offset = int(offset.group(1))
        if request.offset is not None and len(made) < self.cuts:
            ahead = [point for point in self.points if point >= request.offset + self.gap]
            request.cut = request.head + ahead[0] - request.offset if ahead else None
        self.seen.append(request)
        return request.cut


def with_cuts(bench: Bench) -> None:
    report, service, wav = bench.report, bench.service, bench.wav(10)
    data = wav.read_bytes()
    spacing = len(data) // (CUTS + 1)
    proxy = DelayingProxy(service.host, service.port, 0.0).start()
    network = CutNetwork(proxy, CUTS, [spacing * (index + 1) for index in range(CUTS)], spacing // 2)
    watcher = ResumeWatcher(service.port, proxy)
    service.settle()
    started = time.perf_counter()
    try:
        with watcher:
            # One attempt more than cuts: the network chooses for the last PATCH too (not to cut it).
            uploads_with_cuts((service.user_id, service.token), data, proxy, [network] * (CUTS + 1))
    finally:
        proxy.stop()
    whole = time.perf_counter() - started
    patches = [request for request in network.seen if request.method == "PATCH"]
    cut = [request for request in patches if request.delivered is not None]
    report.say(f"## A tus upload cut {len(cut)} times ({len(data) / 1e6:.0f} MB, 10 minutes, tuspy through a proxy)\n")
    report.say("| cut at (WAV bytes) | next offset (HEAD) | sent again | reconnect → resumed PATCH "
               "| reconnect → service reading on |")  # fmt: skip
    report.say("| --- | --- | --- | --- | --- |")
    again, reading = [], []
    for index, request in enumerate(cut):
        assert request.offset is not None
        assert request.cut is not None
        # The PATCH that went on: the next one cut, or the last; any between were refused (409).
        following = cut[index + 1] if index + 1 < len(cut) else patches[-1]
        assert following.offset is not None
        taken = request.offset + request.cut - request.head  # the WAV's bytes the network took
        sent_again = taken - following.offset
        reconnect = next(each.at for each in network.seen if each.at > request.at)  # its HEAD
        resumed = following.at - reconnect
        service_reading = watcher.reading_at[index] - reconnect if index < len(watcher.reading_at) else float("nan")
        again.append(sent_again)
        reading.append(service_reading)
        report.say(f"| {taken:,} | {following.offset:,} | {sent_again / 1e3:.0f} kB "
                   f"| {resumed * 1000:.0f} ms | {service_reading * 1000:.0f} ms |")  # fmt: skip
    report.say(f"""
The whole upload took {whole:.1f} s with its cuts, in {len(patches)} PATCHes. Per resume, medians:
**{statistics.median(again) / 1e3:.0f} kB** sent again, the service reading on **{
        statistics.median(reading) * 1000:.0f} ms** after the reconnect.

A proxy between tuspy and the service cuts a PATCH once it has carried the WAV past each of
{CUTS} points spread over it: tuspy's connection is reset, the service's closed once what the
proxy took has reached it (the service sees the PATCH's body end early). "Sent again": the
client's bytes before the cut that the next offset does not count, which it sends once more
(an ended PATCH keeps all it brought: converter/resume.py; HEAD waits for its last checkpoint:
handlers/uploads.py). "Reconnect": the client's HEAD after the cut; "resumed PATCH": the PATCH
that went on arrives (the HEAD's wait included); "service reading on": the service has read
{READING >> 20} MiB of that PATCH's body (more than aiohttp and the kernel take in before its
handler reads), from `ss -ti`'s bytes_received less the unread queue, sampled every
{SAMPLE_S * 1000:g} ms.
""")


class ResumeWatcher:
    """After each cut the proxy makes, the moment the service reads on: one of its
    connections has had ``READING`` bytes read by the service since the cut."""

    def __init__(self, port: int, proxy: DelayingProxy) -> None:
        self.port = port
        self.proxy = proxy
        self.reading_at: list[float] = []
        # Set once the upload is over; the watch ends at its next wake.
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(0.001):  # a list's length: cheap to look at often
            if len(self.proxy.delivered_before_cut) <= len(self.reading_at):
                continue  # no cut waits for its resume
            before = set(service_reads(self.port))  # the connections alive at the cut
            while not self._done.wait(SAMPLE_S):
                reads = service_reads(self.port)
                if any(read >= READING for peer, read in reads.items() if peer not in before):
                    self.reading_at.append(time.perf_counter())
                    break


def service_reads(port: int) -> dict[str, int]:
    """For each established connection to the service on ``port`` (by its peer), the bytes
    the service has read from it: what TCP received less what waits unread."""
    output = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    reads = {}
    for entry in re.finditer(r"^(\d+)\s+\d+\s+\S+\s+(\S+)\s*\n\s+.*?bytes_received:(\d+)", output, re.MULTILINE):
        unread, peer, received = entry.groups()
        reads[peer] = int(received) - int(unread)
    return reads
