"""Configuration: safe defaults, and a clear message naming any bad variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from settings import ConfigError, Settings, usable_cpus

BASE = {"DATABASE_URL": "postgresql://mp3_service@localhost/mp3"}


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.max_upload_bytes == 1024 * 1024 * 1024
    assert settings.mp3_bitrate_kbps == 192
    assert settings.convert_concurrency >= 1
    assert settings.public_url is None
    assert (settings.read_timeout_s, settings.min_upload_kbps, settings.idle_timeout_s) == (60, 64, 15)
    assert settings.max_duration_s == 4 * 3600
    assert settings.download_cache_bytes == 256 << 20
    assert settings.send_timeout_s == 60
    assert settings.replica_max_lag_s == 5
    assert settings.parallel_segments == settings.convert_concurrency  # both the CPU count
    assert settings.ffmpeg_binary.endswith("ffmpeg") or "ffmpeg" in settings.ffmpeg_binary
    assert settings.trusted_proxies == ()  # nobody's X-Forwarded-For is believed
    assert settings.open_signup


def test_values_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        BASE
        | {
            "PORT": "9000",
            "MAX_UPLOAD_MB": "5",
            "MP3_BITRATE": "320",
            "CONVERT_CONCURRENCY": "3",
            "QUEUE_TIMEOUT_S": "2.5",
            "PUBLIC_URL": "https://mp3.example.org/",
            "MIN_UPLOAD_KBPS": "0",
            "IDLE_TIMEOUT_S": "5",
            "DOWNLOAD_CACHE_MB": "0",
            "PARALLEL_SEGMENTS": "0",
            "TRUSTED_PROXIES": "10.0.0.7, 172.16.0.0/12,fd00::/8",
            "SIGNUP": "closed",
            "SEND_TIMEOUT_S": "7.5",
            "REPLICA_MAX_LAG_S": "0.5",
        }
    )
    assert [str(network) for network in settings.trusted_proxies] == ["10.0.0.7/32", "172.16.0.0/12", "fd00::/8"]
    assert not settings.open_signup
    assert settings.replica_max_lag_s == 0.5
    assert settings.send_timeout_s == 7.5
    assert settings.parallel_segments == 0
    assert settings.download_cache_bytes == 0
    assert (settings.min_upload_kbps, settings.idle_timeout_s) == (0, 5)
    assert settings.port == 9000
    assert settings.max_upload_bytes == 5 << 20
    assert settings.mp3_bitrate_kbps == 320
    assert settings.convert_concurrency == 3
    assert settings.queue_timeout_s == 2.5
    assert settings.public_url == "https://mp3.example.org"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", ""),
        ("DATABASE_URL", "mysql://x"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("MAX_UPLOAD_MB", "0"),
        ("MP3_BITRATE", "100"),
        ("CONVERT_CONCURRENCY", "-1"),
        ("QUEUE_TIMEOUT_S", "soon"),
        ("QUEUE_TIMEOUT_S", "0"),
        ("PUBLIC_URL", "ftp://x"),
        ("MIN_UPLOAD_KBPS", "-1"),
        ("IDLE_TIMEOUT_S", "0"),
        ("SEND_TIMEOUT_S", "0"),
        ("UPLOAD_EXPIRY_S", "0.5"),  # an upload that expired before its first PATCH could begin
        ("UPLOAD_EXPIRY_S", "2592001"),
        ("REPLICA_MAX_LAG_S", "0"),
        ("REPLICA_MAX_LAG_S", "3601"),
        ("MAX_DURATION_S", "21601"),  # the MP3 at 320 kbit/s could pass PostgreSQL's 1 GB per value
        ("TRUSTED_PROXIES", "balancer"),
        ("TRUSTED_PROXIES", "10.0.0.7/8"),  # a host, not a network: a typo more likely than a choice
        ("SIGNUP", "invite-only"),
        ("FFMPEG_BINARY", "/nonexistent/ffmpeg"),
        ("DOWNLOAD_CACHE_MB", "-1"),
        ("PARALLEL_SEGMENTS", "-1"),
        ("PARALLEL_SEGMENTS", "65"),
        ("DOWNLOAD_CACHE_MB", str((1 << 20) + 1)),
    ],
)
def test_bad_values_stop_the_service_with_a_message_naming_them(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(BASE | {name: value})


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({}, "all"),  # no cgroup files: the CPUs it may run on
        ({"cpu.max": "max 100000\n"}, "all"),
        ({"cpu.max": "150000 100000\n"}, 2),  # docker run --cpus 1.5
        ({"cpu.max": "20000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "all"),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu.max": "garbage"}, "all"),
    ],
)
def test_the_default_concurrency_is_the_cpus_a_container_may_use(
    tmp_path: Path, files: dict[str, str], cpus: int | str
) -> None:
    """A 2-CPU container on a 64-core host gets 2 conversion slots and encoders, not 64."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    runnable = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (runnable if cpus == "all" else min(runnable, int(cpus)))
