"""Fixtures of the benchmarks (helpers are in ``_harness.py``).

Run from the repository root::

    pytest benchmarks                                   # full run, 10,000 connections
    FASTGW_BENCH_CONNECTIONS=200 pytest benchmarks --benchmark-disable -q   # smoke, < 30 s
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness  # noqa: E402
from _harness import (  # noqa: E402
    BURSTY_RESULTS,
    FANOUT_RESULTS,
    RESULTS_DIR,
    BenchConfig,
    BurstyConfig,
    Procs,
    bursty_summary,
    load_bursty_config,
    load_config,
    report,
    summary,
)

_BURSTY_CONFIG: list[BurstyConfig] = []  # the session's, for the terminal summary


@pytest.fixture(scope="session")
def bench_config() -> BenchConfig:
    return load_config()


@pytest.fixture
def procs(request):
    """Processes started by one test; all stopped (each by its pid) at teardown, pass or fail.

    Their logs go to ``benchmarks/results/logs/<test>/`` (git-ignored, replaced by the
    next run of the same test), not to pytest's tmp dir: other pytest runs on the same
    machine rotate that away, and a failed round's server log is what explains it.
    """
    log_dir = RESULTS_DIR / "logs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name).strip("_")
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    p = Procs(log_dir)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def pinned_controller(bench_config: BenchConfig):
    """Run this (trigger-firing) process on the fleet's CPU so it never steals the server's core."""
    if bench_config.fleet_cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {bench_config.fleet_cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="session")
def fanout_results() -> dict[str, _harness.FanoutResult]:
    return FANOUT_RESULTS


@pytest.fixture(scope="session")
def bursty_config(bench_config: BenchConfig, request) -> BurstyConfig:
    """Bursty benchmark knobs; a shorter sustained phase with --benchmark-disable (smoke mode)."""
    smoke = bool(request.config.getoption("benchmark_disable", default=False))
    cfg = load_bursty_config(bench_config, smoke)
    _BURSTY_CONFIG[:] = [cfg]
    return cfg


@pytest.fixture(scope="session")
def bursty_results() -> dict[str, _harness.BurstyResult]:
    return BURSTY_RESULTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the fan-out and bursty tables (also with --benchmark-disable) and write them as JSON."""
    if FANOUT_RESULTS:
        report(terminalreporter, "fan-out summary", *summary(FANOUT_RESULTS), load_config().results_path)
    if BURSTY_RESULTS:
        bcfg = _BURSTY_CONFIG[0] if _BURSTY_CONFIG else None
        report(terminalreporter, "bursty fan-out summary", *bursty_summary(BURSTY_RESULTS, bcfg),
               bcfg.results_path if bcfg is not None else None)
    for session_report in _harness.SESSION_SUMMARIES.values():  # e.g. test_bench_redis.py's table and JSON
        session_report(terminalreporter)
