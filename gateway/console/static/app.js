// The duty console. One page: the alarm queue, the site, the event log and a device page.
// It loads a snapshot (/api/state), then follows the gateway's stream (/api/stream, Server-Sent
// Events). After a reconnect the browser sends the last id it saw and gets what followed; when
// the gateway cannot replay that far (or restarted) it says "reset" and the page reloads the
// snapshot. Everything that acts (acknowledge, shelve, reset, commands) asks for confirmation and
// carries the session's CSRF token.
"use strict";

const S = {
  me: null,
  devices: new Map(),
  alarms: new Map(),
  commands: new Map(),
  lifecycle: false,
  cursor: null,
  source: null,
  tiles: new Map(),       // device id -> its tile in the site view
  deviceOpen: null,       // the device page's device id
  siteDirty: true,
};
const SEVERITY = {critical: 0, major: 1, minor: 2, info: 3};
const t = (k, v) => I18N.t(k, v);

// --- helpers -----------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function fmtTime(iso, withDate) {
  if (!iso) return "";
  const opts = {timeZone: S.me.timezone, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false};
  if (withDate) Object.assign(opts, {year: "numeric", month: "2-digit", day: "2-digit"});
  return new Intl.DateTimeFormat(I18N.lang === "zh" ? "zh-CN" : "en-GB", opts).format(new Date(iso));
}

function fmtDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(sec)}` : `${m}:${two(sec)}`;
}

function zoneOffset() {
  // "UTC+08:00" for the site's zone, now.
  const parts = new Intl.DateTimeFormat("en-US", {timeZone: S.me.timezone, timeZoneName: "longOffset"})
    .formatToParts(new Date());
  const name = (parts.find((p) => p.type === "timeZoneName") || {}).value || "";
  return name.replace("GMT", "UTC") || "UTC";
}

function placeWords(loc) {
  if (!loc) return "";
  const out = [];
  if (loc.building) out.push(t("building", {b: loc.building}));
  if (loc.unit) out.push(t("unit", {u: loc.unit}));
  if (loc.garage) out.push(t("garage", {g: loc.garage}));
  if (loc.floor) out.push(t("floor", {f: loc.floor}));
  if (loc.zone) out.push(loc.zone);
  return out.join(" · ");
}

function deviceName(id) {
  const d = S.devices.get(id);
  return d ? d.name : id;
}

async function api(path, options) {
  const opts = Object.assign({credentials: "same-origin", headers: {}}, options || {});
  if (opts.method === "POST") {
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-CSRF-Token"] = S.me ? S.me.csrf : "";
    opts.body = JSON.stringify(opts.json || {});
    delete opts.json;
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const err = new Error((data && (data.reason || data.error)) || `HTTP ${r.status}`);
    err.data = data;
    throw err;
  }
  return data;
}

function toast(text, bad) {
  const box = document.getElementById("toasts");
  const item = el("div", {class: bad ? "toast bad" : "toast", text});
  box.prepend(item);
  setTimeout(() => item.remove(), 8000);
}

// --- words for a device's state ------------------------------------------------------------------

function stateWords(dev) {
  const s = dev.state || {};
  const w = [];
  switch (dev.kind) {
    case "elevator":
      if (s.floor !== undefined) w.push(t("floor_n", {f: s.floor}));
      if (s.direction) w.push(t(`dir_${s.direction}`));
      if (s.door_state) w.push(t("doors", {s: t(`door_${s.door_state}`)}));
      if (s.service_mode && s.service_mode !== "normal") w.push(t("mode", {m: s.service_mode.replaceAll("_", " ")}));
      if (s.occupied) w.push(t("occupied"));
      break;
    case "pa":
      if (s.zone_name || s.zone) w.push(String(s.zone_name || s.zone));
      if (s.zone_state) w.push(t("zone_state", {s: s.zone_state.replaceAll("_", " ")}));
      if (s.source) w.push(t("source", {s: s.source}));
      if (s.fault) w.push(t("fault", {f: String(s.fault).replaceAll("_", " ")}));
      break;
    case "plate_reader":
      if (s.plate) w.push(t("plate", {p: s.plate}));
      if (s.decision) w.push(t(`decision_${s.decision}`) || s.decision);
      if (s.gate_state) w.push(t("barrier", {s: s.gate_state}));
      break;
    case "camera":
      if (s.detection) w.push(t("detection", {d: String(s.detection).replaceAll("_", " ")}));
      break;
    case "access_gate":
      if (s.door_open !== undefined) w.push(t(s.door_open ? "gate_open" : "gate_closed"));
      if (s.locked !== undefined) w.push(t(s.locked ? "locked" : "unlocked"));
      if (s.tamper) w.push(t("tamper"));
      if (s.on_battery) w.push(t("on_battery"));
      if (s.battery_pct !== undefined) w.push(t("battery", {n: s.battery_pct}));
      break;
    default:
      break;
  }
  return w.join(", ");
}

function availability(dev) {
  if (!dev.enabled) return ["disabled", t("disabled")];
  if (dev.online === false) return ["offline", t("offline")];
  if (dev.online === true) return ["online", t("online")];
  return ["unknown", t("unknown")];
}

// --- commands and confirmation ----------------------------------------------------------------------

// Arguments the console asks for, with their defaults; other commands take none.
const COMMAND_ARGS = {
  hold_door: {seconds: 60}, call: {floor: 1}, return_to_floor: {floor: 1},
  open: {door: 1}, hold_open: {door: 1, seconds: 300}, lock: {door: 1}, release: {door: 1},
  emergency_start: {zones: "", clip: "evacuation"}, play: {zones: "", clip: "chime"}, set_volume: {zone: "", db: -10},
  relay: {output: 1, state: "on"},
};

function confirmDialog(text, fields) {
  // Resolves with the field values on confirm, null on cancel.
  const dlg = document.getElementById("dlg");
  document.getElementById("dlg-text").textContent = text;
  document.getElementById("dlg-error").textContent = "";
  const box = document.getElementById("dlg-fields");
  box.replaceChildren(...fields.map((f) => el("label", {}, el("span", {text: f.label}), " ",
    el(f.multiline ? "textarea" : "input", {id: `dlg-${f.name}`, name: f.name, value: f.value ?? "",
                                            type: f.type || "text", maxlength: f.max || 500}))));
  return new Promise((resolve) => {
    const form = document.getElementById("dlg-form");
    const cancel = document.getElementById("dlg-cancel");
    const done = (value) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dlg.close();
      resolve(value);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const out = {};
      for (const f of fields) out[f.name] = document.getElementById(`dlg-${f.name}`).value;
      done(out);
    };
    const onCancel = () => done(null);
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dlg.showModal();
  });
}

async function sendCommand(device, name) {
  const defaults = COMMAND_ARGS[name] || {};
  const fields = Object.entries(defaults).map(([k, v]) => ({name: k, label: t(`a_${k}`), value: v,
                                                           type: typeof v === "number" ? "number" : "text"}));
  const values = await confirmDialog(t("confirm_command", {c: I18N.commandWords(name), d: deviceName(device)}), fields);
  if (values === null) return;
  const args = {};
  for (const [k, v] of Object.entries(values)) {
    if (v === "" && typeof defaults[k] === "string") continue;  // empty text: the device's default
    args[k] = typeof defaults[k] === "number" ? Number(v) : v;
  }
  try {
    const r = await api("/api/commands", {method: "POST", json: {device, name, args}});
    toast(`${I18N.commandWords(name)} → ${deviceName(device)}: ${t("cmd_" + r.state)}`);
  } catch (e) {
    toast(`${I18N.commandWords(name)} → ${deviceName(device)}: ${t("cmd_rejected")} (${e.message})`, true);
  }
}

function commandButtons(device) {
  const names = (S.me.commands || {})[device] || [];
  const canAct = S.me.role !== "viewer";
  return names.map((name) => el("button", {type: "button", class: "cmd", disabled: !canAct,
    dataset: {command: name, device}, text: I18N.commandWords(name), onclick: () => sendCommand(device, name)}));
}

async function alarmOp(alarm, op) {
  const fields = [{name: "comment", label: t("comment"), value: "", multiline: true}];
  if (op === "shelve") fields.unshift({name: "hours", label: t("shelve_hours"), value: 4, type: "number"});
  const values = await confirmDialog(t("confirm_op", {op: t(op), a: I18N.typeWords(alarm.type)}), fields);
  if (values === null) return;
  const json = {comment: values.comment || null};
  if (op === "shelve") json.until = new Date(Date.now() + Number(values.hours || 1) * 3600e3).toISOString();
  try {
    const r = await api(`/api/alarms/${encodeURIComponent(alarm.alarm_id)}/${op}`, {method: "POST", json});
    applyAlarm(r.alarm);
  } catch (e) {
    toast(`${t(op)}: ${e.message}`, true);
  }
}

// --- the alarm queue --------------------------------------------------------------------------------

function sortedAlarms() {
  return [...S.alarms.values()].filter((a) => a.state !== "closed")
    .sort((a, b) => (SEVERITY[a.severity] ?? 4) - (SEVERITY[b.severity] ?? 4) || a.raised_at.localeCompare(b.raised_at));
}

function renderAlarms() {
  const list = sortedAlarms();
  document.getElementById("alarm-count").textContent = list.length ? String(list.length) : "";
  document.title = `${list.length ? `(${list.length}) ` : ""}${S.me ? S.me.site + " · " : ""}${t("title")}`;
  const note = document.getElementById("lifecycle-note");
  note.hidden = S.lifecycle;
  note.textContent = t("no_lifecycle");
  const box = document.getElementById("alarm-list");
  if (!list.length) {
    box.replaceChildren(el("p", {class: "empty", text: t("no_alarms")}));
    return;
  }
  box.replaceChildren(...list.map(alarmCard));
}

function alarmCard(a) {
  const canAct = S.lifecycle && a.managed && S.me.role !== "viewer";
  const flags = [];
  if (a.shelved_until) flags.push(el("span", {class: "flag", text: t("shelved_until", {t: fmtTime(a.shelved_until, true)})}));
  if (a.latched) flags.push(el("span", {class: "flag latched", text: t("latched")}));
  if (a.escalated) flags.push(el("span", {class: "flag latched", text: t("escalated")}));
  if (a.acked_by) flags.push(el("span", {class: "flag", text: t("acked_by", {u: a.acked_by})}));
  const ops = [];
  if (a.state === "active_unacked" || a.state === "cleared_unacked") ops.push("ack");
  ops.push(a.shelved_until ? "unshelve" : "shelve");
  if (a.latched) ops.push("reset");
  const actions = (a.actions || []).map((cid) => {
    const c = S.commands.get(cid);
    return el("li", {class: c ? `cmd-${c.state}` : "", dataset: {commandId: cid}},
      c ? `${I18N.commandWords(c.name)} → ${deviceName(c.device)}: ${t("cmd_" + c.state)}${c.reason ? " (" + c.reason + ")" : ""}`
        : cid);
  });
  const dev = S.devices.get(a.device);
  return el("article", {class: `alarm sev-${a.severity || "info"} st-${a.state}`, dataset: {alarmId: a.alarm_id, type: a.type, device: a.device}},
    el("div", {class: "alarm-head"},
      el("span", {class: `sev sev-${a.severity || "info"}`, text: t(`sev_${a.severity || "info"}`)}),
      el("strong", {class: "alarm-type", text: I18N.typeWords(a.type)}),
      a.cleared_at
        ? el("span", {class: "timer cleared", title: `${t("raised")} ${fmtTime(a.raised_at, true)}`,
                      text: t("cleared_after", {d: fmtDuration(Date.parse(a.cleared_at) - Date.parse(a.raised_at)),
                                                t: fmtTime(a.cleared_at)})})
        : el("span", {class: "timer", dataset: {since: a.raised_at}, title: `${t("raised")} ${fmtTime(a.raised_at, true)}`}),
    ),
    el("div", {class: "alarm-where"},
      el("a", {href: `#device/${encodeURIComponent(a.device)}`, text: deviceName(a.device)}),
      " ", el("span", {text: placeWords(Object.keys(a.location || {}).length ? a.location : dev && dev.location)})),
    el("div", {class: "alarm-state-line"},
      el("span", {class: "alarm-state", dataset: {state: a.state}, text: t(`st_${a.state}`)}), ...flags,
      a.comment ? el("q", {text: a.comment}) : null),
    a.snapshot ? snapshotImage(a) : null,
    actions.length ? el("div", {class: "linked"}, el("span", {text: t("actions")}), el("ul", {}, actions)) : null,
    el("div", {class: "buttons"},
      ops.map((op) => el("button", {type: "button", class: `op op-${op}`, disabled: !canAct, dataset: {op},
                                    text: t(op), onclick: () => alarmOp(a, op)})),
      commandButtons(a.device)),
  );
}

