#!/usr/bin/env node
// The admin dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core.
//
//   node tests/browser/dashboard.mjs <base url> <admin token> <screenshot.png> [<non-admin token>]
//
// 1. /admin with a wrong token (the admin token with a broken signature): the login form
//    shows the "Token refused" error; with a non-admin token (if given): the "not an admin
//    token" error.
// 2. The admin token: the dashboard goes live over the WebSocket, the connections figure
//    shows a number >= 1, buses appear on the map and at least one of them moves (its
//    reported position read twice, 2.5 s apart, through window.__fastgwDashboard).
// 3. A screenshot of the dashboard goes to <screenshot.png>; its path is printed.
// 4. Sign out: the sign-in form is back, the token is forgotten, the page still responds.
//
// Exit 0 when all of that held; otherwise 1 with "dashboard test FAILED: <step>: <why>"
// (and a screenshot of the failure beside the requested one). The whole run is bounded by
// DASHBOARD_TIMEOUT_MS (default 90 s). Chromium: $CHROMIUM or /usr/bin/chromium (no browser
// is ever downloaded; scripts/test installs Debian's package and runs `npm ci` here).
import { existsSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";

const [baseUrl, token, screenshotArg, riderToken] = process.argv.slice(2);
if (!baseUrl || !token || !screenshotArg) {
  console.error("usage: node tests/browser/dashboard.mjs <base url> <admin token> <screenshot.png> [<non-admin token>]");
  process.exit(2);
}
const screenshot = resolve(screenshotArg);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const TOTAL_MS = Number(process.env.DASHBOARD_TIMEOUT_MS || 90000);
const STEP_MS = 20000;

function fail(message, code = 1) {
  console.error(`dashboard test FAILED: ${message}`);
  process.exit(code);
}

if (!existsSync(executablePath)) {
  fail(`Chromium not found at ${executablePath}: scripts/test installs it (apt-get install chromium), or set CHROMIUM`);
}
let chromium;
try {
  ({ chromium } = await import("playwright-core"));
} catch (err) {
  fail(`playwright-core is not installed (${err.code || err.message}): scripts/test runs npm ci in tests/browser`);
}

const watchdog = setTimeout(() => fail(`the whole run took more than ${TOTAL_MS} ms`, 3), TOTAL_MS);
const problems = [];  // page errors and unexpected console errors: the page must run cleanly
let browser;
let page;
let current = "launch Chromium";

async function step(name, fn) {
  current = name;
  const started = Date.now();
  const result = await fn();
  console.log(`ok   ${name} (${Date.now() - started} ms)`);
  return result;
}

/** page.evaluate has no timeout of its own: a page whose main thread hangs would hang us. */
function evaluate(fn, ms = 5000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the page did not answer within ${ms} ms (main thread stuck?)`)), ms);
  });
  return Promise.race([page.evaluate(fn), timeout]).finally(() => clearTimeout(timer));
}

async function signIn(value) {
  await page.fill("#token", value);
  await page.click("#login-submit");
}

try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: STEP_MS,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"],
  });
  const context = await browser.newContext({ viewport: { width: 1600, height: 960 }, deviceScaleFactor: 1 });
  page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  let expectRefusals = true;  // the negative checks make the browser log their 401/403
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = msg.text();
    if (expectRefusals && /status of 40[13]/.test(text)) return;
    problems.push(`console error (${current}): ${text.slice(0, 90)}`);
  });

  await step("open /admin", async () => {
    const resp = await page.goto(new URL("/admin", baseUrl).href, { waitUntil: "load" });
    if (!resp || resp.status() !== 200) throw new Error(`GET /admin answered ${resp && resp.status()}`);
    await page.waitForSelector("#login-form", { state: "visible" });
  });

  await step("a wrong token is refused with an error", async () => {
    const broken = token.slice(0, -4) + (token.endsWith("AAAA") ? "BBBB" : "AAAA");
    await signIn(broken);
    await page.waitForSelector("#login-error", { state: "visible" });
    const text = await page.textContent("#login-error");
    if (!/refused/i.test(text)) throw new Error(`unexpected error text: ${JSON.stringify(text)}`);
    if (await page.isVisible("#dashboard")) throw new Error("the dashboard is shown for a wrong token");
    console.log(`     error shown: ${text}`);
  });

  if (riderToken) {
    await step("a non-admin token is refused with an error", async () => {
      await signIn(riderToken);
      await page.waitForFunction(() => /not an admin token/.test(document.getElementById("login-error").textContent));
      if (await page.isVisible("#dashboard")) throw new Error("the dashboard is shown for a rider's token");
      console.log(`     error shown: ${await page.textContent("#login-error")}`);
    });
  }

  await step("sign in with the admin token; the WebSocket goes live", async () => {
    await signIn(token);
    await page.waitForSelector("#dashboard", { state: "visible" });
    if (await page.isVisible("#login-error")) throw new Error(await page.textContent("#login-error"));
    await page.waitForFunction(() => window.__fastgwDashboard && window.__fastgwDashboard.link() === "live");
    expectRefusals = false;
  });

  const connections = await step("the connections figure shows a number >= 1", async () => {
    await page.waitForFunction(() => {
      const el = document.getElementById("stat-connections");
      return /^\d[\d,]*$/.test(el.textContent.trim()) && Number(el.dataset.value) >= 1;
    });
    return page.textContent("#stat-connections");
  });
  console.log(`     connections: ${connections}`);

  await step("route shapes are drawn", async () => {
    await page.waitForFunction(() => /\d+ routes/.test(document.getElementById("map-info").textContent));
  });

  const moved = await step("buses are on the map and move", async () => {
    await page.waitForFunction(() => window.__fastgwDashboard.buses().length > 0
      && Number(document.getElementById("map").dataset.buses) > 0);
    const first = await evaluate(() => window.__fastgwDashboard.buses());
    await page.waitForTimeout(2500);
    const second = await evaluate(() => window.__fastgwDashboard.buses());
    const before = new Map(first.map((b) => [b.id, b]));
    const metres = (a, b) => Math.hypot((b.lat - a.lat) * 111320,
      (b.lon - a.lon) * 111320 * Math.cos(a.lat * Math.PI / 180));
    const movers = second.filter((b) => before.has(b.id) && metres(before.get(b.id), b) > 0)
      .map((b) => ({ ...b, from: before.get(b.id), m: metres(before.get(b.id), b) }))
      .sort((x, y) => y.m - x.m);
    if (!movers.length) throw new Error(`none of ${first.length} buses moved in 2.5 s`);
    const b = movers[0];
    // more than GPS noise (a few metres): a bus really went somewhere along its route
    if (b.m < 10) throw new Error(`buses only jittered in 2.5 s (at most ${b.m.toFixed(1)} m)`);
    console.log(`     ${movers.length} of ${second.length} buses moved; farthest ${b.id} (${b.route} ${b.direction}) `
      + `${b.m.toFixed(0)} m: ${b.from.lat},${b.from.lon} -> ${b.lat},${b.lon}`);
    return movers.length;
  });

  await step("figures filled in (rates, top channels, instances)", async () => {
    await page.waitForFunction(() => {
      const rows = document.querySelectorAll("#channels tbody tr td.num").length;
      const inst = document.querySelectorAll("#instances tbody tr td.num").length;
      return document.getElementById("stat-messages").dataset.value !== "" && rows > 0 && inst > 0;
    });
    await page.waitForTimeout(1500);  // a few more seconds of sparkline for the picture
  });

  await step("screenshot", async () => {
    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot });
  });
  await step("sign out: back to the sign-in form, token forgotten, page responsive", async () => {
    await page.click("#logout");
    await page.waitForSelector("#login-form", { state: "visible" });
    const after = await evaluate(() => ({
      saved: sessionStorage.getItem("fastgw.adminToken"),
      link: window.__fastgwDashboard.link(),
      dashboard: !document.getElementById("dashboard").hidden,
    }));
    if (after.saved !== null || after.dashboard || after.link !== "offline") {
      throw new Error(`after sign-out: ${JSON.stringify(after)}`);
    }
    await page.waitForTimeout(500);  // a few animation frames with the map hidden
    await evaluate(() => document.title);
  });

  if (problems.length) throw new Error(problems.join("; "));
  console.log(`DASHBOARD OK connections=${connections.trim()} moved=${moved} screenshot=${screenshot}`);
  console.log(`screenshot: ${screenshot}`);
} catch (err) {
  if (page) {
    const failed = screenshot.replace(/\.png$/, "") + "-failure.png";
    try {
      mkdirSync(dirname(failed), { recursive: true });
      await page.screenshot({ path: failed, timeout: 5000 });
      console.error(`failure screenshot: ${failed}`);
    } catch { /* the page is gone */ }
  }
  if (problems.length && !String(err.message).includes(problems[0])) console.error(problems.join("\n"));
  clearTimeout(watchdog);
  if (browser) await browser.close().catch(() => {});
  fail(`${current}: ${String(err.message).split("\n")[0]}`);
}
clearTimeout(watchdog);
await browser.close();
