"""The admin dashboard (``GET /admin``). Placeholder: being written."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def add_routes(app: web.Application, gateway: Any) -> None:
    """Register the dashboard's routes on ``app``."""


async def stats_stream(gateway: Any) -> None:
    """Publish the ``system:stats`` stream until cancelled."""
