"""Fan-out of one ~460-byte channel_message frame to N loopback WebSocket connections.

Four servers over the same client fleet design (``benchmarks/fleet.py``, its
own process, pinned to the other core):

* ``fastgw``: the real gateway, ``fastgw serve`` as a subprocess;
* ``naive``: ``benchmarks/peers/naive_aiohttp.py``, ``await ws.send_str`` per subscriber;
* ``floor``: ``benchmarks/peers/floor_writes.py``, one pre-built frame, one
  ``transport.write`` per subscriber: the limit for unbatched delivery;
* ``websockets``: ``benchmarks/peers/websockets_broadcast.py``, a ``websockets``
  (asyncio) server fanning out with ``websockets.broadcast`` (frames once, writes
  to every connection without awaiting). It serves WebSockets on its port and the
  publish endpoint (aiohttp, same process and loop) on a second port
  (``Target.publish_port``), so its publish POSTs go there.

A round publishes M messages with M HTTP POSTs fired back-to-back on one
keep-alive connection (each waits for its 200, none waits for deliveries) and
ends when every connection has parsed M more ``channel_message`` frames. The
round time runs from just before the first POST to the fleet's monotonic clock
at the last frame; deliveries/s = N*M / round time. Publish latency (~100 µs
of HTTP per message) is included and negligible against N writes per message.

Benchmarks measure; they never assert speed. The summary table (medians and
the ratios fastgw/floor, fastgw/naive, fastgw/websockets) is printed at the end
of the session and written to ``benchmarks/results/fanout-latest.json``.
"""

from __future__ import annotations

import statistics
import time

import pytest

from _harness import (  # benchmarks/ is on sys.path (conftest.py)
    SERVERS,
    BenchConfig,
    FanoutResult,
    Procs,
    Publisher,
    RoundRecord,
    Unavailable,
    connect_measured,
    fill_result,
    loadavg1,
    run_round,
    start_fleet,
)


@pytest.mark.parametrize("server", list(SERVERS))
def test_fanout(benchmark, server, bench_config: BenchConfig, procs: Procs, fanout_results, pinned_controller):
    cfg = bench_config
    n, m = cfg.connections, cfg.messages
    benchmark.group = f"fanout-{n}x{m}"
    try:
        target = SERVERS[server](procs, cfg)
    except Unavailable as exc:
        pytest.skip(str(exc))
    server_proc = procs.started[-1]
    result = FanoutResult(server=server, connections=n, messages=m, loadavg_before=loadavg1())
    fleet = start_fleet(procs, cfg, target.port, target.ws_path, name=f"fleet-{server}")
    failure = connect_measured(result, target, fleet, cfg, server_proc.log_tail)
    if failure:
        pytest.fail(failure)

    publisher = Publisher.for_target(target, timeout=cfg.round_timeout)
    records: list[RoundRecord] = []

    def one_round() -> None:
        records.append(run_round(target, fleet, publisher, cfg, log_tail=server_proc.log_tail))
        time.sleep(0.1)  # let ACKs drain between rounds

    try:
        benchmark.pedantic(one_round, rounds=cfg.rounds, warmup_rounds=cfg.warmup_rounds, iterations=1)
    finally:
        publisher.close()

    # With --benchmark-disable pedantic runs the target once, without warm-up.
    measured = records if benchmark.disabled else records[cfg.warmup_rounds : cfg.warmup_rounds + cfg.rounds]
    fill_result(result, measured, cfg)
    result.loadavg_after = loadavg1()
    stats = fleet.stats()
    result.frame_payload_bytes = int(stats.get("payload_len", 0))
    result.note = " ".join(x for x in (target.info, f"{stats['lost']} connections lost"
                                            if int(stats.get("lost", 0)) else "") if x)
    fanout_results[server] = result
    fleet.quit()

    benchmark.extra_info.update(
        {
            "connections": n,
            "messages_per_round": m,
            "deliveries_per_s_median": round(result.median),
            "deliveries_per_s": [round(x) for x in result.deliveries_per_s],
            "server_cpu_us_per_delivery_median": round(statistics.median(result.server_cpu_us_per_delivery), 3),
            "fleet_cpu_share_median": round(statistics.median(result.fleet_cpu_share), 3),
            "frame_payload_bytes": result.frame_payload_bytes,
            "connect_seconds": round(result.connect_seconds, 3),
        }
    )
