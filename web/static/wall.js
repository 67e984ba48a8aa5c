// The operations wall: map, alert list, KPI tiles, device drawer, fed by the live websocket (protocol in
// README.md, "Live feed"). Plain ES2020, no build step; Leaflet and Leaflet.markercluster are vendored.
"use strict";

const params = new URLSearchParams(location.search);
const KIOSK = params.get("kiosk") === "1";
const OPEN = new Set(["firing", "recovering"]);
const MAX_BACKOFF_MS = 10000;

const TEXT = {
  vi: {
    title: "Trung tâm điều hành", kpi_online: "Thiết bị trực tuyến", kpi_alerts: "Cảnh báo theo cấp",
    kpi_rain: "Mưa 24 giờ lớn nhất", kpi_rivers: "Sông vượt báo động", all_areas: "Toàn tỉnh", chime: "Chuông",
    logout: "Đăng xuất", alerts: "Cảnh báo", chart_metric: "Chỉ số", last_24h: "24 giờ qua", note: "Ghi chú",
    cancel: "Hủy", confirm: "Xác nhận", ack: "Xác nhận đã biết", resolve: "Đóng cảnh báo", acked_by: "Đã xác nhận bởi",
    level: "Cấp", ago: "trước", offline: "mất kết nối", online: "trực tuyến", data_age: "dữ liệu cách đây",
    threshold: "ngưỡng", no_alerts: "Không có cảnh báo", unknown: "chưa rõ", status: "Trạng thái",
    kind_hydromet: "Trạm KTTV", kind_camera: "Camera", kind_traffic: "Đếm xe", kind_gateway: "Bộ thu thập",
  },
  en: {
    title: "Operations center", kpi_online: "Devices online", kpi_alerts: "Open alerts by level",
    kpi_rain: "Highest 24 h rain", kpi_rivers: "Rivers above alarm", all_areas: "Whole province", chime: "Chime",
    logout: "Log out", alerts: "Alerts", chart_metric: "Metric", last_24h: "Last 24 hours", note: "Note",
    cancel: "Cancel", confirm: "Confirm", ack: "Acknowledge", resolve: "Resolve", acked_by: "Acknowledged by",
    level: "Level", ago: "ago", offline: "offline", online: "online", data_age: "data age",
    threshold: "threshold", no_alerts: "No open alerts", unknown: "unknown", status: "Status",
    kind_hydromet: "Hydromet station", kind_camera: "Camera", kind_traffic: "Traffic counter", kind_gateway: "Gateway",
  },
};

const state = {
  lang: localStorage.getItem("occ.lang") || "vi",
  me: null, config: null, areas: null,
  devices: new Map(),       // id -> {info, status, reading, marker}
  alerts: new Map(),        // episode id -> alert
  seq: null, stream: null, filter: {},
  ws: null, connected: false, lastFrame: 0, backoff: 500,
  rain24: null, drawerId: null,
};

const t = (key) => (TEXT[state.lang] || TEXT.vi)[key] || key;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function fmtNumber(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toLocaleString(state.lang === "vi" ? "vi-VN" : "en-GB", { maximumFractionDigits: digits });
}

