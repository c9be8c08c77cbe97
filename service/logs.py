"""The service's log: one line per record, as text or JSON (LOG_FORMAT), with no line
a request can forge; and, for a hang's post-mortem, every task's chain of awaits."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (LOG_FORMAT=json)."""

    FIELDS = ("request_id", "method", "path", "status", "broken_off", "duration_ms", "bytes", "remote", "forwarded_for")

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {name: getattr(record, name) for name in self.FIELDS if hasattr(record, name)}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class TextFormatter(logging.Formatter):
    """One line per record: control characters in the message (a path can carry
    %0d%0a) are escaped, so no request can write a line of its own into the log."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        escaped = logging.makeLogRecord(record.__dict__)
        escaped.message = escape_controls(record.message)
        return super().formatMessage(escaped)


def escape_controls(text: str) -> str:
    return CONTROL_CHARACTERS.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


# --- what every task awaits, for a hang's post-mortem ------------------------------------


def task_chains() -> str:
    """Every task of the running loop, each with the chain of awaits it is suspended in,
    outermost first, down to the future it waits for. A hang shows as a task whose chain
    ends in a wait nothing will end (kill -USR1 the service's process; the test suite's
    timeout prints the same)."""
    lines = []
    for task in sorted(asyncio.all_tasks(), key=lambda task: task.get_name()):
        lines.append(f"task {task.get_name()}:")
        lines += [f"    {step}" for step in await_chain(task.get_coro())]
    return "\n".join(lines)


def await_chain(awaitable: object) -> list[str]:
    steps = []
    while awaitable is not None:
        if isinstance(awaitable, asyncio.Future):
            steps.append(f"waiting for {awaitable!r}"[:300])
            break
        if type(awaitable).__name__ in {"async_generator_asend", "FutureIter"}:
            # What they stand for (the generator, the future) is reachable only as a referent.
            awaitable = next(iter(gc.get_referents(awaitable)), None)
            continue
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        frame = frame or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            steps.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}")
        awaitable = (
            getattr(awaitable, "cr_await", None)
            or getattr(awaitable, "ag_await", None)
            or getattr(awaitable, "gi_yieldfrom", None)
        )
    return steps


def log_task_chains() -> None:
    logging.getLogger("mp3.tasks").warning("every task's await chain (SIGUSR1):\n%s", task_chains())
