"""Selects the hot-path implementation: compiled ``_core`` or the pure-Python twin.

Set ``FASTGW_NO_EXTENSIONS=1`` to force the pure-Python module (debugging,
platforms without a compiler). ``IMPLEMENTATION`` says which one is in use.
"""

from __future__ import annotations

import os

if os.environ.get("FASTGW_NO_EXTENSIONS", "") not in ("", "0"):
    from fastgw import _core_py as _impl

    IMPLEMENTATION = "python"
else:
    try:
        from fastgw import _core as _impl  # type: ignore[no-redef]

        IMPLEMENTATION = "cython"
    except ImportError:  # extension not built: fall back, same behaviour
        from fastgw import _core_py as _impl  # type: ignore[no-redef]

        IMPLEMENTATION = "python"

OP_TEXT = _impl.OP_TEXT
OP_BINARY = _impl.OP_BINARY
OP_CLOSE = _impl.OP_CLOSE
frame_header = _impl.frame_header
build_frame = _impl.build_frame
build_close_frame = _impl.build_close_frame
fanout = _impl.fanout
reduce_location = _impl.reduce_location
strip_fields = _impl.strip_fields
build_batch = _impl.build_batch
Batcher = _impl.Batcher
enqueue = _impl.enqueue
flush = _impl.flush

__all__ = [
    "IMPLEMENTATION",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "frame_header",
    "build_frame",
    "build_close_frame",
    "fanout",
    "reduce_location",
    "strip_fields",
    "build_batch",
    "Batcher",
    "enqueue",
    "flush",
]
