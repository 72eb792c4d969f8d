/* The live map: route shapes and buses on a canvas. No tiles, no library.
 *
 * Projection: equirectangular around the feed's centre (longitude scaled by
 * cos(latitude)), which is exact enough over one city. The route shapes are drawn
 * once per view change into an offscreen canvas; buses are drawn every animation
 * frame on top, each gliding from its previous reported position to its newest
 * one over about one update interval.
 */
"use strict";

(function () {
  const ROUTE_GROUPS = {  // the colours of the GTFS subset (transit/data/NOTICE.md)
    "#1565C0": "Vajra (AC)",
    "#F9A825": "Airport (KIA)",
    "#2E7D32": "G- routes",
    "#C62828": "other routes",
  };
  const STALE_MS = 10000;   // a bus not heard from for this long is drawn faded
  const GONE_MS = 30000;    // and removed after this long
  const GLIDE_MAX_MS = 2000;

  class BusMap {
    constructor(canvas, tip) {
      this.canvas = canvas;
      this.tip = tip;
      this.ctx = canvas.getContext("2d");
      this.routes = [];          // [{route_id, short_name, color, directions: {UP: [[lat, lon], ...]}}]
      this.routeById = new Map();
      this.buses = new Map();    // vehicle_id -> bus state
      this.updates = 0;          // location updates received
      this.bbox = null;          // [minLat, minLon, maxLat, maxLon]
      this.zoom = 1;
      this.panX = 0;
      this.panY = 0;
      this.hover = null;
      this.base = document.createElement("canvas");
      this.baseDirty = true;
      this.size = { w: 0, h: 0, dpr: 1 };
      this._bindInput();
      new ResizeObserver(() => this._resize()).observe(canvas.parentElement);
      this._resize();
      const frame = (now) => { this._draw(now); requestAnimationFrame(frame); };
      requestAnimationFrame(frame);
    }

    /* ---- data ---- */

    setShapes(doc) {
      const scale = doc.scale;
      this.routes = doc.routes.map((route) => {
        const directions = {};
        for (const [dir, d] of Object.entries(route.directions)) {
          const pts = [];
          let lat = 0, lon = 0;
          for (let i = 0; i < d.points.length; i += 2) {  // delta-encoded 1e-5 degree integers
            lat += d.points[i];
            lon += d.points[i + 1];
            pts.push([lat / scale, lon / scale]);
          }
          directions[dir] = pts;
        }
        return { ...route, directions };
      });
      this.routeById = new Map(this.routes.map((r) => [r.route_id, r]));
      this.bbox = doc.bbox;
      this.baseDirty = true;
    }

    update(msg, receivedAt) {
      if (typeof msg.latitude !== "number" || typeof msg.longitude !== "number") return;
      this.updates += 1;
      let bus = this.buses.get(msg.vehicle_id);
      if (!bus) {
        bus = { id: msg.vehicle_id, fromLat: msg.latitude, fromLon: msg.longitude, t0: receivedAt, glide: 0, moves: 0 };
        this.buses.set(msg.vehicle_id, bus);
      } else {
        const p = this._interpolated(bus, receivedAt);
        bus.fromLat = p[0];
        bus.fromLon = p[1];
        bus.glide = Math.min(GLIDE_MAX_MS, Math.max(200, receivedAt - bus.seen));
        bus.t0 = receivedAt;
        if (msg.latitude !== bus.lat || msg.longitude !== bus.lon) bus.moves += 1;
      }
      bus.lat = msg.latitude;
      bus.lon = msg.longitude;
      bus.seen = receivedAt;
      bus.msg = msg;
    }

    /** Reported positions (not the animated ones): what the browser test reads. */
    positions() {
      return Array.from(this.buses.values(), (b) => ({
        id: b.id, route: b.msg.route_id, direction: b.msg.direction, lat: b.lat, lon: b.lon, moves: b.moves, seen: b.seen,
      }));
    }

    legendGroups() {
      const counts = new Map();
      for (const r of this.routes) counts.set(r.color.toUpperCase(), (counts.get(r.color.toUpperCase()) || 0) + 1);
      return Array.from(counts, ([color, n]) => ({ color, n, label: ROUTE_GROUPS[color] || color }));
    }

    /* ---- view ---- */

    _resize() {
      const rect = this.canvas.parentElement.getBoundingClientRect();
      const dpr = window.devicePixelRatio || 1;
      this.size = { w: Math.max(1, rect.width), h: Math.max(1, rect.height), dpr };
      for (const c of [this.canvas, this.base]) {
        c.width = Math.round(this.size.w * dpr);
        c.height = Math.round(this.size.h * dpr);
      }
      this.baseDirty = true;
    }

    _fit() {  // the scale (px per projected unit) and origin that fit the bbox, before zoom/pan
      const [minLat, minLon, maxLat, maxLon] = this.bbox;
      const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
      const pad = 24;
      const w = (maxLon - minLon) * k, h = maxLat - minLat;
      const s = Math.max(1e-6, Math.min((this.size.w - 2 * pad) / w, (this.size.h - 2 * pad) / h));
      return { k, s, cx: (minLon + maxLon) / 2, cy: (minLat + maxLat) / 2 };
    }

    project(lat, lon) {
      const f = this._fitCache;
      const s = f.s * this.zoom;
      return [this.size.w / 2 + this.panX + (lon - f.cx) * f.k * s, this.size.h / 2 + this.panY - (lat - f.cy) * s];
    }

    _unproject(x, y) {
      const f = this._fitCache;
      const s = f.s * this.zoom;
      return [f.cy - (y - this.size.h / 2 - this.panY) / s, f.cx + (x - this.size.w / 2 - this.panX) / (f.k * s)];
    }

    _zoomAt(x, y, factor) {
      const z = Math.min(40, Math.max(1, this.zoom * factor));
      factor = z / this.zoom;
      this.panX = x - this.size.w / 2 - (x - this.size.w / 2 - this.panX) * factor;
      this.panY = y - this.size.h / 2 - (y - this.size.h / 2 - this.panY) * factor;
      this.zoom = z;
      if (z === 1) { this.panX = 0; this.panY = 0; }
      this.baseDirty = true;
    }

    _bindInput() {
      const c = this.canvas;
      c.addEventListener("wheel", (e) => {
        e.preventDefault();
        const r = c.getBoundingClientRect();
        this._zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.0015));
      }, { passive: false });
      c.addEventListener("dblclick", () => { this.zoom = 1; this.panX = 0; this.panY = 0; this.baseDirty = true; });
      let drag = null;
      c.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY }; c.setPointerCapture(e.pointerId); c.classList.add("dragging"); });
      c.addEventListener("pointerup", () => { drag = null; c.classList.remove("dragging"); });
      c.addEventListener("pointermove", (e) => {
        const r = c.getBoundingClientRect();
        if (drag) {
          this.panX += e.clientX - drag.x;
          this.panY += e.clientY - drag.y;
          drag = { x: e.clientX, y: e.clientY };
          this.baseDirty = true;
        }
        this.hover = { x: e.clientX - r.left, y: e.clientY - r.top };
      });
      c.addEventListener("pointerleave", () => { this.hover = null; });
    }

    /* ---- drawing ---- */

    _drawBase() {
      const { w, h, dpr } = this.size;
      const g = this.base.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      this._drawGrid(g, w, h);
      g.lineJoin = "round";
      g.lineCap = "round";
      g.lineWidth = this.zoom > 4 ? 2.5 : 1.6;
      for (const route of this.routes) {
        g.strokeStyle = route.color;
        g.globalAlpha = 0.6;
        for (const pts of Object.values(route.directions)) {
          g.beginPath();
          pts.forEach(([lat, lon], i) => {
            const [x, y] = this.project(lat, lon);
            i ? g.lineTo(x, y) : g.moveTo(x, y);
          });
          g.stroke();
        }
      }
      g.globalAlpha = 1;
      if (this.zoom >= 3) this._drawRouteLabels(g);
      this._drawScale(g, w, h);
    }

    _drawGrid(g, w, h) {  // a faint 0.05° graticule with labels at the edges
      const step = this.zoom >= 6 ? 0.01 : 0.05;
      const [lat0, lon0] = this._unproject(0, h);
      const [lat1, lon1] = this._unproject(w, 0);
      if ((lat1 - lat0) / step > 400 || (lon1 - lon0) / step > 400) return;  // degenerate view
      g.strokeStyle = "rgba(139, 152, 165, 0.09)";
      g.fillStyle = "rgba(139, 152, 165, 0.45)";
      g.lineWidth = 1;
      g.font = "10px ui-monospace, 'DejaVu Sans Mono', monospace";
      for (let lat = Math.ceil(lat0 / step) * step; lat <= lat1; lat += step) {
        const [, y] = this.project(lat, lon0);
        g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke();
        g.fillText(lat.toFixed(2) + "°N", 4, y - 3);
      }
      for (let lon = Math.ceil(lon0 / step) * step; lon <= lon1; lon += step) {
        const [x] = this.project(lat0, lon);
        g.beginPath(); g.moveTo(x, 0); g.lineTo(x, h); g.stroke();
        g.fillText(lon.toFixed(2) + "°E", x + 3, 12);
      }
    }

    _drawRouteLabels(g) {  // route numbers at the middle of each direction when zoomed in
      g.font = "600 11px system-ui, 'DejaVu Sans', sans-serif";
      g.textAlign = "center";
      for (const route of this.routes) {
        const pts = route.directions.UP || Object.values(route.directions)[0];
        if (!pts || !pts.length) continue;
        const [x, y] = this.project(...pts[Math.floor(pts.length / 2)]);
        if (x < 0 || y < 0 || x > this.size.w || y > this.size.h) continue;
        g.fillStyle = "rgba(13, 17, 23, 0.8)";
        const tw = g.measureText(route.short_name).width + 8;
        g.fillRect(x - tw / 2, y - 8, tw, 15);
        g.fillStyle = route.color;
        g.fillText(route.short_name, x, y + 3);
      }
      g.textAlign = "start";
    }

    _drawScale(g, w, h) {  // a round-number scale bar, bottom left
      const f = this._fitCache;
      const pxPerKm = (f.s * this.zoom) / 111.32;
      const km = [0.5, 1, 2, 5, 10, 20].find((d) => d * pxPerKm >= 70) || 20;
      const len = km * pxPerKm;
      const x = 14, y = h - 16;
      g.strokeStyle = "rgba(230, 237, 243, 0.7)";
      g.lineWidth = 2;
      g.beginPath(); g.moveTo(x, y - 5); g.lineTo(x, y); g.lineTo(x + len, y); g.lineTo(x + len, y - 5); g.stroke();
      g.fillStyle = "rgba(230, 237, 243, 0.8)";
      g.font = "11px system-ui, 'DejaVu Sans', sans-serif";
      g.fillText(km + " km", x + len + 6, y);
    }

    _interpolated(bus, now) {
      if (!bus.glide) return [bus.lat ?? bus.fromLat, bus.lon ?? bus.fromLon];
      const t = Math.min(1, Math.max(0, (now - bus.t0) / bus.glide));
      return [bus.fromLat + (bus.lat - bus.fromLat) * t, bus.fromLon + (bus.lon - bus.fromLon) * t];
    }

    _draw() {
      const now = performance.now();
      const { w, h, dpr } = this.size;
      const g = this.ctx;
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      if (!this.bbox || w < 60 || h < 60) return;  // not laid out (hidden, signed out): nothing to draw
      this._fitCache = this._fit();
      if (this.baseDirty) { this._drawBase(); this.baseDirty = false; }
      g.drawImage(this.base, 0, 0, w, h);

      let nearest = null, nearestD = 12;
      const r = this.zoom > 4 ? 5 : 3.6;
      for (const [id, bus] of this.buses) {
        const age = now - bus.seen;
        if (age > GONE_MS) { this.buses.delete(id); continue; }
        const [lat, lon] = this._interpolated(bus, now);
        const [x, y] = this.project(lat, lon);
        bus.x = x; bus.y = y;
        if (x < -10 || y < -10 || x > w + 10 || y > h + 10) continue;
        const route = this.routeById.get(bus.msg.route_id);
        const color = route ? route.color : "#2dd4bf";
        g.globalAlpha = age > STALE_MS ? 0.35 : 1;
        const rad = ((bus.msg.heading || 0) - 90) * Math.PI / 180;  // heading tick
        g.strokeStyle = color;
        g.lineWidth = 2;
        g.beginPath(); g.moveTo(x, y); g.lineTo(x + Math.cos(rad) * (r + 5), y + Math.sin(rad) * (r + 5)); g.stroke();
        g.fillStyle = color;
        g.strokeStyle = "#f0f6fc";
        g.lineWidth = 1.2;
        g.beginPath(); g.arc(x, y, r, 0, 2 * Math.PI); g.fill(); g.stroke();
        if (this.hover) {
          const d = Math.hypot(this.hover.x - x, this.hover.y - y);
          if (d < nearestD) { nearest = bus; nearestD = d; }
        }
      }
      g.globalAlpha = 1;
      if (nearest) {
        g.strokeStyle = "#ffffff";
        g.lineWidth = 2;
        g.beginPath(); g.arc(nearest.x, nearest.y, r + 4, 0, 2 * Math.PI); g.stroke();
      }
      this._showTip(nearest, now);
      this.canvas.dataset.buses = String(this.buses.size);
      this.canvas.dataset.updates = String(this.updates);
    }

    _showTip(bus, now) {
      if (!bus) { this.tip.hidden = true; return; }
      const m = bus.msg;
      const lines = [
        `<b>${esc(m.route_id)}</b> ${esc(m.direction)} · ${esc(m.vehicle_id)}`,
        `${fmt1(m.speed)} km/h · heading ${Math.round(m.heading || 0)}°`,
        m.next_stop_name ? `next: ${esc(m.next_stop_name)} (${Math.round(m.distance_to_next_stop || 0)} m)` : "",
        `confidence ${fmt2(m.confidence)} · ${m.contributor_count ?? "?"} reports · ${((now - bus.seen) / 1000).toFixed(1)} s ago`,
      ].filter(Boolean);
      this.tip.innerHTML = lines.join("<br>");
      this.tip.hidden = false;
      const x = Math.min(bus.x + 14, this.size.w - this.tip.offsetWidth - 6);
      const y = bus.y + 14 + this.tip.offsetHeight > this.size.h ? bus.y - this.tip.offsetHeight - 10 : bus.y + 14;
      this.tip.style.left = `${Math.max(4, x)}px`;
      this.tip.style.top = `${Math.max(4, y)}px`;
    }
  }

  function esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  const fmt1 = (v) => (typeof v === "number" ? v.toFixed(1) : "–");
  const fmt2 = (v) => (typeof v === "number" ? v.toFixed(2) : "–");

  window.BusMap = BusMap;
  window.fastgwEscape = esc;
})();
