"""An upload stored as a record: the conversion inside the upload's transaction.

``Upload`` is what a request asks to store, checked (handlers/records.py builds it).
A resumable upload (handlers/uploads.py) is stored a checkpoint at a time:
``CheckpointedUpload``.

In a transaction the caller holds, the record is begun (api.record_begin, which
checks the user and creates the large object); every MP3 chunk FFmpeg produces
is appended as it comes, the header frame written into the room
left for it, and the record finished with what the conversion measured. Any
failure, the client going away included, rolls it all back: no row, no
large object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from array import array
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from io import BufferedRandom
from typing import TypeVar
from uuid import UUID

import asyncpg

from converter.errors import Mp3StreamError
from converter.options import ConverterConfig, CpuShare, EncodeOptions
from converter.pipeline import Converted, convert
from converter.resume import Checkpoint, FrameOffsets, Resumable, stored_frames
from converter.splice import Frame
from db import api
from db.api import READ_BACK_BYTES
from db.deadline import within
from handlers.params import Credentials

log = logging.getLogger("mp3.store")

Done = TypeVar("Done")


@dataclass(frozen=True)
class Upload:
    """An upload as its request states it, checked: whose it is, what it asks for, and its
    WAV (a body that does not begin like one was refused before this existed)."""

    credentials: Credentials
    filename: str
    options: EncodeOptions
    wav: AsyncIterator[bytes]


async def store(connection: api.Database, upload: Upload, config: ConverterConfig, share: CpuShare) -> api.Record:
    """The upload converted into a record, in the transaction ``connection`` holds (its
    end commits the record, a failure anywhere rolls it all back); the finished record."""
    who = upload.credentials
    record_id = await api.record_begin(connection, who.user_id, who.token, upload.filename)

    async with LocalCopy.made(config.stall_timeout_s) as copy:

        async def append(chunk: bytes) -> None:
            await copy.beside(api.record_append(connection, record_id, chunk), chunk)

        # Its last bytes go with the statement that finishes the record: a round trip less.
        converted = await convert(upload.wav, append, upload.options, config, share, hold_last=True)
        digest = copy.sha256(converted.header_offset, converted.header_frame, converted.tail)
        return await finish_record(connection, record_id, converted, digest)


class LocalCopy:
    """The MP3 written to a temporary file as it is stored, so that its SHA-256 is hashed from
    the page cache when it ends (a 10-minute MP3: ~8 ms, before the one statement that
    finishes the record) instead of read back through the database's
    connection (~65 ms; db/api.py upload_sha256): that read-back was most of the time from
    an upload's last byte to its 201. It only saves time: when it cannot be written (a full
    disk, no descriptor left), or a write takes longer than half of ``deadline_s`` or the
    digest longer than all of it (a disk that hangs), it is given up and the digest read
    back; so it is when the upload fails. Nothing waits for a thread it gave up: the file is
    closed once that lets go.

    A resumed upload's copy may begin with a ``prefix``: the MP3 up to where this request
    writes on, stored by the requests before, which only the database holds. Its file is
    made with room for it (the chunks are written after it), and ``read_prefix`` reads it
    back once the caller says so (the request's last byte is in: before, a client that
    goes away would have had it read for nothing), a piece at a time, each written at its
    place beside the chunks' writes (pwrite leaves the file's position to them). The digest
    waits for it; each of its reads and writes has a deadline.

    Two threads may use the file at once: a chunk's write (then the digest), and a prefix
    piece's. The file is closed once neither runs (``_give_up``)."""

    def __init__(self, file: BufferedRandom | None, deadline_s: float) -> None:
        self._file = file
        self._deadline_s = deadline_s
        # The chunks' work in a thread (a chunk's write, then the digest), one at a time.
        self._working: asyncio.Future[bool] | asyncio.Future[bytes | None] | None = None
        self._prefix: StoredPrefix | None = None  # the room the file leaves for one
        self._reading: asyncio.Task[bool] | None = None  # its read, once begun
        self._filling: asyncio.Future[bool] | None = None  # its piece being written

    @classmethod
    @contextlib.asynccontextmanager
    async def made(cls, deadline_s: float, prefix: StoredPrefix | None = None) -> AsyncIterator[LocalCopy]:
        try:
            file: BufferedRandom | None = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _give_up)
        except OSError as error:
            log.warning("no local copy of an upload's MP3 (%s): its digest is read back", error)
            file = None
        copy = cls(file, deadline_s)
        if prefix is not None:
            copy._make_room_for(prefix)
        try:
            yield copy
        finally:
            copy._give_up()

    def _make_room_for(self, prefix: StoredPrefix) -> None:
        if self._file is None:
            return
        try:
            self._file.seek(prefix.length)  # the chunks go after it
        except OSError as error:
            log.warning("the local copy of an upload's MP3 failed (%s): its digest is read back", error)
            self._give_up()
            return
        self._prefix = prefix

    def read_prefix(self) -> None:
        """Begin reading the prefix back (nothing without one, or once given up)."""
        if self._prefix is not None and self._reading is None and self._file is not None:
            self._reading = asyncio.create_task(self._filled(self._file, self._prefix))
            self._reading.add_done_callback(_retrieved)  # its failure may reach no one: the request was cut

    async def filled(self) -> bool:
        """Once the prefix's read has ended, whether it is all in the copy: False without
        one, when its read was never begun, or the copy was given up (a cancellation of
        that read's, not of the caller's). A read the database did not answer in time, or
        refused, raises that error: reading it back again would fare no better."""
        reading = self._reading
        if reading is None:
            return False
        await asyncio.wait({reading})
        return not reading.cancelled() and reading.result()

    async def _filled(self, file: BufferedRandom, prefix: StoredPrefix) -> bool:
        """The prefix read back a piece at a time, each written at its place; False (and no
        digest) when a read fails, or a write fails or hangs as ``beside``'s would."""
        try:
            async with contextlib.aclosing(prefix.pieces()) as pieces:
                async for at, piece in pieces:
                    if self._file is None:
                        return False  # given up meanwhile (its cancel comes at the next await): the file may be closed
                    started = asyncio.get_running_loop().time()
                    self._filling = asyncio.ensure_future(asyncio.to_thread(self._write_at, file, piece, at))
                    if not await self._within_deadline(self._filling, "write", self._deadline_s / 2, started):
                        return False
        except (TimeoutError, asyncpg.PostgresError, Mp3StreamError):
            # No answer in time (TimeoutError is an OSError: caught first), a refusal (another
            # request took the upload), stored frames that are not: reading again would fare
            # no better, only later.
            raise
        except (OSError, asyncpg.InterfaceError) as error:  # a connection lost: another may do
            log.warning("an upload's MP3 could not be read back into its local copy (%s): read back at its end", error)
            return False
        return True

    async def beside(self, storing: Awaitable[None], chunk: bytes | bytearray) -> None:
        """``storing`` (the chunk on its way to the database) while the chunk is written here,
        the copy given up once its write has taken half the deadline, counted from its start.
        The conversion's watchdog waits the whole deadline from the conversion's last step
        for the database to take the chunk: the copy must be given up well before, or a
        hanging disk fails the upload as a stalled database (503)."""
        if self._file is None:
            await storing
            return
        started = asyncio.get_running_loop().time()
        writing = self._working = asyncio.ensure_future(asyncio.to_thread(self._write, self._file, chunk))
        try:
            await storing
            written = await self._within_deadline(writing, "write", self._deadline_s / 2, started)
        except BaseException:
            self._give_up()  # the upload failed or went away: no more writes
            raise
        if not written:
            self._give_up()

    async def write(self, chunk: bytes | bytearray) -> None:
        """The chunk written here alone, given up on as ``beside`` gives it up."""
        await self.beside(_nothing(), chunk)

    def sha256(self, header_offset: int, header_frame: bytes, tail: bytes = b"") -> asyncio.Future[bytes | None] | None:
        """The digest of the file as stored (its ``tail``, the last bytes, added, and its header
        frame written last, as in the database), hashed in a thread once its prefix is in (it
        holds the header frame's place), None if that fails or the hash takes longer than the
        deadline; None at once when the copy was given up."""
        if self._file is None:
            return None
        return asyncio.ensure_future(self._digest_once_filled(self._file, header_offset, header_frame, tail))

    async def _digest_once_filled(
        self, file: BufferedRandom, header_offset: int, header_frame: bytes, tail: bytes
    ) -> bytes | None:
        if self._prefix is not None and not await self.filled():
            self._give_up()
            return None
        if self._file is None:
            return None  # given up meanwhile
        hashing = asyncio.ensure_future(asyncio.to_thread(self._digest, file, header_offset, header_frame, tail))
        self._working = hashing
        return await self._within_deadline(hashing, "hash", self._deadline_s)

    async def _within_deadline(
        self, work: asyncio.Future[Done], doing: str, within_s: float, started: float | None = None
    ) -> Done | None:
        """What the thread's ``work`` gives, or None once it has taken ``within_s`` (from
        ``started``, a time of the loop's, else from now). Shielded: a waiter cancelled or out
        of time must not mark the work done while its thread still runs (_give_up closes the
        file only once it is)."""
        if started is None:
            started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout_at(started + within_s):
                return await asyncio.shield(work)
        except TimeoutError:
            log.warning("the local copy of an upload's MP3 took over %g s to %s: its digest is read back",
                        within_s, doing)  # fmt: skip
            return None

    @staticmethod
    def _write(file: BufferedRandom, chunk: bytes | bytearray) -> bool:
        try:
            file.write(chunk)
            file.flush()  # nothing left for close() to write, on the event loop
            return True
        except OSError as error:
            log.warning("the local copy of an upload's MP3 failed (%s): its digest is read back", error)
            return False

    @staticmethod
    def _write_at(file: BufferedRandom, piece: bytes, at: int) -> bool:
        try:
            os.pwrite(file.fileno(), piece, at)  # beside the file's position, where the chunks go
            return True
        except OSError as error:
            log.warning("the local copy of an upload's MP3 failed (%s): its digest is read back", error)
            return False

    @staticmethod
    def _digest(file: BufferedRandom, header_offset: int, header_frame: bytes, tail: bytes) -> bytes | None:
        try:
            file.write(tail)  # at the end: where the last write left it
            file.seek(header_offset)
            file.write(header_frame)
            file.seek(0)
            return hashlib.file_digest(file, "sha256").digest()
        except OSError as error:
            log.warning("the local copy of an upload's MP3 failed (%s): its digest is read back", error)
            return None

    def _give_up(self) -> None:
        """No more of the copy: its file closed now, or once its threads are done with it
        (closing it under a write would wait for that write, on the event loop)."""
        file, self._file = self._file, None
        if file is None:
            return
        if self._reading is not None:
            self._reading.cancel()  # nothing once it has ended; its piece's write runs on, waited for below
        busy = [work for work in (self._working, self._filling) if work is not None and not work.done()]
        if busy:
            asyncio.gather(*busy, return_exceptions=True).add_done_callback(lambda _: _close(file))
        else:
            _close(file)


