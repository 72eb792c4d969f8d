"""Fan-out A/B with interleaved rounds: all servers up at once, one round each in turn.

The pytest benchmarks (``test_bench_fanout.py``) measure the servers one after
the other; on a shared 2-core machine background load drifts between them and
moves the ratios. This script keeps every server and its fleet connected at the
same time and runs round 1 of each, then round 2 of each (the order rotates
every round), so drift hits all of them alike. Same fleet, same trigger, same
round definition and the same summary table as the pytest run.

    python benchmarks/interleaved.py                       # fastgw naive floor websockets, 5 rounds (+1 warm-up)
    python benchmarks/interleaved.py --rounds 9 floor fastgw
    python benchmarks/interleaved.py fastgw websockets floor
    python benchmarks/interleaved.py fastgw fastgw-py floor   # + fastgw on its pure-Python hot path
    FASTGW_BENCH_CONNECTIONS=2000 python benchmarks/interleaved.py

Needs 2 fds per connection per server across processes (each server and each
fleet holds N); N <= 19,000 as for the pytest run. Writes
``benchmarks/results/fanout-interleaved-latest.json``; process logs go to
``benchmarks/results/logs/interleaved/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    BENCH_DIR,
    RESULTS_DIR,
    EXTRA_SERVERS,
    SERVERS,
    FanoutResult,
    Procs,
    Publisher,
    RoundRecord,
    connect_measured,
    fill_result,
    load_config,
    loadavg1,
    run_round,
    start_fleet,
    summary,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    available = {**SERVERS, **EXTRA_SERVERS}
    p.add_argument("servers", nargs="*",
                   help=f"any of {', '.join(available)} (default: {' '.join(SERVERS)})")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds per server")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds per server (not counted)")
    p.add_argument("--output", default=str(BENCH_DIR / "results" / "fanout-interleaved-latest.json"))
    args = p.parse_args()
    args.servers = args.servers or list(SERVERS)
    unknown = [s for s in args.servers if s not in available]
    if unknown:
        p.error(f"unknown server(s) {unknown}; choose from {list(available)}")
    cfg = load_config()
    n, m = cfg.connections, cfg.messages
    log_dir = RESULTS_DIR / "logs" / "interleaved"  # git-ignored; replaced by the next run
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(log_dir)
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cfg.fleet_cpu is not None:
        os.sched_setaffinity(0, {cfg.fleet_cpu})  # the trigger never runs on the server's core
    setups = {}
    ok_run = False
    results: dict[str, FanoutResult] = {}
    records: dict[str, list[RoundRecord]] = {}
    try:
        for name in args.servers:
            target = available[name](procs, cfg)
            server_proc = procs.started[-1]
            res = FanoutResult(server=name, connections=n, messages=m, loadavg_before=loadavg1())
            fleet = start_fleet(procs, cfg, target.port, target.ws_path, name=f"fleet-{name}")
            failure = connect_measured(res, target, fleet, cfg, server_proc.log_tail)
            if failure:
                raise RuntimeError(failure)
            publisher = Publisher.for_target(target, timeout=cfg.round_timeout)
            setups[name] = (target, fleet, publisher, server_proc)
            results[name] = res
            records[name] = []
            print(f"{name}: {n} connected in {res.connect_seconds:.2f}s", flush=True)

        names = list(setups)
        for r in range(args.warmup + args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                target, fleet, publisher, server_proc = setups[name]
                rec = run_round(target, fleet, publisher, cfg, log_tail=server_proc.log_tail)
                if r >= args.warmup:
                    records[name].append(rec)
                time.sleep(0.1)
            done = ", ".join(f"{k} {records[k][-1].deliveries_per_s:,.0f}" for k in names if records[k])
            print(f"round {r + 1}/{args.warmup + args.rounds}{' (warm-up)' if r < args.warmup else ''}: {done}",
                  flush=True)

        for name, (target, fleet, publisher, _) in setups.items():
            res = results[name]
            fill_result(res, records[name], cfg)
            res.loadavg_after = loadavg1()
            stats = fleet.stats()
            res.frame_payload_bytes = int(stats.get("payload_len", 0))
            res.note = " ".join(x for x in (target.info, f"{stats['lost']} connections lost"
                                            if int(stats.get("lost", 0)) else "") if x)
        lines, doc = summary(results)
        doc["mode"] = f"interleaved, {args.rounds} measured rounds + {args.warmup} warm-up per server"
        print("\n".join(lines))
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"written to {out}")
        ok_run = True
        return 0
    finally:
        for target, fleet, publisher, _ in setups.values():
            publisher.close()
            fleet.quit()
        procs.stop_all()
        if before is not None:
            os.sched_setaffinity(0, before)
        if not ok_run:
            print(f"process logs: {log_dir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
