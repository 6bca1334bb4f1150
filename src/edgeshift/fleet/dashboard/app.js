// The fleet dashboard: polls the operator routes (docs/fleet.md) and draws what they answer.
// Every string from the server reaches the page through textContent or setAttribute, never as
// markup: device labels and error messages are operator- or device-supplied.
"use strict";

const TOKEN_KEY = "edgeshift.fleet.token";
const REFRESH_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";
const ACTIVE_STATES = new Set(["pending", "running", "paused"]);
// One plot per gate metric; `gate` names the threshold in RolloutSpec.gates.
const METRICS = [
  { key: "install_success", label: "Install success", gate: "min_install_success" },
  { key: "p95_ratio", label: "p95 ratio (candidate / last-good)", gate: "max_p95_ratio" },
  { key: "error_rate", label: "Error rate", gate: "max_error_rate" },
  { key: "shadow_agreement", label: "Shadow agreement", gate: "min_shadow_agreement" },
];

const state = { selected: null, timer: null, busy: false };

class AuthError extends Error {}

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path) {
  let resp;
  try {
    resp = await fetch(path, {
      headers: { Authorization: "Bearer " + token(), Accept: "application/json" },
      cache: "no-store",
    });
  } catch (err) {
    throw new Error("control plane unreachable (" + err.message + "); retrying every " +
      REFRESH_MS / 1000 + " s");
  }
  let body = null;
  try { body = await resp.json(); } catch (err) { body = null; }
  const message = body && typeof body.error === "string" ? body.error : resp.statusText;
  if (resp.status === 401 || resp.status === 403) {
    throw new AuthError("token refused (" + resp.status + " " + message +
      "): enter a valid operator token");
  }
  if (!resp.ok) throw new Error(path + " answered " + resp.status + ": " + message);
  return body;
}

function showError(text) {
  const line = $("error-line");
  line.textContent = text;
  line.hidden = !text;
}

function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return Number(value).toFixed(digits);
}

function ago(ts) {
  if (ts === null || ts === undefined) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 120) return Math.round(s) + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

// --- summary -------------------------------------------------------------------------------

function renderSummary(summary, devices, rollouts) {
  const dl = $("summary");
  dl.replaceChildren();
  const add = (name, value, key) => {
    const div = el("div");
    if (key) div.dataset.key = key;
    div.append(el("dt", name), el("dd", value));
    dl.append(div);
  };
  const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});
  if (summary && typeof summary === "object") {
    // /v1/summary (fleet/api.py summarize): device counts, by version, by phase, rollouts.
    const d = obj(summary.devices);
    for (const k of ["total", "online", "offline", "revoked"]) {
      if (typeof d[k] === "number") add("devices " + k, d[k], "devices." + k);
    }
    for (const [version, c] of Object.entries(obj(summary.by_version))) {
      add(version, (obj(c).online || 0) + " online, " + (obj(c).offline || 0) + " offline", "version." + version);
    }
    for (const [phase, n] of Object.entries(obj(summary.by_phase))) add(phase, n, "phase." + phase);
    const active = Array.isArray(summary.active_rollouts) ? summary.active_rollouts.length : null;
    if (active !== null) add("active rollouts", active, "rollouts.active");
    return;
  }
  // Without /v1/summary, the same headline counts from the lists.
  const live = devices.filter((d) => !d.revoked);
  const online = live.filter((d) => d.online).length;
  add("devices total", live.length, "devices.total");
  add("devices online", online, "devices.online");
  add("devices offline", live.length - online, "devices.offline");
  add("active rollouts", rollouts.filter((r) => ACTIVE_STATES.has(r.state)).length, "rollouts.active");
}

// --- devices -------------------------------------------------------------------------------

function renderDevices(devices) {
  const body = $("devices").tBodies[0];
  body.replaceChildren();
  for (const d of devices) {
    const r = d.reported || null;
    const stats = (r && r.stats) || {};
    const status = d.revoked ? "revoked" : d.online ? "online" : "offline";
    const tr = el("tr");
    tr.dataset.device = d.device_id;
    const errRate = stats.requests > 0 ? stats.errors / stats.requests : null;
    const labels = Object.entries(d.labels || {}).map(([k, v]) => k + "=" + v).join(", ");
    tr.append(
      el("td", d.device_id, "device-id"),
      el("td", status, "status " + (d.online && !d.revoked ? "online" : "offline")),
      el("td", r && r.active ? r.active : "—", "version"),
      el("td", r ? r.phase : "—", "phase state-" + (r ? r.phase : "none")),
      el("td", fmt(stats.p95_ms, 1), "p95"),
      el("td", errRate === null ? "—" : (100 * errRate).toFixed(2) + " %", "error-rate"),
      el("td", labels, "labels"),
      el("td", ago(d.last_seen), "last-seen"),
    );
    if (r && r.error) tr.title = r.error;
    body.append(tr);
  }
}

