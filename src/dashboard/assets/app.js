// windlass dashboard: plain JS, no dependencies. Polls /api/v1/status and /metrics, keeps the
// last minutes in memory for the charts, follows /api/v1/logs (NDJSON) for the log tail.
"use strict";

const POLL_MS = 2000;
const HISTORY = 150; // points: 5 minutes at 2 s
const MAX_LOG_LINES = 600;

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

let token = sessionStorage.getItem("windlass-token") || "";
const apps = new Map(); // name -> { card, rows, charts, hist, prev }
let logApp = null; // null: every app
const logLines = [];

// ---------- formatting ----------
function bytes(n) {
  if (n == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${u[i]}`;
}
function since(s) {
  if (s == null) return "–";
  s = Math.max(0, Math.floor(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}
function num(v, digits = 1) {
  if (v == null || !isFinite(v)) return "–";
  if (v >= 1000) return v.toFixed(0);
  return v.toFixed(digits);
}
function ms(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  return seconds < 1 ? `${(seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0)} ms` : `${seconds.toFixed(2)} s`;
}

// ---------- HTTP ----------
function headers() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}
async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...headers(), ...(opts.headers || {}) } });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  return { status: r.status, ok: r.ok, body };
}

function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = `toast show${bad ? " bad" : ""}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = "toast"; }, bad ? 6000 : 3000);
}

function askToken() {
  return new Promise((resolve) => {
    const d = $("#token-dialog");
    $("#token-input").value = token;
    d.onclose = () => {
      if (d.returnValue === "ok") {
        token = $("#token-input").value.trim();
        sessionStorage.setItem("windlass-token", token);
        if (wakeLogs) wakeLogs();
        resolve(true);
      } else resolve(false);
    };
    d.showModal();
  });
}

// ---------- actions ----------
async function act(app, action, button) {
  const buttons = button.parentElement.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      let r = await api(`/api/v1/apps/${encodeURIComponent(app)}/${action}`, { method: "POST" });
      if (r.status === 404 && action === "reload") {
        // This supervisor has no reload yet: a restart is the closest action.
        action = "restart";
        r = await api(`/api/v1/apps/${encodeURIComponent(app)}/restart`, { method: "POST" });
      }
      if (r.status === 401) {
        const msg = (r.body && r.body.error) || "unauthorized";
        if (msg.includes("no token is configured")) {
          toast(`${msg}. ${(r.body && r.body.hint) || ""}`, true);
          return;
        }
        if (attempt === 0 && (await askToken())) continue;
        toast(msg, true);
        return;
      }
      if (!r.ok) {
        toast(`${action} ${app}: ${(r.body && r.body.error) || r.status}`, true);
        return;
      }
      toast((r.body && r.body.message) || `${app}: ${action} done`);
      poll();
      return;
    }
  } catch (e) {
    toast(`${action} ${app}: ${e}`, true);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// ---------- charts ----------
function drawChart(canvas, series, colors, fmt) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  }
  const c = canvas.getContext("2d");
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.clearRect(0, 0, w, h);
  let max = 0;
  for (const s of series) for (const v of s) if (v != null && isFinite(v)) max = Math.max(max, v);
  max = max > 0 ? max * 1.15 : 1;
  const top = 4, bottom = h - 14;
  c.strokeStyle = "#1d2a38"; c.lineWidth = 1;
  for (let i = 0; i <= 2; i++) {
    const y = Math.round(top + ((bottom - top) * i) / 2) + 0.5;
    c.beginPath(); c.moveTo(0, y); c.lineTo(w, y); c.stroke();
  }
  c.fillStyle = "#5d7186"; c.font = "10px system-ui, sans-serif";
  c.fillText(fmt(max), 2, top + 9);
  // The x axis spans what was collected (at least a minute), up to HISTORY points.
  const span = Math.min(HISTORY, Math.max(30, ...series.map((x) => x.length)));
  const secs = Math.round(((span - 1) * POLL_MS) / 1000);
  c.fillText(secs >= 120 ? `${Math.round(secs / 60)} min ago` : `${secs} s ago`, 2, h - 2);
  c.textAlign = "right"; c.fillText("now", w - 2, h - 2); c.textAlign = "left";
  series.forEach((s, k) => {
    const step = w / (span - 1);
    const x0 = w - (s.length - 1) * step;
    const pts = [];
    s.forEach((v, i) => { if (v != null && isFinite(v)) pts.push([x0 + i * step, bottom - ((bottom - top) * v) / max]); });
    if (pts.length < 2) return;
    if (k === 0) {
      const g = c.createLinearGradient(0, top, 0, bottom);
      g.addColorStop(0, colors[k] + "55"); g.addColorStop(1, colors[k] + "00");
      c.fillStyle = g; c.beginPath(); c.moveTo(pts[0][0], bottom);
      pts.forEach(([x, y]) => c.lineTo(x, y));
      c.lineTo(pts[pts.length - 1][0], bottom); c.closePath(); c.fill();
    }
    c.strokeStyle = colors[k]; c.lineWidth = 1.6; c.lineJoin = "round";
    c.beginPath(); pts.forEach(([x, y], i) => (i ? c.lineTo(x, y) : c.moveTo(x, y))); c.stroke();
  });
}

