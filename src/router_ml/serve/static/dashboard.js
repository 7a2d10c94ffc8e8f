/* router-ml dashboard: vanilla JS, charts drawn as inline SVG, no libraries, no build step.
 *
 * The API key comes from the URL fragment (#key=..., never sent to the server) or the login form, and
 * is kept in sessionStorage (localStorage when "remember" is ticked). Every figure shown carries
 * data-path (where it comes from in the API's JSON: "usage/totals/spend_usd"), data-format and
 * data-value (the raw number), so that a test can check the page against the API.
 */
"use strict";

const KEY_NAME = "router-ml.dashboard.key";
const PREFS_NAME = "router-ml.dashboard.prefs";
const RANGES = { "1h": { hours: 1, label: "last hour" }, "24h": { hours: 24, label: "last 24 h" }, "7d": { hours: 24 * 7, label: "last 7 days" },
  "30d": { hours: 24 * 30, label: "last 30 days" } };
const BUCKETS = ["minute", "hour", "day"];
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  key: null, admin: false, tenant: "", knownTenants: new Set(),
  range: "24h", bucket: "hour", acc: "cum", refreshS: 5,
  usage: null, forecast: null, quality: null, timer: null, busy: false, updates: 0, generation: 0,
};

/* ---------- formatting (tests/serve/api/test_dashboard.py mirrors these rules) ---------- */

function commas(digits) {
  const [whole, frac] = digits.split(".");
  return whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (frac === undefined ? "" : "." + frac);
}

function fixed(x, decimals) {
  const s = Math.abs(x).toFixed(decimals);
  return (x < 0 && Number(s) !== 0 ? "-" : "") + commas(s);
}

const FORMATS = {
  usd(v) {
    const a = Math.abs(v);
    let d = 2;
    if (a > 0 && a < 1) {
      d = 4; // $0.0123; smaller amounts keep three significant digits, down to 8 decimals
      let t = 0.01;
      while (a < t && d < 8) { d += 1; t /= 10; }
    }
    const s = a.toFixed(d);
    return (v < 0 && Number(s) !== 0 ? "-$" : "$") + commas(s);
  },
  pct: (v) => fixed(v * 100, 1) + "%",
  int: (v) => fixed(v, 0),
  ms: (v) => (Math.abs(v) >= 1000 ? fixed(v / 1000, 2) + " s" : fixed(v, 0) + " ms"),
  text: (v) => String(v),
};

function format(kind, v) {
  return v === null || v === undefined ? "—" : FORMATS[kind](v);
}

function axisUsd(v, step) {
  if (v === 0) return "$0";
  let d = 0;
  while (d < 8 && Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) > 1e-9 * 10 ** d) d += 1;
  return "$" + commas(Math.abs(v).toFixed(d));
}

function axisMs(v) {
  return v >= 1000 ? +(v / 1000).toFixed(2) + " s" : Math.round(v) + " ms";
}

const pad2 = (n) => String(n).padStart(2, "0");
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

function dayLabel(d, utc) {
  return utc ? `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}` : `${MONTHS[d.getMonth()]} ${d.getDate()}`;
}

function timeLabel(d) {
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
}

function dateTimeLabel(d) {
  return `${dayLabel(d, false)}, ${timeLabel(d)}:${pad2(d.getSeconds())}`;
}

/* ---------- DOM helpers ---------- */

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (parent) parent.append(el);
  return el;
}

/** A figure bound to the API's JSON: `path` like "usage/totals/spend_usd". */
function figure(path, kind, extra) {
  return h("span", { "data-path": path, "data-format": kind, ...(extra || {}) });
}

function lookup(path) {
  let v = { usage: state.usage, forecast: state.forecast, quality: state.quality };
  for (const part of path.split("/")) {
    if (v === null || v === undefined) return undefined;
    v = v[part];
  }
  return v;
}

function bindFigures(root = document) {
  for (const el of $$("[data-path]", root)) {
    const v = lookup(el.dataset.path);
    const value = v === undefined ? null : v;
    el.dataset.value = value === null ? "" : String(value);
    el.textContent = format(el.dataset.format, value);
  }
}

/* ---------- key, preferences, API ---------- */

function readFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const key = params.get("key");
  const refresh = params.get("refresh");
  if (refresh !== null && refresh !== "" && !Number.isNaN(Number(refresh))) {
    const n = Number(refresh);
    state.refreshS = n <= 0 ? 0 : Math.max(1, n);
  }
  for (const name of ["range", "bucket", "tenant"]) {
    const v = params.get(name);
    if (v !== null) state[name] = v;
  }
  if (key) {
    params.delete("key"); // keep it out of the address bar, the history and any screenshot
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
  return key;
}

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME);
  } catch (e) {
    return null;
  }
}

function keepKey(key, remember) {
  try {
    sessionStorage.setItem(KEY_NAME, key);
    if (remember) localStorage.setItem(KEY_NAME, key);
  } catch (e) { /* storage off: the key lives in memory for this page */ }
}

function forgetKey() {
  try {
    sessionStorage.removeItem(KEY_NAME);
    localStorage.removeItem(KEY_NAME);
  } catch (e) { /* nothing stored */ }
}

function loadPrefs() {
  try {
    const p = JSON.parse(localStorage.getItem(PREFS_NAME) || "{}");
    if (RANGES[p.range]) state.range = p.range;
    if (BUCKETS.includes(p.bucket)) state.bucket = p.bucket;
    if (p.acc === "cum" || p.acc === "bucket") state.acc = p.acc;
  } catch (e) { /* defaults */ }
}

function savePrefs() {
  try {
    localStorage.setItem(PREFS_NAME, JSON.stringify({ range: state.range, bucket: state.bucket, acc: state.acc }));
  } catch (e) { /* not kept */ }
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  return q.toString();
}

async function api(path, params) {
  const qs = query(params);
  const url = path + (qs ? "?" + qs : "");
  let response;
  try {
    response = await fetch(url, { headers: { Authorization: "Bearer " + state.key }, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "the gateway did not answer (" + e.message + ")");
  }
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).error.message || message;
    } catch (e) { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  return response.json();
}

/** Start of the range, aligned on the bucket, so that every bucket is whole except the current one. */
function rangeStart() {
  const hours = RANGES[state.range].hours;
  const now = new Date();
  if (state.bucket === "day") {
    const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
    return new Date(today - (hours / 24 - 1) * 86400e3);
  }
  if (state.bucket === "minute") {
    const minute = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), now.getUTCHours(),
      now.getUTCMinutes());
    return new Date(minute - (hours * 60 - 1) * 60e3);
  }
  const hour = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), now.getUTCHours());
  return new Date(hour - (hours - 1) * 3600e3);
}

/* ---------- refresh loop ---------- */

async function refresh() {
  if (state.busy || !state.key) return;
  state.busy = true;
  const generation = state.generation;
  const usageParams = { bucket: state.bucket, start: rangeStart().toISOString().replace(".000Z", "Z"),
    tenant: state.tenant };
  const forecastParams = { horizon: 30, tenant: state.tenant };
  const qualityParams = { start: usageParams.start, tenant: state.tenant };
  try {
    const [usage, forecast, quality] = await Promise.allSettled([api("v1/analytics/usage", usageParams),
      api("v1/analytics/forecast", forecastParams), api("v1/analytics/quality", qualityParams)]);
    if (generation !== state.generation) return; // the controls changed meanwhile: that refresh is on its way
    if (usage.status === "rejected") throw usage.reason;
    if (forecast.status === "rejected" && forecast.reason.status === 401) throw forecast.reason;
    state.usage = usage.value;
    state.forecast = forecast.status === "fulfilled" ? forecast.value : null;
    state.forecastError = forecast.status === "rejected" ? forecast.reason : null;
    state.quality = quality.status === "fulfilled" ? quality.value : null;
    state.qualityError = quality.status === "rejected" ? quality.reason : null;
    document.body.dataset.usageQuery = "v1/analytics/usage?" + query(usageParams);
    document.body.dataset.forecastQuery = "v1/analytics/forecast?" + query(forecastParams);
    document.body.dataset.qualityQuery = state.quality ? "v1/analytics/quality?" + query(qualityParams) : "";
    render();
    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
    $("#live").classList.remove("stale");
    $("#updated").textContent = "Updated " + timeLabel(new Date()) + ":" + pad2(new Date().getSeconds()) +
      (state.refreshS ? ` · every ${state.refreshS} s` : " · auto-refresh off");
    $("#banner-error").hidden = true;
  } catch (e) {
    if (generation !== state.generation) return;
    if (e.status === 401) {
      showLogin("Invalid key: the gateway refused it (401). Enter a valid API key.");
      return;
    }
    const banner = $("#banner-error");
    banner.textContent = e.status === 403 ? "This key may not see that tenant (403): " + e.message
      : e.status === 404 ? "This gateway has no analytics API (" + e.message + ")."
      : e.status ? `The analytics API answered ${e.status}: ${e.message}`
      : "Cannot reach the gateway: " + e.message + ". Retrying.";
    banner.hidden = false;
    $("#live").classList.add("stale");
    $("#updated").textContent = "Update failed " + timeLabel(new Date()) + " · retrying";
  } finally {
    if (generation === state.generation) {
      state.busy = false;
      schedule();
    }
  }
}