// --- rollouts ------------------------------------------------------------------------------

function bar(fraction, cls) {
  const outer = el("span", null, "bar" + (cls ? " " + cls : ""));
  const inner = el("span");
  inner.style.width = (100 * Math.min(1, Math.max(0, fraction))).toFixed(1) + "%";
  outer.append(inner);
  outer.dataset.percent = (100 * Math.min(1, Math.max(0, fraction))).toFixed(0);
  return outer;
}

function wavesDone(r) { return r.waves.filter((w) => w.finished_at !== null && w.finished_at !== undefined).length; }

function renderRollouts(rollouts) {
  const body = $("rollouts").tBodies[0];
  body.replaceChildren();
  for (const r of rollouts) {
    const tr = el("tr");
    tr.dataset.rollout = r.rollout_id;
    if (r.rollout_id === state.selected) tr.className = "selected";
    const done = wavesDone(r);
    const failed = r.state === "aborted" || r.state === "rolled_back";
    const progress = el("td");
    progress.append(bar(r.waves.length ? done / r.waves.length : 0, failed ? "failed" : r.state === "completed" ? "done" : ""),
      el("span", " " + done + "/" + r.waves.length + " waves"));
    tr.append(
      el("td", r.rollout_id, "rollout-id"),
      el("td", r.spec.artifact_id),
      el("td", r.state, "rollout-state state-" + r.state),
      el("td", r.wave < 0 ? "—" : String(r.wave + 1) + " of " + r.waves.length),
      progress,
      el("td", r.reason || ""),
    );
    tr.addEventListener("click", () => { state.selected = r.rollout_id; refresh(); });
    body.append(tr);
  }
}

function pickRollout(rollouts) {
  if (state.selected && rollouts.some((r) => r.rollout_id === state.selected)) return state.selected;
  const active = rollouts.filter((r) => ACTIVE_STATES.has(r.state));
  const pool = active.length ? active : rollouts;
  if (!pool.length) return null;
  return pool.reduce((a, b) => (b.updated_at > a.updated_at ? b : a)).rollout_id;
}

function waveState(r, w) {
  const lastGate = r.gates.filter((g) => g.wave === w.index).pop();
  if (lastGate && !lastGate.passed) return { text: "gate failed", cls: "failed", fraction: 1, gate: lastGate };
  if (w.finished_at !== null && w.finished_at !== undefined) return { text: "done", cls: "done", fraction: 1, gate: lastGate };
  if (w.started_at === null || w.started_at === undefined) return { text: "waiting", cls: "", fraction: 0, gate: lastGate };
  if (w.soak_until !== null && w.soak_until !== undefined && w.soak_until > w.started_at) {
    const f = (Date.now() / 1000 - w.started_at) / (w.soak_until - w.started_at);
    return { text: "soaking", cls: "", fraction: f, gate: lastGate };
  }
  return { text: "installing", cls: "", fraction: 0.05, gate: lastGate };
}

function renderDetail(r) {
  const section = $("rollout-detail");
  if (!r) { section.hidden = true; return; }
  section.hidden = false;
  section.dataset.rollout = r.rollout_id;
  $("detail-id").textContent = r.rollout_id;
  $("detail-state").textContent = r.state;
  $("detail-state").className = "state-" + r.state;
  $("detail-reason").textContent = r.reason || "";
  const list = $("waves");
  list.replaceChildren();
  for (const w of r.waves) {
    const s = waveState(r, w);
    const li = el("li");
    li.dataset.wave = String(w.index);
    li.dataset.state = s.text;
    li.append(el("span", fmt(w.percent, 0) + " % · " + w.devices + (w.devices === 1 ? " device · " : " devices · ") + s.text, "wave-label"),
      bar(s.fraction, s.cls));
    if (s.gate) {
      const text = s.gate.passed ? "gate passed (" + s.gate.reporting + "/" + s.gate.devices + " reporting)"
        : "gate failed: " + s.gate.failures.join("; ");
      li.append(el("span", text, "wave-gate" + (s.gate.passed ? "" : " failed")));
    }
    list.append(li);
  }
  const plots = $("plots");
  plots.replaceChildren();
  for (const m of METRICS) plots.append(plot(m, r.gates, r.spec.gates ? r.spec.gates[m.gate] : null));
}

