"""The link the moment the last byte lands: a 10-minute upload sent at 8, 15 and 30 MB/s
and unpaced, from its last byte sent to the 201; and what a user of `curl -T
--limit-rate` sees, beside this process's own client with two send buffers."""

from __future__ import annotations

import http.client
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .harness import Bench, Service, raw_encode

OWN_CLIENT_8 = "last byte → 201, 10 min at 8 MB/s (this process's 256 KiB writes)"
CURL_8 = "last byte → 201, 10 min at 8 MB/s, as curl -T --limit-rate 8M shows it"
CURL_PACED = "`curl -T --limit-rate 8000000`"
CURL_SAMPLE_S = 0.0005  # how often curl's reads are looked at in its last MiB
TARGETS = {
    OWN_CLIENT_8: "≤ 50 ms",
    CURL_8: "≤ 50 ms",
    "last byte → 201 at 30 MB/s / unpaced": "≤ 2.0",
}
SMALL_SEND_BUFFER = 256 * 1024


@dataclass(frozen=True)
class Sent:
    sending: float  # seconds from the body's first byte to its last sent
    waiting: float  # seconds from the last byte sent to the answer's first byte
    queued: int | None = None  # bytes on their way to the service when the last was sent


def link_latency(bench: Bench) -> None:
    """A client at a fixed rate: from its last byte sent to the 201, against the raw encode a
    design that converts after the upload needs from there."""
    report, service, wav = bench.report, bench.service, bench.wav(10)
    raw = statistics.median(raw_encode(wav, bench.folder) for _ in range(bench.rounds))
    data = wav.read_bytes()
    report.say(f"## The link the moment the last byte lands ({len(data) / 1e6:.0f} MB, 10 minutes, medians)\n")
    report.say("| client sends at | sending took | last byte → 201 | convert-after-upload needs (raw FFmpeg) |")
    report.say("| --- | --- | --- | --- |")
    after: dict[str, float] = {}
    for rate in (8.0, 15.0, 30.0, None):
        service.settle()
        sent = [paced_upload(service, data, rate) for _ in range(bench.rounds)]
        name = f"{rate:g} MB/s" if rate else "unpaced"
        after[name] = statistics.median(each.waiting for each in sent)
        sending = statistics.median(each.sending for each in sent)
        report.say(f"| {name} | {sending:.2f} s | **{after[name] * 1000:.0f} ms** | {raw:.2f} s |")
    sent = [paced_upload(service, data, 8.0, tus=True) for _ in range(bench.rounds)]
    tus = statistics.median(each.waiting for each in sent) * 1000
    sending = statistics.median(each.sending for each in sent)
    report.say(f"| 8 MB/s, tus: one PATCH (→ 204) | {sending:.2f} s | **{tus:.0f} ms** | {raw:.2f} s |")
    report.figures[OWN_CLIENT_8] = f"{after['8 MB/s'] * 1000:.0f} ms"
    report.figures["last byte → 201 at 30 MB/s / unpaced"] = f"{after['30 MB/s'] / after['unpaced']:.2f}"
    report.say("\nSent from this process in 256 KiB writes, paced to the rate; the last byte is sent when the")
    report.say("kernel takes it. Unpaced, the service reads only as fast as its encoders and a bounded read-ahead")
    report.say("allow, so what is left after the last byte is that read-ahead's encoding. The tus row: the")
    report.say("upload created first (POST /uploads), then the whole WAV in one PATCH, answered 204.\n")