function schedule() {
  clearTimeout(state.timer);
  if (state.refreshS > 0 && state.key) state.timer = setTimeout(refresh, state.refreshS * 1000);
}

function refreshNow() {
  state.generation += 1;
  state.busy = false;
  clearTimeout(state.timer);
  refresh();
}

/* ---------- rendering ---------- */

function render() {
  const u = state.usage;
  const f = state.forecast || { warnings: [], budgets: [], history: [], forecast: [] };
  state.admin = !!(u.scope && u.scope.admin);
  renderScope(u);
  $$(".range-label").forEach((el) => { el.textContent = "· " + RANGES[state.range].label; });
  $("#empty").hidden = u.totals.requests > 0;
  const refs = [...new Set((u.tenants || []).map((t) => t.reference_model).filter(Boolean))];
  $("#reference-model").textContent = refs.length === 1 ? refs[0] : refs.length > 1 ? "each tenant's reference model"
    : "the reference model";
  const ratio = u.totals.reference_usd > 0 ? Math.min(1, u.totals.spend_usd / u.totals.reference_usd) : 0;
  $("#spend-meter").style.width = (ratio * 100).toFixed(1) + "%";
  const spendMethod = f.method ? (/spend_usd: ([^;]+)/.exec(f.method) || [null, f.method])[1] : "";
  $("#forecast-method").textContent = spendMethod ? "method: " + spendMethod : "";
  $("#forecast-method").title = f.method || "";
  $("#forecast-note").textContent = state.forecastError
    ? `forecast unavailable (${state.forecastError.status || "no answer"}: ${state.forecastError.message})` : f.note || "";
  renderWarnings(f);
  renderQuality(state.quality, refs);
  renderModels(u);
  renderBudgets(f);
  renderTenants(u);
  renderErrors(u);
  bindFigures();
  renderCharts();
}

function renderScope(u) {
  const select = $("#tenant-select");
  const name = $("#scope-name");
  if (state.admin) {
    if (!state.tenant) (u.tenants || []).forEach((t) => state.knownTenants.add(t.tenant));
    if (state.tenant) state.knownTenants.add(state.tenant);
    const wanted = ["", ...[...state.knownTenants].sort()];
    const have = $$("option", select).map((o) => o.value);
    if (wanted.join("\n") !== have.join("\n")) {
      select.replaceChildren(...wanted.map((t) => h("option", { value: t }, t || "All tenants")));
    }
    select.value = state.tenant;
    select.hidden = false;
    name.textContent = "";
    name.hidden = true;
  } else {
    select.hidden = true;
    name.hidden = false;
    name.textContent = u.scope && u.scope.tenant ? u.scope.tenant : "";
  }
}

function renderWarnings(f) {
  const box = $("#warnings");
  box.replaceChildren(...(f.warnings || []).map((w, i) => h("div", { class: "warning", role: "alert" },
    h("span", { class: "icon", "aria-hidden": "true" }, "!"),
    h("span", { "data-path": `forecast/warnings/${i}`, "data-format": "text", "data-metric": "warning" }))));
}