// --- plots: one small SVG per gate metric, a point per evaluation, threshold dashed ------------

function plot(metric, gates, threshold) {
  const W = 320, H = 150, L = 44, R = 10, T = 10, B = 24;
  const fig = el("figure", null, "plot");
  fig.dataset.metric = metric.key;
  const pts = gates.filter((g) => typeof (g.metrics || {})[metric.key] === "number")
    .map((g) => ({ t: g.at, v: g.metrics[metric.key], g }));
  const box = svg("svg", { class: "plot", width: W, height: H, viewBox: "0 0 " + W + " " + H });
  const values = pts.map((p) => p.v);
  if (typeof threshold === "number") values.push(threshold);
  let lo = values.length ? Math.min(...values) : 0, hi = values.length ? Math.max(...values) : 1;
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.1; lo -= pad; hi += pad;
  const t0 = pts.length ? pts[0].t : 0, t1 = pts.length ? pts[pts.length - 1].t : 1;
  // Evaluations at one instant are spread by index so each stays visible.
  const x = (p, i) => L + (pts.length < 2 ? (W - L - R) / 2
    : t1 > t0 ? (p.t - t0) / (t1 - t0) * (W - L - R) : i / (pts.length - 1) * (W - L - R));
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  box.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (const v of [lo + pad, hi - pad]) {
    const label = svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" });
    label.textContent = fmt(v, Math.abs(v) < 10 ? 3 : 1);
    box.append(label);
  }
  if (typeof threshold === "number") {
    box.append(svg("line", { class: "threshold", x1: L, y1: y(threshold), x2: W - R, y2: y(threshold) }));
  }
  if (pts.length > 1) {
    box.append(svg("polyline", { class: "series", points: pts.map((p, i) => x(p, i).toFixed(1) + "," + y(p.v).toFixed(1)).join(" ") }));
  }
  pts.forEach((p, i) => {
    const c = svg("circle", { class: "point" + (p.g.passed ? "" : " failed"), cx: x(p, i).toFixed(1), cy: y(p.v).toFixed(1), r: 3 });
    const tip = svg("title");
    tip.textContent = "wave " + (p.g.wave + 1) + ": " + fmt(p.v, 4);
    c.append(tip);
    box.append(c);
  });
  const foot = svg("text", { x: L, y: H - 6 });
  foot.textContent = pts.length ? pts.length + " evaluations" : "no evaluations yet";
  box.append(foot);
  const caption = metric.label + (typeof threshold === "number" ? " (gate " + threshold + ")" : " (gate off)");
  fig.append(el("figcaption", caption), box);
  return fig;
}

// --- the loop ------------------------------------------------------------------------------

function clearData() {
  $("summary").replaceChildren();
  $("devices").tBodies[0].replaceChildren();
  $("rollouts").tBodies[0].replaceChildren();
  $("rollout-detail").hidden = true;
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    if (!token()) {
      clearData();
      $("status-line").textContent = "Enter an operator token to see the fleet.";
      return;
    }
    const [summary, devices, rollouts] = await Promise.all([
      api("/v1/summary").catch((err) => { if (err instanceof AuthError) throw err; return null; }),
      api("/v1/devices"),
      api("/v1/rollouts"),
    ]);
    state.selected = pickRollout(rollouts);
    const detail = state.selected ? await api("/v1/rollouts/" + encodeURIComponent(state.selected)) : null;
    renderSummary(summary, devices, rollouts);
    renderDevices(devices);
    renderRollouts(rollouts);
    renderDetail(detail);
    showError("");
    $("status-line").textContent = "Updated " + new Date().toLocaleTimeString() + " · every " + REFRESH_MS / 1000 + " s";
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (err) {
    if (err instanceof AuthError) clearData();
    showError(err.message);
  } finally {
    state.busy = false;
  }
}

function start() {
  $("token-input").value = "";
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token-input").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token-input").value = "";
    refresh();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showError("");
    refresh();
  });
  refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