@dataclass(frozen=True)
class StoredPrefix:
    """A resumed upload's MP3 up to ``length``, as the requests before stored it: ``pieces()``
    reads it back, each piece with the byte it begins at, in order."""

    length: int
    pieces: Callable[[], AsyncGenerator[tuple[int, bytes], None]]


async def _nothing() -> None:
    pass


def _retrieved(task: asyncio.Task[bool]) -> None:
    if not task.cancelled():
        task.exception()


def _close(file: BufferedRandom) -> None:
    with contextlib.suppress(OSError):
        file.close()


async def finish_record(
    connection: api.Database,
    record_id: UUID,
    converted: Converted,
    sha256: Awaitable[bytes | None] | None = None,
) -> api.Record:
    """The record finished with its header frame and what was measured, in one statement;
    its SHA-256 the caller's (being hashed meanwhile), else read back from the database."""
    return await api.record_finish(
        connection,
        record_id,
        converted.duration,
        converted.bitrate,
        converted.sample_rate,
        converted.channels,
        None if sha256 is None else await sha256,
        header=(converted.header_offset, converted.header_frame),
        measured=measured(converted),
        tail=converted.tail,
    )


def measured(converted: Converted) -> api.Measured | None:
    """What the conversion measured, as the database stores it."""
    if converted.analysis is None:
        return None
    loudness = converted.analysis.loudness
    return api.Measured(converted.analysis.peaks.dat(), loudness.integrated, loudness.range, loudness.true_peak)


