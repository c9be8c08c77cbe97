"""The PATCHes at work in this process, one per resumable upload.

A PATCH takes its upload over from any before it: api.upload_claim raises the upload's
generation, and the older PATCH may write nothing more. The older one learns it at its
next write to the database, or, while its client is silent, not at all: a connection gone
quiet without a reset reaching us times out only after READ_TIMEOUT_S, holding one of its
account's upload places all along, which the newer PATCH (the client come back) waits for
and is refused after QUEUE_TIMEOUT_S. So the newer one stops the older: at its next read
of the body, at once while its client is silent. Only in this process: the upload places
are each process's own, so an older PATCH elsewhere holds none the newer one needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from uuid import UUID


class PatchesAtWork:
    def __init__(self) -> None:
        self._at_work: dict[UUID, tuple[int, Callable[[], None]]] = {}

    @contextlib.contextmanager
    def at_work(self, upload_id: UUID, generation: int, stop: Callable[[], None]) -> Iterator[None]:
        """While the block runs, the PATCH whose claim gave it ``generation`` is at work on the
        upload. As it begins, the PATCH at work before it is stopped (its ``stop`` called); or
        this one, if a later claim is at work already (claims may answer out of order)."""
        current = self._at_work.get(upload_id)
        if current is not None and current[0] > generation:
            stop()
        else:
            if current is not None:
                current[1]()
            self._at_work[upload_id] = (generation, stop)
        try:
            yield
        finally:
            # Its own entry, if no later claim took its place: a finished upload's claims
            # all hold the same generation (api.upload_claim no longer raises it).
            if upload_id in self._at_work and self._at_work[upload_id][1] is stop:
                del self._at_work[upload_id]
