"""``fastgw loadtest storm``: every client dropped at once, and how they come back.

Real gateways (a ``fastgw serve`` process; ``--workers 2`` with a real redis-server for the
restart triggers), real client processes and sockets on loopback. What is asserted is
behaviour (everyone back, sessions resumed or subscribed again, offline queues replayed and
acknowledged, nothing lost), never a speed.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from fastgw.auth import mint_token
from fastgw.loadtest import procstats
from fastgw.loadtest.controller import LoadtestConfig, check_config, run_loadtest
from tests.test_loadtest import SECRET, loadtest_cli, serve  # noqa: F401 - the serve fixture
from tests.test_workers import start_workers  # noqa: F401 - the start_workers fixture

def storm_config(port: int, **kw) -> LoadtestConfig:
    base = dict(scenario="storm", url=f"http://127.0.0.1:{port}", clients=300, processes=2, sources="2",
                jwt_secret=SECRET, channels_per_client=2, notification_share=0.5, outage=1.0,
                reconnect_base=0.3, reconnect_cap=2.0, storm_deadline=40.0, drain_timeout=10.0)
    base.update(kw)
    return LoadtestConfig(**base)


async def gateway_stats(port: int) -> dict:
    headers = {"Authorization": "Bearer " + mint_token("ops", secret=SECRET, admin=True)}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/api/stats", headers=headers) as r:
            return await r.json()


def check_notifications(storm: dict, replayed_at_least: int) -> None:
    n = storm["notifications"]
    assert n["published"] == n["users"] > 0  # one each (--notifications 1), every one accepted
    assert n["delivered"] == n["published"] and n["lost"] == 0 and n["duplicates_or_reordered"] == 0
    assert n["replayed_from_queue"] >= replayed_at_least
    assert n["replayed_from_queue"] + n["delivered_live"] == n["delivered"]
    assert n["acks_sent"] == n["queue_syncs"] >= n["replayed_from_queue"] > 0  # every replay acknowledged


async def test_drop_every_client_resumes_and_gets_its_queued_notifications(serve, tmp_path):
    """The network drops all 300 clients for 1 s: each comes back with jitter, resumes its session
    (channels restored), and the notification published meanwhile comes from its offline queue."""
    gw = await serve()
    cfg = storm_config(gw.port, report_path=str(tmp_path / "storm.json"), chart_path=str(tmp_path / "storm.png"))
    report = await run_loadtest(cfg)
    assert report["ok"], report["problems"]
    storm = report["scenario_report"]
    assert storm["trigger"] == "drop" and storm["clients_before"] == 300
    assert storm["lost"] == storm["back"] == 300 and storm["gave_up"] == 0
    # nobody could be back before the network was: the outage is 1 s
    assert storm["back_after_start_ms"]["min"] >= 1000 and storm["all_back_s"] >= 1.0
    assert storm["back_after_start_ms"]["max"] <= storm["all_back_s"] * 1000 + 1
    assert storm["resumed"] == {"recovered": 300, "partial": 0, "unknown_session_subscribed_again": 0}
    assert storm["failed_attempts_by_reason"] == {}
    # the notifications went out during the outage: all of them were replayed from the queues
    check_notifications(storm, replayed_at_least=storm["notifications"]["published"])
    assert report["connections"]["alive_at_end"] == 300
    rows = dict(storm["rows"])
    assert rows["clients lost / back / gave up"] == "300 / 300 / 0"
    assert json.loads((tmp_path / "storm.json").read_text())["scenario_report"]["back"] == 300
    # the gateway agrees: 300 sessions resumed, the queue replayed what was published
    stats = await gateway_stats(gw.port)
    assert stats["recovery"]["resumes"]["recovered"] >= 300
    assert stats["connections"]["opened"] >= 600  # (the clients are gone by now: the run stopped them)


async def test_kill_restarted_workers_lose_sessions_not_notifications(start_workers, redis_url, tmp_path):
    """SIGKILL to both workers of `serve --workers 2 --redis`: the supervisor restarts them, the
    clients back off through the refused connects, find their sessions gone (a crash saves
    nothing), subscribe again, and get the notifications kept in Redis meanwhile."""
    gw = start_workers("--redis", redis_url, "--no-simulator", "--jwt-secret", SECRET, "--connect-rate", "0",
                       "--connect-rate-per-ip", "0")
    await gw.wait_serving()
    before = set(gw.children())
    report = await run_loadtest(storm_config(gw.port, trigger="kill", clients=200))
    assert report["ok"], report["problems"]
    storm = report["scenario_report"]
    assert sorted(storm["signalled_pids"]) == sorted(before)
    assert storm["lost"] == storm["back"] == 200 and storm["gave_up"] == 0
    assert storm["resumed"]["unknown_session_subscribed_again"] == 200
    assert storm["failed_attempts_by_reason"].get("ECONNREFUSED", 0) > 0  # nobody listened for ~1 s
    check_notifications(storm, replayed_at_least=1)
    after = gw.children()
    assert len(after) == 2 and not (after & before)  # two new workers
    assert report["server"]["restarted"] is True and sorted(report["server"]["pids"]) == sorted(after)
    assert not any(procstats.alive(pid) for pid in before)


async def test_term_drains_with_reconnect_advice_and_sessions_resume(start_workers, redis_url):
    """SIGTERM to both workers: they drain (``reconnect`` advice, 1001, sessions saved in Redis)
    and are restarted; the clients follow the advice and resume their sessions."""
    gw = start_workers("--redis", redis_url, "--no-simulator", "--jwt-secret", SECRET, "--connect-rate", "0",
                       "--connect-rate-per-ip", "0", "--drain-period", "1")
    await gw.wait_serving()
    report = await run_loadtest(storm_config(gw.port, trigger="term", clients=200))
    assert report["ok"], report["problems"]
    storm = report["scenario_report"]
    assert storm["lost"] == storm["back"] == 200 and storm["gave_up"] == 0
    assert storm["drain_reconnect_advice"] == 200
    assert storm["resumed"]["recovered"] + storm["resumed"]["partial"] == 200
    n = storm["notifications"]
    assert n["published"] == n["delivered"] and n["lost"] == 0


async def test_clients_that_cannot_come_back_are_reported(serve):
    """The gateway is gone for good (SIGKILL, no supervisor): every client gives up at the
    deadline, and the run says so."""
    gw = await serve()
    report = await run_loadtest(storm_config(gw.port, trigger="kill", clients=50, processes=1, sources="none",
                                             storm_deadline=3.0, notification_share=0.0, drain_timeout=0.5))
    assert gw.proc.wait(10) is not None
    storm = report["scenario_report"]
    assert storm["lost"] == 50 and storm["back"] == 0 and storm["gave_up"] == 50
    assert not report["ok"] and "storm: 50 clients did not come back within --storm-deadline" in report["problems"]
    assert storm["target"]["met"] is False


def test_storm_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="--jwt-secret"):
        check_config(LoadtestConfig(scenario="storm", url="http://127.0.0.1:1"))
    with pytest.raises(ValueError, match="native protocol"):
        check_config(LoadtestConfig(scenario="storm", url="http://127.0.0.1:1", protocol="socketio",
                                    jwt_secret=SECRET))
    proc = loadtest_cli("storm", "--url", "http://127.0.0.1:9", "--jwt-secret", SECRET, "--outage", "-1")
    assert proc.returncode == 2 and "--outage" in proc.stderr
