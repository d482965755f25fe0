// The /viewer page: choose the place and the date, run the process asynchronously, watch the
// job's progress, see the water mask through the server's WMS, its statistics, a time series
// chart and download links.
import "ol/ol.css";
import "uplot/dist/uPlot.min.css";
import "./viewer.css";

import {
  authHeaders, buildInputs, call, capabilities, getJSON, getToken, historyFor, inputHref, parseBbox,
  placeCapable, pointBox, root, sceneUnder, seriesCSV, seriesFromResults, ServerError, setToken,
  takeTokenFromFragment, valueOf,
} from "./api.js";
import { createMap } from "./map.js";
import { drawChart } from "./chart.js";

const $ = (selector) => document.querySelector(selector);
const el = {
  form: $("#run-form"), sourceChoice: $("#source-choice"), sceneFields: $("#scene-fields"),
  image: $("#image"), sceneList: $("#scene-list"), sceneCount: $("#scene-count"),
  bboxFields: $("#bbox-fields"), bbox: $("#bbox"), placeSummary: $("#place-summary"),
  when: $("#when"), start: $("#date-start"), end: $("#date-end"), cloudField: $("#cloud-field"),
  cloud: $("#cloud"), cloudOut: $("#cloud-out"), method: $("#method"),
  threshold: $("#threshold"), run: $("#run"), cancel: $("#cancel"), progress: $("#progress"),
  progressText: $("#progress-text"), status: $("#status"), error: $("#error"),
  earlier: $("#earlier-select"), earlierRefresh: $("#earlier-refresh"),
  results: $("#results"), area: $("#stat-area"), water: $("#stat-water"),
  valid: $("#stat-valid"), date: $("#stat-date"), timeField: $("#time-field"), time: $("#time"),
  timeOut: $("#time-out"), opacity: $("#opacity"), chart: $("#chart"),
  downloads: $("#downloads"), layerName: $("#layer-name"), token: $("#token"),
  stats: $("#stats-water"), statsOther: $("#stats-other"), legend: $("#legend"),
  legendOther: $("#legend-other"), legendImage: $("#legend-image"),
  tokenSave: $("#token-save"), tokenClear: $("#token-clear"), authState: $("#auth-state"),
  auth: $("#auth"), login: $("#login"), clear: $("#clear-drawing"), seriesHint: $("#series-hint"),
  sceneView: $("#scene-view"), pointInfo: $("#point-info"),
};
const POINT_HINT = el.pointInfo.textContent;

const state = {
  config: null, caps: null, processId: "water-detection", scenes: [], results: [],
  shape: null, job: null, series: [], step: 0, seriesId: null, seriesCaps: null,
};

// -- messages -------------------------------------------------------------------------------
function showError(message) {
  el.error.textContent = message;
  el.error.hidden = !message;
}

function setStatus(message) {
  el.status.textContent = message || "";
}

function setProgress(percent) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  el.progress.value = value;
  el.progressText.textContent = `${Math.round(value)} %`;
}

function reportFailure(err, what) {
  const message = err instanceof ServerError || err instanceof Error ? err.message : String(err);
  showError(what ? `${what}: ${message}` : message);
  if (err instanceof ServerError && err.status === 401) {
    el.auth.open = true;  // a token is missing or refused: offer the token field
  }
}

// -- token ----------------------------------------------------------------------------------
function refreshAuthState() {
  const has = Boolean(getToken());
  el.authState.textContent = has ? "set" : "none";
  el.authState.classList.toggle("on", has);
  el.token.value = getToken();
}

el.tokenSave.addEventListener("click", () => {
  setToken(el.token.value);
  refreshAuthState();
  setStatus(getToken() ? "The token is used for every request." : "No token.");
  loadLists();
});
el.tokenClear.addEventListener("click", () => {
  setToken("");
  refreshAuthState();
  setStatus("The token is forgotten.");
});

// -- the map --------------------------------------------------------------------------------
const map = createMap($("#map"), {
  onDrawn: (shape) => placeDrawn(shape),
  onSceneClicked: (scene) => {
    if (currentSource() === "scene") chooseScene(scene, "clicked");
  },
  onPointClicked: (urls, lonlat) => showPointInfo(urls, lonlat),
  onLayerError: (message) => showError(message),
  authHeaders,
  hasToken: () => Boolean(getToken()),
});
window.aquamaskViewer = map.debug;

for (const button of document.querySelectorAll(".tool")) {
  button.addEventListener("click", () => {
    const active = button.getAttribute("aria-pressed") === "true";
    setTool(active ? null : button.dataset.tool);
  });
}