def paced_upload(
    service: Service,
    data: bytes,
    mb_per_s: float | None,
    send_buffer: int | None = None,
    watch: bool = False,
    tus: bool = False,
) -> Sent:
    """POST /record of ``data`` from this process in 256 KiB writes at ``mb_per_s`` (None: as
    fast as taken), the socket's send buffer ``send_buffer`` bytes (None: the kernel's
    default, which grows); with ``watch``, what was still queued when the last byte was sent;
    with ``tus``, a new resumable upload's one PATCH instead."""
    chunk = 256 * 1024
    if tus:
        request, answer = f"PATCH {tus_upload(service, len(data))}", b"204"
        content_type, extra = "application/offset+octet-stream", "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
    else:
        request, content_type, answer, extra = "POST /record", "audio/wav", b"201", ""
    with socket.create_connection((service.host, service.port)) as sock:
        if send_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        sock.sendall(
            f"{request} HTTP/1.1\r\nHost: {service.host}:{service.port}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(data)}\r\nAuthorization: Basic {service.basic}\r\nConnection: close\r\n\r\n".encode()
        )
        start = time.perf_counter()
        for offset in range(0, len(data), chunk):
            if mb_per_s:
                delay = start + offset / (mb_per_s * 1e6) - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sock.sendall(data[offset : offset + chunk])
        last = time.perf_counter()
        queued = queued_toward(service.port) if watch else None
        status = sock.recv(12)
        answered = time.perf_counter()
        while sock.recv(65536):
            pass
    if status[9:12] != answer:
        raise RuntimeError(f"a paced upload answered {status!r}")
    return Sent(last - start, answered - last, queued)


