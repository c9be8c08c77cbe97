"""Typed keys for what the application shares with its handlers."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from converter.options import ConverterConfig
from service.busy_uploads import BusyUploads
from service.database_check import DatabaseCheck
from service.download_cache import DownloadCache
from service.file_sender import FileSender
from service.metrics import Metrics
from service.patches_at_work import PatchesAtWork
from service.replica import ReadReplica
from service.slots import ConversionSlots
from settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)  # the primary: everything that writes
# Whether the primary answers, on a connection no request can take.
DATABASE_CHECK = web.AppKey("database_check", DatabaseCheck)
# Absent without DATABASE_READ_URL.
REPLICA = web.AppKey("replica", ReadReplica)  # downloads' bytes, and reads while POOL is down
SLOTS = web.AppKey("slots", ConversionSlots)
BUSY_UPLOADS = web.AppKey("busy_uploads", BusyUploads)  # the uploads HEADs wait on, one poll each
PATCHES = web.AppKey("patches", PatchesAtWork)  # a newer PATCH stops the one it took over
METRICS = web.AppKey("metrics", Metrics)
CONVERTER = web.AppKey("converter", ConverterConfig)
# Absent when DOWNLOAD_CACHE_MB is 0.
DOWNLOAD_CACHE = web.AppKey("download_cache", DownloadCache)
FILE_SENDER = web.AppKey("file_sender", FileSender)  # the cache's files to their clients, with it
# Large-object reads in flight for all downloads together: the pools' other
# connections stay free for uploads, sign-ins and listings however many download.
DOWNLOAD_READS = web.AppKey("download_reads", asyncio.Semaphore)
# Why a response that had begun was broken off (for the access log).
BROKEN_OFF = web.RequestKey("broken_off", str)
