"""Proof that the scaled stack (compose.scale.yaml) does what docs/operations.md says.

    scripts/scale-proof [--skip-lag]

Needs a Docker engine (DOCKER_HOST as needed), FFmpeg and curl on the host.
Brings the stack up with three app replicas from the current checkout, then:

1. 12 uploads at once through the balancer (twice the stack's six slots):
   all 201, every replica converted some (their access logs), each downloaded
   at once through the balancer, byte for byte what the primary holds;
2. `docker kill` of the replica an upload is streaming to: the upload fails,
   leaves nothing on the primary, and from when within 10 s every new request
   succeeds;
   and a resumable upload (tuspy, tus at /uploads) of a 10-minute WAV whose
   replica is `docker kill`ed mid-upload: the client resumes (HEAD, then PATCH
   from the offset) on another replica, the record decodes to exactly the WAV's
   samples and sounds as a single encoding does around the join, and nothing is
   left over (records + unfinished uploads = large objects);
3. the primary stopped: existing records still download (from the replica),
   uploads answer 503 with Retry-After; started again, everything works with
   no app restarted;
4. an upload sent at 1 MB/s through the balancer: the time from its last byte
   to the 201 (the balancer does not hold the body back);
5. the replica's lag (pg_stat_replication) while four 60-minute WAVs upload;
6. what keeping audio in pg_largeobject costs, on what the proofs stored: its
   size against the MP3 bytes, a vacuum that reads all of it (as the one that
   freezes does), a physical backup, and the replica rebuilt from nothing;
7. what the stack lets through: an upload spelled POST /%72ecord is stored by no
   backend, and the service's and replica's logins reach no other database.

Prints what it sees; exits non-zero when a proof fails. Leaves the stack down.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import math
import operator
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from tusclient.client import TusClient
from tusclient.uploader.uploader import Uploader

from tests.support import FFMPEG, make_audio, wait_until

ROOT = Path(__file__).resolve().parent.parent
HOST, PORT = "127.0.0.1", int(os.environ.get("APP_PORT", "8080"))
COMPOSE = shlex.split(os.environ.get("COMPOSE", "")) or (
    ["docker", "compose"] if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    else ["docker-compose"]
)  # fmt: skip
STACK = [*COMPOSE, "-f", str(ROOT / "compose.scale.yaml")]
failures: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)


def check(ok: bool, what: str) -> None:
    say(f"  {'ok ' if ok else 'FAILED'}  {what}")
    if not ok:
        failures.append(what)


def main() -> int:
    parser = argparse.ArgumentParser(description="Prove the scaled stack: balancer, replicas, streaming replica.")
    parser.add_argument("--skip-lag", action="store_true", help="leave out the 4 x 60-minute uploads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder_name, stack():
        folder = Path(folder_name)
        # Each of the balancer's backends finds the replicas on its own first check.
        user = wait_until(lambda: new_user(tolerate_503=True), 30, every=0.25)
        wavs = {minutes: make_wav(folder / f"{minutes}min.wav", minutes) for minutes in (0.5, 2)}
        uploads_spread_and_match(user, wavs[0.5])
        what_the_stack_lets_through(user, wavs[0.5])
        a_replica_killed(user, wavs[2], wavs[0.5])
        a_resumable_upload_outlives_its_replica(make_wav(folder / "10min.wav", 10))
        the_primary_stopped(user, wavs[0.5])
        a_slow_upload(user, wavs[2])
        if not args.skip_lag:
            replica_lag(user, make_wav(folder / "60min.wav", 60))
        large_object_costs(user, make_wav(folder / "noise.wav", 5, source="anoisesrc=color=pink:amplitude=0.3"))
    say(f"\n{'all proofs hold' if not failures else 'FAILED: ' + '; '.join(failures)}")
    return 1 if failures else 0


@contextmanager
def stack() -> Iterator[None]:
    say("== docker compose -f compose.scale.yaml up -d --build --scale app=3")
    subprocess.run([*STACK, "up", "-d", "--build", "--scale", "app=3"], check=True, cwd=ROOT)
    try:
        wait_for("/ready", 180)
        wait_for("/ready/downloads", 180)
        yield
    finally:
        subprocess.run([*STACK, "down"], check=False, cwd=ROOT)


# --- 1 ------------------------------------------------------------------------------


def uploads_spread_and_match(user: tuple[int, str], wav: Path) -> None:
    say("\n== 12 uploads through the balancer, 3 replicas")
    before = replica_upload_counts()
    with ThreadPoolExecutor(12) as pool:  # twice the stack's six slots: half wait in the balancer's queue
        answers = list(pool.map(lambda _: upload(user, wav), range(12)))
    check([status for status, _ in answers] == [201] * 12, f"all 201: {[status for status, _ in answers]}")
    after = replica_upload_counts()
    spread = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    check(len(spread) == 3 and all(count > 0 for count in spread.values()), f"every replica converted some: {spread}")
    identical = 0
    for _, data in answers:
        downloaded = get_bytes(data["url"])
        stored = primary_sha256(data["id"])
        identical += hashlib.sha256(downloaded).hexdigest() == stored
    check(identical == 12, f"downloaded at once, byte for byte the primary's: {identical} of 12")


# --- 2 ------------------------------------------------------------------------------


def a_replica_killed(user: tuple[int, str], long_wav: Path, short_wav: Path) -> None:
    say("\n== docker kill of the replica an upload streams to")
    records_before = primary_scalar("SELECT count(*) FROM app.records")
    uploading = threading.Thread(target=lambda: slow_upload(user, long_wav, 2 << 20), daemon=True)
    uploading.start()
    victim = wait_until(lambda: next((name for name in app_containers() if has_ffmpeg(name)), None), 30, every=0.25)
    killed_at = time.monotonic()
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    say(f"  killed {victim}")
    uploading.join(60)
    last_failure = None
    outcomes = []
    while time.monotonic() - killed_at < 15:
        status, _ = upload(user, short_wav)
        health = request("GET", "/health")[0]
        outcomes.append((status, health))
        if status != 201 or health != 200:
            last_failure = time.monotonic() - killed_at
    check(last_failure is None or last_failure < 10, f"every new request succeeds from {last_failure or 0:.1f} s on")
    say(f"  {len(outcomes)} uploads and /health after the kill: {sum(s == 201 for s, _ in outcomes)} uploads 201")
    wait_for_no_open_transaction()
    expected = records_before + sum(status == 201 for status, _ in outcomes)
    records = primary_scalar("SELECT count(*) FROM app.records")
    objects = primary_scalar("SELECT count(*) FROM pg_largeobject_metadata")
    check(records == expected == objects, f"the killed upload left nothing: {records} records, {objects} objects")
    subprocess.run(["docker", "start", victim], check=True, capture_output=True)
    wait_for("/ready", 60)


class ResumingUploader(Uploader):
    """tuspy's uploader sending the whole WAV in one PATCH (its default chunk) and, after a
    failure, resuming up to 5 times a second apart; it notes the offsets HEAD answered."""

    def __init__(self, wav: Path, client: TusClient) -> None:
        super().__init__(str(wav), client=client, metadata={"filename": wav.name}, retries=5, retry_delay=1)
        self.resumed_from: list[int] = []

    def get_offset(self) -> int:
        offset = int(super().get_offset())
        self.resumed_from.append(offset)
        return offset


def a_resumable_upload_outlives_its_replica(wav: Path) -> None:
    say("\n== a tuspy upload of a 10-minute WAV; the replica receiving it docker-killed mid-upload")
    user = new_user()
    assert user is not None
    length = wav.stat().st_size
    tus = TusClient(f"http://{HOST}:{PORT}/uploads", headers={"Authorization": auth(user)})
    uploader = ResumingUploader(wav, tus)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            uploader.upload()
        except Exception as error:  # reported below
            failure.append(error)

    started = time.monotonic()
    uploading = threading.Thread(target=send, daemon=True)
    uploading.start()
    # Killed once a twentieth is durable: the upload is converting, and has something to lose.
    query = f"SELECT upload_offset FROM app.uploads WHERE user_id = {int(user[0])} AND record_id IS NULL"

    def durable_offset() -> int | None:
        offset = primary_scalar(query)
        return offset if offset > length // 20 else None

    durable = wait_until(durable_offset, 120, every=0.25)
    victim = wait_until(lambda: next((name for name in app_containers() if has_ffmpeg(name)), None), 30, every=0.25)
    killed_at = time.monotonic()
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    say(f"  killed {victim} {killed_at - started:.1f} s in ({durable:,} of {length:,} bytes were durable when picked)")
    uploading.join(600)
    check(not uploading.is_alive() and not failure, f"tuspy finished: {failure or 'no error'}, "
                                                    f"{time.monotonic() - killed_at:.1f} s after the kill")  # fmt: skip
    if uploading.is_alive() or failure:
        subprocess.run(["docker", "start", victim], check=True, capture_output=True)
        wait_for("/ready", 60)
        return
    path = re.sub(r"^https?://[^/]+", "", str(uploader.url))
    check(
        len(uploader.resumed_from) == 1 and durable <= uploader.resumed_from[0] < length,
        f"it resumed once, from the offset HEAD answered: {uploader.resumed_from} (when picked: {durable:,})",
    )
    served = {name: requests_logged(name, path) for name in app_containers()}
    finished_on = [name for name, lines in served.items() if f"PATCH {path} 204" in lines]
    say(f"  after the kill: {', '.join(f'{name}: {lines}' for name, lines in served.items() if lines)}")
    check(
        finished_on != [] and victim not in finished_on, f"the resumed PATCH landed on another replica: {finished_on}"
    )

    record_link = uploader.request.response_headers.get("record-location", "") if uploader.request else ""
    resumed = decoded_samples(get_bytes(record_link), wav.parent / "resumed.mp3")
    original = array("h", wav.read_bytes()[wav_data_start(wav) :])
    check(
        len(resumed) == len(original), f"the record decodes to the WAV's samples: {len(resumed):,} of {len(original):,}"
    )
    # As one encoding sounds: the same WAV by POST /record, against the WAV, over the whole
    # file and over the seconds where the resumed encoder was joined on (from its first sample).
    status, single = upload(user, wav)
    reference = decoded_samples(get_bytes(single["url"]), wav.parent / "single.mp3") if status == 201 else array("h")
    resumed_at = (uploader.resumed_from[0] - (length - len(original) * 2)) // 2
    for where, (start, stop) in (("the whole file", (0, len(original))),
                                 ("the 3 s from the resume", (resumed_at, resumed_at + 3 * 44100 * 2))):  # fmt: skip
        resumed_db, single_db = snr_db(original, resumed, start, stop), snr_db(original, reference, start, stop)
        check(
            len(reference) == len(original) and resumed_db >= single_db - 0.05,
            f"SNR over {where}: {resumed_db:.2f} dB; one POST /record of the same WAV: {single_db:.2f} dB",
        )
    wait_for_no_open_transaction()
    counts = primary_query(
        "SELECT (SELECT count(*) FROM app.records), (SELECT count(*) FROM app.uploads WHERE lo_oid IS NOT NULL),"
        " (SELECT count(*) FROM pg_largeobject_metadata)"
    )
    records, unfinished, objects = (int(value) for value in counts.split("|"))
    check(records + unfinished == objects, f"nothing left over: {records} records + {unfinished} unfinished uploads"
                                           f" = {objects} large objects")  # fmt: skip
    subprocess.run(["docker", "start", victim], check=True, capture_output=True)
    wait_for("/ready", 60)


def requests_logged(container: str, path: str) -> list[str]:
    """`METHOD path status` of each request for ``path`` in the container's access log."""
    logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    return re.findall(rf"mp3\.access (\w+ {re.escape(path)} \S+)", logs.stdout + logs.stderr)


