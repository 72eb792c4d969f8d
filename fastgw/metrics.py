"""Prometheus metrics (``GET /metrics``). Placeholder: being written."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def add_routes(app: web.Application, gateway: Any) -> None:
    """Register ``GET /metrics`` on ``app`` for ``gateway``."""
