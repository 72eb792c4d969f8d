"""Process limits the gateway depends on."""

from __future__ import annotations

import logging

__all__ = ["raise_open_files_limit", "FD_RESERVE"]

log = logging.getLogger("fastgw")

#: Descriptors kept free for listeners, logs and upstream connections.
FD_RESERVE = 256


def raise_open_files_limit(max_connections: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; warn if connections cannot fit.

    Every WebSocket is a file descriptor. Many systems start processes with a
    soft limit of 1,024, and beyond it ``accept()`` fails silently for clients.
    Returns the soft limit now in force (or -1 where there is no ``resource``).
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, max_connections + FD_RESERVE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    if max_connections + FD_RESERVE > soft:
        log.warning(
            "--max-connections %d does not fit the open-files limit %d (with %d in reserve): "
            "clients beyond about %d will be refused at accept(); lower --max-connections or raise the limit",
            max_connections, soft, FD_RESERVE, soft - FD_RESERVE,
        )
    return soft