// ---------- /metrics parsing ----------
function parseMetrics(text) {
  // -> Map(app -> { requests, buckets: [[le, count]...] })
  const out = new Map();
  const get = (app) => {
    if (!out.has(app)) out.set(app, { requests: 0, buckets: [] });
    return out.get(app);
  };
  for (const line of text.split("\n")) {
    if (line.startsWith("windlass_proxy_requests_total{")) {
      const app = /app="([^"]*)"/.exec(line);
      if (app) get(app[1]).requests += parseFloat(line.slice(line.lastIndexOf(" ") + 1)) || 0;
    } else if (line.startsWith("windlass_proxy_request_duration_seconds_bucket{")) {
      const app = /app="([^"]*)"/.exec(line), le = /le="([^"]*)"/.exec(line);
      if (app && le) get(app[1]).buckets.push([le[1] === "+Inf" ? Infinity : parseFloat(le[1]), parseFloat(line.slice(line.lastIndexOf(" ") + 1)) || 0]);
    }
  }
  return out;
}
function quantile(q, deltas) {
  // deltas: cumulative [le, count] for one interval; linear interpolation like histogram_quantile.
  if (!deltas.length) return null;
  const total = deltas[deltas.length - 1][1];
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const [le, count] of deltas) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(count - prevCount, 1e-9);
    }
    prevLe = le; prevCount = count;
  }
  return prevLe;
}

// ---------- rendering ----------
function pill(state) { return el("span", `pill ${state}`, state); }

function ensureApp(a) {
  if (apps.has(a.name)) return apps.get(a.name);
  const card = el("section", "card app");
  card.dataset.app = a.name;
  const head = el("div", "app-head");
  const h = el("h2", null, a.name);
  const statePill = pill(a.state);
  statePill.dataset.field = "state";
  const port = el("span", "port", a.port ? `:${a.port}` : "no port");
  const actions = el("div", "actions");
  const reload = el("button", "primary", "Reload");
  reload.type = "button"; reload.dataset.action = "reload";
  reload.title = "Zero-downtime reload (falls back to restart when the supervisor has no reload)";
  const restart = el("button", null, "Restart");
  restart.type = "button"; restart.dataset.action = "restart";
  reload.onclick = () => act(a.name, "reload", reload);
  restart.onclick = () => act(a.name, "restart", restart);
  actions.append(reload, restart);
  head.append(h, statePill, port, actions);
  const table = el("table");
  const thead = el("thead"); const tr = el("tr");
  for (const t of ["#", "state", "pid", "port", "uptime", "restarts", "memory", "cpu", "last exit"]) tr.append(el("th", null, t));
  thead.append(tr); table.append(thead);
  const tbody = el("tbody"); table.append(tbody);
  const charts = el("div", "charts");
  const mk = (title) => {
    const box = el("div", "chart");
    const hd = el("div", "h"); const t = el("span", "t", title); const now = el("span", "now", "–");
    hd.append(t, now); const cv = el("canvas"); box.append(hd, cv); charts.append(box);
    return { now, cv };
  };
  const entry = {
    card, statePill, tbody, rows: new Map(),
    charts: { rps: mk("requests / s"), lat: mk("latency p50 · p99"), mem: mk("memory") },
    hist: { rps: [], p50: [], p99: [], mem: [] }, prev: null, hasPort: !!a.port,
  };
  card.append(head, table, charts);
  $("#apps").append(card);
  apps.set(a.name, entry);
  renderTabs();
  return entry;
}

function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