def decoded_samples(mp3: bytes, where: Path) -> array[int]:
    """What a player plays (FFmpeg trims the delay and padding the header frame states)."""
    where.write_bytes(mp3)
    result = subprocess.run([FFMPEG, "-v", "error", "-i", str(where), "-f", "s16le", "-ac", "2", "pipe:1"],
                            capture_output=True, check=True)  # fmt: skip
    return array("h", result.stdout if result.stderr == b"" else b"")


def wav_data_start(wav: Path) -> int:
    with wav.open("rb") as file:
        head = file.read(1 << 16)
    return head.index(b"data") + 8


def snr_db(reference: array[int], test: array[int], start: int, stop: int) -> float:
    """As tests/test_segments.py measures it, at C speed: 50 million samples in seconds."""
    wanted, got = reference[start:stop], test[start:stop]
    difference = array("l", map(operator.sub, wanted, got))
    signal, noise = sum(map(operator.mul, wanted, wanted)), sum(map(operator.mul, difference, difference))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


# --- 3 ------------------------------------------------------------------------------


def the_primary_stopped(user: tuple[int, str], wav: Path) -> None:
    say("\n== the primary stopped")
    status, data = upload(user, wav)
    wait_until(lambda: replica_has(data["id"]), 30, every=0.25)
    subprocess.run([*STACK, "stop", "db"], check=True, cwd=ROOT, capture_output=True)
    try:
        time.sleep(3)  # two health checks of the balancer
        downloaded = get_bytes(data["url"])
        check(len(downloaded) == data["size"], f"an existing record still downloads: {len(downloaded)} bytes")
        status, answer = upload(user, wav)
        retry = answer.get("retry_after")
        check(status == 503 and bool(retry), f"an upload answers {status}, Retry-After {retry}")
    finally:
        subprocess.run([*STACK, "start", "db"], check=True, cwd=ROOT, capture_output=True)
    started = time.monotonic()
    status, answer = upload(user, wav)
    while status != 201 and time.monotonic() - started < 60:  # a client honouring Retry-After
        time.sleep(float(answer.get("retry_after", 1)))
        status, answer = upload(user, wav)
    back = time.monotonic() - started
    check(status == 201, f"primary back: uploads 201 again {back:.1f} s after it started, no app restarted")