/** "Quality kept 96% [93–98%] of REF on N judged calls" from the shadow judge's verdicts, and the tenant's operating
 * point when one tenant is shown; a plain note when nothing was judged. */
function renderQuality(q, refs) {
  const box = $("#quality");
  const none = $("#quality-none");
  const judged = q && q.judged_calls > 0;
  box.hidden = !judged;
  none.hidden = judged;
  if (!judged) {
    none.textContent = state.qualityError
      ? `Quality kept: unavailable (${state.qualityError.status || "no answer"}: ${state.qualityError.message})`
      : "Quality kept: not measured yet. No shadow-judged calls in this range (the gateway judges a sample of " +
        "routed calls when ROUTER_ML_JUDGE_MODEL is set and the tenant has a reference model).";
    return;
  }
  $(".quality-reference", box).textContent = refs.length === 1 ? refs[0] : "each tenant's reference model";
  const point = $("#operating-point");
  const steered = q.tenants.length === 1 && q.tenants[0].operating_point;
  point.replaceChildren();
  if (steered) {
    point.append("Operating point: level ",
      figure("quality/tenants/0/operating_point/level", "int", { "data-metric": "operating-level" }), " of ",
      figure("quality/tenants/0/operating_point/levels", "int", { "data-metric": "operating-levels" }),
      " (0 is the reference model; higher levels route more calls to cheaper models)");
  }
}

function renderModels(u) {
  const box = $("#models");
  const models = u.models || [];
  if (!models.length) {
    box.replaceChildren(h("div", { class: "muted" }, "No calls in this range."));
    return;
  }
  box.replaceChildren(...models.map((m, i) => {
    const p = `usage/models/${i}/`;
    const fill = h("div", { class: "bar-fill" });
    fill.style.width = Math.max(0.5, m.share * 100).toFixed(1) + "%";
    return h("div", { class: "bar-row", "data-model": m.model },
      h("div", { class: "bar-top" }, h("span", { class: "model", title: m.model }, m.model),
        h("span", { class: "figs" }, figure(p + "requests", "int"), " calls · ", figure(p + "share", "pct"))),
      h("div", { class: "bar-track" }, fill),
      h("div", { class: "bar-sub" }, figure(p + "spend_usd", "usd"), " spend · p50 ",
        figure(p + "latency_p50", "ms"), " · p95 ", figure(p + "latency_p95", "ms")));
  }));
}

function renderBudgets(f) {
  const box = $("#budgets");
  const budgets = f.budgets || [];
  if (!budgets.length) {
    box.replaceChildren(h("div", { class: "muted" }, state.admin && !state.tenant
      ? "Pick a tenant to see its budgets."
      : ["No budget set. Set one with ", h("code", {}, "router-ml tenants set NAME --budget-month 100"), "."]));
    return;
  }
  box.replaceChildren(...budgets.map((b, i) => {
    const p = `forecast/budgets/${i}/`;
    const scale = Math.max(b.limit_usd, b.projected_usd || 0, b.spent_usd) || 1;
    const projected = h("div", { class: "projected" });
    projected.style.width = (Math.min(1, (b.projected_usd || 0) / scale) * 100).toFixed(1) + "%";
    const spent = h("div", { class: "spent" });
    spent.style.width = (Math.min(1, b.spent_usd / scale) * 100).toFixed(1) + "%";
    const limit = h("div", { class: "limit", title: "budget" });
    limit.style.left = `calc(${(Math.min(1, b.limit_usd / scale) * 100).toFixed(1)}% - 1px)`;
    const end = new Date(b.period_end);
    const period = b.period === "day" ? "Daily" : b.period === "month" ? "Monthly" : b.period;
    return h("div", { class: "budget" + (b.runs_out ? " out" : "") },
      h("div", { class: "budget-top" }, h("b", {}, period + " budget"), figure(p + "limit_usd", "usd")),
      h("div", { class: "track" }, projected, spent, limit),
      h("div", { class: "budget-sub" }, "Spent ", figure(p + "spent_usd", "usd"), " · projected ",
        figure(p + "projected_usd", "usd"), " by ", dayLabel(new Date(end.getTime() - 1), true),
        b.runs_out ? [" · ", h("b", {}, "runs out around " + b.runs_out_on)] : " · within budget"));
  }));
}

