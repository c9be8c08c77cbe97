"""How many connections the service accepts at once (MAX_CONNECTIONS), fitted to the
process's open-files limit so that what its uploads need (FFmpeg's pipes, database
connections) is never taken by sockets: handlers.server.BoundedSite holds the rest back."""

from __future__ import annotations

import resource

from settings import ConfigError

# MAX_CONNECTIONS unset: this many, or fewer if the open-files limit cannot be raised for them.
DEFAULT_CONNECTIONS = 1024
# A connection's socket, and the cache file or pipe it may be sent from while it downloads.
PER_CONNECTION = 2
# An FFmpeg's stdin, stdout and stderr.
PER_FFMPEG = 3
# Everything else: listening sockets, the event loop's, logs, the cache's files being
# filled, imports. The service holds about 15 at rest.
BESIDES = 64


def fit_connections(configured: int, reserved: int) -> int:
    """The connections to accept at once: ``configured`` (0: DEFAULT_CONNECTIONS, or as
    many as fit), after raising the soft open-files limit as far as they need (up to the
    hard one). ``reserved``: the descriptors the service needs besides its connections'."""
    wanted = reserved + PER_CONNECTION * (configured or DEFAULT_CONNECTIONS)
    limit = raise_open_files_limit(wanted)
    fitting = (limit - reserved) // PER_CONNECTION
    if configured == 0:
        if fitting < 1:
            raise ConfigError(
                f"the open-files limit ({limit}, ulimit -Hn) leaves no room for connections beside the "
                f"{reserved} descriptors MAX_UPLOADS and CONVERT_CONCURRENCY need: raise it, or lower those"
            )
        return min(DEFAULT_CONNECTIONS, fitting)
    if configured > fitting:
        raise ConfigError(
            f"MAX_CONNECTIONS={configured} needs an open-files limit of {wanted}, and the hard limit "
            f"(ulimit -Hn, a container's nofile) allows {limit}: raise it, or lower MAX_CONNECTIONS"
        )
    return configured


def raise_open_files_limit(wanted: int) -> int:
    """How many descriptors the process may now open, as far as ``wanted`` goes: ``wanted``
    when the soft RLIMIT_NOFILE allows that already or could be raised to it, else the hard
    limit, which the soft one has been raised to."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if raised > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        except (ValueError, OSError) as error:  # a system's own ceiling below the hard limit
            raise ConfigError(f"the open-files limit could not be raised from {soft} to {raised}: {error}") from error
    return raised