function setTool(tool) {
  for (const button of document.querySelectorAll(".tool")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }
  map.setTool(tool);
  if (tool) {
    const hint = { box: "Drag from one corner to the opposite one (or click both).",
                   polygon: "Click the corners on the map; double-click the last one.",
                   point: "Click the point of interest on the map." }[tool];
    setStatus(hint);
  }
}

el.clear.addEventListener("click", () => {
  state.shape = null;
  map.clearDrawing();
  el.bbox.value = "";
  el.placeSummary.textContent = "";
  setTool(null);
});

function currentSource() {
  const caps = state.caps;
  if (!caps || !placeCapable(caps)) return "scene";
  if (!caps.image) return "place";
  return document.querySelector("input[name=source]:checked").value;
}

const fmt = (v, digits = 4) => Number(v).toFixed(digits);

function placeDrawn(shape) {
  setTool(null);
  setStatus("");  // the drawing instructions are done with
  state.shape = shape;
  el.bbox.value = shape.bbox.map((v) => fmt(v, 5)).join(", ");
  const what = { box: "Box", polygon: "Polygon", point: "Point" }[shape.kind];
  el.placeSummary.textContent = `${what}: ${shape.bbox.map((v) => fmt(v)).join(", ")}`;
  if (currentSource() === "scene") {
    const probe = shape.kind === "point" ? [...shape.point, ...shape.point] : shape.bbox;
    const scene = sceneUnder(state.scenes, probe);
    if (scene) chooseScene(scene, "under the drawing");
    else showError("No scene lies under the drawing: draw over an outlined scene, or pick one "
                   + "from the list.");
  }
}

function chooseScene(scene, how) {
  if (scene.href !== state.shownHref) clearResult();  // its numbers are another scene's
  el.image.value = scene.href;
  map.selectScene(scene.href);
  showError("");
  setStatus(`Scene ${scene.href} (${how}).`);
}

el.image.addEventListener("change", () => {
  if (state.shownHref && el.image.value.trim() !== state.shownHref) clearResult();
  const scene = state.scenes.find((s) => s.href === el.image.value.trim());
  map.selectScene(scene ? scene.href : null);
  if (scene && scene.bbox) map.fitBbox(scene.bbox);
});

el.bbox.addEventListener("change", () => {
  if (!el.bbox.value.trim()) return;
  try {
    const bbox = parseBbox(el.bbox.value);
    const shape = map.showBox(bbox);
    state.shape = shape;
    el.placeSummary.textContent = `Box: ${bbox.map((v) => fmt(v)).join(", ")}`;
    showError("");
  } catch (err) {
    showError(err.message);
  }
});

el.cloud.addEventListener("input", () => {
  el.cloudOut.textContent = el.cloud.value;
});

for (const radio of document.querySelectorAll("input[name=source]")) {
  radio.addEventListener("change", () => applySource());
}

function applySource() {
  const source = currentSource();
  const caps = state.caps || {};
  el.sceneFields.hidden = source !== "scene";
  el.bboxFields.hidden = source !== "place";
  el.when.hidden = !(source === "place" && (caps.datetime || caps.cloud));
  el.seriesHint.hidden = !state.seriesCaps;
  if (state.seriesCaps) {
    el.seriesHint.textContent = `A date range runs ${state.seriesId}: one result per date, `
      + "with a time slider.";
  }
  el.cloudField.hidden = !caps.cloud;
  map.showScenes(source === "scene");
}

// -- the process description ----------------------------------------------------------------
function applyCapabilities(caps) {
  state.caps = caps;
  el.sourceChoice.hidden = !(caps.image && placeCapable(caps));
  if (caps.methods.length) {
    el.method.replaceChildren(...caps.methods.map((m) => new Option(m, m)));
    if (caps.methodDefault) el.method.value = caps.methodDefault;
  }
  el.method.closest("div").hidden = !caps.method;
  el.threshold.closest("div").hidden = !caps.threshold;
  if (caps.thresholdDefault !== undefined) el.threshold.value = caps.thresholdDefault;
  if (caps.cloud) {
    if (caps.cloudMax !== undefined) el.cloud.max = caps.cloudMax;
    if (caps.cloudDefault !== undefined) el.cloud.value = caps.cloudDefault;
    el.cloudOut.textContent = el.cloud.value;
  }
  applySource();
}

