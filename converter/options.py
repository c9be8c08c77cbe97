"""What a conversion is asked for (``EncodeOptions``, per upload) and how every
conversion runs (``ConverterConfig``, built once from the settings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from converter.process import PIPE_BUFFER


@dataclass(frozen=True)
class EncodeOptions:
    bitrate_kbps: int = 192
    vbr_quality: int | None = None  # LAME's -V 0 (best) to 9: variable bit rate instead of bitrate_kbps
    sample_rate: int | None = None  # None: the source's, when MP3 can hold it
    channels: int | None = None  # None: mono stays mono, everything else becomes stereo
    tags: Mapping[str, str] = field(default_factory=dict)  # ID3v2: override the WAV's own INFO tags
    default_title: str | None = None  # the title when neither the request nor the WAV gives one


class SpareSlots(Protocol):
    """Conversion slots an upload may borrow for more encoders, and give back."""

    async def borrow(self) -> bool:
        """Take a free slot that no other upload waits for; False when there is none."""
        ...

    def give_back(self) -> None: ...

    @property
    def contended(self) -> bool:
        """Another upload waits for a slot: borrowed ones should come back soon."""
        ...


class CpuShare(Protocol):
    """An upload's turn on the CPU: taken while it feeds its encoder, lent to another
    upload while it waits for its client."""

    async def working(self) -> None:
        """Until the upload may feed its encoder (at once, mostly)."""
        ...

    def waiting(self) -> None:
        """The upload now waits for its client."""
        ...

    def finishing(self) -> None:
        """The body is all in: its encoders' tail is still CPU work, so a turn held is kept for it."""
        ...

    def encoded(self) -> None:
        """Its encoders have ended: what is left (the last writes, the commit) waits on the
        database, not on a core, so the turn goes to another upload now."""
        ...


@dataclass(frozen=True)
class ConverterConfig:
    """How every conversion runs: built once from the settings when the service starts."""

    ffmpeg: str
    time_limit_s: float  # the whole conversion, upload included
    max_seconds: float  # the longest recording
    # No progress for this long (FFmpeg hung, the database silent) fails the conversion.
    stall_timeout_s: float = 30.0
    # Encoders one upload may use at once (converter/segments.py); below 2: one.
    parallel_segments: int = 1
    spare: SpareSlots | None = None  # where the further encoders' slots come from
    segment_seconds: float = 30.0  # a 1-minute upload: two halves, one per core
    analyse: bool = True  # the waveform's peaks and the loudness, measured as the samples pass
    # Samples queued for an encoder, in bytes, before a helper is sought: besides its pipe's
    # 1 MiB (asyncio buffers nothing beside it, converter/process.py), about 2 MiB behind.
    helper_backlog: int = PIPE_BUFFER
