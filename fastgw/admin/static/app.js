/* fastgw admin dashboard: sign-in, the WebSocket, the figures.
 *
 * 1. The admin token (pasted into the form, kept in sessionStorage) is checked with
 *    GET /admin/api/session (401: refused, 403: not an admin token).
 * 2. GET /admin/api/shapes: the route shapes for the map.
 * 3. WebSocket /ws?token=… (the default `full` profile, JSON text frames), subscribed to
 *    system:all_updates (every bus position) and system:stats (each gateway node's
 *    system_stats message, once a second). Reconnects with backoff, or when a draining
 *    instance sends `reconnect`; a token refused on reconnect (expired) sends the user
 *    back to the sign-in form.
 *
 * window.__fastgwDashboard exposes what the page shows, for tests and for the console.
 */
"use strict";

(function () {
  const TOKEN_KEY = "fastgw.adminToken";
  const STATS_FRESH_MS = 5000;      // a node's stats older than this no longer count
  const HISTORY = 120;              // seconds of throughput history in the sparkline
  const $ = (id) => document.getElementById(id);
  const esc = window.fastgwEscape;

  const state = {
    token: null,
    session: null,       // GET /admin/api/session
    ws: null,
    welcomed: false,
    retry: 0,
    retryTimer: null,
    link: "offline",
    nodes: new Map(),    // node id -> {m: system_stats, at: Date.now()}
    instances: null,     // {list, at} from the newest system_stats
    history: [],         // [{msg, del, conn}] once a second
    lastUpdates: 0,
    updatesPerS: 0,
  };
  const map = new window.BusMap($("map"), $("map-tip"));

  /* ---------- sign-in ---------- */

  async function signIn(token) {
    $("login-busy").hidden = false;
    $("login-error").hidden = true;
    let resp;
    try {
      resp = await fetch("/admin/api/session", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    } catch (err) {
      return refuse(`The gateway did not answer (${err.message}).`);
    } finally {
      $("login-busy").hidden = true;
    }
    if (resp.status === 401 || resp.status === 403) {
      const body = await resp.json().catch(() => ({}));
      return refuse(resp.status === 403
        ? "This token is valid but it is not an admin token (it needs \"admin\": true)."
        : `Token refused: ${body.message || "unauthorized"}.`);
    }
    if (!resp.ok) return refuse(`Unexpected answer from the gateway: HTTP ${resp.status}.`);
    state.session = await resp.json();
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("who").textContent = `${state.session.user} @ ${state.session.node} (${state.session.engine})`;
    if (state.session.attribution) $("attribution").textContent = state.session.attribution;
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("logout").hidden = false;
    loadShapes();
    connect();
  }

  function refuse(message) {
    signOut();
    setLink("refused", "refused");
    const el = $("login-error");
    el.textContent = message;
    el.hidden = false;
  }

  function signOut() {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(state.retryTimer);
    if (state.ws) { const ws = state.ws; state.ws = null; ws.close(1000); }
    $("dashboard").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("who").textContent = "";
    setLink("offline", "signed out");
  }

  async function loadShapes() {
    try {
      const resp = await fetch("/admin/api/shapes", { headers: { Authorization: `Bearer ${state.token}` } });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const doc = await resp.json();
      map.setShapes(doc);
      $("map-info").textContent = `${doc.routes.length} routes · ${doc.feed_version}`;
      const legend = $("legend");
      legend.replaceChildren(...map.legendGroups().map((g) => {
        const item = document.createElement("span");
        const swatch = document.createElement("i");
        swatch.style.background = g.color;  // CSSOM: allowed by the page's CSP, inline style="" is not
        item.append(swatch, `${g.label} (${g.n} routes)`);
        return item;
      }));
    } catch (err) {
      $("map-info").textContent = `route shapes unavailable (${err.message})`;
    }
  }

  /* ---------- the WebSocket ---------- */

  function connect() {
    clearTimeout(state.retryTimer);
    if (!state.token) return;
    if (state.ws) {  // moving away from a draining instance: the old socket is let go
      const old = state.ws;
      state.ws = null;
      old.close(1000);
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws?token=${encodeURIComponent(state.token)}`);
    state.ws = ws;
    state.welcomed = false;
    setLink("connecting", "connecting…");
    ws.onmessage = (ev) => { if (ws === state.ws) onFrame(ev.data); };
    ws.onclose = (ev) => onClose(ws, ev);
  }

  function send(frame) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
  }

  function onFrame(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    switch (frame.type) {
      case "welcome":
        state.welcomed = true;
        state.retry = 0;
        setLink("live", "live");
        $("banner").hidden = true;
        send({ type: "subscribe", id: "updates", channel: state.session.channels.updates });
        send({ type: "subscribe", id: "stats", channel: state.session.channels.stats });
        break;
      case "reconnect": {  // the instance is draining (docs/protocol.md): move when it says
        const ms = Math.max(0, frame.retryAfterMs || 0) + Math.random() * 500;
        setLink("connecting", `instance draining · reconnecting in ${(ms / 1000).toFixed(1)} s`);
        clearTimeout(state.retryTimer);
        state.retryTimer = setTimeout(connect, ms);
        break;
      }
      case "error":
        showBanner(`The gateway answered ${frame.code}: ${frame.message}`);
        break;
      case "channel_message":
        onChannelMessage(frame);
        break;
      case "batched_messages":
        (frame.batches || []).forEach(onChannelMessage);
        break;
      default:  // subscribed, pong, ...: nothing to show
    }
  }

  function onChannelMessage(envelope) {
    const m = envelope.message;
    if (!m) return;
    if (m.type === "location_update") map.update(m, performance.now());
    else if (m.type === "system_stats") onStats(m);
  }

  async function onClose(ws, ev) {
    if (ws !== state.ws || !state.token) return;  // replaced, or signed out
    state.ws = null;
    if (!state.welcomed) {  // refused before the upgrade? (browsers do not say why)
      try {
        const resp = await fetch("/admin/api/session", { headers: { Authorization: `Bearer ${state.token}` }, cache: "no-store" });
        if (resp.status === 401 || resp.status === 403) {
          const body = await resp.json().catch(() => ({}));
          return refuse(`The gateway no longer accepts this token: ${body.message || resp.status}. Sign in again.`);
        }
      } catch { /* gateway down: retry below */ }
    }
    clearTimeout(state.retryTimer);
    const delay = Math.min(15, 2 ** state.retry) * (0.5 + Math.random() / 2);
    state.retry += 1;
    setLink("connecting", `reconnecting in ${delay.toFixed(1)} s (closed ${ev.code || "?"})`);
    state.retryTimer = setTimeout(connect, delay * 1000);
  }

  function setLink(kind, text) {
    state.link = kind;
    $("link").dataset.state = kind;
    $("link-text").textContent = text;
  }

  function showBanner(text) {
    $("banner").textContent = text;
    $("banner").hidden = false;
  }

  /* ---------- figures ---------- */

  function onStats(m) {
    const at = Date.now();
    state.nodes.set(m.node, { m, at });
    if (Array.isArray(m.instances)) state.instances = { list: m.instances, at };
    else if (m.instances === null) state.instances = { list: null, at };
    render();
  }

  /** The figures over every node heard from recently (one node without Redis). */
  function aggregate() {
    const now = Date.now();
    const fresh = [...state.nodes.values()].filter((n) => now - n.at < STATS_FRESH_MS).map((n) => n.m);
    if (!fresh.length) return null;
    const sum = (k) => fresh.reduce((a, m) => a + (m[k] || 0), 0);
    const worst = (field, k) => {
      const v = fresh.map((m) => m[field] && m[field][k]).filter((x) => typeof x === "number");
      return v.length ? Math.max(...v) : null;
    };
    const channels = new Map();
    for (const m of fresh) for (const c of m.top_channels || []) channels.set(c.channel, (channels.get(c.channel) || 0) + c.subscribers);
    const top = [...channels].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 10);
    return {
      nodes: fresh.length,
      connections: sum("connections"),
      messages_per_s: sum("messages_per_s"),
      deliveries_per_s: sum("deliveries_per_s"),
      p50: worst("latency_ms", "p50"),
      p99: worst("latency_ms", "p99"),
      gw50: worst("gateway_latency_ms", "p50"),
      gw99: worst("gateway_latency_ms", "p99"),
      channels: sum("channels"),
      subscriptions: sum("subscriptions"),
      top,
    };
  }

  function render() {
    const a = aggregate();
    $("dashboard").querySelector(".tiles").classList.toggle("stale", !a);
    if (!a) return;
    setTile("stat-connections", a.connections, fmtInt(a.connections));
    $("stat-connections-sub").textContent = a.nodes > 1 ? `on ${a.nodes} instances` : "on this instance";
    setTile("stat-messages", a.messages_per_s, fmtRate(a.messages_per_s));
    setTile("stat-deliveries", a.deliveries_per_s, fmtRate(a.deliveries_per_s));
    $("stat-deliveries-sub").textContent = `to ${fmtInt(a.subscriptions)} subscriptions`;
    setTile("stat-p50", a.p50, fmtMs(a.p50));
    setTile("stat-p99", a.p99, fmtMs(a.p99));
    // delivery latency: the message's source timestamp → socket write; "gateway": from
    // the gateway's publish → socket write (what the gateway itself, and Redis, add)
    const where = a.nodes > 1 ? ` · worst of ${a.nodes}` : "";
    const sub = (total, own) => total === null ? "not measured"
      : own === null ? `source → socket${where}` : `gateway's own ${fmtMs(own, true)}${where}`;
    $("stat-p50-sub").textContent = sub(a.p50, a.gw50);
    $("stat-p99-sub").textContent = sub(a.p99, a.gw99);
    renderChannels(a);
    renderInstances();
  }

  function setTile(id, value, html) {
    const el = $(id);
    el.dataset.value = value === null || value === undefined ? "" : String(value);
    el.innerHTML = html;
  }

  function renderChannels(a) {
    const max = a.top.length ? a.top[0][1] : 1;
    $("channels-info").textContent = `${fmtInt(a.channels)} channels · ${fmtInt(a.subscriptions)} subscriptions`;
    $("channels").tBodies[0].innerHTML = a.top.length
      ? a.top.map(([name, n]) => `<tr><td title="${esc(name)}">${esc(name)}</td>` +
          `<td class="num"><span class="bar" data-w="${(100 * n / max).toFixed(1)}%"><span>${fmtInt(n)}</span></span></td></tr>`).join("")
      : `<tr><td colspan="2" class="muted">no subscriptions</td></tr>`;
    for (const bar of $("channels").querySelectorAll(".bar")) bar.style.setProperty("--w", bar.dataset.w);
  }

  function renderInstances() {
    const body = $("instances").tBodies[0];
    const inst = state.instances;
    if (inst && inst.list === null) {
      body.innerHTML = `<tr><td colspan="5" class="muted">the engine (Redis) is unreachable</td></tr>`;
      return;
    }
    const list = inst && inst.list.length ? inst.list : [...state.nodes.keys()].map((node) => ({ node }));
    const now = Date.now();
    $("instances-info").textContent = `${list.length} live · ${state.session ? state.session.engine : ""}`;
    body.innerHTML = list.map((i) => {
      const n = state.nodes.get(i.node);
      const fresh = n && now - n.at < STATS_FRESH_MS ? n.m : null;
      const conns = typeof i.connections === "number" ? i.connections : fresh ? fresh.connections : null;
      const me = state.session && i.node === state.session.node;
      const addr = i.host ? `${i.host}:${i.port ?? ""}` : me ? location.host : "";
      return `<tr><td class="${me ? "me" : ""}" title="${me ? "this page's instance" : ""}">${esc(i.node)}${me ? " ★" : ""}</td>` +
        `<td class="num">${conns === null ? "–" : fmtInt(conns)}</td>` +
        `<td class="num">${fresh ? fmtRate(fresh.messages_per_s) : "–"}</td>` +
        `<td class="num">${fresh ? fmtMs(fresh.latency_ms && fresh.latency_ms.p99, true) : "–"}</td>` +
        `<td title="${esc(addr)}">${esc(addr)}</td></tr>`;
    }).join("");
  }

  /* once a second: bus counts, history, staleness */
  setInterval(() => {
    if (!state.token) return;
    const a = aggregate();
    state.updatesPerS = map.updates - state.lastUpdates;
    state.lastUpdates = map.updates;
    setTile("stat-buses", map.buses.size, fmtInt(map.buses.size));
    $("stat-buses-sub").textContent = `${fmtInt(state.updatesPerS)} position updates/s`;
    state.history.push(a ? { msg: a.messages_per_s, del: a.deliveries_per_s, conn: a.connections } : null);
    if (state.history.length > HISTORY) state.history.shift();
    drawSpark();
    const newest = Math.max(0, ...[...state.nodes.values()].map((n) => n.at));
    const age = newest ? (Date.now() - newest) / 1000 : null;
    $("stats-age").textContent = age === null ? "waiting for system:stats…" : `stats ${age.toFixed(1)} s ago`;
    if (!a) render();
  }, 1000);

  function drawSpark() {
    const c = $("spark");
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const pts = state.history;
    const top = 14, bottom = h - 2;
    const css = getComputedStyle(document.documentElement);
    const maxRate = Math.max(1, ...pts.filter(Boolean).map((p) => Math.max(p.msg, p.del)));
    const maxConn = Math.max(1, ...pts.filter(Boolean).map((p) => p.conn));
    g.strokeStyle = "rgba(139, 152, 165, 0.15)";
    g.lineWidth = 1;
    for (const f of [0, 0.5, 1]) {
      const y = bottom - f * (bottom - top);
      g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke();
    }
    const line = (key, max, color, dash) => {
      g.strokeStyle = color;
      g.lineWidth = 1.6;
      g.setLineDash(dash);
      g.beginPath();
      let started = false;
      pts.forEach((p, i) => {
        const x = w - (pts.length - 1 - i) * (w / (HISTORY - 1));
        if (!p) { started = false; return; }
        const y = bottom - (p[key] / max) * (bottom - top);
        started ? g.lineTo(x, y) : g.moveTo(x, y);
        started = true;
      });
      g.stroke();
      g.setLineDash([]);
    };
    line("del", maxRate, css.getPropertyValue("--del").trim(), []);
    line("msg", maxRate, css.getPropertyValue("--msg").trim(), []);
    line("conn", maxConn, css.getPropertyValue("--conn").trim(), [4, 3]);
    g.fillStyle = "rgba(139, 152, 165, 0.9)";
    g.font = "10.5px system-ui, 'DejaVu Sans', sans-serif";
    g.fillText(`${fmtRate(maxRate)}/s`, 2, 10);
    g.textAlign = "right";
    g.fillText(`${fmtInt(maxConn)} conns`, w - 2, 10);
    g.textAlign = "start";
  }

  /* ---------- formatting ---------- */

  const intFormat = new Intl.NumberFormat("en");
  function fmtInt(v) { return typeof v === "number" ? intFormat.format(Math.round(v)) : "–"; }
  function fmtRate(v) {
    if (typeof v !== "number") return "–";
    if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
    if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
    return v >= 100 ? intFormat.format(Math.round(v)) : v.toFixed(1);
  }
  function fmtMs(v, plain) {
    if (typeof v !== "number") return "–";
    const s = v < 1 ? v.toFixed(2) : v < 10 ? v.toFixed(1) : Math.round(v).toString();
    return plain ? `${s} ms` : `${s}<span class="unit">ms</span>`;
  }

  /* ---------- wiring ---------- */

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    if (token) signIn(token);
  });
  $("logout").addEventListener("click", () => { signOut(); $("token").value = ""; });

  window.__fastgwDashboard = {
    /** "offline" | "connecting" | "live" | "refused" */
    link: () => state.link,
    /** Summed over the nodes heard from in the last 5 s, or null before the first system:stats. */
    stats: () => aggregate(),
    /** The reported position of every bus on the map: [{id, route, direction, lat, lon, moves, seen}]. */
    buses: () => map.positions(),
    updates: () => map.updates,
  };

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
})();
