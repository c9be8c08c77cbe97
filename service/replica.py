"""The read replica (DATABASE_READ_URL): whether it may serve downloads now.

It may while it answers and lags the primary by at most REPLICA_MAX_LAG_S. A
watcher asks both every PROBE_INTERVAL_S: the primary where its WAL stands,
then the replica how far it has replayed. The replica is as fresh as the
newest of those primary positions it has replayed, taken when that one was
asked. (Not the replica's own replay timestamp: while the primary writes
nothing, that grows old though nothing is missing.)

Every call on the replica waits at most REPLICA_TIMEOUT_S, whatever the server
does (db/deadline.py), and the pool's own timeouts (connect, command, the
server's statement_timeout) end the work given up on. A replica that failed a
call serves nothing more until the watcher hears from it again.

While the primary does not answer, nothing can be deleted or changed there:
the replica serves what it has, whatever its lag.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from db import api
from db.deadline import UNREACHABLE, left_as_it_is, within

T = TypeVar("T")

log = logging.getLogger("mp3.replica")

# Every wait on the replica: a connection, a statement (also on the server, as
# statement_timeout), the cancel request of one given up, a pooled connection.
REPLICA_TIMEOUT_S = 2.0
PROBE_INTERVAL_S = 1.0


async def replica_pool(url: str, size: int) -> asyncpg.Pool:
    # min_size=0: the service starts while the replica is down.
    return await asyncpg.create_pool(
        url,
        min_size=0,
        max_size=size,
        timeout=REPLICA_TIMEOUT_S,
        command_timeout=REPLICA_TIMEOUT_S,  # asyncpg's cancel request waits this long at most, too
        server_settings={"statement_timeout": str(int(REPLICA_TIMEOUT_S * 1000))},
        reset=left_as_it_is,  # no round trip to give a connection back (db/deadline.py)
    )


class ReadReplica:
    """The replica's pool, and whether it serves now (``serves``), kept by ``watch``."""

    def __init__(self, pool: asyncpg.Pool, max_lag_s: float) -> None:
        self.pool = pool
        self.max_lag_s = max_lag_s
        self.probe_interval_s = min(PROBE_INTERVAL_S, max_lag_s / 4)
        self.answers = False  # whether its last call answered
        self._fresh_until = -math.inf  # time.monotonic() until which its lag is within max_lag_s
        # (when asked, the primary's WAL position), oldest first, none older than max_lag_s.
        self._positions: deque[tuple[float, int]] = deque()
        self._serving = False  # as last logged

    def serves(self) -> bool:
        """It may serve downloads' bytes: it answers, and lags by at most max_lag_s."""
        return self.answers and time.monotonic() < self._fresh_until

    async def call(self, call: Callable[[PoolConnectionProxy], Awaitable[T]]) -> T:
        """``call`` on the replica, within REPLICA_TIMEOUT_S; a replica that cannot answer serves no more."""
        try:
            result = await within(REPLICA_TIMEOUT_S, self.pool, call)
        except UNREACHABLE:
            self.answers = False
            raise
        self.answers = True
        return result

    async def watch(self, primary: asyncpg.Pool) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self.probe(primary)
            except Exception:  # a bug: logged, and the watch goes on (the replica ages meanwhile)
                log.exception("measuring the read replica failed")

    async def probe(self, primary: asyncpg.Pool) -> None:
        """Measure the replica's lag now; never raises (a failure means it does not serve)."""
        asked = time.monotonic()
        primary_answers = True
        try:
            self._positions.append((asked, await within(REPLICA_TIMEOUT_S, primary, api.wal_written)))
        except TimeoutError:  # slow, or frozen: no sample, the replica ages (not "down": it may still delete)
            pass
        except UNREACHABLE:  # refused, reset: down
            primary_answers = False
        except Exception:
            log.exception("the primary's WAL position is unknown")
        while self._positions and self._positions[0][0] < asked - self.max_lag_s:
            self._positions.popleft()
        try:
            replayed = await self.call(api.wal_replayed)
        except UNREACHABLE as error:
            self._report(f"the read replica does not answer ({type(error).__name__})")
            return
        except Exception:
            log.exception("the read replica's position is unknown")
            replayed = None
        if not primary_answers:  # until the next probe
            self._fresh_until = time.monotonic() + self.probe_interval_s + 2 * REPLICA_TIMEOUT_S
        elif replayed is None:
            self._fresh_until = -math.inf
        else:
            caught_up = [when for when, position in self._positions if position <= replayed]
            self._fresh_until = max(caught_up) + self.max_lag_s if caught_up else -math.inf
        self._report(f"the read replica lags more than {self.max_lag_s:g} s (or is no standby)")

    def _report(self, why_not: str) -> None:
        """Log when the replica starts or stops serving downloads, not on every probe."""
        serving = self.serves()
        if serving != self._serving:
            log.warning("the read replica serves downloads" if serving else f"{why_not}: downloads read the primary")
        self._serving = serving