// -- lists: scenes and earlier results -------------------------------------------------------
async function loadScenes() {
  try {
    const doc = await getJSON("viewer/api/scenes");
    state.scenes = doc.scenes || [];
    el.sceneList.replaceChildren(...state.scenes.map((s) => {
      const option = new Option(s.href, s.href);
      option.label = `${s.href} (${s.width} × ${s.height}, ${s.count} bands)`;
      return option;
    }));
    el.sceneCount.textContent = state.scenes.length
      ? `${state.scenes.length} scene${state.scenes.length > 1 ? "s" : ""} on the server, `
        + "outlined on the map." + (doc.truncated ? " (list truncated)" : "")
      : "No scene under the server's data root; type a URL.";
    map.setScenes(state.scenes);
  } catch (err) {
    el.sceneCount.textContent = `The scenes cannot be listed: ${err.message}`;
  }
}

function resultLabel(r) {
  const o = r.outputs || {};
  const place = (r.inputs && r.inputs.image && r.inputs.image.href)
    || (o.bbox ? o.bbox.map((v) => fmt(v, 3)).join(",") : r.id);
  // the acquisition date; never the processing time
  const date = r.datetime ? r.datetime.slice(0, 10)
    : Array.isArray(o.timeseries) ? o.datetime || "" : "date unknown";
  const area = o.water_area_km2 !== undefined ? ` · ${fmt(o.water_area_km2, 3)} km²` : "";
  const how = o.method ? `${r.process_id} (${o.method})` : r.process_id;
  return `${date} · ${place} · ${how}${area}`;
}

async function loadResults(select) {
  try {
    const doc = await getJSON("viewer/api/results?limit=100");
    state.results = doc.results || [];
    const keep = select || el.earlier.value;
    el.earlier.replaceChildren(new Option("—", ""), ...state.results.map(
      (r) => new Option(resultLabel(r), r.id)));
    if (keep && state.results.some((r) => r.id === keep)) el.earlier.value = keep;
  } catch (err) {
    el.earlier.replaceChildren(new Option(`(cannot list: ${err.message})`, ""));
  }
}

function loadLists() {
  return Promise.all([loadScenes(), loadResults()]);
}

el.earlierRefresh.addEventListener("click", () => loadResults());
el.earlier.addEventListener("change", async () => {
  const result = state.results.find((r) => r.id === el.earlier.value);
  if (!result) return;
  showError("");
  state.job = null;
  fillForm(result.inputs || {});
  await showResults(result.outputs, { job: result.id, datetime: result.datetime,
                                      href: inputHref(result.inputs), inputs: result.inputs,
                                      processId: result.process_id });
  setStatus(`Earlier result ${result.id}.`);
});

/** Put an earlier job's inputs back in the form, so it can be run again with changes. */
function fillForm(inputs) {
  const href = inputHref(inputs);
  if (href) {
    el.image.value = href;
    map.selectScene(href);
  }
  if (inputs.method && [...el.method.options].some((o) => o.value === inputs.method)) {
    el.method.value = inputs.method;
  }
  if (typeof inputs.threshold === "number") el.threshold.value = String(inputs.threshold);
  if (Array.isArray(inputs.bbox) && inputs.bbox.length === 4) {
    el.bbox.value = inputs.bbox.join(", ");
    state.shape = map.showBox(inputs.bbox);
  }
  if (typeof inputs.datetime === "string") {
    const [from, to] = inputs.datetime.split("/");
    el.start.value = from && from !== ".." ? from.slice(0, 10) : "";
    el.end.value = to && to !== ".." ? to.slice(0, 10) : (to ? "" : el.start.value);
  }
  if (typeof inputs.max_cloud_cover === "number") {
    el.cloud.value = String(inputs.max_cloud_cover);
    el.cloudOut.textContent = el.cloud.value;
  }
}

// -- running --------------------------------------------------------------------------------
/** A date range in place mode runs the monitoring process, when the server has one. */
function chosenProcess() {
  const range = el.start.value && el.end.value && el.start.value !== el.end.value;
  if (state.seriesCaps && currentSource() === "place" && range) {
    return { id: state.seriesId, caps: state.seriesCaps };
  }
  return { id: state.processId, caps: state.caps || capabilities(null) };
}

function formState() {
  return {
    source: currentSource(), image: el.image.value, shape: state.shape,
    start: el.start.value, end: el.end.value, cloud: el.cloud.value,
    method: el.method.value, threshold: el.threshold.value,
  };
}