function renderTenants(u) {
  const body = $("#tenants tbody");
  const rows = u.tenants || [];
  if (!rows.length) {
    body.replaceChildren(h("tr", { class: "none" }, h("td", { colspan: 7 }, "No calls in this range.")));
    return;
  }
  body.replaceChildren(...rows.slice(0, 10).map((t, i) => {
    const p = `usage/tenants/${i}/`;
    return h("tr", {}, h("td", {}, figure(p + "tenant", "text")), h("td", { class: "r" }, figure(p + "requests", "int")),
      h("td", { class: "r" }, figure(p + "spend_usd", "usd")), h("td", { class: "r" }, figure(p + "reference_usd", "usd")),
      h("td", { class: "r saved" }, figure(p + "saved_usd", "usd")), h("td", { class: "r" }, figure(p + "error_rate", "pct")),
      h("td", { class: "muted" }, t.reference_model || "—"));
  }));
}

function renderErrors(u) {
  const body = $("#errors tbody");
  const rows = u.recent_errors || [];
  if (!rows.length) {
    body.replaceChildren(h("tr", { class: "none" }, h("td", { colspan: 5 }, "No errors in this range.")));
    return;
  }
  body.replaceChildren(...rows.map((e, i) => {
    const p = `usage/recent_errors/${i}/`;
    return h("tr", {}, h("td", { class: "nowrap" }, e.ts ? dateTimeLabel(new Date(e.ts)) : "—"),
      h("td", {}, figure(p + "tenant", "text")), h("td", { class: "nowrap" }, figure(p + "model", "text")),
      h("td", { class: "r" }, h("span", { class: "status" }, figure(p + "http_status", "text"))),
      h("td", { class: "err", title: e.error || "" }, figure(p + "error", "text")));
  }));
}

/* ---------- charts ---------- */

function niceStep(max, ticks) {
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

/** An SVG chart frame of ``n`` slots: y axis with ticks, x labels, and a hover cursor with a tooltip. */
function frame(container, { n, max, yLabel, xLabel, tooltip, integer }) {
  container.replaceChildren();
  const width = Math.max(200, container.clientWidth);
  const height = Math.max(80, container.clientHeight);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" }, container);
  const raw = niceStep(max > 0 ? max : 1, height < 150 ? 2 : 4);
  const step = integer ? Math.max(1, Math.ceil(raw)) : raw;
  const top = step * Math.max(1, Math.ceil(max / step - 1e-9));
  const labels = [];
  for (let v = 0; v <= top + step / 2; v += step) labels.push(v);
  const left = 14 + 7 * Math.max(...labels.map((v) => yLabel(v, step).length));
  const plot = { left, right: width - 8, top: 8, bottom: height - 22 };
  const slot = (plot.right - plot.left) / n;
  const x = (i) => plot.left + (i + 0.5) * slot;
  const y = (v) => plot.bottom - (v / top) * (plot.bottom - plot.top);
  for (const v of labels) {
    s("line", { class: "gridline", x1: plot.left, x2: plot.right, y1: y(v), y2: y(v) }, svg);
    s("text", { class: "axis", x: plot.left - 6, y: y(v) + 4, "text-anchor": "end" }, svg).textContent = yLabel(v, step);
  }
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor((plot.right - plot.left) / 90))));
  for (let i = 0; i < n; i += every) {
    const text = xLabel(i);
    if (text) s("text", { class: "axis", x: x(i), y: height - 6, "text-anchor": "middle" }, svg).textContent = text;
  }
  const layers = s("g", {}, svg);
  const cursor = s("line", { class: "cursor", y1: plot.top, y2: plot.bottom, visibility: "hidden" }, svg);
  const hit = s("rect", { x: plot.left, y: plot.top, width: plot.right - plot.left, height: plot.bottom - plot.top,
    fill: "transparent" }, svg);
  const tip = $("#tooltip");
  hit.addEventListener("mousemove", (ev) => {
    const box = svg.getBoundingClientRect();
    const i = Math.min(n - 1, Math.max(0, Math.floor((ev.clientX - box.left - plot.left) / slot)));
    cursor.setAttribute("x1", x(i));
    cursor.setAttribute("x2", x(i));
    cursor.setAttribute("visibility", "visible");
    tip.replaceChildren(...tooltip(i));
    tip.hidden = false;
    const tx = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = tx + "px";
    tip.style.top = ev.clientY + 14 + "px";
  });
  hit.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    tip.hidden = true;
  });
  return { svg: layers, x, y, slot, plot };
}