function snapshotImage(a) {
  // A picture the browser cannot show (a camera's odd format) still gets a link to download it.
  const img = el("img", {class: "snapshot", src: a.snapshot, alt: I18N.typeWords(a.type), loading: "lazy"});
  img.addEventListener("error", () => img.replaceWith(el("a", {class: "snapshot-link", href: a.snapshot,
                                                                 text: t("snapshot")})));
  return img;
}

function tickTimers() {
  const now = Date.now();
  for (const e of document.querySelectorAll(".timer[data-since]")) {
    e.textContent = `${t("active_for")} ${fmtDuration(now - Date.parse(e.dataset.since))}`;
  }
  const clock = document.getElementById("clock");
  if (S.me) clock.textContent = fmtTime(new Date().toISOString(), true);
}

// --- the site --------------------------------------------------------------------------------------

function groupOf(dev) {
  const loc = dev.location || {};
  if (loc.garage) return ["g:" + loc.garage, t("garage", {g: loc.garage})];
  if (loc.building) return ["b:" + loc.building, t("building", {b: loc.building})];
  return ["z", t("elsewhere")];
}

function renderSite() {
  const groups = new Map();
  for (const dev of S.devices.values()) {
    const [key, label] = groupOf(dev);
    if (!groups.has(key)) groups.set(key, {label, devices: []});
    groups.get(key).devices.push(dev);
  }
  const keys = [...groups.keys()].sort((a, b) => a.localeCompare(b, undefined, {numeric: true}));
  S.tiles.clear();
  const sections = keys.map((key) => {
    const g = groups.get(key);
    g.devices.sort((a, b) => a.id.localeCompare(b.id, undefined, {numeric: true}));
    const tiles = g.devices.map((dev) => { const tile = deviceTile(dev); S.tiles.set(dev.id, tile); return tile; });
    const off = g.devices.filter((d) => d.enabled && d.online === false).length;
    return el("section", {class: off ? "group has-offline" : "group"},
      el("h2", {}, g.label, " ", el("small", {text: `${g.devices.length} ${t("devices")}`}),
        off ? el("span", {class: "count bad", text: t("offline_count", {n: off})}) : null),
      el("div", {class: "tiles"}, tiles));
  });
  document.getElementById("site-view").replaceChildren(...sections);
  S.siteDirty = false;
  renderOfflineCount();
}

