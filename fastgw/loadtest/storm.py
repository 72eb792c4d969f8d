"""The ``storm`` scenario: every client dropped at once, and how fast they are all back.

A gateway restart, a drain or a network outage drops every client of an instance at once,
and all of them reconnect: the storm an SRE sizes ``--connect-rate`` for. The scenario:

1. connects N clients with the BMTC subscription mix (``idle``'s plan: routes, stops, and
   ``user:{id}:notifications`` for ``--notification-share`` of the users; tokens needed);
2. arms every client process (``fastgw.loadtest.reconnect``): from now on a client whose
   connection is lost comes back like the apps do (jittered backoff, ``resume`` with its old
   session, subscribing again if the session is gone, ``Retry-After`` honoured);
3. drops them (``--trigger``): ``drop``: the clients cut every connection at once and the
   network stays down for ``--outage`` s; ``kill`` / ``term``: SIGKILL / SIGTERM to the
   gateway's processes (``fastgw serve --workers N``: the supervisor restarts them; SIGTERM
   drains first, with its ``reconnect`` advice);
4. meanwhile publishes ``--notifications`` notifications to each notification user (the
   users are offline, so the gateway keeps them in their offline queues; a publish that
   fails because the gateway is down is retried until it is accepted);
5. waits until every client is back and resubscribed (or ``--storm-deadline``), then for the
   notifications to arrive (``--drain-timeout``).

Reported (``scenario_report``): clients lost / back / given up, the time from the storm's
start until all were resubscribed and its distribution, reconnect attempts that failed by
reason, how the sessions resumed, and the notifications: published, delivered by the offline
queue's replay, delivered live, lost. The target of issue 8 (20,000 clients all back within
10 s, no notification lost) is shown next to the figures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from fastgw.loadtest import plan as plans
from fastgw.loadtest import procstats
from fastgw.loadtest.controller import Publisher, Run, Scenario, admin_token, publish_url
from fastgw.loadtest.histogram import Histogram
from fastgw.loadtest.report import ms_summary

__all__ = ["StormScenario", "TARGET_BACK_S"]

#: issue 8: all clients resubscribed within this many seconds of the drop
TARGET_BACK_S = 10.0
#: notification publishes in flight (different users: their order does not matter)
NOTIFY_CONCURRENCY = 16


class StormScenario(Scenario):
    """Every client dropped at once (``--trigger``); time until all are back, offline queues replayed."""

    name = "storm"
    publishes = True

    def plan(self) -> plans.Plan:
        c = self.cfg
        return plans.bmtc_plan(c.clients, k=c.channels_per_client, seed=c.seed, zipf_s=c.zipf_s,
                               route_share=c.route_share, notification_share=c.notification_share,
                               anonymous=not c.jwt_secret, user_prefix=c.user_prefix,
                               profile_mix=plans.parse_profile_mix(c.profile_mix))

    def check(self) -> None:
        c = self.cfg
        if c.protocol != "native":
            raise ValueError("storm: the native protocol only (Socket.IO clients recover with their own "
                             "library's logic, see docs/protocol.md)")
        if not c.jwt_secret:
            raise ValueError("storm needs --jwt-secret: the clients resume their own sessions and the "
                             "notifications go to their users")
        if c.trigger not in ("drop", "kill", "term"):
            raise ValueError("--trigger: drop, kill or term")
        if c.reconnect_base < 0 or c.reconnect_cap <= 0 or c.storm_deadline <= 0 or c.outage < 0:
            raise ValueError("--reconnect-base >= 0, --reconnect-cap > 0, --storm-deadline > 0, --outage >= 0")
        if c.notifications < 0:
            raise ValueError("--notifications must be >= 0")
        publish_url(c)

    def client_options(self) -> dict[str, Any]:
        return {"keep_tokens": True}  # the clients reconnect with the same token

    async def execute(self, run: Run) -> dict[str, Any]:
        c = self.cfg
        users = [i for i, name in enumerate(run.plan.channels) if name.startswith("user:")]
        alive = int(run.connect_result.get("ok", 0))  # (the ticks may lag the connect phase's end)
        async with Publisher(run.target.base_url, admin_token(c), run.plan.channels, url=publish_url(c),
                             concurrency=NOTIFY_CONCURRENCY) as pub:
            await run.mark(time.time_ns())
            t0_ns = time.time_ns()
            t0 = time.monotonic()
            deadline = t0 + c.storm_deadline
            order = {"cmd": "storm", "t0_ns": t0_ns, "drop": c.trigger == "drop",
                     "outage_s": c.outage if c.trigger == "drop" else 0.0, "deadline_s": c.storm_deadline,
                     "base_s": c.reconnect_base, "cap_s": c.reconnect_cap}
            for p in run.procs:
                await p.send(order)
            cut = 0
            for p in run.procs:
                cut += int((await p.wait("storm", 30.0)).get("dropped", 0))
            signalled = self._signal_gateway(run) if c.trigger != "drop" else []
            # the notifications go out while the clients are away: halfway through the outage
            # (the gateway has seen the connections go by then), or at once when it was signalled
            if c.trigger == "drop":
                await asyncio.sleep(max(0.0, t0 + c.outage / 2 - time.monotonic()))
            notifying = asyncio.ensure_future(self._notify(pub, users, c.notifications, deadline))

            def back_info() -> str:
                return (f"lost {run.ticks('storm_lost'):,}  back {run.ticks('storm_back'):,}  "
                        f"gave up {run.ticks('storm_gave_up'):,}  alive {run.ticks('alive'):,}")

            def all_back() -> bool:
                lost = run.ticks("storm_lost")
                return lost >= alive and run.ticks("storm_back") + run.ticks("storm_gave_up") >= lost

            try:
                await run.hold(max(0.0, deadline - time.monotonic()) + 5.0, "reconnecting", back_info,
                               until=all_back, shown=c.storm_deadline)
                all_back_s = time.monotonic() - t0
                await notifying
            finally:
                notifying.cancel()
            expected = pub.ok  # one subscriber per notification user

            def note_info() -> str:
                return f"notifications {pub.ok:,}  delivered {run.ticks('deliveries'):,}"

            await run.hold(c.drain_timeout, "waiting for notifications", note_info,
                           until=lambda: run.ticks("deliveries") >= expected)
        if run.pid_source == "port":  # restarted workers have new pids: measure those
            run.server_pids = procstats.pids_listening_on(run.target.port)
        return {"t0_ns": t0_ns, "trigger": c.trigger, "cut": cut, "signalled": signalled,
                "alive_before": alive, "all_back_s": round(all_back_s, 3), "last_seq": dict(pub.seq),
                "void": dict(pub.void), "sent": pub.sent,
                "publisher": {**pub.summary(), "errors_retried": getattr(pub, "retried_errors", 0)},
                "notification_users": len(users)}

    def _signal_gateway(self, run: Run) -> list[int]:
        """SIGKILL / SIGTERM to the gateway's processes (never to this one); returns the pids."""
        sig = signal.SIGKILL if self.cfg.trigger == "kill" else signal.SIGTERM
        if not run.target.loopback:
            raise RuntimeError("--trigger kill/term: the gateway must run on this host")
        pids = [pid for pid in run.server_pids if pid != os.getpid()]
        if not pids:
            raise RuntimeError("--trigger kill/term: no gateway process found (give --server-pid)")
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    @staticmethod
    async def _notify(pub: Publisher, users: list[int], count: int, deadline: float) -> None:
        """``count`` notifications to each user channel; a failed publish is retried until accepted."""
        gate = asyncio.Semaphore(pub.concurrency)
        retried = 0

        async def one(ch: int) -> None:
            nonlocal retried
            for _ in range(count):
                while time.monotonic() < deadline:
                    async with gate:
                        if await pub.publish(ch):
                            break
                    retried += 1
                    await asyncio.sleep(0.2)  # the gateway is restarting: try again

        try:
            await asyncio.gather(*(one(ch) for ch in users))
        finally:
            pub.retried_errors = retried

    def finish(self, run: Run, outcome: dict[str, Any], children: list[dict[str, Any]]) -> None:
        storms = [c["storm"] for c in children if c.get("storm")]
        total = {k: sum(int(s.get(k, 0)) for s in storms) for k in (
            "lost", "back", "gave_up", "attempts", "resumed_recovered", "resumed_partial",
            "resubscribed_unknown_session", "replayed", "acks", "queue_syncs", "reconnect_advice")}
        failures: dict[str, int] = {}
        gave_up_by: dict[str, int] = {}
        after_start = Histogram()
        after_loss = Histogram()
        after_network = Histogram()
        for s in storms:
            for k, v in s.get("failures_by_reason", {}).items():
                failures[k] = failures.get(k, 0) + v
            for k, v in s.get("gave_up_by_reason", {}).items():
                gave_up_by[k] = gave_up_by.get(k, 0) + v
            after_start.merge(Histogram.from_dict(s["back_after_start_us"]))
            after_loss.merge(Histogram.from_dict(s["back_after_loss_us"]))
            after_network.merge(Histogram.from_dict(s["back_after_network_us"]))
        last_back_ns = max((int(s.get("last_back_ns", 0)) for s in storms), default=0)
        t0_ns = int(outcome.get("t0_ns", 0))
        all_back_s = (last_back_ns - t0_ns) / 1e9 if last_back_ns and total["back"] else None
        published = int(outcome.get("publisher", {}).get("published", 0))
        delivered = sum(int(c.get("deliveries", 0)) for c in children)
        lost_notifications = sum(row[4] + row[5] for c in children for row in c.get("channels", {}).values())
        duplicates = sum(row[3] for c in children for row in c.get("channels", {}).values())
        alive_before = int(outcome.get("alive_before", 0))
        everyone_back = total["back"] >= alive_before and total["gave_up"] == 0
        problems = []
        if total["lost"] < alive_before:
            problems.append(f"storm: only {total['lost']} of {alive_before} clients lost their connection")
        if total["gave_up"]:
            problems.append(f"storm: {total['gave_up']} clients did not come back within --storm-deadline")
        if lost_notifications:
            problems.append(f"storm: {lost_notifications} notifications lost")
        back_ms = ms_summary(after_start)
        net_ms = ms_summary(after_network)
        target_met = everyone_back and all_back_s is not None and all_back_s <= TARGET_BACK_S \
            and lost_notifications == 0
        outcome["scenario_report"] = {
            "trigger": outcome.get("trigger"), "outage_s": self.cfg.outage if self.cfg.trigger == "drop" else None,
            "signalled_pids": outcome.get("signalled", []), "clients_before": alive_before,
            "lost": total["lost"], "back": total["back"], "gave_up": total["gave_up"],
            "gave_up_by_reason": gave_up_by,
            "all_back_s": None if all_back_s is None else round(all_back_s, 3),
            "back_after_start_ms": back_ms, "back_after_own_loss_ms": ms_summary(after_loss),
            "back_after_network_returned_ms": net_ms,
            "reconnect_attempts": total["attempts"], "failed_attempts_by_reason": dict(sorted(failures.items())),
            "resumed": {"recovered": total["resumed_recovered"], "partial": total["resumed_partial"],
                        "unknown_session_subscribed_again": total["resubscribed_unknown_session"]},
            "drain_reconnect_advice": total["reconnect_advice"],
            "notifications": {"users": outcome.get("notification_users", 0), "published": published,
                              "delivered": delivered, "replayed_from_queue": total["replayed"],
                              "delivered_live": max(0, delivered - total["replayed"]),
                              "lost": lost_notifications, "duplicates_or_reordered": duplicates,
                              "queue_syncs": total["queue_syncs"], "acks_sent": total["acks"]},
            "target": {"all_back_within_s": TARGET_BACK_S, "met": target_met},
            "problems": problems,
        }
        outcome["scenario_report"]["rows"] = [
            ["storm trigger", f"{outcome.get('trigger')}" + (f" (outage {self.cfg.outage:g} s)"
                                                             if self.cfg.trigger == "drop" else "")],
            ["clients lost / back / gave up", f"{total['lost']:,} / {total['back']:,} / {total['gave_up']:,}"],
            ["all back and resubscribed after", "-" if all_back_s is None else f"{all_back_s:.2f} s"],
            ["back after the drop p50 / p99 / max", f"{back_ms['p50']} / {back_ms['p99']} / {back_ms['max']} ms"],
            ["back after the network returned p50 / p99 / max",
             f"{net_ms['p50']} / {net_ms['p99']} / {net_ms['max']} ms"],
            ["resumed (recovered / partial / new session)",
             f"{total['resumed_recovered']:,} / {total['resumed_partial']:,} / "
             f"{total['resubscribed_unknown_session']:,}"],
            ["reconnect attempts (failed)", f"{total['attempts']:,} ("
             + (", ".join(f"{k} {v:,}" for k, v in sorted(failures.items())) or "none") + ")"],
            ["notifications published / replayed / live",
             f"{published:,} / {total['replayed']:,} / {max(0, delivered - total['replayed']):,}"],
            ["notifications lost", f"{lost_notifications:,}"],
            [f"target: all back within {TARGET_BACK_S:g} s, none lost", "met" if target_met else "not met"],
        ]
