"""Upload → 201 against the raw FFmpeg CLI on the same WAV, and the server's memory.

    .venv/bin/python -m bench.upload [--minutes 60] [--rounds 3]

Starts the service (scripts/local-postgres's private cluster, app.py on a
free port), generates a stereo 44.1 kHz 16-bit WAV of the given length with
FFmpeg, then alternates: raw `ffmpeg -f wav -i x.wav -c:a libmp3lame -b:a 192k
x.mp3`, upload with curl (streamed from disk). Reports medians, the ratio, and
the server process's peak RSS (VmHWM) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "x.wav"
        make_wav(wav, args.minutes)
        print(f"WAV: {args.minutes:g} min, {wav.stat().st_size / 1e6:.0f} MB")
        with service() as (base, pid):
            user_id, token = create_user(base)
            peak_before = vm_hwm_kib(pid)
            raw, uploads = [], []
            for _ in range(args.rounds):
                raw.append(timed([FFMPEG, "-v", "error", "-y", "-f", "wav", "-i", str(wav), "-c:a", "libmp3lame",
                                  "-b:a", "192k", str(Path(folder) / "x.mp3")]))  # fmt: skip
                uploads.append(timed(["curl", "-sSf", "-o", "/dev/null", "-X", "POST", "-T", str(wav),
                                      "-H", "Content-Type: audio/wav", "-u", f"{user_id}:{token}",
                                      f"{base}/record"]))  # fmt: skip
            peak_after = vm_hwm_kib(pid)
    raw_median, upload_median = statistics.median(raw), statistics.median(uploads)
    print(f"raw ffmpeg  s: {' '.join(f'{t:.2f}' for t in raw)}  median {raw_median:.2f}")
    print(f"upload→201  s: {' '.join(f'{t:.2f}' for t in uploads)}  median {upload_median:.2f}")
    print(f"ratio upload/raw: {upload_median / raw_median:.3f}")
    print(f"server VmHWM: {peak_before / 1024:.1f} MiB before, {peak_after / 1024:.1f} MiB after, "
          f"growth {(peak_after - peak_before) / 1024:.1f} MiB")  # fmt: skip
    return 0


def make_wav(path: Path, minutes: float) -> None:
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"sine=frequency=440:duration={minutes * 60}",
         "-f", "lavfi", "-i", f"anoisesrc=duration={minutes * 60}:amplitude=0.1", "-filter_complex",
         "[0][1]amerge=inputs=2", "-ar", "44100", "-c:a", "pcm_s16le", str(path)],
        check=True,
    )  # fmt: skip


@contextmanager
def service() -> Iterator[tuple[str, int]]:
    settings = dict(
        line.split("=", 1)
        for line in subprocess.run(
            [str(ROOT / "scripts" / "local-postgres"), "start"], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    owner_url = settings["OWNER_URL"]
    env = {**os.environ, "SERVICE_ROLE_PASSWORD": settings["SERVICE_PASSWORD"]}
    subprocess.run([sys.executable, "-m", "db.apply", owner_url], cwd=ROOT, env=env, check=True, capture_output=True)
    port = free_port()
    database_url = f"postgresql://mp3_service:{settings['SERVICE_PASSWORD']}@{owner_url.rsplit('@', 1)[1]}"
    env |= {"DATABASE_URL": database_url, "PORT": str(port), "HOST": "127.0.0.1"}
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base)
        yield base, process.pid
    finally:
        process.terminate()
        process.wait()


def create_user(base: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{base}/users", data=json.dumps({"username": f"bench-{time.time_ns()}"}).encode(), method="POST"
    )
    with urllib.request.urlopen(request) as response:
        data = json.load(response)["data"]
    return data["id"], data["token"]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health") as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the service did not start")


if __name__ == "__main__":
    sys.exit(main())