function deviceTile(dev) {
  const [cls, words] = availability(dev);
  return el("a", {class: `tile ${cls}`, href: `#device/${encodeURIComponent(dev.id)}`, dataset: {deviceId: dev.id}},
    el("span", {class: "dev-name", text: dev.name}),
    el("span", {class: "dev-kind", text: t(`k_${dev.kind}`)}),
    el("span", {class: "avail", text: words}),
    el("span", {class: "dev-state", text: dev.online === false
      ? `${t("since")} ${fmtTime(dev.since)}${dev.state.offline_reason ? " · " + dev.state.offline_reason : ""}`
      : stateWords(dev)}),
    dev.location && dev.location.floor ? el("span", {class: "dev-place", text: t("floor", {f: dev.location.floor})}) : null);
}

function renderOfflineCount() {
  const n = [...S.devices.values()].filter((d) => d.enabled && d.online === false).length;
  document.getElementById("offline-count").textContent = n ? t("offline_count", {n}) : "";
}

// --- the device page ---------------------------------------------------------------------------------

async function renderDevice(id) {
  S.deviceOpen = id;
  const dev = S.devices.get(id);
  const page = document.getElementById("device-page");
  if (!dev) { page.replaceChildren(el("p", {text: id})); return; }
  const [cls, words] = availability(dev);
  const chart = el("canvas", {id: "chart", width: 900, height: 240});
  const select = el("select", {id: "chart-field"});
  const rows = el("tbody", {id: "device-rows"});
  page.replaceChildren(
    el("h1", {}, dev.name, " ", el("small", {text: `${dev.id} · ${t(`k_${dev.kind}`)} · ${dev.driver}`})),
    el("p", {class: `avail-line ${cls}`}, el("span", {class: "avail", text: words}),
      dev.since ? el("span", {text: ` ${t("since")} ${fmtTime(dev.since, true)}`}) : null),
    el("p", {class: "dev-state", id: "device-state", text: stateWords(dev)}),
    el("p", {class: "dev-place", text: placeWords(dev.location)}),
    el("div", {class: "buttons"}, commandButtons(id)),
    el("h2", {}, t("chart"), " ", select, " ", el("small", {id: "chart-source", text: t("last_day")})), chart,
    el("h2", {text: t("recent_events")}),
    el("table", {class: "log"}, el("thead", {}, el("tr", {}, el("th", {text: t("col_time")}), el("th", {text: t("col_type")}),
      el("th", {text: t("col_severity")}), el("th", {text: t("col_state")}), el("th", {text: t("col_detail")}))), rows));
  const since = encodeURIComponent(new Date(Date.now() - 86400e3).toISOString());
  const base = `/api/devices/${encodeURIComponent(id)}`;
  let data, series;
  try {
    [data, series] = await Promise.all([api(`${base}/history?since=${since}&limit=200`),
                                        api(`${base}/series?since=${since}&limit=10000`)]);
  } catch (e) { toast(e.message, true); return; }
  if (S.deviceOpen !== id) return;
  const events = data.events;
  document.getElementById("chart-source").textContent =
    `${t("last_day")} · ${t(series.source === "influx" ? "from_influx" : "from_local")}` +
    (series.problem ? ` (${series.problem})` : "");
  rows.replaceChildren(...events.slice(0, 200).map((ev) => el("tr", {class: `sev-${ev.severity}`},
    el("td", {text: fmtTime(ev.time, true)}), el("td", {text: I18N.typeWords(ev.type)}),
    el("td", {text: t(`sev_${ev.severity}`)}), el("td", {text: ev.state}), el("td", {text: detail(ev)}))));
  const numbers = numericSeries(series.points);
  // The most telling fields first (a lift's floor, a zone's volume), then those with most points.
  const preferred = ["floor", "speed_mps", "load_pct", "volume_db", "temperature_c", "battery_pct", "confidence"];
  const rank = (f) => (preferred.includes(f) ? preferred.indexOf(f) : preferred.length);
  const fields = Object.keys(numbers).filter((f) => numbers[f].length > 1)
    .sort((a, b) => rank(a) - rank(b) || numbers[b].length - numbers[a].length);
  select.replaceChildren(...fields.map((f) => el("option", {value: f, text: f.replaceAll("_", " ")})));
  const draw = () => drawChart(chart, numbers[select.value] || []);
  select.addEventListener("change", draw);
  draw();
}