function linePath(points) {
  // points: [x, y|null]; a null breaks the line
  let d = "";
  let pen = false;
  for (const [px, py] of points) {
    if (py === null || py === undefined || Number.isNaN(py)) { pen = false; continue; }
    d += (pen ? "L" : "M") + px.toFixed(1) + "," + py.toFixed(1);
    pen = true;
  }
  return d;
}

function areaPath(xs, upper, lower) {
  const up = xs.map((px, i) => px.toFixed(1) + "," + upper[i].toFixed(1));
  const down = xs.map((px, i) => px.toFixed(1) + "," + lower[i].toFixed(1)).reverse();
  return "M" + up.join("L") + "L" + down.join("L") + "Z";
}

function dots(g, cls, xs, ys, color) {
  xs.forEach((px, i) => {
    if (ys[i] !== null && ys[i] !== undefined) s("circle", { class: "dot " + cls, cx: px, cy: ys[i], r: 3, fill: color }, g);
  });
}

function bucketLabeler(series) {
  const times = series.map((b) => new Date(b.start));
  let prevDay = null;
  return (i) => {
    const d = times[i];
    if (state.bucket === "day") return dayLabel(d, true);
    const day = dayLabel(d, false);
    const text = i === 0 || day !== prevDay ? `${day} ${timeLabel(d)}` : timeLabel(d);
    prevDay = day;
    return text;
  };
}

function bucketTitle(b) {
  const d = new Date(b.start);
  return state.bucket === "day" ? dayLabel(d, true) + " (UTC)" : `${dayLabel(d, false)}, ${timeLabel(d)}`;
}

function tipRow(label, value, cls) {
  return h("div", {}, cls ? h("i", { class: "sw " + cls }) : null, label + " ", h("b", {}, value));
}

function emptyChart(container, text) {
  container.replaceChildren(h("div", { class: "empty" }, text));
}

function renderCharts() {
  if (!state.usage) return;
  const series = state.usage.series || [];
  if (!series.length) {
    ["#chart-spend", "#chart-latency", "#chart-cache"].forEach((id) => emptyChart($(id), "No data in this range."));
  } else {
    spendChart(series);
    latencyChart(series);
    cacheChart(series);
  }
  forecastChart(state.forecast || { history: [], forecast: [] });
}

function spendChart(series) {
  const cum = state.acc === "cum";
  let spendSum = 0;
  let refSum = 0;
  const spend = series.map((b) => (cum ? (spendSum += b.spend_usd || 0) : b.spend_usd || 0));
  const ref = series.map((b) => (cum ? (refSum += b.reference_usd || 0) : b.reference_usd || 0));
  const max = Math.max(...ref, ...spend);
  const labeler = bucketLabeler(series);
  const c = frame($("#chart-spend"), { n: series.length, max, yLabel: axisUsd, xLabel: labeler,
    tooltip: (i) => [h("div", {}, h("b", {}, bucketTitle(series[i])), cum ? " (cumulative)" : ""),
      tipRow("Reference", format("usd", ref[i]), "ref"), tipRow("Spend", format("usd", spend[i]), "spend"),
      tipRow("Saved", format("usd", ref[i] - spend[i]), "saved"),
      tipRow("Requests", format("int", series[i].requests))] });
  const xs = series.map((_, i) => c.x(i));
  const ys = spend.map(c.y);
  const yr = ref.map(c.y);
  const base = series.map(() => c.y(0));
  s("path", { class: "saved-area", d: areaPath(xs, yr, ys.map((v, i) => Math.max(v, yr[i]))) }, c.svg);
  s("path", { class: "spend-area", d: areaPath(xs, ys, base) }, c.svg);
  s("path", { class: "ref-line", d: linePath(xs.map((px, i) => [px, yr[i]])) }, c.svg);
  s("path", { class: "spend-line", d: linePath(xs.map((px, i) => [px, ys[i]])) }, c.svg);
  if (series.length <= 48) {
    const active = series.map((b) => b.requests > 0);
    dots(c.svg, "", xs, ys.map((v, i) => (active[i] ? v : null)), "var(--spend)");
  }
}