function fmtAge(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function fmtTime(date) {
  const tz = (state.config && state.config.timezone) || "Asia/Ho_Chi_Minh";
  return date.toLocaleTimeString(state.lang === "vi" ? "vi-VN" : "en-GB", { timeZone: tz, hour12: false });
}

async function api(path, options = {}) {
  const headers = { "Accept": "application/json", ...(options.headers || {}) };
  if (options.body !== undefined) { headers["Content-Type"] = "application/json"; headers["X-OCC-Request"] = "1"; }
  const response = await fetch(path, { ...options, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  if (response.status === 401) { location.replace("/login"); throw new Error("unauthenticated"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

// --- language ------------------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = state.lang;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  $("lang").textContent = state.lang === "vi" ? "EN" : "VI";
  fillAreaFilter();
  renderAlerts();
  renderKpis();
  if (state.drawerId) openDrawer(state.drawerId);
}

// --- map -----------------------------------------------------------------------------------------------
const map = L.map("map", { zoomControl: !KIOSK, attributionControl: true, minZoom: 6, maxZoom: 18 }).setView([22.8, 104.98], 9);
map.attributionControl.setPrefix(false);
const cluster = L.markerClusterGroup({
  chunkedLoading: true, chunkInterval: 100, removeOutsideVisibleBounds: true, showCoverageOnHover: false,
  maxClusterRadius: 50, spiderfyOnMaxZoom: true,
  iconCreateFunction(c) {
    let worst = 0; let offline = 0; let pulse = false;
    for (const m of c.getAllChildMarkers()) {
      const d = state.devices.get(m.options.deviceId);
      if (!d) continue;
      worst = Math.max(worst, d.severity || 0);
      pulse = pulse || d.pulse;
      if (d.status === "offline") offline += 1;
    }
    const n = c.getChildCount();
    const size = n < 10 ? 30 : n < 100 ? 38 : 46;
    const cls = `cluster${worst ? ` sev-${worst}` : ""}${pulse ? " pulse" : ""}`;
    return L.divIcon({ html: `<div class="${cls}" style="width:${size}px;height:${size}px" title="${offline} offline">${n}</div>`,
                       className: "", iconSize: [size, size] });
  },
});
map.addLayer(cluster);

function markerIcon(d) {
  const classes = ["dev", `kind-${d.info.kind}`];
  if (d.status === "offline") classes.push("offline");
  else if (d.severity) classes.push(`sev-${d.severity}`);
  if (d.pulse) classes.push("pulse");
  return L.divIcon({ html: `<div class="${classes.join(" ")}" data-device="${esc(d.info.id)}"></div>`, className: "", iconSize: [16, 16] });
}

function deviceSeverity(id) {
  let worst = 0; let pulse = false;
  for (const a of state.alerts.values()) {
    if (a.device_id !== id || !OPEN.has(a.state)) continue;
    worst = Math.max(worst, a.severity || 0);
    if (!a.acked && a.state === "firing" && !a.muted) pulse = true;
  }
  return [worst, pulse];
}

const dirty = new Set();
let refreshScheduled = false;
function markDirty(id) {
  dirty.add(id);
  if (!refreshScheduled) { refreshScheduled = true; requestAnimationFrame(refreshMarkers); }
}

function refreshMarkers() {
  refreshScheduled = false;
  const changed = [];
  for (const id of dirty) {
    const d = state.devices.get(id);
    if (!d || !d.marker) continue;
    const [sev, pulse] = deviceSeverity(id);
    const look = `${d.status}|${sev}|${pulse}`;
    if (look === d.look) continue;
    d.severity = sev; d.pulse = pulse; d.look = look;
    d.marker.setIcon(markerIcon(d));
    changed.push(d.marker);
  }
  dirty.clear();
  if (changed.length) cluster.refreshClusters(changed);
  scheduleKpis();
}

function loadSnapshot(frame) {
  cluster.clearLayers();
  state.devices.clear();
  state.alerts.clear();
  for (const a of frame.alerts) state.alerts.set(a.id, a);
  const markers = [];
  for (const info of frame.devices) {
    const d = { info, status: info.status, reading: info.reading || null, marker: null, severity: 0, pulse: false, look: "" };
    state.devices.set(info.id, d);
    if (info.lat === null || info.lon === null) continue;
    [d.severity, d.pulse] = deviceSeverity(info.id);
    d.look = `${d.status}|${d.severity}|${d.pulse}`;
    d.marker = L.marker([info.lat, info.lon], { icon: markerIcon(d), deviceId: info.id, title: info.name || info.id });
    d.marker.on("click", () => openDrawer(info.id));
    markers.push(d.marker);
  }
  cluster.addLayers(markers);
  renderAlerts();
  renderKpis();
}

function applyDelta(frame) {
  for (const s of frame.status) {
    const d = state.devices.get(s.id);
    if (d) { d.status = s.status; markDirty(s.id); }
  }
  let chime = false;
  for (const a of frame.alerts) {
    const known = state.alerts.get(a.id);
    if (known && (known.seq || 0) > (a.seq || 0)) continue;
    if (a.state === "resolved") state.alerts.delete(a.id); else state.alerts.set(a.id, a);
    if (a.device_id) markDirty(a.device_id);
    if (a.state === "firing" && ["ok", "pending"].includes(a.previous_state) && !a.late && !a.muted && a.severity >= 4) chime = true;
  }
  for (const r of frame.readings) {
    const d = state.devices.get(r.id);
    if (d) { d.reading = r; if (state.drawerId === r.id) renderDrawerValues(d); }
  }
  if (frame.alerts.length) scheduleAlerts();
  if (frame.readings.length) scheduleKpis();
  if (chime) playChime();
}

// --- alert list ----------------------------------------------------------------------------------------
// The list is rebuilt whole (up to 300 items): at once for the first change after a quiet spell, then at most
// every ALERTS_MIN_MS, so a storm of alert changes (a delta every 20 ms) does not re-lay-out the panel 50 times a
// second (python -m bench.wall measured that at a few frames per second in headless Chromium).
const ALERTS_MIN_MS = 250;
let alertsRendered = 0; let alertsTimer = null;
function scheduleAlerts() {
  if (alertsTimer) return;
  const wait = Math.max(0, alertsRendered + ALERTS_MIN_MS - performance.now());
  alertsTimer = setTimeout(() => { alertsTimer = null; renderAlerts(); }, wait);
}

function renderAlerts() {
  alertsRendered = performance.now();
  const list = $("alert-list");
  const open = [...state.alerts.values()].filter((a) => OPEN.has(a.state))
    .sort((a, b) => (b.severity - a.severity) || (Date.parse(b.changed_at || 0) - Date.parse(a.changed_at || 0)));
  $("alert-count").textContent = open.length;
  const canAct = !KIOSK && state.me && (state.me.role === "operator" || state.me.role === "admin") && state.me.kind === "session";
  list.innerHTML = open.length ? "" : `<li class="msg">${esc(t("no_alerts"))}</li>`;
  for (const a of open.slice(0, 300)) {
    const li = document.createElement("li");
    li.className = `alert sev-${a.severity}${!a.acked && a.state === "firing" ? " unacked" : ""}`;
    li.dataset.alert = a.id;
    const d = a.device_id ? state.devices.get(a.device_id) : null;
    const name = a.device_name || (d && d.info.name) || a.device_id || a.area || "";
    const area = areaName(a.area);
    const value = a.value !== null && a.value !== undefined
      ? `${fmtNumber(a.value, 2)} ${esc(a.unit || "")}${a.threshold !== null && a.threshold !== undefined ? ` / ${t("threshold")} ${fmtNumber(a.threshold, 2)}` : ""}` : "";
    const message = state.lang === "vi" ? a.message_vi : a.message_en;
    li.innerHTML = `<div class="line1"><span class="sev">${esc(t("level"))} ${a.severity}${a.level ? ` · ${esc(a.level)}` : ""}</span>
      <span class="age" data-since="${esc(a.fired_at || a.started_at || a.changed_at)}">${esc(fmtAge(a.fired_at || a.started_at || a.changed_at))}</span></div>
      <div class="dev-name">${esc(name)} <span class="msg">${esc(area)}</span></div>
      <div class="msg">${value}${message ? ` — ${esc(message)}` : ""}</div>
      ${a.acked ? `<div class="acked">${esc(t("acked_by"))} ${esc(a.acked.by)}${a.acked.note ? `: ${esc(a.acked.note)}` : ""}</div>` : ""}
      ${canAct ? `<div class="actions">${a.acked ? "" : `<button data-act="ack">${esc(t("ack"))}</button>`}<button data-act="resolve">${esc(t("resolve"))}</button></div>` : ""}`;
    li.addEventListener("click", (event) => {
      const act = event.target.dataset && event.target.dataset.act;
      if (act) { event.stopPropagation(); actOnAlert(a, act); return; }
      if (a.device_id) { const dev = state.devices.get(a.device_id); if (dev && dev.marker) cluster.zoomToShowLayer(dev.marker, () => openDrawer(a.device_id)); }
    });
    list.appendChild(li);
  }
}

function actOnAlert(alert, act) {
  const dialog = $("note-dialog");
  $("note-title").textContent = `${t(act)} — ${alert.device_name || alert.device_id || ""}`;
  $("note-text").value = "";
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    try {
      const updated = await api(`/api/alerts/${alert.id}/${act}`, { method: "POST", body: { note: $("note-text").value } });
      if (updated && updated.id !== undefined) {
        const current = state.alerts.get(updated.id);
        if (current) { Object.assign(current, updated); if (updated.state === "resolved") state.alerts.delete(updated.id); }
        if (updated.device_id) markDirty(updated.device_id);
        renderAlerts();
      }
    } catch (error) { alertError(error); }
  };
  dialog.showModal();
}

function alertError(error) { $("alert-count").title = String(error.message || error); }

// --- KPIs ----------------------------------------------------------------------------------------------
let kpiTimer = null;
function scheduleKpis() { if (!kpiTimer) kpiTimer = setTimeout(() => { kpiTimer = null; renderKpis(); }, 1000); }

function renderKpis() {
  let online = 0; let total = 0; let rivers = 0;
  for (const d of state.devices.values()) {
    total += 1;
    if (d.status !== "offline") online += 1;
    const levels = d.info.attributes && d.info.attributes.alarm_levels_m;
    const level = d.reading && d.reading.values && d.reading.values.water_level_m;
    if (levels && level !== undefined && level >= Math.min(...Object.values(levels))) rivers += 1;
  }
  $("kpi-online").querySelector(".kpi-value").textContent = `${online} / ${total}`;
  const counts = [0, 0, 0, 0, 0];
  for (const a of state.alerts.values()) if (OPEN.has(a.state) && a.severity >= 1 && a.severity <= 5) counts[a.severity - 1] += 1;
  $("kpi-alerts").querySelector(".kpi-value").innerHTML =
    counts.map((n, i) => `<span style="background:var(--sev${i + 1})" title="${t("level")} ${i + 1}">${n}</span>`).join("");
  const rain = state.rain24;
  $("kpi-rain").querySelector(".kpi-value").textContent = rain && rain.device_id ? `${fmtNumber(rain.value)} mm` : "–";
  $("kpi-rain").title = rain && rain.device_id ? `${rain.name || rain.device_id}` : "";
  $("kpi-rivers").querySelector(".kpi-value").textContent = String(rivers);
}

async function refreshRain() {
  try { state.rain24 = await api("/api/kpis"); renderKpis(); } catch (error) { /* shown as – */ }
}

// --- areas ---------------------------------------------------------------------------------------------
function areaName(id) {
  if (!id || !state.areas) return id || "";
  const f = state.areas.features.find((x) => x.properties.id === id);
  if (!f) return id;
  return state.lang === "vi" ? f.properties.name : (f.properties.name_en || f.properties.name);
}

function fillAreaFilter() {
  const select = $("area-filter");
  const current = select.value;
  select.innerHTML = `<option value="">${esc(t("all_areas"))}</option>`;
  if (!state.areas) return;
  for (const f of state.areas.features.filter((x) => x.properties.kind !== "province")) {
    const o = document.createElement("option");
    o.value = f.properties.id; o.textContent = areaName(f.properties.id);
    select.appendChild(o);
  }
  select.value = current;
}

function drawOutlines() {
  if (!state.areas || !state.areas.features.length) return;
  const layer = L.geoJSON(state.areas, {
    style: (f) => f.properties.kind === "province"
      ? { color: "#7fa7d6", weight: 2.5, fill: !state.config.tile_url, fillColor: "#22344d", fillOpacity: 0.6 }
      : { color: "#5b7da6", weight: 1, dashArray: "4 3", fill: false },
    interactive: false,
  }).addTo(map);
  if (!state.config.tile_url) {
    for (const f of state.areas.features) {
      if (f.properties.kind === "province") continue;
      const center = L.geoJSON(f).getBounds().getCenter();
      L.marker(center, { icon: L.divIcon({ className: "area-label", html: esc(f.properties.name), iconSize: [120, 14] }), interactive: false }).addTo(map);
    }
  }
  map.fitBounds(layer.getBounds(), { padding: [10, 10] });
}

// --- drawer --------------------------------------------------------------------------------------------
function openDrawer(id) {
  const d = state.devices.get(id);
  if (!d) return;
  state.drawerId = id;
  $("drawer").hidden = false;
  $("drawer-title").textContent = d.info.name || id;
  $("drawer-meta").textContent = `${id} · ${t(`kind_${d.info.kind}`)} · ${areaName(d.info.area)} · ${t("status")}: ${d.status === "offline" ? t("offline") : t("online")}`;
  renderDrawerValues(d);
  const select = $("drawer-metric");
  const metrics = Object.keys((d.reading && d.reading.values) || {});
  select.innerHTML = metrics.map((m) => `<option>${esc(m)}</option>`).join("");
  const preferred = ["water_level_m", "rain_mm"].find((m) => metrics.includes(m));
  if (preferred) select.value = preferred;
  select.onchange = () => drawChart(id, select.value);
  if (select.value) drawChart(id, select.value); else $("drawer-chart").innerHTML = "";
}

function renderDrawerValues(d) {
  const values = (d.reading && d.reading.values) || {};
  $("drawer-values").innerHTML = Object.entries(values)
    .map(([m, v]) => `<tr><td>${esc(m)}</td><td class="v">${fmtNumber(v, 2)}</td></tr>`).join("") +
    (d.reading ? `<tr><td>${esc(t("data_age"))}</td><td class="v">${esc(fmtAge(d.reading.ts))}</td></tr>` : "");
}

async function drawChart(id, metric) {
  const svg = $("drawer-chart");
  svg.innerHTML = "";
  const end = new Date(); const start = new Date(end - 24 * 3600 * 1000);
  let body;
  try {
    const agg = metric === "rain_mm" ? "sum" : "avg";
    body = await api(`/api/devices/${encodeURIComponent(id)}/history?metric=${encodeURIComponent(metric)}&bucket=15m&agg=${agg}&start=${start.toISOString()}&end=${end.toISOString()}`);
  } catch (error) { svg.innerHTML = `<text x="10" y="20">${esc(error.message)}</text>`; return; }
  if (state.drawerId !== id) return;
  const points = body.points.filter((p) => p[1] !== null);
  if (!points.length) { svg.innerHTML = `<text x="10" y="20">–</text>`; return; }
  const d = state.devices.get(id);
  const levels = metric === "water_level_m" && d && d.info.attributes && d.info.attributes.alarm_levels_m ? Object.entries(d.info.attributes.alarm_levels_m) : [];
  const values = points.map((p) => p[1]).concat(levels.map(([, v]) => v));
  let lo = Math.min(...values); let hi = Math.max(...values);
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (ts) => ((Date.parse(ts) - start) / (end - start)) * 400;
  const y = (v) => 150 - ((v - lo) / (hi - lo)) * 140;
  const line = points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
  svg.innerHTML = levels.map(([name, v]) => `<line class="alarm" x1="0" x2="400" y1="${y(v)}" y2="${y(v)}"></line><text x="2" y="${y(v) - 2}">${esc(name)} ${fmtNumber(v, 2)}</text>`).join("") +
    `<polyline points="${line}"></polyline><text x="330" y="12">${fmtNumber(hi, 2)}</text><text x="330" y="158">${fmtNumber(lo, 2)}</text>`;
}

// --- live feed -----------------------------------------------------------------------------------------
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = () => {
    const message = { type: "subscribe", filter: state.filter };
    if (state.seq !== null && state.stream) { message.resume = state.seq; message.stream = state.stream; }
    ws.send(JSON.stringify(message));
  };
  ws.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    state.lastFrame = Date.now();
    if (frame.type === "snapshot") { state.stream = frame.stream; loadSnapshot(frame); setConnected(true); }
    else if (frame.type === "resumed") { setConnected(true); }
    else if (frame.type === "delta") applyDelta(frame);
    else if (frame.type === "error") console.warn("live feed:", frame.code, frame.message);
    if (frame.seq !== undefined && frame.type !== "hello") state.seq = frame.seq;
  };
  ws.onclose = (event) => {
    setConnected(false);
    // A refused handshake (expired or revoked login) looks like any lost connection here: ask the API, which
    // sends the page to the login form on 401; a server that is down just fails and we retry.
    api("/api/me").catch(() => {});
    const delay = state.backoff;
    state.backoff = Math.min(MAX_BACKOFF_MS, state.backoff * 2);
    setTimeout(connect, delay + Math.random() * 300);
  };
}

function setConnected(up) {
  state.connected = up;
  if (up) state.backoff = 500;
  updateBanner();
}

function updateBanner() {
  const heartbeatLate = state.lastFrame && Date.now() - state.lastFrame > 40000;
  const lost = !state.connected || heartbeatLate;
  $("banner").hidden = !lost;
  if (lost) {
    const age = state.lastFrame ? fmtAge(new Date(state.lastFrame).toISOString()) : "–";
    $("banner-age").textContent = `${t("data_age")} / data age: ${age}`;
  }
}

function resubscribe() {
  state.seq = null; state.stream = null;
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ type: "subscribe", filter: state.filter }));
}