function busy(on) {
  el.run.disabled = on;
  el.cancel.hidden = !on;
  el.form.setAttribute("aria-busy", String(on));
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

el.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  let inputs;
  const process = chosenProcess();
  try {
    inputs = buildInputs(process.caps, formState());
  } catch (err) {
    showError(err.message);
    return;
  }
  busy(true);
  setProgress(0);
  el.progress.removeAttribute("data-final");
  setStatus("Submitting the job…");
  try {
    const extra = { href: inputHref(inputs), inputs, processId: process.id };
    const response = await call(`processes/${process.id}/execution`, {
      method: "POST", body: { inputs }, headers: { Prefer: "respond-async" },
    });
    if (response.status === 200) {  // the server ran it synchronously
      setProgress(100);
      await finish(await response.json(), extra);
      return;
    }
    const body = await response.json().catch(() => ({}));
    const location = response.headers.get("Location")
      || (body.jobID || body.id ? `jobs/${body.jobID || body.id}` : null);
    if (!location) throw new Error("The server accepted the job but named no job URL.");
    const jobUrl = new URL(location, root);
    state.job = jobUrl.href;
    await watch(jobUrl, extra);
  } catch (err) {
    reportFailure(err);
    setStatus("");
  } finally {
    busy(false);
    state.job = null;
  }
});

async function watch(jobUrl, extra) {
  const poll = (state.config && state.config.poll_ms) || 500;
  for (;;) {
    const status = await getJSON(`${jobUrl.href}?f=json`);
    if (status.progress !== undefined) setProgress(status.progress);
    setStatus(`${status.status}: ${status.message || ""}`);
    if (status.status === "successful") {
      el.progress.dataset.final = "successful";
      const jobId = status.jobID || status.id || jobUrl.pathname.split("/").pop();
      const results = await getJSON(`${jobUrl.href}/results?f=json`);
      await finish(results, { ...extra, job: jobId });
      await loadResults(jobId);
      return;
    }
    if (status.status === "failed" || status.status === "dismissed") {
      el.progress.dataset.final = status.status;
      throw new Error(status.status === "failed"
        ? status.message || "The job failed." : "The job was dismissed.");
    }
    if (state.job !== jobUrl.href) throw new Error("The job was cancelled.");
    await sleep(poll);
  }
}

el.cancel.addEventListener("click", async () => {
  const job = state.job;
  if (!job) return;
  state.job = null;
  try {
    await call(job, { method: "DELETE" });
    setStatus("The job was dismissed.");
  } catch (err) {
    reportFailure(err, "Cancelling failed");
  }
});

const stacked = window.matchMedia("(max-width: 760px)");  // the map below the form

async function finish(results, extra) {
  await showResults(results, extra);
  if (stacked.matches) $("#map").scrollIntoView({ behavior: "smooth", block: "start" });
  setStatus("Done: the water is drawn on the map.");
}

// -- results --------------------------------------------------------------------------------
async function acquisitionTime(entry) {
  if (entry.datetime || !entry.stac_item) return entry.datetime;
  try {
    const response = await fetch(entry.stac_item, { headers: authHeaders() });
    if (!response.ok) return null;
    const item = await response.json();
    const p = item.properties || {};
    // aquamask:acquired is null when the acquisition time is unknown (start/end_datetime then
    // only bound it); items without it have their datetime
    return ("aquamask:acquired" in p ? p["aquamask:acquired"] : p.datetime) || null;
  } catch {
    return null;
  }
}

/** No result shown: the panel hidden, its layer off the map. */
function clearResult() {
  state.series = [];
  state.shownHref = null;
  el.results.hidden = true;
  map.hideLayer();
}

const pct = (v) => (v === null || v === undefined ? "–" : `${fmt(v * 100, 1)} %`);
const km2 = (v) => (v === null || v === undefined ? "–" : `${fmt(v, 3)} km²`);

/** What a water-change or water-frequency result says, as (label, value) rows; null for a
 * water mask or a series (their own fields show them). */
function otherStats(doc) {
  if (doc.change) {
    const a = valueOf(doc.area_km2) || {};
    const [before, after] = [valueOf(doc.before) || {}, valueOf(doc.after) || {}];
    return [["Water gained", km2(a.gained)], ["Water lost", km2(a.lost)],
            ["Net change", km2(valueOf(doc.net_change_km2))],
            ["Permanent water", km2(a.permanent)],
            ["Dates", `${before.date || "?"} → ${after.date || "?"}`]];
  }
  if (doc.frequency) {
    const f = valueOf(doc.statistics) || {};
    return [["Ever water", km2(f.ever_wet_area_km2)], ["Never water", km2(f.never_wet_area_km2)],
            ["Mean frequency", pct(f.mean_frequency)],
            ["Observations", String(valueOf(doc.observations_used) ?? "–")]];
  }
  return null;
}

