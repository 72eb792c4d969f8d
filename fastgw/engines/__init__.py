"""Engines: where a gateway node's shared state lives (memory: one node; Redis: many).

See ``engines.base`` for the interfaces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from fastgw.config import Config
    from fastgw.engines.base import Engine

__all__ = ["build_engine"]


def build_engine(config: "Config", *, port: Callable[[], int | None] = lambda: None) -> "Engine":
    """The Redis engine when ``config.redis`` is set, else the in-memory one.

    ``port`` tells the instance registry where this node listens (known after bind).
    """
    if config.redis:
        from fastgw.engines.redis import RedisEngine

        return RedisEngine(config, port=port)
    from fastgw.engines.memory import MemoryEngine

    return MemoryEngine(
        node_id=config.node_id,
        offline_max_messages=config.offline_max_messages,
        offline_retention=config.offline_retention,
        history_size=config.history_size,
        history_ttl=config.history_ttl,
        resume_grace=config.resume_grace,
    )
