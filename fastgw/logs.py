"""Logging setup: text or JSON lines. Placeholder: being written."""

from __future__ import annotations

import logging


def configure(level: str, fmt: str = "text", node_id: str | None = None) -> None:
    """Configure the root logger for ``fastgw serve``."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