function showKind(doc) {
  const rows = otherStats(doc);
  el.stats.hidden = Boolean(rows);
  el.statsOther.hidden = !rows;
  el.statsOther.replaceChildren(...(rows || []).map(([label, value]) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = label;
    dd.textContent = value;
    div.append(dt, dd);
    return div;
  }));
  // the water legend for masks; the layer's own legend (its classes) for the others
  const layer = valueOf(doc.layer);
  const legend = rows && layer && layer.legend;
  el.legend.hidden = Boolean(legend);
  el.legendOther.hidden = !legend;
  if (legend) el.legendImage.src = legend;
}

async function showResults(doc, extra) {
  state.shownHref = extra.href || null;
  // a water detection's mask has its input scene and probability beside it (a series' dates
  // and the monitoring rasters do not)
  state.withViews = extra.processId === "water-detection" && !Array.isArray(doc.timeseries);
  el.sceneView.hidden = !state.withViews;
  el.pointInfo.hidden = !state.withViews;
  el.pointInfo.textContent = POINT_HINT;
  showKind(doc);
  let series = seriesFromResults(doc, extra);
  if (Array.isArray(doc.timeseries)) {  // a series job: its own dates, and only those
    state.step = Math.max(series.length - 1, 0);
  } else {
    const current = series[0];
    current.datetime = await acquisitionTime(current);
    series = historyFor(current, extra.inputs || {}, extra.processId, state.results);
    state.step = series.indexOf(current);
  }
  state.series = series;
  el.results.hidden = false;
  el.timeField.hidden = series.length < 2;
  el.time.max = String(Math.max(series.length - 1, 0));
  el.time.value = String(state.step);
  const first = series[state.step] || { bbox: doc.bbox };
  if (first.bbox) map.fitBbox(first.bbox);
  showStep(state.step);
  drawChart(el.chart, series, (i) => { el.time.value = String(i); showStep(i); });
  renderDownloads(doc, series);
}

function dateText(value) {
  if (!value) return "unknown";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toISOString().slice(0, 16).replace("T", " ");
}

function showStep(i) {
  const entry = state.series[i];
  if (!entry) {  // a series without a usable date: nothing of an earlier result stays
    for (const e of [el.area, el.water, el.valid, el.date, el.layerName]) e.textContent = "–";
    return;
  }
  state.step = i;
  el.area.textContent = entry.water_area_km2 !== null ? `${fmt(entry.water_area_km2, 3)} km²` : "–";
  el.water.textContent = entry.water_fraction !== null ? `${fmt(entry.water_fraction * 100, 1)} %` : "–";
  el.valid.textContent = entry.valid_fraction !== null ? `${fmt(entry.valid_fraction * 100, 1)} %` : "–";
  el.date.textContent = dateText(entry.datetime);
  el.timeOut.textContent = `${dateText(entry.datetime)} (${i + 1} of ${state.series.length})`;
  el.layerName.textContent = (entry.layer && entry.layer.name) || "–";
  if (entry.layer) map.showLayer(entry.layer, entry.time, Number(el.opacity.value));
  showViews();
}

function showViews() {
  const entry = state.series[state.step];
  const mask = state.withViews && entry && entry.layer ? entry.layer.name : null;
  map.showViews(mask, el.sceneView.querySelector("input:checked").value);
}

el.sceneView.addEventListener("change", showViews);

/** The first feature's properties of a GetFeatureInfo answer; null where there is none. */
async function pointProperties(url) {
  const doc = await (await call(url)).json();
  return doc.features && doc.features.length ? doc.features[0].properties : null;
}

async function showPointInfo(urls, [lon, lat]) {
  const where = `${fmt(lat, 5)}, ${fmt(lon, 5)}`;
  el.pointInfo.textContent = `Looking up ${where}…`;
  // the probability is there unless the job was asked not to write it
  const [water, probability] = await Promise.allSettled(
    [urls.water, urls.probability].map(pointProperties));
  if (water.status === "rejected") {
    el.pointInfo.textContent = `No answer for ${where}: ${water.reason.message}`;
    return;
  }
  const props = water.value;
  const chance = probability.status === "fulfilled" && probability.value
    ? Number(probability.value.value_0) : NaN;
  el.pointInfo.textContent = !props ? `${where}: no data (outside the image or not observed)`
    : `${where}: ${props.class}` + (Number.isFinite(chance)
      ? `, water probability ${fmt(chance, 2)}` : "");
}