// --- chime (Web Audio, nothing to download) ------------------------------------------------------------
let audio = null;
function playChime() {
  if (!$("chime").checked) return;
  try {
    audio = audio || new AudioContext();
    for (const [i, freq] of [[0, 880], [1, 660], [2, 880]]) {
      const osc = audio.createOscillator(); const gain = audio.createGain();
      osc.frequency.value = freq; gain.gain.value = 0.15;
      osc.connect(gain).connect(audio.destination);
      osc.start(audio.currentTime + i * 0.25); osc.stop(audio.currentTime + i * 0.25 + 0.2);
    }
  } catch (error) { /* no audio device */ }
}

// --- start ---------------------------------------------------------------------------------------------
function tickClock() {
  $("clock").textContent = fmtTime(new Date());
  document.querySelectorAll(".alert .age").forEach((el) => { el.textContent = fmtAge(el.dataset.since); });
  updateBanner();
}

async function start() {
  if (KIOSK) document.body.classList.add("kiosk");
  [state.me, state.config, state.areas] = await Promise.all([api("/api/me"), api("/api/config"), api("/api/areas")]);
  if (state.me.kind === "kiosk" || state.me.role === "viewer") document.body.classList.add("readonly");
  $("user").textContent = KIOSK ? "" : `${state.me.name} (${state.me.role})`;
  $("site-name").removeAttribute("data-i18n");
  $("site-name").textContent = state.config.site_name;
  if (state.config.tile_url) L.tileLayer(state.config.tile_url, { attribution: state.config.tile_attribution, maxZoom: 18 }).addTo(map);
  drawOutlines();
  applyLanguage();
  $("lang").onclick = () => { state.lang = state.lang === "vi" ? "en" : "vi"; localStorage.setItem("occ.lang", state.lang); applyLanguage(); };
  $("logout").onclick = async () => { await api("/api/logout", { method: "POST", body: {} }).catch(() => {}); location.replace("/login"); };
  $("drawer-close").onclick = () => { $("drawer").hidden = true; state.drawerId = null; };
  $("area-filter").onchange = (event) => {
    const area = event.target.value;
    state.filter = area ? { areas: [area] } : {};
    resubscribe();
    const f = area && state.areas.features.find((x) => x.properties.id === area);
    if (f) map.fitBounds(L.geoJSON(f).getBounds());
  };
  $("chime").checked = localStorage.getItem("occ.chime") === "1";
  $("chime").onchange = (event) => localStorage.setItem("occ.chime", event.target.checked ? "1" : "0");
  if (KIOSK) document.addEventListener("click", () => document.documentElement.requestFullscreen && document.documentElement.requestFullscreen().catch(() => {}), { once: true });
  connect();
  tickClock();
  setInterval(tickClock, 1000);
  setInterval(() => document.body.classList.toggle("blink"), 500);  // new alerts blink (see wall.css)
  refreshRain();
  setInterval(refreshRain, 300000);
}

start().catch((error) => { console.error(error); setConnected(false); });