# --- 4 ------------------------------------------------------------------------------


def a_slow_upload(user: tuple[int, str], wav: Path) -> None:
    say("\n== an upload at 1 MB/s through the balancer")
    status, after_last_byte = slow_upload(user, wav, 1 << 20)
    check(status == 201 and after_last_byte < 1.0, f"{status} {after_last_byte * 1000:.1f} ms after the last byte")


# --- 5 ------------------------------------------------------------------------------


def replica_lag(user: tuple[int, str], wav: Path) -> None:
    say("\n== the replica's lag while four 60-minute WAVs upload")
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            row = primary_query(
                "SELECT coalesce(extract(epoch FROM replay_lag), 0), pg_wal_lsn_diff(sent_lsn, replay_lsn)"
                " FROM pg_stat_replication LIMIT 1"
            )
            if row:
                seconds, behind = row.split("|")
                samples.append((float(seconds), int(float(behind))))
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        statuses = [status for status, _ in pool.map(lambda _: upload(user, wav), range(4))]
    done.set()
    watcher.join()
    lags = [seconds for seconds, _ in samples]
    behind = [count for _, count in samples]
    check(statuses == [201] * 4, f"four 635 MB uploads: {statuses} in {time.monotonic() - started:.0f} s")
    say(f"  replay lag over {len(samples)} samples: max {max(lags, default=0) * 1000:.0f} ms,"
        f" median {sorted(lags)[len(lags) // 2] * 1000 if lags else 0:.0f} ms;"
        f" bytes not yet replayed: max {max(behind, default=0) / 1e6:.1f} MB")  # fmt: skip


