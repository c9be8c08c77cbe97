"""The service's Prometheus metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from converter.errors import ConversionStalled
from service.busy_uploads import BusyUploads
from service.slots import ConversionSlots


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per application)."""

    def __init__(self, slots: ConversionSlots, busy_uploads: BusyUploads) -> None:
        self.registry = CollectorRegistry()
        self.conversions = Counter(
            "mp3_conversions", "Uploads by outcome (the HTTP status answered)", ["status"], registry=self.registry
        )
        self.conversion_seconds = Histogram(
            "mp3_conversion_seconds",
            "Wall time of successful conversions, upload included",
            buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=self.registry,
        )
        self.stalls = Counter(
            "mp3_conversion_stalls",
            "Conversions stopped for making no progress, by what they waited for",
            ["stage"],
            registry=self.registry,
        )
        self.upload_patches = Counter(
            "mp3_upload_patches",
            "Resumable uploads' PATCH requests, by status answered",
            ["status"],
            registry=self.registry,
        )
        self.bytes_in = Counter("mp3_upload_bytes", "WAV bytes received", registry=self.registry)
        self.bytes_out = Counter("mp3_output_bytes", "MP3 bytes stored", registry=self.registry)
        self.stored_bytes = Gauge("mp3_stored_bytes", "MP3 bytes in the database", registry=self.registry)
        self.stored_records = Gauge("mp3_stored_records", "Records in the database", registry=self.registry)
        self.storage_max_bytes = Gauge(
            "mp3_storage_max_bytes", "What all records may take together (STORAGE_MAX_GB; 0: no bound)",
            registry=self.registry,
        )  # fmt: skip
        queue = Gauge("mp3_queue_depth", "Uploads waiting to start", registry=self.registry)
        queue.set_function(lambda: slots.queued)
        active = Gauge("mp3_active_conversions", "Uploads in progress", registry=self.registry)
        active.set_function(lambda: slots.in_progress)
        encoding = Gauge("mp3_encoding_turns", "Conversion slots in use: turns on the CPU", registry=self.registry)
        encoding.set_function(lambda: slots.active)
        turn_waits = Gauge("mp3_turn_waits", "Uploads waiting for their turn on the CPU", registry=self.registry)
        turn_waits.set_function(lambda: slots.waiting)
        head_waits = Gauge("mp3_upload_head_waits", "HEADs waiting for a PATCH at work", registry=self.registry)
        head_waits.set_function(lambda: busy_uploads.waiting)
        self.registry.register(_Unwatched(busy_uploads))

    async def received(self, wav: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """An upload's WAV bytes as they arrive (POST or PATCH), counted as they pass."""
        async for chunk in wav:
            self.bytes_in.inc(len(chunk))
            yield chunk

    def count_stall(self, error: BaseException) -> None:
        """An upload (POST or PATCH) that ended with ``error``: counted by its stage if it stalled."""
        if isinstance(error, ConversionStalled):
            self.stalls.labels(stage=error.stage).inc()


class _Unwatched(Collector):
    """HEADs that found a PATCH at work and answered at once: as many uploads watched as may be."""

    def __init__(self, busy_uploads: BusyUploads) -> None:
        self.busy_uploads = busy_uploads

    def collect(self) -> Iterator[Metric]:
        help_text = "HEADs answered at once though a PATCH was at work: as many uploads watched as may be"
        yield CounterMetricFamily("mp3_upload_heads_unwatched", help_text, value=self.busy_uploads.unwatched)
