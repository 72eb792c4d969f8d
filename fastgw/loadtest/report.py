"""What a load test found: the report (one dict, written as JSON), the PNG chart, the rich table.

:func:`build_report` merges the client processes' reports (histograms add up; per
message the first and last arrival; per channel the counts) with what the controller
measured (the gateway's RSS and CPU, the publisher) and the configuration (secrets
left out). Latencies are in milliseconds, read from log-linear histograms (within
0.8 %; the maximum is exact).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

from fastgw import __version__
from fastgw.loadtest.histogram import Histogram

__all__ = ["CLOCK", "build_report", "write_json", "write_chart", "render_table", "default_report_path"]

CLOCK = ("time.time_ns() (CLOCK_REALTIME): the publisher stamps sent_ns just before its POST /api/publish, "
         "the client process reads the clock once per socket read that carries deliveries; both run on the "
         "load-test host and share its clock, so the gateway's clock plays no part. Latency = receipt - "
         "sent_ns: the publish request, the gateway's fan-out, the kernel and the client's parsing.")
#: configuration fields never written to the report
SECRET_FIELDS = ("jwt_secret", "admin_token")
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def default_report_path(scenario: str, when: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when if when is not None else time.time()))
    return f"loadtest-{scenario}-{stamp}.json"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def ms_summary(h: Histogram, scale: float = 1000.0) -> dict[str, Any]:
    """Percentiles (and mean, max) of a histogram of microseconds, in milliseconds."""
    out: dict[str, Any] = {"n": h.n}
    for name, p in PERCENTILES:
        v = h.percentile(p)
        out[name] = None if v is None else round(v / scale, 3)
    out["max"] = None if h.hi is None else round(h.hi / scale, 3)
    out["min"] = None if h.lo is None else round(h.lo / scale, 3)
    mean = h.mean()
    out["mean"] = None if mean is None else round(mean / scale, 3)
    return out


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + int(v)


def build_report(*, cfg: dict[str, Any], plan: Any, run: Any, outcome: dict[str, Any],
                 children: list[dict[str, Any]], started_utc: float, finished_utc: float) -> dict[str, Any]:
    n_clients = len(plan.clients)
    config = {k: v for k, v in cfg.items() if k not in SECRET_FIELDS}
    config["auth"] = "tokens" if cfg.get("jwt_secret") else "anonymous"
    config["server_pids"] = list(cfg.get("server_pids") or ())

    # --- merge the client processes
    connect_us = Histogram()
    latency = Histogram()
    attempt_failures: dict[str, int] = {}
    final_failures: dict[str, int] = {}
    dropped: dict[str, int] = {}
    examples: dict[str, str] = {}
    per_second: dict[int, dict[int, int]] = {}
    by_profile: dict[str, dict[int, int]] = {}
    messages: dict[tuple[int, int], list[int]] = {}
    channels: dict[int, list[int]] = {}
    totals = dict.fromkeys(("attempts", "connected", "failed", "alive", "pings_ws", "pings_eio", "rx_bytes",
                            "rx_bytes_measured", "frame_bytes", "other_frames", "foreign", "malformed", "early",
                            "deliveries"), 0)
    first_ns = min((c["connect_first_ns"] for c in children if c.get("connect_first_ns")), default=0)
    last_ns = max((c["connect_last_ns"] for c in children if c.get("connect_last_ns")), default=0)
    for c in children:
        for key in totals:
            totals[key] += int(c.get(key, 0))
        connect_us.merge(Histogram.from_dict(c["connect_us"]))
        latency.merge(Histogram.from_dict(c["latency_us"]))
        _add(attempt_failures, c["attempt_failures"])
        _add(final_failures, c["final_failures"])
        _add(dropped, c["dropped"])
        for k, v in c.get("failure_examples", {}).items():
            examples.setdefault(k, v)
        for sec, counts in c["per_second"].items():
            into = per_second.setdefault(int(sec), {})
            for b, n in counts.items():
                into[int(b)] = into.get(int(b), 0) + n
        for profile, counts in c.get("latency_us_by_profile", {}).items():
            into = by_profile.setdefault(profile, {})
            for b, n in counts.items():
                into[int(b)] = into.get(int(b), 0) + n
        for ch, seq, count, first, last in c["messages"]:
            m = messages.get((ch, seq))
            if m is None:
                messages[(ch, seq)] = [count, first, last]
            else:
                m[0] += count
                m[1] = min(m[1], first)
                m[2] = max(m[2], last)
        for ch, row in c["channels"].items():
            into_row = channels.setdefault(int(ch), [0] * len(row))
            for i, v in enumerate(row):
                into_row[i] += v

    # --- connect phase
    connect_s = (last_ns - first_ns) / 1e9 if last_ns > first_ns else 0.0
    connected = totals["connected"]
    connect = {
        "clients": n_clients, "connected": connected, "failed": totals["failed"], "attempts": totals["attempts"],
        "seconds": round(connect_s, 3),
        "rate_per_s": round(connected / connect_s, 1) if connect_s > 0 else None,
        "handshake_ms": ms_summary(connect_us),
        "failures_by_reason": dict(sorted(final_failures.items())),
        "attempt_failures_by_reason": dict(sorted(attempt_failures.items())),
        "failure_examples": examples,
    }

    # --- the gateway
    server = _server_section(run, connected, totals["deliveries"])

    # --- deliveries, latency, loss
    sent: dict[tuple[int, int], int] = outcome.get("sent") or {}
    published = outcome.get("last_seq") or {}
    void = outcome.get("void") or {}
    subs = {ch: row[0] for ch, row in channels.items()}
    expected = sum((published.get(ch, 0) - void.get(ch, 0)) * subs.get(ch, 0) for ch in published)
    lost_alive = sum(row[4] for row in channels.values())
    lost_dropped = sum(row[5] for row in channels.values())
    deliveries = totals["deliveries"]
    window_s = None
    if sent and messages:
        t_first_sent = min(sent.values())
        t_last_recv = max(m[2] for m in messages.values())
        window_s = max(1e-9, (t_last_recv - t_first_sent) / 1e9)
    to_last = Histogram()
    spread = Histogram()
    complete = 0
    for key, (count, first, last) in messages.items():
        s = sent.get(key)
        if s is None:
            continue
        to_last.add(max(0, (last - s) // 1000))
        spread.add(max(0, (last - first) // 1000))
        if count >= subs.get(key[0], 0):
            complete += 1
    lost_per_channel = {
        plan.channels[ch]: {"subscribers": row[0], "received": row[1], "lost": row[4] + row[5],
                            "lost_on_dropped_connections": row[5], "gaps": row[2], "out_of_order": row[3]}
        for ch, row in sorted(channels.items()) if row[4] + row[5] or row[2] or row[3]
    }
    publishes = bool(outcome.get("publisher"))
    delivery = None
    if publishes:
        delivery = {
            "published": outcome["publisher"]["published"],
            "publish_s": outcome.get("publish_s"),
            "drain_s": outcome.get("drain_s"),
            "expected": expected,
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / window_s, 1) if window_s else None,
            "offered_deliveries_per_s": round(outcome.get("rate", 0) * sum(subs.values()), 1),
            "window_s": round(window_s, 3) if window_s else None,
            "latency_ms": ms_summary(latency),
            "latency_ms_by_profile": {p: ms_summary(Histogram.from_counts(c)) for p, c in sorted(by_profile.items())},
            "last_subscriber_ms": ms_summary(to_last),
            "first_to_last_subscriber_ms": ms_summary(spread),
            "messages_complete": complete,
            "messages_tracked": len([k for k in messages if k in sent]),
            "bytes_per_delivery": round(totals["rx_bytes_measured"] / deliveries, 1) if deliveries else None,
            "frame_bytes_per_delivery": round(totals["frame_bytes"] / deliveries, 1) if deliveries else None,
            "lost": lost_alive + lost_dropped,
            "lost_on_dropped_connections": lost_dropped,
            "out_of_order": sum(row[3] for row in channels.values()),
            "lost_per_channel": lost_per_channel,
            "foreign_channel_messages": totals["foreign"],
            "malformed": totals["malformed"],
            "publisher": outcome["publisher"],
        }
    series = []
    for sec in sorted(per_second):
        h = Histogram.from_counts(per_second[sec])
        row = {"t": sec, "n": h.n}
        for name, p in PERCENTILES:
            v = h.percentile(p)
            row[name] = None if v is None else round(v / 1000.0, 3)
        row["max"] = None if h.hi is None else round(h.hi / 1000.0, 3)
        series.append(row)

    alive_end = totals["alive"]
    heartbeats = {"ws_pings_answered": totals["pings_ws"], "engineio_pings_answered": totals["pings_eio"]}
    problems = []
    if totals["failed"]:
        problems.append(f"{totals['failed']} of {n_clients} clients failed to connect")
    if connected - alive_end:
        problems.append(f"{connected - alive_end} connections dropped during the run")
    if publishes:
        if lost_alive + lost_dropped:
            problems.append(f"{lost_alive + lost_dropped} deliveries lost")
        # (a scenario that retries a failed publish until it is accepted says how many it retried)
        unretried = outcome["publisher"]["errors"] - outcome["publisher"].get("errors_retried", 0)
        if unretried > 0:
            problems.append(f"{unretried} publish requests failed")
        if totals["malformed"]:
            problems.append(f"{totals['malformed']} malformed deliveries")
    if not children:
        problems.append("the client processes did not report")
    scenario_report = outcome.get("scenario_report")
    if scenario_report:
        problems.extend(scenario_report.get("problems", ()))

    clients = [{"pid": c["pid"], "clients": c["clients"], "connected": c["connected"], "cpu_s": c["cpu_s"],
                "maxrss_mb": round(c["maxrss_kb"] / 1024, 1)} for c in children]
    return {
        "fastgw_loadtest": 1,
        "version": __version__,
        "scenario": cfg["scenario"],
        "ok": not problems,
        "problems": problems,
        "started_utc": _iso(started_utc),
        "finished_utc": _iso(finished_utc),
        "config": config,
        "host": {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform()},
        "clock": CLOCK,
        "target": {"host": run.target.host, "port": run.target.port, "base_url": run.target.base_url},
        "plan": plan.summary(),
        "client_processes": {"count": len(run.procs), "sources": run.sources, "processes": clients},
        "connect": connect,
        "connections": {"connected": connected, "alive_at_end": alive_end,
                        "dropped": connected - alive_end, "dropped_by_reason": dropped},
        "heartbeats": heartbeats,
        "server": server,
        "delivery": delivery,
        "idle": {"held_s": outcome.get("held_s")} if "held_s" in outcome else None,
        # what the scenario measures beyond the common sections (storm, bmtc): its own
        # figures, its "rows" for the summary table and its "problems"
        "scenario_report": scenario_report,
        "latency_per_second": series,
        "latency_histogram_us": latency.to_dict(),
        "timeline": {"columns": ["t_s", "alive", "deliveries", "server_rss_bytes"], "rows": run.timeline},
    }


def _server_section(run: Any, connected: int, deliveries: int) -> dict[str, Any]:
    pids = list(run.server_pids)
    out: dict[str, Any] = {"pids": pids, "found_by": run.pid_source}
    if not pids:
        out["note"] = "no gateway process found: RSS and CPU not measured (give --server-pid)"
        return out
    labels = ("before", "after_connect", "end")
    per_pid = {}
    for pid in pids:
        row = {}
        for label in labels:
            s = run.samples.get(label, {}).get(pid)
            row[f"rss_{label}_bytes"] = s.rss_bytes if s else None
            row[f"cpu_{label}_s"] = s.cpu_s if s else None
        per_pid[str(pid)] = row

    def total(label: str, attr: str) -> float | None:
        samples = run.samples.get(label, {})
        if not samples:
            return None
        return sum(getattr(s, attr) for s in samples.values())

    rss_before, rss_after, rss_end = (total(x, "rss_bytes") for x in labels)
    cpu_before, cpu_after, cpu_end = (total(x, "cpu_s") for x in labels)
    out["processes"] = per_pid
    out["rss_before_bytes"] = rss_before
    out["rss_after_connect_bytes"] = rss_after
    out["rss_end_bytes"] = rss_end
    if rss_before is not None and rss_after is not None and connected:
        out["rss_per_connection_bytes"] = round((rss_after - rss_before) / connected, 1)
    if rss_before is not None and rss_end is not None and connected:
        out["rss_per_connection_at_end_bytes"] = round((rss_end - rss_before) / connected, 1)
    if cpu_before is not None and cpu_after is not None:
        out["cpu_connect_s"] = round(cpu_after - cpu_before, 3)
        if connected:
            out["cpu_per_connection_us"] = round((cpu_after - cpu_before) / connected * 1e6, 1)
    same_processes = set(run.samples.get("after_connect", {})) == set(run.samples.get("end", {}))
    if cpu_after is not None and cpu_end is not None and same_processes:
        out["cpu_run_s"] = round(cpu_end - cpu_after, 3)
        if deliveries:
            out["cpu_per_delivery_us"] = round((cpu_end - cpu_after) / deliveries * 1e6, 3)
    elif not same_processes:  # restarted (storm --trigger kill/term): CPU over the run not comparable
        out["restarted"] = True
    out["note"] = ("RSS is VmRSS of /proc/<pid>/status summed over the gateway processes; per connection = "
                   "(after connecting - before) / connected clients, meaningful against a freshly started "
                   "gateway (memory freed by earlier clients is reused without raising RSS); CPU is "
                   "utime+stime of /proc/<pid>/stat")
    return out


def write_json(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(report, indent=1, default=str) + "\n")


def write_chart(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """PNG: latency percentiles per second and the latency histogram (scenarios that publish),
    connections and gateway RSS over time (all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - the histogram axis formatter

    series = report.get("latency_per_second") or []
    hist = report.get("latency_histogram_us") or {}
    with_latency = bool(series) and bool(hist.get("n"))
    rows = 3 if with_latency else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.6 * rows), squeeze=False)
    title = (f"fastgw loadtest {report['scenario']}: {report['connect']['connected']:,} "
             f"{report['config']['protocol']} clients, {report['started_utc']}")
    fig.suptitle(title, fontsize=11)
    i = 0
    if with_latency:
        ax = axes[i][0]
        i += 1
        t = [r["t"] for r in series]
        for name, style in (("p50", "-"), ("p90", "-"), ("p99", "-"), ("max", ":")):
            ax.plot(t, [r[name] for r in series], style, marker=".", label=name)
        ax.set_xlabel("second of the run (by publish time)")
        ax.set_ylabel("latency, ms")
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title("end-to-end latency per second", fontsize=10)
        ax = axes[i][0]
        i += 1
        from fastgw.loadtest.histogram import bucket_bounds

        # re-binned into 60 equal bins on the log axis (the histogram's own buckets double in
        # width at every power of two, which would show as steps)
        buckets = sorted((int(b), c) for b, c in hist["counts"].items())
        lo = max(1.0, bucket_bounds(buckets[0][0])[0]) / 1000.0
        hi = (bucket_bounds(buckets[-1][0])[1] + 1) / 1000.0
        ratio = max(hi / lo, 1.0001) ** (1 / 60)
        edges = [lo * ratio**i for i in range(61)]
        counts = [0] * 60
        for b, c in buckets:
            low, high = bucket_bounds(b)
            mid = max((low + high) / 2.0 / 1000.0, lo)
            j = min(59, max(0, int(math.log(mid / lo) / math.log(ratio))))
            counts[j] += c
        ax.bar(edges[:-1], counts, width=[edges[j + 1] - edges[j] for j in range(60)], align="edge")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("latency, ms")
        ax.set_ylabel("deliveries")
        lat = report["delivery"]["latency_ms"] if report.get("delivery") else {}
        ax.set_title("latency histogram (p50 %s ms, p99 %s ms, max %s ms)"
                     % (lat.get("p50"), lat.get("p99"), lat.get("max")), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[i][0]
    rows_tl = report.get("timeline", {}).get("rows") or []
    t = [r[0] for r in rows_tl]
    ax.plot(t, [r[1] for r in rows_tl], color="tab:blue", marker=".", label="connections alive")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("connections alive", color="tab:blue")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(t, [r[3] / 2**20 for r in rows_tl], color="tab:red", marker=".", label="gateway RSS")
    ax2.set_ylabel("gateway RSS, MiB", color="tab:red")
    rss = report.get("server", {}).get("rss_per_connection_bytes")
    ax.set_title("connections and gateway RSS" + (f" ({rss:,.0f} B per connection)" if rss else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_table(report: dict[str, Any], console: Any = None) -> None:
    """The summary as a rich table (stdout by default)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"fastgw loadtest {report['scenario']} ({report['started_utc']})", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    c = report["connect"]
    cfg = report["config"]

    def row(name: str, value: Any) -> None:
        table.add_row(name, "-" if value is None else str(value))

    def n(v: Any) -> str:
        return "-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:,.1f}")

    row("clients / protocol", f"{c['clients']:,} {cfg['protocol']} ({report['config']['auth']})")
    row("client processes / sources", f"{report['client_processes']['count']} / "
        f"{', '.join(report['client_processes']['sources']) or 'kernel-chosen'}")
    row("connected / failed", f"{c['connected']:,} / {c['failed']:,}")
    row("connect time, rate", f"{c['seconds']:.1f} s, {n(c['rate_per_s'])}/s")
    hs = c["handshake_ms"]
    row("handshake p50 / p99 / max", f"{hs['p50']} / {hs['p99']} / {hs['max']} ms")
    if c["failures_by_reason"]:
        row("failures by reason", ", ".join(f"{k} {v}" for k, v in c["failures_by_reason"].items()))
    if c["attempt_failures_by_reason"]:
        row("failed attempts (retried)", ", ".join(f"{k} {v}" for k, v in c["attempt_failures_by_reason"].items()))
    conns = report["connections"]
    row("alive at end / dropped", f"{conns['alive_at_end']:,} / {conns['dropped']:,}")
    hb = report["heartbeats"]
    row("pings answered (ws / engine.io)", f"{hb['ws_pings_answered']:,} / {hb['engineio_pings_answered']:,}")
    s = report["server"]
    row("gateway pids", ", ".join(map(str, s["pids"])) or s.get("note"))
    if s.get("rss_before_bytes") is not None:
        row("gateway RSS before / after / end", " / ".join(
            "-" if s.get(k) is None else f"{s[k] / 2**20:,.1f} MiB"
            for k in ("rss_before_bytes", "rss_after_connect_bytes", "rss_end_bytes")))
        row("gateway RSS per connection", f"{n(s.get('rss_per_connection_bytes'))} B")
        row("gateway CPU per connection", f"{n(s.get('cpu_per_connection_us'))} µs")
    d = report.get("delivery")
    if d:
        lat = d["latency_ms"]
        last = d["last_subscriber_ms"]
        row("published / errors", f"{d['published']:,} / {d['publisher']['errors']:,}")
        row("deliveries / expected", f"{d['deliveries']:,} / {d['expected']:,}")
        row("deliveries/s (offered)", f"{n(d['deliveries_per_s'])} ({n(d['offered_deliveries_per_s'])})")
        row("latency p50 / p90 / p99", f"{lat['p50']} / {lat['p90']} / {lat['p99']} ms")
        row("latency p99.9 / max", f"{lat['p99.9']} / {lat['max']} ms")
        by_profile = d.get("latency_ms_by_profile") or {}
        if len(by_profile) > 1:
            for name, pl in by_profile.items():
                row(f"  {name}: p50 / p99 ({pl['n']:,})", f"{pl['p50']} / {pl['p99']} ms")
        row("last subscriber p50 / p99 / max", f"{last['p50']} / {last['p99']} / {last['max']} ms")
        row("bytes per delivery (wire / frames)", f"{n(d['bytes_per_delivery'])} / {n(d['frame_bytes_per_delivery'])}")
        row("lost / out of order", f"{d['lost']:,} / {d['out_of_order']:,}")
        if s.get("cpu_per_delivery_us") is not None:
            row("gateway CPU per delivery", f"{s['cpu_per_delivery_us']} µs")
    if report.get("idle"):
        row("held", f"{report['idle']['held_s']} s")
    for name, value in (report.get("scenario_report") or {}).get("rows", ()):
        row(name, value)
    row("result", "OK" if report["ok"] else "; ".join(report["problems"]))
    console.print(table)
