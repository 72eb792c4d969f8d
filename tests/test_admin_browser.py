"""The admin dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core.

``tests/browser/dashboard.mjs`` (Node) opens ``/admin`` of a gateway started here with the
simulator on, checks that a wrong token and a rider's token are refused with an error on
the login form, signs in with an admin token, waits for the connections figure (>= 1) and
for buses that move on the map, and saves a screenshot (``tests/artifacts/``, or
``$FASTGW_ARTIFACTS``). ``scripts/test`` installs what it needs: Debian's ``chromium`` and
``npm ci`` in ``tests/browser``. Without them this test fails; it never skips.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import IMPLEMENTATIONS, token

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
SCRIPT = BROWSER_DIR / "dashboard.mjs"
ARTIFACTS = Path(os.environ.get("FASTGW_ARTIFACTS", ROOT / "tests" / "artifacts"))
SCREENSHOT = ARTIFACTS / "admin-dashboard.png"
#: The Node script bounds itself (DASHBOARD_TIMEOUT_MS); this is the outer bound.
NODE_TIMEOUT = 120.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _prerequisites() -> tuple[str, str]:
    """``(node, chromium)`` paths, or a failure that says how to get them."""
    chromium = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        pytest.fail(f"Chromium not found at {chromium}: scripts/test installs it (apt-get install chromium) "
                    "and exports CHROMIUM")
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the browser test needs Node.js >= 20 (scripts/test checks for it)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        pytest.fail("tests/browser/node_modules is missing playwright-core: scripts/test installs it "
                    "(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)")
    return node, chromium


# One hot path is enough here: the page's WebSocket is an ordinary JSON client.
@pytest.mark.parametrize("hot_path", [IMPLEMENTATIONS["cython"]], ids=["cython"])
async def test_dashboard_in_chromium(start_gateway):
    node, chromium = _prerequisites()
    gateway = await start_gateway(simulator=True, simulator_interval=0.5)
    for stale in (SCREENSHOT, SCREENSHOT.with_name(SCREENSHOT.stem + "-failure.png")):
        stale.unlink(missing_ok=True)
    env = {**os.environ, "CHROMIUM": chromium, "DASHBOARD_TIMEOUT_MS": str(int((NODE_TIMEOUT - 15) * 1000))}
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), f"http://127.0.0.1:{gateway.port}", token("ops", admin=True), str(SCREENSHOT),
        token("rider42"),
        cwd=str(BROWSER_DIR), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:  # the gateway runs on this event loop: wait without blocking it
        out, err = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"dashboard.mjs did not finish in {NODE_TIMEOUT:.0f} s\n{out.decode()}\n{err.decode()}")
    output = out.decode() + err.decode()
    print(output)
    assert proc.returncode == 0, f"dashboard.mjs exited with {proc.returncode}:\n{output}"
    assert "DASHBOARD OK" in output and "Token refused" in output and "not an admin token" in output
    assert SCREENSHOT.is_file(), f"no screenshot at {SCREENSHOT}"
    assert SCREENSHOT.read_bytes()[:8] == PNG_MAGIC and SCREENSHOT.stat().st_size > 10_000
    print(f"screenshot: {SCREENSHOT}")
