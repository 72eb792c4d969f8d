"""The gateway's processes, from its port or given pids: resident memory and CPU time from /proc.

Finding them: the listening sockets on the port are read from ``/proc/net/tcp`` and
``/proc/net/tcp6`` (state ``0A``, LISTEN) and their inodes looked up among the
``/proc/<pid>/fd`` links (``socket:[inode]``). With ``--workers N`` every worker has its
own listening socket (``SO_REUSEPORT``), so all of them are found; the supervisor holds
none and is left out. This needs the gateway on this host and permission to read its
``/proc/<pid>/fd`` (the same user, or root).

Measuring: ``VmRSS`` from ``/proc/<pid>/status`` (kB) and ``utime + stime`` from
``/proc/<pid>/stat`` (all threads, clock ticks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["listening_inodes", "pids_listening_on", "ProcSample", "sample", "sample_all", "alive"]

_TCP_LISTEN = "0A"
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def listening_inodes(port: int, proc: str = "/proc") -> set[int]:
    """Inodes of the sockets listening on TCP ``port`` (any address, IPv4 and IPv6)."""
    inodes: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/net/{name}") as f:
                next(f, None)  # header
                for line in f:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                        continue
                    local = fields[1]
                    if int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(fields[9]))
        except OSError:
            continue
    inodes.discard(0)
    return inodes


def pids_listening_on(port: int, proc: str = "/proc") -> list[int]:
    """Pids of the processes holding a socket that listens on ``port``, sorted."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port, proc)}
    if not wanted:
        return []
    found: set[int] = set()
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        fd_dir = f"{proc}/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in wanted:
                    found.add(int(entry))
                    break
            except OSError:
                continue
    return sorted(found)


@dataclass(frozen=True, slots=True)
class ProcSample:
    pid: int
    rss_bytes: int
    cpu_s: float


def alive(pid: int, proc: str = "/proc") -> bool:
    try:
        with open(f"{proc}/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def sample(pid: int, proc: str = "/proc") -> ProcSample | None:
    """RSS and CPU time of ``pid``; None if it is gone."""
    try:
        rss = 0
        with open(f"{proc}/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    break
        with open(f"{proc}/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        # after the command: state(0) ppid(1) ... utime(11) stime(12)
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None
    return ProcSample(pid, rss, cpu)


def sample_all(pids: list[int]) -> dict[int, ProcSample]:
    out = {}
    for pid in pids:
        s = sample(pid)
        if s is not None:
            out[pid] = s
    return out