def tus_upload(service: Service, length: int) -> str:
    """A new resumable upload of ``length`` bytes: its path."""
    connection = http.client.HTTPConnection(service.host, service.port)
    headers = {"Authorization": f"Basic {service.basic}", "Tus-Resumable": "1.0.0", "Upload-Length": str(length)}
    connection.request("POST", "/uploads", headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    if response.status != 201:
        raise RuntimeError(f"POST /uploads answered {response.status}")
    return urlsplit(response.headers["Location"]).path


def as_curl_sees_it(bench: Bench) -> None:
    """At 8 MB/s, alternating: curl -T --limit-rate as a user runs it, and this process's
    client with the kernel's send buffer and with a small one; curl unpaced beside them.
    For each, what was still on its way when its last byte was sent."""
    report, service, wav = bench.report, bench.service, bench.wav(10)
    data = wav.read_bytes()
    curl_timers: list[dict[str, float]] = []
    clients: dict[str, Callable[[], Sent]] = {
        CURL_PACED: lambda: curl_upload(service, wav, 8_000_000, curl_timers),
        "this process, the kernel's send buffer": lambda: paced_upload(service, data, 8.0, watch=True),
        "this process, SO_SNDBUF 256 KiB": lambda: paced_upload(service, data, 8.0, SMALL_SEND_BUFFER, watch=True),
        "`curl -T`, unpaced": lambda: curl_upload(service, wav, None),
    }
    seen: dict[str, list[Sent]] = {name: [] for name in clients}
    service.settle()
    for _ in range(bench.rounds):
        for name, upload in clients.items():
            seen[name].append(upload())
    report.say(f"## Last byte → 201 as curl shows it ({len(data) / 1e6:.0f} MB, 10 minutes, 8 MB/s)\n")
    report.say("| client | sending took | last byte → 201, median / max | queued at its last byte, median |")
    report.say("| --- | --- | --- | --- |")
    for name, sent in seen.items():
        waits = [each.waiting * 1000 for each in sent]
        queued = statistics.median(each.queued or 0 for each in sent)
        report.say(f"| {name} | {statistics.median(each.sending for each in sent):.2f} s "
                   f"| **{statistics.median(waits):.0f}** / {max(waits):.0f} ms | {queued / 1e3:.0f} kB |")  # fmt: skip
    report.figures[CURL_8] = f"{statistics.median(each.waiting for each in seen[CURL_PACED]) * 1000:.0f} ms"
    timer = {name: statistics.median(each[name] for each in curl_timers) for name in curl_timers[0]}
    report.say(f"""
curl's own timers (`-w`, medians, from its start) for `{CURL_PACED.strip("`")}`:
`%{{time_pretransfer}}` {timer["time_pretransfer"]:.3f} s (the request about to go),
`%{{time_starttransfer}}` {timer["time_starttransfer"]:.3f} s, `%{{time_total}}` {timer["time_total"]:.3f} s.
For an upload, curl {curl_version()} counts `time_starttransfer` at the first byte it receives: the service's
`100 Continue` (curl asks for it, `Expect: 100-continue`, before a body over 1 MiB), not the 201; and it
has no timer for its last byte sent (`%{{time_posttransfer}}` came in curl 8.10). So the bench takes
that moment from outside, without tracing curl: curl reads the file in pieces of at most 64 KiB
just before it sends each, and its last piece is read when the file's bytes are all counted in
/proc/PID/io's rchar (sampled every {CURL_SAMPLE_S * 1000:g} ms near the end); the 201 is in when curl
exits. "Last byte → 201" for curl is from that last read to the exit: what a user of `curl -T` waits
once its progress meter shows the whole upload sent.

This process's client is the one of the table above, in 256 KiB `sendall()`s. For every client a
byte is "sent" when the kernel takes it into the socket's send buffer, not when the service reads
it. "Queued" is what was still on its way to the service at that moment: the client's
unacknowledged send queue plus the service's unread receive queue (/proc/net/tcp). Where it is 0,
the service had read every byte when the client sent its last, and the time to the 201 is the
service's own: the read-ahead it holds and has not yet encoded, the last join and the commit; the
clients then differ only by noise. Where it is not (unpaced; or paced, when the service fell
behind for a moment), the kernel's buffers hold that much more WAV, and the wait includes
reading and encoding it: the figure a client measures depends on its buffers (the send buffer
grows up to tcp_wmem's maximum, {tcp_memory_max("tcp_wmem") / 2**20:g} MiB here; the service's receive
buffer up to tcp_rmem's, {tcp_memory_max("tcp_rmem") / 2**20:g} MiB), which is why a client with a
256 KiB send buffer can see less than curl with the kernel's.
""")


def curl_upload(
    service: Service, wav: Path, bytes_per_s: int | None, timers: list[dict[str, float]] | None = None
) -> Sent:
    """POST /record with `curl -T` (default buffers), at ``--limit-rate`` when given: from
    its first read of the file to its last (its last send follows at once), and from that to
    its exit with the answer; its own `-w` timers go to ``timers``."""
    size = wav.stat().st_size
    pace = ["--limit-rate", str(bytes_per_s)] if bytes_per_s else []
    names = ("time_pretransfer", "time_starttransfer", "time_total")
    launched = time.perf_counter()
    curl = subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "-w", " ".join(["%{http_code}", *(f"%{{{name}}}" for name in names)]),
         *pace, "-X", "POST", "-T", str(wav), "-H", "Content-Type: audio/wav",
         "-u", f"{service.user_id}:{service.token}", f"{service.base}/record"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = last = None
    queued = None
    io = Path(f"/proc/{curl.pid}/io")
    while curl.poll() is None and last is None:
        read = 0
        with suppress(OSError):  # it has ended
            read = int(io.read_text().split("rchar:", 1)[1].split()[0])
        if first is None and read > 0:
            first = time.perf_counter()
        if read >= size:
            last = time.perf_counter()
            queued = queued_toward(service.port)
        time.sleep(CURL_SAMPLE_S if size - read < (1 << 20) else 0.01)
    output, errors = curl.communicate()
    answered = time.perf_counter()
    status, *figures = output.split()
    if status != "201" or last is None:
        raise RuntimeError(f"curl's upload answered {status}: {errors}")
    if timers is not None:
        timers.append(dict(zip(names, map(float, figures), strict=True)))
    return Sent(last - (first or launched), answered - last, queued)


def curl_version() -> str:
    return subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True).stdout.split()[1]


def queued_toward(port: int) -> int:
    """Bytes on their way to the service on ``port`` and not yet read by it: its clients'
    unacknowledged send queues and its own receive queues, as /proc/net/tcp counts them."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "0A":  # listening: its queue counts connections
            continue
        sending, receiving = (int(count, 16) for count in fields[4].split(":"))
        if int(remote.rsplit(":", 1)[1], 16) == port:
            total += sending
        elif int(local.rsplit(":", 1)[1], 16) == port:
            total += receiving
    return total


def tcp_memory_max(name: str) -> int:
    """The most a socket's send (tcp_wmem) or receive (tcp_rmem) buffer may grow to."""
    return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