function numericSeries(events) {
  // Numeric payload fields over time, oldest first (the history comes newest first).
  const out = {};
  for (const ev of [...events].reverse()) {
    for (const [k, v] of Object.entries(ev.payload || {})) {
      if (typeof v === "number" && k !== "misses") (out[k] ||= []).push([Date.parse(ev.time), v]);
      else if (typeof v === "boolean" && ["online", "occupied", "door_open", "car_running"].includes(k)) {
        (out[k] ||= []).push([Date.parse(ev.time), v ? 1 : 0]);
      }
    }
  }
  return out;
}

function drawChart(canvas, points) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#666";
  if (points.length < 2) { ctx.fillText(t("no_numeric"), pad, h / 2); return; }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const X = (x) => pad + (x - x0) / (x1 - x0 || 1) * (w - 2 * pad);
  const Y = (y) => h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad);
  ctx.strokeStyle = "#bbb";
  ctx.strokeRect(pad, pad, w - 2 * pad, h - 2 * pad);
  ctx.fillText(String(y1), 2, pad + 4);
  ctx.fillText(String(y0), 2, h - pad);
  ctx.fillText(fmtTime(new Date(x0).toISOString()), pad, h - 8);
  ctx.fillText(fmtTime(new Date(x1).toISOString()), w - pad - 60, h - 8);
  ctx.strokeStyle = "#1565c0";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  points.forEach(([x, y], i) => {  // steps: a state holds until the next report
    if (i === 0) ctx.moveTo(X(x), Y(y));
    else { ctx.lineTo(X(x), Y(points[i - 1][1])); ctx.lineTo(X(x), Y(y)); }
  });
  ctx.stroke();
}

