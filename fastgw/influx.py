"""InfluxDB line-protocol export. Placeholder: being written."""

from __future__ import annotations

from typing import Any


async def push_forever(gateway: Any) -> None:
    """Push the metrics to ``gateway.config.influx_url`` every ``influx_interval`` s."""