function renderInstances(entry, a) {
  for (const i of a.instances) {
    let row = entry.rows.get(i.index);
    if (!row) {
      const tr = el("tr"); tr.dataset.index = i.index;
      const cells = {};
      for (const f of ["index", "state", "pid", "port", "uptime", "restarts", "memory", "cpu", "exit"]) {
        const td = el("td"); td.dataset.field = f; tr.append(td); cells[f] = td;
      }
      const msg = el("tr"); const mtd = el("td", "msg"); mtd.colSpan = 9; msg.append(mtd); msg.hidden = true;
      entry.tbody.append(tr, msg);
      row = { cells, msg, mtd, prevCpu: null };
      entry.rows.set(i.index, row);
    }
    const c = row.cells;
    setText(c.index, String(i.index));
    if (c.state.textContent !== i.state) { c.state.replaceChildren(pill(i.state)); }
    setText(c.pid, i.pid == null ? "–" : String(i.pid));
    setText(c.port, i.port == null ? "–" : String(i.port));
    setText(c.uptime, since(i.uptime_secs));
    setText(c.restarts, String(i.restarts));
    setText(c.memory, bytes(i.memory_bytes));
    let cpu = "–";
    if (i.cpu_seconds != null) {
      const now = performance.now();
      if (row.prevCpu && row.prevCpu.pid === i.pid) {
        const dt = (now - row.prevCpu.at) / 1000;
        if (dt > 0) cpu = `${num((100 * (i.cpu_seconds - row.prevCpu.v)) / dt)}%`;
      } else if (i.uptime_secs > 0) cpu = `${num((100 * i.cpu_seconds) / i.uptime_secs)}%`;
      row.prevCpu = { v: i.cpu_seconds, at: now, pid: i.pid };
    }
    setText(c.cpu, cpu);
    let exit = "–";
    if (i.last_exit) exit = i.last_exit.signal ? `killed by ${i.last_exit.signal}` : `exit ${i.last_exit.code}`;
    setText(c.exit, exit);
    const note = [i.message, ...(i.state === "crashloop" || i.state === "fatal" ? i.last_stderr.slice(-3) : [])].filter(Boolean).join("  ·  ");
    row.msg.hidden = !note; setText(row.mtd, note);
  }
}

function push(arr, v) { arr.push(v); if (arr.length > HISTORY) arr.shift(); }

function updateCharts(entry, a, m) {
  const mem = a.instances.reduce((s, i) => s + (i.memory_bytes || 0), 0);
  push(entry.hist.mem, mem);
  entry.card.dataset.samples = String(entry.hist.mem.length);
  const now = performance.now();
  let rps = null, p50 = null, p99 = null;
  if (m && entry.prev) {
    const dt = (now - entry.prev.at) / 1000;
    if (dt > 0 && m.requests >= entry.prev.requests) rps = (m.requests - entry.prev.requests) / dt;
    const prevB = new Map(entry.prev.buckets.map(([le, c]) => [le, c]));
    const d = m.buckets.map(([le, c]) => [le, c - (prevB.get(le) || 0)]).sort((x, y) => x[0] - y[0]);
    p50 = quantile(0.5, d); p99 = quantile(0.99, d);
  }
  if (m) entry.prev = { at: now, requests: m.requests, buckets: m.buckets };
  push(entry.hist.rps, rps); push(entry.hist.p50, p50); push(entry.hist.p99, p99);
  const ch = entry.charts;
  if (entry.hasPort) {
    ch.rps.now.textContent = rps == null ? "–" : num(rps);
    ch.lat.now.replaceChildren(document.createTextNode(ms(p50)), el("small", null, `p99 ${ms(p99)}`));
  } else {
    ch.rps.now.textContent = "no port"; ch.lat.now.textContent = "no port";
  }
  ch.mem.now.textContent = bytes(mem);
  drawChart(ch.rps.cv, [entry.hist.rps], ["#38bdf8"], (v) => num(v));
  drawChart(ch.lat.cv, [entry.hist.p99, entry.hist.p50], ["#a78bfa", "#34d399"], ms);
  drawChart(ch.mem.cv, [entry.hist.mem], ["#fbbf24"], bytes);
}

function renderSummary(s, metrics) {
  const inst = s.apps.flatMap((a) => a.instances);
  const running = inst.filter((i) => i.state === "running").length;
  const failing = inst.filter((i) => i.state === "crashloop" || i.state === "fatal").length;
  const mem = inst.reduce((t, i) => t + (i.memory_bytes || 0), 0);
  const restarts = inst.reduce((t, i) => t + i.restarts, 0);
  let rps = 0, any = false;
  for (const e of apps.values()) { const v = e.hist.rps[e.hist.rps.length - 1]; if (v != null) { rps += v; any = true; } }
  const stats = [
    ["apps", String(s.apps.length)], ["instances running", `${running} / ${inst.length}`],
    ["failing", String(failing)], ["requests / s", any ? num(rps) : "–"],
    ["app memory", bytes(mem)], ["restarts", String(restarts)],
  ];
  const box = $("#summary");
  if (box.children.length !== stats.length) {
    box.replaceChildren(...stats.map(([k]) => { const d = el("div", "stat"); d.append(el("div", "k", k), el("div", "v")); return d; }));
  }
  stats.forEach(([, v], i) => setText(box.children[i].lastChild, v));
  const sup = s.supervisor;
  const meta = $("#meta");
  meta.replaceChildren(
    document.createTextNode("config "), el("b", null, sup.config),
    document.createTextNode(` · pid ${sup.pid} · up ${since(Date.now() / 1000 - sup.started_at)} · ${bytes(sup.memory_bytes)} · v${sup.windlass_version}`),
  );
  void metrics;
}

