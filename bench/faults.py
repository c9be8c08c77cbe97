"""Early endings of an upload (the client's FIN, RST, a malformed chunk): from the
client's act to the slot free, FFmpeg reaped and the transaction gone; /health's
latency while three clients send multipart preambles of a million line feeds each;
and what connections that each send 1 MB of an upload, more than can be admitted,
hold of the service's memory."""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from contextlib import suppress

import psycopg

from tests.support import ffmpeg_children, idle_in_transaction, reset_high_water_mark, vm_hwm_kib, vm_rss_kib

from .harness import Bench, Service, health_latencies, percentile

ENDINGS = ("FIN", "RST", "malformed chunk")
TARGETS = {
    **{f"slot free after a client's {ending}": "≤ 1000 ms" for ending in ENDINGS},
    "/health p99 during a preamble flood": "≤ 50 ms",
}


def early_endings(bench: Bench, rounds: int = 5) -> None:
    """From the client's act to each thing an operator checks, polled as fast as they answer."""
    report, service = bench.report, bench.service
    audio = bench.wav(1).read_bytes()[: 1 << 20]
    ready = http.client.HTTPConnection(service.host, service.port)
    report.say("## Early endings: from the client's act to everything freed (median / max of 5)\n")
    report.say("| ending | slot free (/ready) | FFmpeg reaped | transaction gone | records = large objects |")
    report.say("| --- | --- | --- | --- | --- |")
    with psycopg.connect(service.owner_url, autocommit=True) as owner:
        for ending in ENDINGS:
            seen: dict[str, list[float]] = {"slot": [], "ffmpeg": [], "transaction": []}
            for _ in range(rounds):
                sock = socket.create_connection((service.host, service.port))
                chunked = ending == "malformed chunk"
                body = b"%x\r\n%s\r\n" % (len(audio), audio) if chunked else audio
                framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {100 * len(audio)}"
                sock.sendall(
                    f"POST /record HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n{framing}\r\n"
                    f"Authorization: Basic {service.basic}\r\n\r\n".encode()
                    + body
                )
                while not ffmpeg_children(service.pid):
                    time.sleep(0.005)
                start = time.perf_counter()
                if ending == "RST":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                if chunked:
                    sock.sendall(b"zz\r\n")
                else:
                    sock.close()
                pending: dict[str, Callable[[], bool]] = {
                    "slot": lambda: all_slots_free(ready),
                    "ffmpeg": lambda: not ffmpeg_children(service.pid),
                    "transaction": lambda: idle_in_transaction(owner) == 0,
                }
                while pending:
                    for name, done in list(pending.items()):
                        if done():
                            seen[name].append((time.perf_counter() - start) * 1000)
                            del pending[name]
                sock.close()
            whole = owner.execute(
                "SELECT (SELECT count(*) FROM app.records) = (SELECT count(*) FROM pg_largeobject_metadata)"
            ).fetchone()
            cells = [f"{statistics.median(values):.0f} / {max(values):.0f} ms" for values in seen.values()]
            report.say(f"| {ending} | {' | '.join(cells)} | {'yes' if whole and whole[0] else 'NO'} |")
            report.figures[f"slot free after a client's {ending}"] = f"{max(seen['slot']):.0f} ms (max)"
    report.say()


def all_slots_free(connection: http.client.HTTPConnection) -> bool:
    """What /ready tells a load balancer: no upload holds a place (on a kept-alive connection)."""
    connection.request("GET", "/ready")
    response = connection.getresponse()
    data = json.loads(response.read())["data"] if response.status == 200 else {}
    return bool(data) and data["free_slots"] == data["slots"]


def preamble_flood(bench: Bench, seconds: float = 5.0, clients: int = 3) -> None:
    """The attack that once stalled the loop: multipart bodies that begin with a million line feeds."""
    report, service = bench.report, bench.service
    # Set once, to end the flood; the clients check it before each request.
    stop = threading.Event()
    answers: list[bytes] = []

    def flood() -> None:
        body = b"\n" * 1_000_000
        while not stop.is_set():
            with socket.create_connection((service.host, service.port)) as sock:
                sock.sendall(
                    f"POST /record HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                )
                with suppress(OSError):
                    sock.sendall(body)
                answers.append(sock.recv(12))

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    latencies, _ = health_latencies(service, seconds)
    stop.set()
    for thread in threads:
        thread.join()
    statuses = {answer[9:12].decode() for answer in answers}
    report.say(f"## /health while {clients} clients send preambles of a million line feeds ({seconds:g} s)\n")
    report.say("| /health samples | p50 | p99 | max | attack requests | their answers |")
    report.say("| --- | --- | --- | --- | --- | --- |")
    report.say(
        f"| {len(latencies)} | {percentile(latencies, 50):.1f} ms | {percentile(latencies, 99):.1f} ms "
        f"| {max(latencies):.1f} ms | {len(answers)} | {', '.join(sorted(statuses))} |"
    )
    report.figures["/health p99 during a preamble flood"] = f"{percentile(latencies, 99):.1f} ms"
    report.say()


def connection_flood(bench: Bench, connections: int = 300, sent: int = 1 << 20) -> None:
    """``connections`` uploads of one account at once, each sending ``sent`` bytes of a longer
    WAV and then nothing: two take its places, MAX_UPLOADS wait, the rest are 503 at once.
    The peak RSS growth of a fresh service meanwhile (one the other parts have warmed reuses
    what its allocator kept, and shows little): what connections hold before their uploads
    are admitted (what aiohttp read ahead of the handler, and the upload's first read)."""
    with bench.another_service() as service:
        _connection_flood(bench, service, connections, sent)


def _connection_flood(bench: Bench, service: Service, connections: int, sent: int) -> None:
    report = bench.report
    audio = bench.wav(1).read_bytes()  # 11 MB: it states its length, sends 1 MB of it
    head = (
        f"POST /record HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: {len(audio)}\r\n"
        f"Authorization: Basic {service.basic}\r\nConnection: close\r\n\r\n"
    ).encode()
    before = vm_rss_kib(service.pid)
    reset_high_water_mark(service.pid)
    socks = []
    try:
        for _ in range(connections):
            sock = socket.create_connection((service.host, service.port))
            sock.setblocking(False)
            with suppress(BlockingIOError):
                sock.send(head + audio[:sent])
            socks.append(sock)
        time.sleep(3.0)  # every connection's bytes read as far as the service reads them unadmitted
        growth_mib = (vm_hwm_kib(service.pid) - before) / 1024
    finally:
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    heading = f"{connections} uploads of one account at once, each sending {sent >> 20} MiB, then nothing"
    report.say(f"## {heading} (a fresh service)\n")
    report.say("| server peak RSS growth | per connection |")
    report.say("| --- | --- |")
    report.say(f"| {growth_mib:.0f} MiB | {growth_mib * 1024 / connections:.0f} KiB |")
    report.say()
    report.say(
        "Two take the account's places, MAX_UPLOADS wait, the rest are answered 503 at once; each holds what "
        "aiohttp read ahead of the handler (a recv of up to 256 KiB, then 128 KiB more before it stops "
        "reading) and the upload's first read. The service accepts one connection a turn of its event loop "
        "(asyncio's own accept took up to 100: this was 171-218 MiB), so a burst is read a few connections at "
        "a time. MAX_CONNECTIONS bounds the connections all told (1024, or fewer under a low open-files "
        "limit); a balancer in front bounds them per client."
    )
    report.say()
