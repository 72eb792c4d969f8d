"""Logging setup for ``fastgw serve``: plain text or JSON lines, on stderr.

``--log-format json`` writes one JSON object per line and per event::

    {"time":"2026-11-29T09:20:00.123Z","level":"INFO","logger":"fastgw.server",
     "msg":"connection closed ...","instance":"3fa9c2d1","pid":4242,
     "session_id":"...","user_id":"rider42","reason":"slow_consumer",...}

``instance`` (the node id, also in ``/api/stats`` and the Redis registry) and ``pid``
are on every line; fields passed with ``extra=`` (``session_id``, ``user_id``,
``device``, ``profile``, ``reason``, ``duration_s``...) are added as they are, and a
traceback goes in ``exc``. Nothing else is printed on stderr in JSON mode: Python
warnings are routed through logging too. Text lines keep the seed's layout
(``time LEVEL logger: message``) with the ``extra=`` fields appended as ``key=value``.

Log levels per event: docs/observability.md.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson

__all__ = [
    "configure",
    "JsonFormatter",
    "TextFormatter",
    "connection_fields",
    "connection_opened",
    "connection_closed",
    "QUIET_CLOSE_REASONS",
]

#: Close reasons logged at DEBUG: routine (the client left, the instance stops or
#: drains: those are summarised by one line each). Every other reason (slow consumer,
#: heartbeat timeout, protocol error, flood, and any reason added later) is INFO.
QUIET_CLOSE_REASONS = frozenset({"normal", "shutdown", "drain"})

#: Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD and not key.startswith("_")}


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id
        self.pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.node_id is not None:
            entry["instance"] = self.node_id
        entry["pid"] = self.pid
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` (the ``extra=`` fields)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if not extras:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        fields = " ".join(f"{key}={value}" for key, value in extras.items())
        return f"{head} [{fields}]{sep}{tail}"


def configure(level: str, fmt: str = "text", node_id: str | None = None) -> None:
    """Configure the root logger for ``fastgw serve``: ``level`` (``debug``, ``info``,
    ``warning``, ``error``), ``fmt`` ``text`` or ``json``, ``node_id`` on every JSON line."""
    if fmt not in ("text", "json"):
        raise ValueError("log format is text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node_id) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # warnings.warn(...) would print free text on stderr: one more log line instead
    logging.captureWarnings(True)


# --- connection events ------------------------------------------------------------------


def connection_fields(conn: Any) -> dict[str, Any]:
    """The ``extra=`` fields of a log line about one connection (no IP address: the
    user id is the only personal datum, and only where the event needs it)."""
    return {
        "session_id": conn.session_id,
        "user_id": conn.principal.user_id,
        "device": conn.device,
        "profile": conn.encoding.profile.name,
        "compression": conn.encoding.compression.value,
    }


def connection_opened(logger: logging.Logger, conn: Any) -> None:
    """DEBUG: one line per accepted WebSocket (``fastgw_connections_opened_total`` counts them)."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("connection opened %s (user %s, %s, %s)", conn.session_id, conn.principal.user_id,
                     conn.device, conn.encoding.profile.name, extra=connection_fields(conn))


def connection_closed(logger: logging.Logger, conn: Any, reason: str, duration_s: float) -> None:
    """DEBUG for routine closes, INFO for abnormal ones (see :data:`QUIET_CLOSE_REASONS`)."""
    level = logging.DEBUG if reason in QUIET_CLOSE_REASONS else logging.INFO
    if logger.isEnabledFor(level):
        fields = connection_fields(conn)
        fields.update(reason=reason, duration_s=round(duration_s, 3))
        logger.log(level, "connection closed %s: %s after %.1fs", conn.session_id, reason, duration_s,
                   extra=fields)