def large_object_costs(user: tuple[int, str], noise: Path) -> None:
    say("\n== pg_largeobject: size, a full vacuum, a backup, a rebuilt replica")
    # A tone's MP3 compresses; music's, like noise's, does not, and then only three
    # of pg_largeobject's 2 KB rows fit in a page.
    status, data = upload(user, noise)
    record = uuid.UUID(data["id"])
    rows = f"pg_largeobject JOIN app.records ON lo_oid = loid WHERE id = '{record}'"  # a UUID only
    pages = primary_scalar(f"SELECT count(DISTINCT (pg_largeobject.ctid::text::point)[0]) FROM {rows}")
    check(status == 201, f"5 minutes of noise: {data['size'] / 1e6:.1f} MB of MP3 in {pages} pages,"
                         f" {pages * 8192 / data['size']:.3f}x its size")  # fmt: skip
    row = primary_query(
        "SELECT count(*), coalesce(sum(size), 0), pg_relation_size('pg_largeobject'),"
        " pg_indexes_size('pg_largeobject'), pg_database_size(current_database()) FROM app.records"
    )
    records, mp3_bytes, table, index, database = (int(value) for value in row.split("|"))
    say(
        f"  {records} records, {mp3_bytes / 1e6:.0f} MB of MP3: pg_largeobject {table / 1e6:.0f} MB"
        f" ({table / max(mp3_bytes, 1):.3f}x) + its index {index / 1e6:.1f} MB; database {database / 1e6:.0f} MB"
    )
    admin, database_name = os.environ.get("POSTGRES_USER", "mp3"), os.environ.get("POSTGRES_DB", "mp3")
    timed = compose_output("exec", "-T", "db", "psql", "-U", admin, "-d", database_name, "-c", "\\timing on",
                           "-c", "VACUUM (DISABLE_PAGE_SKIPPING) pg_largeobject")  # fmt: skip
    vacuum_ms = float(re.findall(r"Time: ([0-9.]+) ms", timed)[-1])
    say(
        f"  VACUUM (DISABLE_PAGE_SKIPPING) pg_largeobject: {vacuum_ms / 1000:.1f} s,"
        f" {per_100_gb(table + index, vacuum_ms / 1000)}"
    )
    started = time.monotonic()
    backup = subprocess.run([*STACK, "exec", "-T", "db", "sh", "-c",
                             'pg_basebackup -U "$POSTGRES_USER" -D - -Ft -X fetch --checkpoint=fast | wc -c'],
                            cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    seconds, size = time.monotonic() - started, int(backup.stdout.split()[-1])
    check(
        size > 0, f"pg_basebackup (tar to a pipe): {size / 1e6:.0f} MB in {seconds:.1f} s, {per_100_gb(size, seconds)}"
    )
    subprocess.run([*STACK, "rm", "-sf", "db-replica"], cwd=ROOT, capture_output=True, check=True)
    label = "label=com.docker.compose.volume=pgdata-replica"
    volume = subprocess.run(["docker", "volume", "ls", "-q", "--filter", label],
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    subprocess.run(["docker", "volume", "rm", *volume], capture_output=True, check=True)
    started = time.monotonic()
    subprocess.run([*STACK, "up", "-d", "--no-deps", "db-replica"], cwd=ROOT, capture_output=True, check=True)
    wait_until(lambda: replica_scalar("SELECT count(*) FROM app.records") == records or None, 3600, every=0.25)
    seconds = time.monotonic() - started
    say(f"  db-replica rebuilt from an empty volume: {seconds:.1f} s, {per_100_gb(database, seconds)}")


# --- 7 ------------------------------------------------------------------------------


def what_the_stack_lets_through(user: tuple[int, str], wav: Path) -> None:
    say("\n== a route spelled another way; logins outside their database")
    records_before = primary_scalar("SELECT count(*) FROM app.records")
    body = wav.read_bytes()
    connection = http.client.HTTPConnection(HOST, PORT, timeout=120)
    connection.putrequest("POST", "/%72ecord", skip_host=True)  # as sent, not tidied up
    for name, value in (("Host", f"{HOST}:{PORT}"), ("Content-Type", "audio/wav"),
                        ("Content-Length", str(len(body))), ("Authorization", auth(user))):  # fmt: skip
        connection.putheader(name, value)
    connection.endheaders(body)
    status = connection.getresponse().status
    records = primary_scalar("SELECT count(*) FROM app.records")
    check(status == 404 and records == records_before, f"POST /%72ecord: {status}; records {records_before}, {records}")
    database = os.environ.get("POSTGRES_DB", "mp3")
    for role in ("mp3_service", "mp3_replication"):
        for other in ("postgres", "template1"):
            tried = subprocess.run([*STACK, "exec", "-T", "db", "psql", "-h", "127.0.0.1", "-U", role, "-d", other,
                                    "-Atc", "SELECT 1"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
            denied = tried.returncode != 0 and "permission denied for database" in tried.stderr
            check(denied, f"{role} cannot connect to {other} (its own: {database})")


def per_100_gb(size: int, seconds: float) -> str:
    rate = max(size, 1) / max(seconds, 1e-3)
    return f"{rate / 1e6:.0f} MB/s, {100e9 / rate / 60:.0f} min per 100 GB"


# --- the stack, from outside -----------------------------------------------------------------


def request(
    method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict]:  # type: ignore[type-arg]
    connection = http.client.HTTPConnection(HOST, PORT, timeout=600)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    raw = response.read()
    answer = json.loads(raw) if response.getheader("Content-Type", "").startswith("application/json") else {}
    data = answer.get("data", answer) if isinstance(answer, dict) else {}
    if response.getheader("Retry-After"):
        data = {**data, "retry_after": response.getheader("Retry-After")}
    return response.status, data


def new_user(tolerate_503: bool = False) -> tuple[int, str] | None:
    status, data = request("POST", "/users", json.dumps({"username": f"proof-{time.time_ns()}"}).encode(),
                           {"Content-Type": "application/json"})  # fmt: skip
    if status == 503 and tolerate_503:
        return None
    assert status == 201, (status, data)
    return int(data["id"]), str(data["token"])


def auth(user: tuple[int, str]) -> str:
    return "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()


def upload(user: tuple[int, str], wav: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    """As docs/api.md shows it: curl streams the file (and, for one over 1 MiB, waits for
    100 Continue, so a refusal before the body is read comes back whole)."""
    result = subprocess.run(
        ["curl", "-sS", "-D", "-", "-o", "-", "-X", "POST", "-T", str(wav), "-H", "Content-Type: audio/wav",
         "-H", f"Authorization: {auth(user)}", f"http://{HOST}:{PORT}/record"],
        capture_output=True,
    )  # fmt: skip
    output = result.stdout.decode("utf-8", "replace")
    heads = re.findall(r"HTTP/\S+ (\d{3})", output)
    if result.returncode != 0 or not heads:
        return 0, {}
    body = output.rsplit("\r\n\r\n", 1)[-1]
    answer = json.loads(body) if body.startswith("{") else {}
    data = answer.get("data", {}) if isinstance(answer, dict) else {}
    retry = re.search(r"(?im)^retry-after:\s*(\S+)", output)
    if retry:
        data = {**data, "retry_after": retry.group(1)}
    return int(heads[-1]), data


def slow_upload(user: tuple[int, str], wav: Path, bytes_per_second: int) -> tuple[int, float]:
    """Send ``wav`` at a fixed rate; the status and the seconds from its last byte to the answer."""
    body = wav.read_bytes()
    with socket.create_connection((HOST, PORT)) as sock:
        sock.sendall(
            f"POST /record HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nContent-Type: audio/wav\r\n"
            f"Content-Length: {len(body)}\r\nAuthorization: {auth(user)}\r\nConnection: close\r\n\r\n".encode()
        )
        started, piece = time.monotonic(), bytes_per_second // 10
        try:
            for index, at in enumerate(range(0, len(body), piece)):
                sock.sendall(body[at : at + piece])
                last_byte = time.monotonic()
                if at + piece < len(body):
                    time.sleep(max(0.0, started + (index + 1) / 10 - time.monotonic()))
            head = sock.recv(64)
        except OSError:
            return 0, 0.0
        answered = time.monotonic()
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    return status, answered - last_byte


def get_bytes(url: str) -> bytes:
    path = re.sub(r"^https?://[^/]+", "", url)
    connection = http.client.HTTPConnection(HOST, PORT, timeout=120)
    connection.request("GET", path)
    return connection.getresponse().read()


def wait_for(path: str, seconds: float) -> None:
    def answered() -> bool:
        try:
            return request("GET", path)[0] == 200
        except OSError:
            return False

    wait_until(lambda: answered() or None, seconds, every=0.25)


def wait_for_no_open_transaction() -> None:
    """Until no session on the primary is idle in a transaction: what an upload held is let go."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in%'"
    wait_until(lambda: primary_scalar(query) == 0, 30, every=0.25)


def compose_output(*arguments: str) -> str:
    return subprocess.run([*STACK, *arguments], check=True, cwd=ROOT, capture_output=True, text=True).stdout


def primary_query(query: str) -> str:
    user = os.environ.get("POSTGRES_USER", "mp3")
    database = os.environ.get("POSTGRES_DB", "mp3")
    return compose_output("exec", "-T", "db", "psql", "-U", user, "-d", database, "-Atc", query).strip()


def primary_scalar(query: str) -> int:
    return int(primary_query(query) or 0)


def primary_sha256(record_id: str) -> str:
    record = uuid.UUID(record_id)  # a UUID, nothing else, goes into the SQL text
    return primary_query(f"SELECT encode(sha256(lo_get(lo_oid)), 'hex') FROM app.records WHERE id = '{record}'")


def replica_has(record_id: str) -> bool:
    query = f"SELECT count(*) FROM app.records WHERE id = '{uuid.UUID(record_id)}'"
    return replica_scalar(query) == 1


def replica_scalar(query: str) -> int | None:
    """None while the replica does not answer (it is being made)."""
    user, database = os.environ.get("POSTGRES_USER", "mp3"), os.environ.get("POSTGRES_DB", "mp3")
    found = subprocess.run([*STACK, "exec", "-T", "db-replica", "psql", "-U", user, "-d", database, "-Atc", query],
                           cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    return int(found.stdout.strip()) if found.returncode == 0 and found.stdout.strip().isdigit() else None


def app_containers() -> list[str]:
    ids = compose_output("ps", "-q", "app").split()
    names = subprocess.run(["docker", "inspect", "--format", "{{.Name}}", *ids], capture_output=True, text=True)
    return [name.strip("/") for name in names.stdout.split()]


def has_ffmpeg(container: str) -> bool:
    found = subprocess.run(["docker", "exec", container, "sh", "-c", "cat /proc/[0-9]*/comm"],
                           capture_output=True, text=True)  # fmt: skip
    return "ffmpeg" in found.stdout.split()


def replica_upload_counts() -> dict[str, int]:
    counts = {}
    for name in app_containers():
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        counts[name] = (logs.stdout + logs.stderr).count("mp3.access POST /record 201")
    return counts


def make_wav(path: Path, minutes: float, source: str = "sine=frequency=440") -> Path:
    """Stereo 44.1 kHz 16-bit WAV of ``minutes`` of ``source`` (a lavfi source)."""
    return make_audio(path, f"{source}:duration={minutes * 60}")


if __name__ == "__main__":
    sys.exit(main())
