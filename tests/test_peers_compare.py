"""``benchmarks/peers/compare.py`` at a tiny size: fastgw and the naive aiohttp peer, both
scenarios, one invocation. Behaviour only (both rows measured, nothing lost, every server
stopped); no speed thresholds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "benchmarks" / "peers" / "compare.py"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_compare_runs_fastgw_and_the_naive_peer_side_by_side(tmp_path):
    report = tmp_path / "compare.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}
    proc = subprocess.run([sys.executable, str(COMPARE), "--clients", "50", "--rate", "10", "--duration", "1",
                           "--idle-clients", "50", "--servers", "fastgw,naive-aiohttp", "--report", str(report),
                           "--workdir", str(tmp_path / "runs")],
                          cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fastgw" in proc.stdout and "naive-aiohttp" in proc.stdout  # the printed table
    data = json.loads(report.read_text())
    assert data["started_utc"].endswith("Z") and data["git_commit"] and data["command"]
    rows = {r["server"]: r for r in data["table"]}
    assert set(rows) == {"fastgw", "naive-aiohttp"}
    for name, row in rows.items():
        assert row["deliveries"] and row["deliveries"] > 0, (name, row)
        assert row["deliveries"] == row["expected"], (name, row)
        assert row["lost"] == 0, (name, row)
        assert row["p50_ms"] is not None and row["p99_ms"] is not None and row["p50_ms"] <= row["p99_ms"]
        assert row["idle_connected"] == 50, (name, row)
        assert row["rss_per_connection_bytes"] is not None, (name, row)
        assert not row["notes"], (name, row)
    runs = data["runs"]
    assert {(r["server"], r["scenario"]) for r in runs} == {(s, c) for s in rows for c in ("fanout", "idle")}
    for r in runs:
        assert not r.get("error"), r.get("error")
        assert r["loadtest_command"][:4] == [sys.executable, "-m", "fastgw", "loadtest"]
        assert r["server_command"] and r["loadtest_exit"] == 0
        assert r["server_stopped_by"] == "SIGTERM"
        assert not alive(r["server_pid"])  # every server it started is gone
        assert r["report"]["server"]["pids"] == [r["server_pid"]]


def test_publish_url_option_is_resolved_and_checked():
    import pytest

    from fastgw.loadtest.controller import LoadtestConfig, check_config, publish_url

    cfg = LoadtestConfig(scenario="fanout", jwt_secret="x" * 32)
    assert publish_url(cfg) is None  # the target's own /api/publish
    cfg.publish_url = "127.0.0.1:9001"
    assert publish_url(cfg) == "http://127.0.0.1:9001/api/publish"
    cfg.publish_url = "http://127.0.0.1:9001/publish"
    assert publish_url(cfg) == "http://127.0.0.1:9001/publish"
    check_config(cfg)
    cfg.publish_url = "https://127.0.0.1:9001/api/publish"
    with pytest.raises(ValueError, match="publish-url"):
        check_config(cfg)
