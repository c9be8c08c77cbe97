"""p50/p99 latency of GET /health and of a small download while 4 of the longest
uploads convert at once."""

from __future__ import annotations

import http.client

from .harness import Bench, finish_upload, percentile, request_ms, timed_upload, upload_process

TARGETS = {"/health p99 while 4 uploads convert": "≤ 50 ms"}


def responsiveness(bench: Bench) -> None:
    report, service, wav = bench.report, bench.service, bench.wav(bench.longest)
    small = timed_upload(service, bench.wav(0.1))[1]["data"]["url"]
    small_path = small.split(str(service.port), 1)[1]
    service.settle()
    uploads = [upload_process(service, wav) for _ in range(4)]
    latencies: dict[str, list[float]] = {"/health": [], "small download": []}
    connection = http.client.HTTPConnection(service.host, service.port)
    while any(process.poll() is None for process in uploads):
        for name, path in (("/health", "/health"), ("small download", small_path)):
            latencies[name].append(request_ms(connection, path))
    for process in uploads:
        finish_upload(process)
    report.say(f"## Responsiveness while 4 uploads of {wav.stat().st_size / 1e6:.0f} MB convert\n")
    report.say("| request | samples | p50 | p99 |")
    report.say("| --- | --- | --- | --- |")
    for name, values in latencies.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        report.say(f"| GET {name} | {len(values)} | {p50:.1f} ms | {p99:.1f} ms |")
        if name == "/health":
            report.figures["/health p99 while 4 uploads convert"] = f"{p99:.1f} ms"
    report.say()
