"""How the load test's clients come back after a storm (``fastgw loadtest storm``), per client process.

Armed by the controller's ``storm`` command (``fastgw.loadtest.client``). From then on every
client whose connection is lost comes back the way the apps do (docs/protocol.md, "Reconnect
requests" and "Session resume"):

1. it waits a random delay in ``[0, base]`` s (full jitter), or the ``retryAfterMs`` of a
   draining gateway's ``reconnect`` plus that jitter; during a simulated network outage
   (``outage_s`` after the storm began) it waits for the network to come back first, as the
   apps do when the OS says the network is unreachable, then draws its jitter;
2. it reconnects;
3. after the ``welcome`` it sends ``resume`` with its old ``sessionId``: restored channels
   mean it is resubscribed; an unknown session (a gateway that crashed) means it subscribes
   to each of its channels again;
4. a failed attempt doubles the delay bound (``base`` · 2ⁿ, at most ``cap``; the delay is
   drawn in ``[0, bound]``); a ``Retry-After`` from a 503/429 (up to ``cap``) comes first,
   the jitter on top;
5. it gives up at ``t0 + deadline_s``.

What is counted: how many clients were lost, came back, gave up; for each that came back,
the time from the storm's start to resubscribed and from its own loss to resubscribed
(histograms, µs); attempts that failed, by reason; how the sessions resumed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from fastgw.loadtest.histogram import Histogram

if TYPE_CHECKING:
    from fastgw.loadtest.client import Conn, Engine

__all__ = ["Storm"]


class Storm:
    """The reconnect behaviour of one client process's clients, and what it counted."""

    def __init__(self, eng: "Engine", msg: dict[str, Any]) -> None:
        self.eng = eng
        self.t0_ns = int(msg["t0_ns"])
        now = time.monotonic()
        # the controller's wall clock t0 as this process's monotonic time
        self.t0 = now - max(0.0, (time.time_ns() - self.t0_ns) / 1e9)
        self.outage_end = self.t0 + float(msg.get("outage_s", 0.0))
        self.deadline = self.t0 + float(msg.get("deadline_s", 60.0))
        self.base = max(0.0, float(msg.get("base_s", 0.5)))
        self.cap = max(self.base, float(msg.get("cap_s", 8.0)))
        self.attempt_timeout = float(eng.cfg.get("attempt_timeout", 20.0))
        self.rng = random.Random()
        self.stopped = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.lost_count = 0
        self.back = 0
        self.gave_up = 0
        self.attempts = 0
        self.failures: Counter[str] = Counter()
        self.gave_up_by: Counter[str] = Counter()
        self.back_after_start_us = Histogram()  # storm start -> resubscribed
        self.back_after_loss_us = Histogram()  # this client's loss -> resubscribed
        self.back_after_network_us = Histogram()  # the end of the outage -> resubscribed
        self.last_back_ns = 0

    def start(self, drop: bool) -> int:
        """Arm the reconnects; with ``drop`` cut every ready connection now. Returns how many were cut."""
        if not drop:
            return 0
        from fastgw.loadtest.client import READY

        cut = 0
        for conn in self.eng.conns:
            if conn.state == READY and conn.transport is not None:
                conn.transport.abort()  # connection_lost follows: lost() schedules the comeback
                cut += 1
        return cut

    def stop(self) -> None:
        self.stopped = True
        for task in self.tasks:
            task.cancel()

    def lost(self, conn: "Conn") -> None:
        """A ready connection was lost: schedule its client's comeback."""
        if self.stopped:
            return
        self.lost_count += 1
        task = asyncio.ensure_future(self._come_back(conn, conn.retry_after_ms / 1000.0, time.monotonic()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _come_back(self, old: "Conn", advised: float, lost_at: float) -> None:
        from fastgw.loadtest.client import SetupFailed, _reason_of

        eng = self.eng
        spec, slot = old.spec, old.slot
        delay = max(advised, self.outage_end - time.monotonic()) + self.rng.uniform(0.0, self.base)
        failed = 0
        reason = "deadline"
        while True:
            now = time.monotonic()
            if now + delay >= self.deadline:
                await asyncio.sleep(max(0.0, self.deadline - now))
                self.gave_up += 1
                self.gave_up_by[reason] += 1
                return
            await asyncio.sleep(delay)
            self.attempts += 1
            try:
                timeout = min(self.attempt_timeout, max(0.05, self.deadline - time.monotonic()))
                conn = await eng.open(spec, timeout, eng.sessions.get(spec[0]) or None)
                break
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure is counted by reason
                reason = _reason_of(exc)
                self.failures[reason] += 1
                failed += 1
                bound = min(self.cap, self.base * 2 ** failed)
                retry_after = exc.retry_after if isinstance(exc, SetupFailed) else 0.0
                # the gateway's Retry-After, plus jitter: clients told the same delay must not
                # come back in step
                delay = min(retry_after, self.cap) + self.rng.uniform(0.0, bound)
        conn.slot = slot
        conn.take_over(old.seqs)  # what it got on the old connection counts for it too
        if 0 <= slot < len(eng.conns):
            eng.conns[slot] = conn  # its place: the final report counts each client once
        done = time.monotonic()
        self.back += 1
        self.last_back_ns = time.time_ns()
        self.back_after_start_us.add(int((done - self.t0) * 1e6))
        self.back_after_loss_us.add(int((done - lost_at) * 1e6))
        self.back_after_network_us.add(int(max(0.0, done - max(self.outage_end, lost_at)) * 1e6))

    def tick(self) -> dict[str, int]:
        return {"storm_lost": self.lost_count, "storm_back": self.back, "storm_gave_up": self.gave_up}

    def report(self) -> dict[str, Any]:
        eng = self.eng
        resumed = eng.storm_resumed
        return {
            "lost": self.lost_count, "back": self.back, "gave_up": self.gave_up,
            "gave_up_by_reason": dict(self.gave_up_by), "attempts": self.attempts,
            "failures_by_reason": dict(self.failures),
            "back_after_start_us": self.back_after_start_us.to_dict(),
            "back_after_loss_us": self.back_after_loss_us.to_dict(),
            "back_after_network_us": self.back_after_network_us.to_dict(),
            "last_back_ns": self.last_back_ns,
            "resumed_recovered": resumed[True], "resumed_partial": resumed[False],
            "resubscribed_unknown_session": resumed[None],
            "replayed": eng.replayed, "acks": eng.acks, "queue_syncs": eng.queue_syncs,
            "reconnect_advice": eng.reconnect_advice,
        }