function setConn(ok, text) {
  const c = $("#conn");
  c.className = `conn ${ok ? "ok" : "bad"}`;
  $("#conn-text").textContent = text;
}

async function poll() {
  try {
    const [st, mt] = await Promise.all([
      api("/api/v1/status"),
      fetch("/metrics", { headers: headers() }).then((r) => (r.ok ? r.text() : "")).catch(() => ""),
    ]);
    if (st.status === 401) {
      setConn(false, "token needed");
      if (await askToken()) return poll();
      return;
    }
    if (!st.ok || !st.body) { setConn(false, `error ${st.status}`); return; }
    setConn(true, "live");
    const metrics = parseMetrics(mt);
    for (const a of st.body.apps) {
      const e = ensureApp(a);
      e.statePill.className = `pill ${a.state}`;
      setText(e.statePill, a.state);
      renderInstances(e, a);
      updateCharts(e, a, metrics.get(a.name));
    }
    renderSummary(st.body, metrics);
    document.body.dataset.ready = "1";
  } catch (e) {
    setConn(false, "supervisor unreachable");
  }
}

// ---------- logs ----------
function renderTabs() {
  const tabs = $("#log-tabs");
  const names = [null, ...apps.keys()];
  tabs.replaceChildren(...names.map((n) => {
    const b = el("button", n === logApp ? "on" : null, n == null ? "all" : n);
    b.type = "button";
    b.onclick = () => { logApp = n; renderTabs(); renderLog(); };
    return b;
  }));
}
function logNode(l) {
  const frag = document.createDocumentFragment();
  frag.append(el("span", "ts", l.ts.slice(11, 23) + " "));
  frag.append(el("span", "who", (l.instance == null ? l.app : `${l.app}.${l.instance}`) + " "));
  frag.append(el("span", l.stream === "err" ? "err" : l.stream === "windlass" ? "wl" : null, l.line + "\n"));
  return frag;
}
function renderLog() {
  const pre = $("#log");
  pre.replaceChildren(...logLines.filter((l) => logApp == null || l.app === logApp).map(logNode));
  if ($("#log-follow").checked) pre.scrollTop = pre.scrollHeight;
}
function addLog(l) {
  logLines.push(l);
  if (logLines.length > MAX_LOG_LINES) logLines.shift();
  if (logApp != null && l.app !== logApp) return;
  const pre = $("#log");
  pre.append(logNode(l));
  while (pre.childNodes.length > MAX_LOG_LINES * 3) pre.removeChild(pre.firstChild);
  if ($("#log-follow").checked) pre.scrollTop = pre.scrollHeight;
}
// Log lines need the token (they show what the apps print): until it is given, the panel
// says so, and the tail starts as soon as it is.
let wakeLogs = null;
function logNote(text) {
  $("#log").replaceChildren(el("span", "wl", text));
}
async function followLogs() {
  for (;;) {
    try {
      const r = await fetch("/api/v1/logs?follow=true&n=100", { headers: headers() });
      if (r.status === 401 || r.status === 403) {
        let body = null;
        try { body = await r.json(); } catch (_) { /* not JSON */ }
        if (r.status === 401 && !token) logNote("Log lines need the admin token: press Token (top right).");
        else logNote(`${(body && body.error) || r.status}. ${(body && body.hint) || ""}`);
        await new Promise((res) => { wakeLogs = res; setTimeout(res, r.status === 403 ? 30000 : 3000); });
        wakeLogs = null;
        continue;
      }
      if (r.ok && r.body) {
        renderLog();
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
            if (line) { try { addLog(JSON.parse(line)); } catch (_) { /* partial */ } }
          }
        }
      }
    } catch (_) { /* reconnect below */ }
    await new Promise((res) => setTimeout(res, 3000));
    logLines.length = 0;
  }
}

$("#token-btn").onclick = () => askToken();
poll();
setInterval(poll, POLL_MS);
followLogs();
