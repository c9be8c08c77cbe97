"""Typed keys for what the application shares with its handlers."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from converter.pipeline import ConverterConfig
from handlers.metrics import Metrics
from handlers.slots import ConversionSlots
from settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)  # the primary: everything that writes
READ_POOL = web.AppKey("read_pool", asyncpg.Pool)  # downloads and listings: a replica, or POOL
SLOTS = web.AppKey("slots", ConversionSlots)
METRICS = web.AppKey("metrics", Metrics)
CONVERTER = web.AppKey("converter", ConverterConfig)
# Why a response that had begun was broken off (for the access log).
BROKEN_OFF = web.RequestKey("broken_off", str)
