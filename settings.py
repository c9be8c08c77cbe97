"""Configuration from the environment, validated once at start.

Every variable, its default and its meaning is listed in docs/operations.md,
"Settings". A bad value stops the service with a message naming it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from converter.mp3 import LAME_CBR_KBPS

# The longest MAX_DURATION_S may allow: 6 hours at 320 kbit/s is 864 MB of MP3.
MAX_DURATION_LIMIT_S = 6 * 3600

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may keep busy: those it may run on, or fewer when its container's
    CPU quota (`docker run --cpus`, a Kubernetes limit) allows less time, rounded up. The
    host's count would start an encoder per host core inside a 2-CPU container."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cpu_quota(cgroup)
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


def _cpu_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time the cgroup allows (cgroup v2's cpu.max, v1's CFS quota); None: no bound."""
    with suppress(OSError, ValueError, ZeroDivisionError):
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    with suppress(OSError, ValueError):
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


class ConfigError(Exception):
    """A setting is missing or invalid; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    database_read_url: str | None = None  # a streaming replica for downloads and listings
    # How far behind the primary the replica may be and still serve a download's bytes.
    replica_max_lag_s: float = 5.0
    host: str = "0.0.0.0"  # noqa: S104 - a service listens on every interface by default
    port: int = 8080
    public_url: str | None = None
    max_upload_bytes: int = 1024 * 1024 * 1024
    mp3_bitrate_kbps: int = 192
    convert_concurrency: int = usable_cpus()
    # Uploads in progress at once, however slowly they arrive (0: four per conversion slot),
    # and one user's: each holds an FFmpeg and a database connection.
    max_uploads: int = 0
    # Connections open at once, beyond which they wait in the kernel's backlog (0: 1024, or
    # fewer if the open-files limit cannot be raised for them; service/open_files.py).
    max_connections: int = 0
    user_max_uploads: int = 2
    # Encoders one upload may use at once, on slots nobody waits for (0 or 1: one).
    parallel_segments: int = usable_cpus()
    queue_timeout_s: float = 10.0
    ffmpeg_timeout_s: float = 3600.0
    # A conversion in which nothing moves (FFmpeg hung, the database silent) for this
    # long fails with 503; also the deadline of every statement sent to the primary.
    stall_timeout_s: float = 30.0
    # Each record's waveform and loudness, measured as its samples stream through (off: neither).
    audio_analysis: bool = True
    # A resumable upload nobody writes to for this long is removed, with its MP3 so far.
    upload_expiry_s: float = 24 * 3600.0
    max_duration_s: float = 4 * 3600.0
    read_timeout_s: float = 60.0
    # A slow mobile uplink (EDGE) still sends 100+ kbit/s; a trickle below this is cut off.
    min_upload_kbps: int = 64
    idle_timeout_s: float = 15.0
    # A download's client that acknowledges under 64 KiB in this long is cut off (without
    # Linux's tcp_info: one that takes none of a 256 KiB slice; handlers/send.py).
    send_timeout_s: float = 60.0
    shutdown_timeout_s: float = 30.0
    log_format: str = "text"
    ffmpeg_binary: str = "ffmpeg"
    # Local disk for repeat downloads at sendfile speed (0: off); disposable.
    download_cache_bytes: int = 256 << 20
    # Peers whose X-Forwarded-For is believed (the balancer); anyone else's is ignored.
    trusted_proxies: tuple[IpNetwork, ...] = ()
    # False: POST /users is refused; an administrator creates accounts (api.user_create).
    open_signup: bool = True

    @property
    def uploads_at_once(self) -> int:
        return self.max_uploads or 4 * self.convert_concurrency

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        database_url = env.get("DATABASE_URL", "")
        if urlsplit(database_url).scheme not in {"postgres", "postgresql"}:
            raise ConfigError("DATABASE_URL must be set to a postgresql:// URL (the service role's connection)")
        read_url = env.get("DATABASE_READ_URL") or None
        if read_url is not None and urlsplit(read_url).scheme not in {"postgres", "postgresql"}:
            raise ConfigError("DATABASE_READ_URL must be a postgresql:// URL (a replica, as the service role)")
        public_url = env.get("PUBLIC_URL") or None
        if public_url is not None and urlsplit(public_url).scheme not in {"http", "https"}:
            raise ConfigError(f"PUBLIC_URL must be an http:// or https:// URL, not {public_url!r}")
        log_format = env.get("LOG_FORMAT") or cls.log_format
        if log_format not in {"text", "json"}:
            raise ConfigError(f"LOG_FORMAT must be text or json, not {log_format!r}")
        signup = env.get("SIGNUP") or "open"
        if signup not in {"open", "closed"}:
            raise ConfigError(f"SIGNUP must be open or closed, not {signup!r}")
        bitrate = _number(env, "MP3_BITRATE", cls.mp3_bitrate_kbps, 32, 320)
        if bitrate not in LAME_CBR_KBPS:
            raise ConfigError(f"MP3_BITRATE must be one of {', '.join(map(str, LAME_CBR_KBPS))}, not {bitrate}")
        return cls(
            database_url=database_url,
            database_read_url=read_url,
            replica_max_lag_s=_seconds(env, "REPLICA_MAX_LAG_S", cls.replica_max_lag_s, 3600),
            host=env.get("HOST", cls.host),
            port=_number(env, "PORT", cls.port, 1, 65535),
            public_url=public_url.rstrip("/") if public_url else None,
            max_upload_bytes=_number(env, "MAX_UPLOAD_MB", cls.max_upload_bytes >> 20, 1, 1 << 20) << 20,
            mp3_bitrate_kbps=bitrate,
            convert_concurrency=_number(env, "CONVERT_CONCURRENCY", cls.convert_concurrency, 1, 1024),
            max_uploads=_number(env, "MAX_UPLOADS", cls.max_uploads, 0, 4096),
            max_connections=_number(env, "MAX_CONNECTIONS", cls.max_connections, 0, 1 << 20),
            user_max_uploads=_number(env, "USER_MAX_UPLOADS", cls.user_max_uploads, 1, 4096),
            parallel_segments=_number(env, "PARALLEL_SEGMENTS", cls.parallel_segments, 0, 64),
            queue_timeout_s=_seconds(env, "QUEUE_TIMEOUT_S", cls.queue_timeout_s),
            ffmpeg_timeout_s=_seconds(env, "FFMPEG_TIMEOUT_S", cls.ffmpeg_timeout_s),
            stall_timeout_s=_seconds(env, "STALL_TIMEOUT_S", cls.stall_timeout_s, 3600),
            upload_expiry_s=_seconds(env, "UPLOAD_EXPIRY_S", cls.upload_expiry_s, 30 * 86400, lowest=1),
            audio_analysis=_switch(env, "AUDIO_ANALYSIS", cls.audio_analysis),
            max_duration_s=_seconds(env, "MAX_DURATION_S", cls.max_duration_s, MAX_DURATION_LIMIT_S),
            read_timeout_s=_seconds(env, "READ_TIMEOUT_S", cls.read_timeout_s),
            min_upload_kbps=_number(env, "MIN_UPLOAD_KBPS", cls.min_upload_kbps, 0, 1 << 20),
            idle_timeout_s=_seconds(env, "IDLE_TIMEOUT_S", cls.idle_timeout_s),
            send_timeout_s=_seconds(env, "SEND_TIMEOUT_S", cls.send_timeout_s),
            shutdown_timeout_s=_seconds(env, "SHUTDOWN_TIMEOUT_S", cls.shutdown_timeout_s),
            log_format=log_format,
            ffmpeg_binary=find_ffmpeg(env.get("FFMPEG_BINARY")),
            download_cache_bytes=_number(env, "DOWNLOAD_CACHE_MB", cls.download_cache_bytes >> 20, 0, 1 << 20) << 20,
            trusted_proxies=_networks(env, "TRUSTED_PROXIES"),
            open_signup=signup == "open",
        )


def find_ffmpeg(configured: str | None) -> str:
    """FFMPEG_BINARY, else ffmpeg on PATH, else the imageio-ffmpeg package's binary."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise ConfigError(f"FFMPEG_BINARY={configured!r} is not an executable file")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path is not None:
        return on_path
    try:
        import imageio_ffmpeg  # optional: only when there is no system FFmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError) as error:
        raise ConfigError(
            "FFmpeg not found: install it (apt-get install ffmpeg), "
            "pip install imageio-ffmpeg, or set FFMPEG_BINARY to its path"
        ) from error


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw not in {"on", "off"}:
        raise ConfigError(f"{name} must be on or off, not {raw!r}")
    return raw == "on"


def _number(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _networks(env: Mapping[str, str], name: str) -> tuple[IpNetwork, ...]:
    """Comma-separated addresses or networks: 10.0.0.7, 172.16.0.0/12, fd00::/8."""
    found = []
    for item in (env.get(name) or "").split(","):
        if item.strip():
            try:
                found.append(ipaddress.ip_network(item.strip()))
            except ValueError:
                raise ConfigError(f"{name} must list IP addresses or networks (10.0.0.0/8), not {item!r}") from None
    return tuple(found)


def _seconds(env: Mapping[str, str], name: str, default: float, highest: float = 86400, lowest: float = 0) -> float:
    """A duration, more than 0 (or at least ``lowest``, when given) and at most ``highest``."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    high_enough = value >= lowest if lowest else value > 0
    if not high_enough or not value <= highest:
        least = f"at least {lowest:g}" if lowest else "more than 0"
        raise ConfigError(f"{name} must be {least} and at most {highest:g} seconds, not {value}")
    return value
