"""The benchmark: the service side by side with the physical limits, in one run.

    scripts/bench [--quick] [--rounds 3] [--only PART ...] [--output FILE] [--db-delay-ms MS]

Starts the service (app.py on a private cluster of scripts/local-postgres, made
for the run and removed after it), generates stereo 44.1 kHz 16-bit WAVs with
FFmpeg, and measures, alternating the pairs (A B A B ...) and reporting medians,
part by part (each a module of this folder; bench/harness.py is what they share,
bench/report.py writes the results):

- uploads: upload → 201 against the raw CLI `ffmpeg -f wav -i x.wav -c:a
  libmp3lame -b:a 192k x.mp3`, for 1, 10 and 60 minutes of audio (--quick: 1
  and 10), one upload using every free core (converter/segments.py); the
  server's peak RSS growth, FFmpeg's apart; the stored SHA-256's cost;
- analysis: the longest upload with AUDIO_ANALYSIS on against a second service
  with it off: wall time, RSS growth and CPU, and the stored waveform's size;
- resumable: the longest upload through /uploads with tuspy (one PATCH) against
  POST /record; a 10-minute one whose connection is cut six times: bytes sent
  again and the time to go on, per resume;
- link: a 10-minute upload paced at 8, 15 and 30 MB/s and unpaced: the time
  from its last byte sent to the 201; and at 8 MB/s, what `curl --limit-rate`
  shows a user, beside this process's own client with two send buffers;
- concurrency: 1, 2, 4, 8 simultaneous 1-minute uploads, each of a user of its
  own: audio-seconds converted per wall second against cores x the single raw
  encode's speed; 8 at once again on a service with PARALLEL_SEGMENTS=0, side
  by side; and 8 at once of one user's;
- downloads: the longest stored MP3's first download (from the database, on a
  service with DOWNLOAD_CACHE_MB=0) against PostgreSQL's own lo_get of it, a
  repeat (from the download cache) against aiohttp's FileResponse (sendfile)
  serving the same bytes from disk, with CPU seconds per GB; and /health and a
  5-second upload while 30 clients download a 10-minute MP3 in a loop, cache on
  and off (runs the uploads part first, for the MP3);
- responsiveness: p50/p99 latency of GET /health and of a small download while
  4 of the longest uploads run;
- rate: wrk for 10 s each against user creation and a small download;
- faults: early endings of an upload (the client's FIN, RST, a malformed
  chunk): the time from the client's act to the slot free, FFmpeg reaped and
  the transaction gone; /health's latency while three clients send
  multipart preambles of a million line feeds each; the server's memory while
  300 uploads of one account each send 1 MiB and wait to be admitted.

`--only PART` (repeatable) runs just the parts named and writes to --output
(default bench/RESULTS-only.md, so RESULTS.md keeps the whole run).
`--db-delay-ms 30` puts the database a network hop away for the services
(tests/support.py's DelayingProxy holds each reply that long).

Writes bench/RESULTS.md. Absolute times on a shared machine are noisy; the
ratios, measured side by side, are the figures to read. A CHECKPOINT before
each part keeps PostgreSQL's flushing of the previous part out of it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from . import analysis, concurrency, downloads, faults, link, rate, responsiveness, resumable, uploads
from .harness import Bench, at_distance, bench_database, running_service
from .report import Report, write_results

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("uploads", "analysis", "resumable", "link", "concurrency", "downloads", "responsiveness", "rate", "faults")
MODULES = (uploads, analysis, resumable, link, concurrency, downloads, responsiveness, rate, faults)
TARGETS = {name: target for module in MODULES for name, target in module.TARGETS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the service against raw FFmpeg and sendfile.")
    parser.add_argument("--quick", action="store_true", help="1 and 10 minutes only, for a fast look")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--output", type=Path, help="default bench/RESULTS.md (bench/RESULTS-only.md with --only)")
    parser.add_argument("--db-delay-ms", type=float, default=0, help="the database this far away (default 0)")
    args = parser.parse_args()
    parts = set(args.only or PARTS)
    output = args.output or ROOT / "bench" / ("RESULTS-only.md" if args.only else "RESULTS.md")
    report = Report()
    with (
        tempfile.TemporaryDirectory() as folder_name,
        bench_database() as nearby,
        at_distance(nearby, args.db_delay_ms) as database,
        running_service(database, Path(folder_name)) as service,
    ):
        minutes = (1, 10) if args.quick else (1, 10, 60)
        bench = Bench(report, database, service, Path(folder_name), args.rounds, minutes)
        longest = ""
        if parts & {"uploads", "downloads"}:
            longest = uploads.upload_against_raw(bench)
            uploads.digest_cost(bench, longest)
        if "analysis" in parts:
            analysis.analysis_cost(bench)
        if "resumable" in parts:
            resumable.against_post(bench)
            resumable.with_cuts(bench)
        if "link" in parts:
            link.link_latency(bench)
            link.as_curl_sees_it(bench)
        if "concurrency" in parts:
            concurrency.concurrency(bench)
        if "downloads" in parts:
            downloads.downloads(bench, longest)
            downloads.downloads_under_load(bench)
        if "responsiveness" in parts:
            responsiveness.responsiveness(bench)
        if "rate" in parts:
            rate.request_rate(bench)
        if "faults" in parts:
            faults.early_endings(bench)
            faults.preamble_flood(bench)
            faults.connection_flood(bench)
    command = f"scripts/bench{' --quick' if args.quick else ''} --rounds {args.rounds}"
    command += "".join(f" --only {part}" for part in args.only or ())
    command += f" --db-delay-ms {args.db_delay_ms:g}" if args.db_delay_ms else ""
    write_results(output, report, TARGETS, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