el.time.addEventListener("input", () => showStep(Number(el.time.value)));
el.opacity.addEventListener("input", () => map.setOpacity(Number(el.opacity.value)));

function link(href, text, filename) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  if (filename) a.download = filename;
  a.addEventListener("click", async (event) => {
    if (!getToken() || href.startsWith("blob:")) return;
    event.preventDefault();  // with a token, fetch it with the header and save the blob
    try {
      const response = await call(href, { headers: { Accept: "*/*" } });
      const url = URL.createObjectURL(await response.blob());
      const save = document.createElement("a");
      save.href = url;
      save.download = filename || href.split("/").pop();
      save.click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      reportFailure(err, "Download failed");
    }
  });
  li.append(a);
  return li;
}

let csvUrl = null;
function renderDownloads(doc, series) {
  const entry = series[state.step] || series[0] || {};
  const items = [];
  const job = entry.job || "result";
  if (entry.mask) items.push(link(entry.mask, "Water mask (COG)", `${job}-mask.tif`));
  if (entry.probability) {
    items.push(link(entry.probability, "Water probability (COG)", `${job}-probability.tif`));
  }
  if (entry.stac_item) items.push(link(entry.stac_item, "STAC item (JSON)", `${job}-item.json`));
  for (const [key, text] of [["change", "Water change (COG)"],
                             ["frequency", "Water frequency (COG)"],
                             ["observations", "Observation counts (COG)"],
                             ["before_mask", "Water mask, before (COG)"],
                             ["after_mask", "Water mask, after (COG)"]]) {
    const href = doc[key] && doc[key].href;
    if (href) items.push(link(href, text, `${job}-${key}.tif`));
  }
  if (doc.stac_item && doc.stac_item.href && !entry.stac_item) {
    items.push(link(doc.stac_item.href, "STAC item (JSON)", `${job}-item.json`));
  }
  const serverCsv = doc.csv && (doc.csv.href || doc.csv);
  if (typeof serverCsv === "string") {
    items.push(link(serverCsv, "Time series (CSV)", `${job}.csv`));
  } else if (!otherStats(doc)) {  // a change or frequency result's numbers are its own
    if (csvUrl) URL.revokeObjectURL(csvUrl);
    csvUrl = URL.createObjectURL(new Blob([seriesCSV(series)], { type: "text/csv" }));
    items.push(link(csvUrl, "Statistics (CSV)", `${job}.csv`));
  }
  if (entry.layer && entry.layer.getcapabilities) {
    items.push(link(entry.layer.getcapabilities, "WMS capabilities"));
  }
  el.downloads.replaceChildren(...items);
}

// -- start ----------------------------------------------------------------------------------
async function findSeriesProcess(configured) {
  try {
    const list = await getJSON("processes?f=json");
    const ids = (list.processes || []).map((p) => p.id);
    // opt-in (viewer.series_process): a date range otherwise runs one detection per date
    const id = configured && ids.includes(configured) ? configured : null;
    if (!id) return;
    const caps = capabilities(await getJSON(`processes/${id}?f=json`));
    if (caps.datetime && placeCapable(caps)) {
      state.seriesId = id;
      state.seriesCaps = caps;
    }
  } catch {
    /* no monitoring process: single dates only */
  }
}

async function start() {
  if (takeTokenFromFragment()) setStatus("Logged in: the token is used for every request.");
  refreshAuthState();
  try {
    state.config = await getJSON("viewer/api/config");
  } catch (err) {
    state.config = {};
    reportFailure(err, "The viewer's settings cannot be read");
  }
  const config = state.config || {};
  state.processId = config.process || "water-detection";
  map.setBasemap(config.basemap);
  if (config.auth && config.auth.login_url) {
    el.login.href = config.auth.login_url;
    el.login.hidden = false;
  }
  if (config.auth && config.auth.mode && config.auth.mode !== "none" && !getToken()) {
    el.auth.open = true;
  }
  try {
    applyCapabilities(capabilities(await getJSON(`processes/${state.processId}?f=json`)));
  } catch (err) {
    reportFailure(err, "The process cannot be described");
    applyCapabilities(capabilities({ inputs: { image: {}, method: {}, threshold: {} } }));
  }
  await findSeriesProcess(config.series_process);
  applySource();
  await loadLists();
  document.body.dataset.ready = "true";
}

start();
