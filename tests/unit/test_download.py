"""A cached download's sending, as its request ends: handlers/download.py."""

from __future__ import annotations

import asyncio
import gc
import uuid
from typing import Any, cast

from aiohttp import web

from handlers.download import _Deletions
from handlers.send import Sender


async def test_a_sending_that_fails_as_its_request_is_cancelled_leaves_no_task_unretrieved() -> None:
    """The client resets: the sendfile fails (ECONNRESET) in the same turn of the loop as
    the request is cancelled for it. Its failure was left unretrieved, and asyncio logged
    "Task exception was never retrieved" with a traceback at ERROR, once per download."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    deletions = _Deletions(cast(web.Request, None), uuid.uuid4(), 1)  # the request: only for a deletion's check

    async def sending() -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    downloading = asyncio.ensure_future(deletions.break_off_if_deleted(sending(), cast(Sender, None)))
    await asyncio.sleep(0)  # the download waits on its sending
    await asyncio.sleep(0)  # the sending fails; the download is woken, not yet resumed
    downloading.cancel()
    await asyncio.gather(downloading, return_exceptions=True)
    assert downloading.cancelled()
    del downloading
    gc.collect()
    await asyncio.sleep(0)
    assert [context["message"] for context in reported] == []