class CheckpointedUpload:
    """A resumable upload's MP3 stored a checkpoint at a time (converter/resume.py): the
    bytes handed on since the last checkpoint and the checkpoint itself in one short
    transaction, each carrying the generation its PATCH claimed, so that a PATCH another
    has since taken over writes nothing more. The last one makes the MP3 a record.

    A PATCH that writes the MP3 from its first byte (an upload sent in one PATCH) keeps a
    LocalCopy of it while ``copied``, as POST /record does, and the record's digest is
    hashed from that; so does a resumed one that ends the upload, its copy beginning with
    the MP3 stored before, read back once its last byte is in (``all_in``). Without a copy
    (one of unstated length, or a copy that failed) the digest is read back at the end.

    The claim's pending bytes are the last checkpoint's followed by those that shorter
    PATCHes kept as sent since (api.upload_append); the first checkpoint replaces them all."""

    def __init__(
        self, pool: asyncpg.Pool, upload_id: UUID, claim: api.Claim, lifetime_s: float, deadline_s: float
    ) -> None:
        self.pool = pool
        self.upload_id = upload_id
        self.claim = claim
        self.lifetime_s = lifetime_s  # the upload's, extended by each checkpoint
        self.deadline_s = deadline_s  # for a connection, a rollback, the local copy's digest
        self.previous = (
            Checkpoint.from_json(claim.progress, claim.wav_header, claim.analysis or b"", claim.wav_pending or b"")
            if claim.progress is not None and claim.wav_header is not None
            else None
        )
        self.header_stored = claim.wav_header is not None
        self.pending = bytearray()  # handed on since the last checkpoint, from pending_at
        self.pending_at = self.previous.resume_at if self.previous is not None else 0
        self.committed = self.previous.upload_offset if self.previous is not None else 0  # the offset as stored
        self.copy = LocalCopy(None, deadline_s)  # none, unless copied() makes one
        self.prefix_offsets: FrameOffsets | None = None  # noted as a prefix copied() reads back passes

    @contextlib.asynccontextmanager
    async def copied(self, ends_upload: bool) -> AsyncIterator[None]:
        """A local copy of the MP3 while the block runs, for its digest: from its first byte;
        or, for a resumed upload the PATCH is to end, one with room for the MP3 stored
        before, read back from the database once the PATCH's last byte is in (``all_in``)
        while its last samples are encoded, the frames' positions noted as they pass for the
        seek table: one read, where the end of the PATCH read it twice. None for a resumed
        upload the PATCH is not to end: a read-back it might never need."""
        if self.pending_at and not ends_upload:
            yield
            return
        prefix = None
        if self.previous is not None and self.pending_at:  # frames were stored: their first's header is known
            self.prefix_offsets = FrameOffsets(self.previous.first_frame_at)
            prefix = StoredPrefix(self.previous.resume_at, self._prefix_pieces)
        async with LocalCopy.made(self.deadline_s, prefix) as self.copy:
            yield

    def all_in(self) -> None:
        """The PATCH's last byte, the upload's, is in: the MP3 stored before is read back now.
        Not before: a client that sends the head of a last PATCH and goes away would have
        the service read the whole MP3 back for nothing, as often as it likes."""
        self.copy.read_prefix()

    async def _prefix_pieces(self) -> AsyncGenerator[tuple[int, bytes], None]:
        """The MP3 stored before the resume point, its frames' positions noted as they pass."""
        assert self.previous is not None
        assert self.prefix_offsets is not None
        async for at, piece in self._pieces(0, self.previous.resume_at):
            self.prefix_offsets.feed(at, piece)
            yield at, piece

    async def resumable(self) -> Resumable:
        """What the conversion goes on from: the frames stored from the resume point on."""
        stored: list[Frame] = []
        previous = self.previous
        if previous is not None and previous.resume_frame:  # else it starts afresh, from the first sample
            stored = stored_frames(await self._read(previous.resume_at, previous.size))
        return Resumable(previous, stored, self.earlier_offsets, self.commit)

    async def sink(self, chunk: bytes) -> None:
        self.pending += chunk

    async def commit(self, checkpoint: Checkpoint) -> None:
        header = None if self.header_stored else checkpoint.wav_header
        pending, self.pending = self.pending, bytearray()
        # A statement of its own, within the deadline (db/deadline.py: on the pool directly,
        # a frozen server held it for twice that).
        storing = within(self.deadline_s, self.pool, lambda db: api.upload_checkpoint(
            db, self.upload_id, self.claim.generation, self.pending_at, pending,
            checkpoint.upload_offset, checkpoint.to_json(), header, self.lifetime_s, checkpoint.analysis or None,
            checkpoint.pending or None,
        ))  # fmt: skip
        try:
            await self.copy.beside(storing, pending)
        except BaseException:
            # Kept for the next checkpoint, in a new buffer: the copy's thread may still read this one.
            self.pending = pending + self.pending
            raise
        self.header_stored = True
        self.pending_at = checkpoint.size
        self.committed = checkpoint.upload_offset

    async def earlier_offsets(self, frames: int) -> array[int]:
        """Where the stored frames before the resume point begin: noted as the local copy's
        prefix was read back (waiting for that read, bounded by its pieces' deadlines), else
        read back now, a piece at a time."""
        previous = self.previous
        assert previous is not None
        if self.prefix_offsets is not None and await self.copy.filled():
            return self.prefix_offsets.offsets[:frames]
        offsets = FrameOffsets(previous.first_frame_at)
        async for at, piece in self._pieces(previous.first_frame_at, previous.resume_at):
            offsets.feed(at, piece)
        return offsets.offsets[:frames]

    async def finish(self, converted: Converted) -> api.Record:
        """The last bytes stored and the MP3 made a record: in one statement when this PATCH
        hashed its own copy of the MP3, else in one transaction that reads it back."""
        assert self.claim.upload_length is not None
        await self.copy.write(self.pending)
        hashing = self.copy.sha256(converted.header_offset, converted.header_frame, converted.tail)
        sha256 = None if hashing is None else await hashing
        if sha256 is not None:
            last = bytes(self.pending) + converted.tail
            return await within(self.deadline_s, self.pool, lambda db: api.upload_finish(
                db, self.upload_id, self.claim.generation, self.pending_at, last, self.lifetime_s,
                converted.duration, converted.bitrate, converted.sample_rate, converted.channels, sha256,
                (converted.header_offset, converted.header_frame), measured(converted),
            ))  # fmt: skip
        async with api.transaction(self.pool, self.deadline_s) as db:
            await api.upload_checkpoint(
                db, self.upload_id, self.claim.generation, self.pending_at, self.pending,
                self.claim.upload_length, {}, None, self.lifetime_s,
            )  # fmt: skip
            record_id = await api.upload_record_begin(db, self.upload_id, self.claim.generation)
            return await finish_record(db, record_id, converted)

    async def _read(self, start: int, stop: int) -> bytes:
        return b"".join([piece async for _, piece in self._pieces(start, stop)])

    async def _pieces(self, start: int, stop: int) -> AsyncIterator[tuple[int, bytes]]:
        """The upload's MP3 from ``start`` to ``stop``, read back a piece at a time: where
        each begins, and its bytes."""
        at = start
        while at < stop:
            piece = await within(self.deadline_s, self.pool, self._read_back(at, stop))
            yield at, piece
            at += len(piece)

    def _read_back(self, at: int, stop: int) -> Callable[[api.Database], Awaitable[bytes]]:
        count = min(READ_BACK_BYTES, stop - at)
        return lambda db: api.upload_read_back(db, self.upload_id, self.claim.generation, at, count)
