"""What can go wrong turning an upload into an MP3, in the converter's own terms.

None of these knows HTTP: handlers/errors.py is the one table that says which
status each one answers.
"""

from __future__ import annotations


class ConversionError(Exception):
    """The upload cannot become an MP3. The message is for the client;
    ``detail`` (what FFmpeg said) is for the log only."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class NotAWav(ConversionError):
    """The bytes are not a RIFF/RF64/BW64 WAVE file at all."""


class BadWav(ConversionError):
    """A WAV whose header cannot describe audio this service converts."""


class RecordingTooLong(ConversionError):
    """The recording lasts longer than the limit."""


class ConversionTimedOut(ConversionError):
    """The conversion, upload included, took longer than its time limit."""


class Mp3StreamError(ConversionError):
    """FFmpeg's output is not the MP3 frame sequence it should be."""


class ConversionStalled(ConversionError):
    """Nothing moved for too long: FFmpeg hung, or the database stopped answering.
    Not the upload's fault: worth retrying."""

    def __init__(self, stall_s: float, stage: str) -> None:
        super().__init__(
            f"The conversion made no progress for {stall_s:g} s and was stopped; try again shortly.",
            f"no progress for {stall_s:g} s while waiting for {stage}",
        )
        self.stage = stage


class SourcePaused(Exception):
    """The upload's source ended where it was meant to, before the recording's end (a tus PATCH
    of part of the upload): what it brought is kept, and its client waits to hear how that went.
    Not a failure: its sender raises it at the end of the bytes it was given."""