function latencyChart(series) {
  const p50 = series.map((b) => b.latency_p50);
  const p95 = series.map((b) => b.latency_p95);
  const known = [...p50, ...p95].filter((v) => v !== null && v !== undefined);
  if (!known.length) {
    emptyChart($("#chart-latency"), "No answered calls (cache hits excluded) in this range.");
    return;
  }
  const c = frame($("#chart-latency"), { n: series.length, max: Math.max(...known), yLabel: axisMs,
    xLabel: bucketLabeler(series), tooltip: (i) => [h("div", {}, h("b", {}, bucketTitle(series[i]))),
      tipRow("p50", format("ms", p50[i]), "p50"), tipRow("p95", format("ms", p95[i]), "p95"),
      tipRow("p99", format("ms", series[i].latency_p99))] });
  const xs = series.map((_, i) => c.x(i));
  const y = (v) => (v === null || v === undefined ? null : c.y(v));
  s("path", { class: "p95-line", d: linePath(xs.map((px, i) => [px, y(p95[i])])) }, c.svg);
  s("path", { class: "p50-line", d: linePath(xs.map((px, i) => [px, y(p50[i])])) }, c.svg);
  if (known.length <= 96) {
    dots(c.svg, "", xs, p95.map(y), "var(--p95)");
    dots(c.svg, "", xs, p50.map(y), "var(--spend)");
  }
}

function cacheChart(series) {
  const hits = series.map((b) => b.cache_hits || 0);
  const c = frame($("#chart-cache"), { n: series.length, max: Math.max(...hits), yLabel: (v) => fixed(v, 0), integer: true,
    xLabel: bucketLabeler(series), tooltip: (i) => [h("div", {}, h("b", {}, bucketTitle(series[i]))),
      tipRow("Cache hits", format("int", hits[i])), tipRow("Requests", format("int", series[i].requests))] });
  const w = Math.max(1, Math.min(24, c.slot * 0.7));
  hits.forEach((v, i) => {
    if (v > 0) s("rect", { class: "cache-bar", x: c.x(i) - w / 2, y: c.y(v), width: w, height: c.y(0) - c.y(v), rx: 1.5 }, c.svg);
  });
}

function forecastChart(f) {
  const box = $("#chart-forecast");
  const history = (f.history || []).slice(-30);
  const ahead = f.forecast || [];
  const n = history.length + ahead.length;
  if (!n) {
    emptyChart(box, state.forecastError ? "Forecast unavailable." : "No history yet.");
    return;
  }
  const days = [...history.map((r) => r.day), ...ahead.map((r) => r.day)];
  const max = Math.max(...history.map((r) => r.spend_usd || 0), ...ahead.map((r) => r.spend_usd_hi || r.spend_usd || 0));
  const c = frame(box, { n, max, yLabel: axisUsd,
    xLabel: (i) => dayLabel(new Date(days[i] + "T00:00:00Z"), true),
    tooltip: (i) => {
      const title = h("div", {}, h("b", {}, dayLabel(new Date(days[i] + "T00:00:00Z"), true)));
      if (i < history.length) {
        return [title, tipRow("Spend", format("usd", history[i].spend_usd), "hist"),
          tipRow("Requests", format("int", history[i].requests))];
      }
      const r = ahead[i - history.length];
      return [title, tipRow("Forecast", format("usd", r.spend_usd), "fc"),
        tipRow("Range", format("usd", r.spend_usd_lo) + " – " + format("usd", r.spend_usd_hi), "band"),
        tipRow("Requests", format("int", r.requests))];
    } });
  const w = Math.max(1, Math.min(22, c.slot * 0.7));
  history.forEach((r, i) => {
    const v = r.spend_usd || 0;
    if (v > 0) s("rect", { class: "hist-bar", x: c.x(i) - w / 2, y: c.y(v), width: w, height: c.y(0) - c.y(v), rx: 1.5 }, c.svg);
  });
  if (ahead.length) {
    const xs = ahead.map((_, i) => c.x(history.length + i));
    const lo = ahead.map((r) => c.y(r.spend_usd_lo ?? r.spend_usd));
    const hi = ahead.map((r) => c.y(r.spend_usd_hi ?? r.spend_usd));
    s("path", { class: "band", d: areaPath(xs, hi, lo) }, c.svg);
    s("path", { class: "fc-line", d: linePath(xs.map((px, i) => [px, c.y(ahead[i].spend_usd)])) }, c.svg);
    if (history.length) {
      const tx = (c.x(history.length - 1) + c.x(history.length)) / 2;
      s("line", { class: "today", x1: tx, x2: tx, y1: c.plot.top, y2: c.plot.bottom }, c.svg);
      s("text", { class: "today-label", x: tx + 4, y: c.plot.top + 10 }, c.svg).textContent = "forecast →";
    }
  }
}