function detail(ev) {
  const p = ev.payload || {};
  const skip = new Set(["kind"]);
  return Object.entries(p).filter(([k, v]) => !skip.has(k) && v !== null && typeof v !== "object")
    .slice(0, 6).map(([k, v]) => `${k.replaceAll("_", " ")}: ${v}`).join(", ");
}

// --- the event log -------------------------------------------------------------------------------------

function filterParams() {
  const form = document.getElementById("filters");
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form).entries()) if (String(v).trim()) params.set(k, String(v).trim());
  params.set("limit", "1000");
  return params;
}

function logRow(ev) {
  return el("tr", {class: `sev-${ev.severity}`},
    el("td", {text: fmtTime(ev.time, true)}),
    el("td", {}, el("a", {href: `#device/${encodeURIComponent(ev.device)}`, text: deviceName(ev.device)})),
    el("td", {text: I18N.typeWords(ev.type), title: ev.type}), el("td", {text: t(`sev_${ev.severity}`)}),
    el("td", {text: ev.state}), el("td", {text: detail(ev)}));
}

function matchesFilters(ev) {
  // The event log's filters, for events arriving live (an end time shows a closed period: none).
  const f = Object.fromEntries(new FormData(document.getElementById("filters")).entries());
  if (f.until || (f.kind && f.kind !== ev.kind) || (f.device && f.device.trim() !== ev.device)) return false;
  if (f.severity && f.severity !== ev.severity) return false;
  if (f.type) {
    const glob = f.type.trim();
    const re = new RegExp("^" + glob.replace(/[.+^${}()|\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") +
                          (/[*?[]/.test(glob) ? "$" : ""));
    if (!re.test(ev.type)) return false;
  }
  return true;
}

function appendLive(ev) {
  if (document.getElementById("view-events").hidden || !matchesFilters(ev)) return;
  const body = document.getElementById("log-rows");
  body.prepend(logRow(ev));
  while (body.rows.length > 1000) body.deleteRow(-1);
}

async function loadEvents() {
  const params = filterParams();
  document.getElementById("csv").href = `/api/events.csv?${params}`;
  let data;
  try { data = await api(`/api/events?${params}`); } catch (e) { toast(e.message, true); return; }
  document.getElementById("event-count").textContent = t("rows", {n: data.events.length});
  document.getElementById("log-rows").replaceChildren(...data.events.map(logRow));
}

function setupFilters() {
  const kinds = ["", "elevator", "access_gate", "pa", "plate_reader", "camera"];
  document.getElementById("f-kind").replaceChildren(...kinds.map((k) => el("option", {value: k, text: k ? t(`k_${k}`) : t("any")})));
  const sevs = ["", "critical", "major", "minor", "info"];
  document.getElementById("f-severity").replaceChildren(...sevs.map((s) => el("option", {value: s, text: s ? t(`sev_${s}`) : t("any")})));
  document.getElementById("device-ids").replaceChildren(...[...S.devices.keys()].map((id) => el("option", {value: id})));
}

// --- live updates ------------------------------------------------------------------------------------

function applyAlarm(a) {
  if (a.state === "closed") S.alarms.delete(a.alarm_id);
  else S.alarms.set(a.alarm_id, a);
  renderAlarms();
}

let siteTimer = null;
function applyDevice(dev) {
  const old = S.devices.get(dev.id);
  S.devices.set(dev.id, dev);
  const tile = S.tiles.get(dev.id);
  if (tile && old && JSON.stringify(groupOf(old)) === JSON.stringify(groupOf(dev))) {
    const fresh = deviceTile(dev);
    tile.replaceWith(fresh);
    S.tiles.set(dev.id, fresh);
    if (old.online !== dev.online) {
      renderOfflineCount();
      const section = fresh.closest(".group");
      if (section && !siteTimer) siteTimer = setTimeout(() => { siteTimer = null; renderSite(); }, 250);
    }
  } else {
    S.siteDirty = true;
  }
  if (S.deviceOpen === dev.id) {
    const p = document.getElementById("device-state");
    if (p) p.textContent = stateWords(dev);
  }
}

function applyMessage(msg) {
  switch (msg.t) {
    case "alarm": applyAlarm(msg.alarm); break;
    case "device": applyDevice(msg.device); break;
    case "command":
      S.commands.set(msg.command.id, msg.command);
      if ([...S.alarms.values()].some((a) => (a.actions || []).includes(msg.command.id))) renderAlarms();
      break;
    case "event": appendLive(msg.event); break;
    case "reload": reload(); break;
    default: break;
  }
}

async function reload() {
  const snap = await api("/api/state");
  S.devices = new Map(snap.devices.map((d) => [d.id, d]));
  S.alarms = new Map(snap.alarms.map((a) => [a.alarm_id, a]));
  S.commands = new Map(Object.entries(snap.commands));
  S.lifecycle = snap.lifecycle;
  S.cursor = snap.cursor;
  renderAlarms();
  renderSite();
  setupFilters();
  follow();
}

function follow() {
  if (S.source) S.source.close();
  const conn = document.getElementById("conn");
  const es = new EventSource(`/api/stream?after=${encodeURIComponent(S.cursor)}`);
  S.source = es;
  es.onopen = () => { conn.textContent = t("live"); conn.className = "conn ok"; };
  es.onerror = async () => {
    conn.textContent = t("reconnecting"); conn.className = "conn bad";
    if (es.readyState === EventSource.CLOSED) {  // refused (logged out?): find out, else try again
      try { await api("/api/me"); setTimeout(follow, 1000); } catch (e) { /* api() went to the login page */ }
    }
  };
  es.addEventListener("reset", () => { es.close(); reload(); });
  es.onmessage = (e) => {
    S.cursor = e.lastEventId || S.cursor;
    let msg;
    try { msg = JSON.parse(e.data); } catch (err) { return; }
    applyMessage(msg);
  };
}

// --- navigation ------------------------------------------------------------------------------------

function show() {
  const hash = location.hash.slice(1) || "alarms";
  const [view, ...rest] = hash.split("/");
  for (const v of ["alarms", "site", "events", "device"]) document.getElementById(`view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll(".tabs a")) a.classList.toggle("active", a.dataset.tab === view);
  S.deviceOpen = null;
  if (view === "site" && S.siteDirty) renderSite();
  if (view === "events") loadEvents();
  if (view === "device") renderDevice(decodeURIComponent(rest.join("/")));
}

function relabel() {
  I18N.apply(document);
  document.getElementById("tz").textContent = t("times_in", {tz: `${S.me.timezone} (${zoneOffset()})`});
  setupFilters();
  renderAlarms();
  renderSite();
  show();
}

document.addEventListener("DOMContentLoaded", async () => {
  I18N.apply(document);
  try { S.me = await api("/api/me"); } catch (e) { return; }
  document.getElementById("site-name").textContent = S.me.site;
  document.getElementById("me").textContent = `${S.me.user} (${S.me.role})`;
  document.getElementById("tz").textContent = t("times_in", {tz: `${S.me.timezone} (${zoneOffset()})`});
  for (const b of document.querySelectorAll("[data-lang]")) {
    b.addEventListener("click", () => { I18N.setLang(b.dataset.lang); relabel(); });
  }
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("/api/logout", {method: "POST"}); } finally { location.href = "/login"; }
  });
  document.getElementById("filters").addEventListener("submit", (e) => { e.preventDefault(); loadEvents(); });
  window.addEventListener("hashchange", show);
  await reload();
  show();
  setInterval(tickTimers, 1000);
  tickTimers();
});