/* ---------- login and controls ---------- */

function showLogin(message) {
  clearTimeout(state.timer);
  state.generation += 1;
  state.busy = false;
  state.key = null;
  forgetKey();
  $("#board").hidden = true;
  $("#controls").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#key-input").value = "";
  $("#key-input").focus();
}

function showBoard() {
  $("#login").hidden = true;
  $("#board").hidden = false;
  $("#controls").hidden = false;
  syncControls();
  refreshNow();
}

function syncControls() {
  $$("#range button").forEach((b) => b.classList.toggle("on", b.dataset.range === state.range));
  $$("#bucket button").forEach((b) => b.classList.toggle("on", b.dataset.bucket === state.bucket));
  $$("#accumulate button").forEach((b) => b.classList.toggle("on", b.dataset.acc === state.acc));
}

function wire() {
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("#key-input").value.trim();
    if (!key) return;
    state.key = key;
    keepKey(key, $("#remember").checked);
    $("#login-error").textContent = "";
    showBoard();
  });
  $("#sign-out").addEventListener("click", () => showLogin(""));
  $$("#range button").forEach((b) => b.addEventListener("click", () => {
    state.range = b.dataset.range;
    fitBucket();
    savePrefs();
    syncControls();
    refreshNow();
  }));
  $$("#bucket button").forEach((b) => b.addEventListener("click", () => {
    state.bucket = b.dataset.bucket;
    if (state.bucket === "minute") state.range = "1h";
    else if (state.range === "1h") state.range = "24h";
    fitBucket();
    savePrefs();
    syncControls();
    refreshNow();
  }));
  $$("#accumulate button").forEach((b) => b.addEventListener("click", () => {
    state.acc = b.dataset.acc;
    savePrefs();
    syncControls();
    renderCharts();
  }));
  $("#tenant-select").addEventListener("change", (ev) => {
    state.tenant = ev.target.value;
    refreshNow();
  });
  window.addEventListener("hashchange", () => { // a link with a new #key=... opened on this page
    const key = readFragment();
    if (key) {
      state.key = key;
      keepKey(key, false);
      showBoard();
    }
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderCharts, 150);
  });
}

/** A bucket the range can draw: minutes for the last hour only, days not for a day or less. */
function fitBucket() {
  if (state.range === "1h") state.bucket = "minute";
  else if (state.bucket === "minute") state.bucket = "hour";
  if (state.range === "30d" && state.bucket === "hour") state.bucket = "day";
  if (state.range === "24h" && state.bucket === "day") state.bucket = "hour";
}

function start() {
  loadPrefs();
  const fromFragment = readFragment();
  if (!RANGES[state.range]) state.range = "24h";
  if (!BUCKETS.includes(state.bucket)) state.bucket = "hour";
  fitBucket();
  wire();
  if (fromFragment) keepKey(fromFragment, false);
  state.key = fromFragment || storedKey();
  if (state.key) showBoard();
  else showLogin("");
}

document.addEventListener("DOMContentLoaded", start);
