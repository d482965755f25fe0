// Talking to aquamask: HTTP with the optional bearer token, the server's error messages, and the
// pure functions that turn the form into process inputs and a results document into a series.

const TOKEN_KEY = "aquamask.viewer.token";

// The page is served at <root>/viewer; every API path is relative to <root>/.
export const root = new URL("./", window.location.href);

let token = "";
try {
  token = window.sessionStorage.getItem(TOKEN_KEY) || "";
} catch {
  token = "";
}

export function getToken() {
  return token;
}

export function setToken(value) {
  token = (value || "").trim().replace(/^Bearer\s+/i, "");
  try {
    if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
    else window.sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* private mode: keep it in memory only */
  }
  return token;
}

/** A token handed over in the URL fragment by a login redirect (#access_token=...). */
export function takeTokenFromFragment() {
  const hash = window.location.hash.replace(/^#/, "");
  if (!hash) return false;
  const params = new URLSearchParams(hash);
  const value = params.get("access_token");
  if (!value) return false;
  setToken(value);
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  return true;
}

export class ServerError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = "ServerError";
    this.status = status;
    this.body = body;
  }
}

/** The message a person should read from an error response: OGC exception JSON, an OWS/WMS
 * exception report, or the text itself. */
export function messageFromBody(text, status, statusText) {
  const trimmed = (text || "").trim();
  if (trimmed) {
    try {
      const doc = JSON.parse(trimmed);
      if (doc && typeof doc === "object") {
        const message = doc.description || doc.detail || doc.message || doc.title || doc.code;
        if (message) return String(message);
      }
    } catch {
      /* not JSON */
    }
    const xml = trimmed.match(/<(?:\w+:)?(?:ExceptionText|ServiceException)\b[^>]*>([\s\S]*?)<\//);
    if (xml) return xml[1].trim();
    if (!trimmed.startsWith("<")) return trimmed.slice(0, 1000);
  }
  return `HTTP ${status}${statusText ? ` ${statusText}` : ""}`;
}

export function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

/** fetch() against the server; a non-2xx answer throws a ServerError with the server's words. */
export async function call(path, { method = "GET", body, headers = {} } = {}) {
  const url = new URL(path, root);
  const init = { method, headers: authHeaders({ Accept: "application/json", ...headers }) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ServerError(0, `The server cannot be reached (${err.message}).`);
  }
  if (!response.ok) {
    const text = await response.text();
    throw new ServerError(response.status, messageFromBody(text, response.status,
                                                           response.statusText), text);
  }
  return response;
}

export async function getJSON(path) {
  return (await call(path)).json();
}

/** What the process description offers: the page shows only the fields it lists. */
export function capabilities(description) {
  const inputs = (description && description.inputs) || {};
  const schema = (name) => (inputs[name] && inputs[name].schema) || {};
  return {
    id: description && description.id,
    image: "image" in inputs,
    bbox: "bbox" in inputs,
    geometry: "geometry" in inputs,
    datetime: "datetime" in inputs,
    datetimeFormat: schema("datetime").format || "",
    cloud: "max_cloud_cover" in inputs,
    cloudDefault: schema("max_cloud_cover").default,
    cloudMax: schema("max_cloud_cover").maximum,
    method: "method" in inputs,
    methods: schema("method").enum || [],
    methodDefault: schema("method").default,
    threshold: "threshold" in inputs,
    thresholdDefault: schema("threshold").default,
    async: ((description && description.jobControlOptions) || []).includes("async-execute"),
  };
}

export function placeCapable(caps) {
  return caps.bbox || caps.geometry;
}

const round = (v) => Math.round(v * 1e6) / 1e6;

/** A point of interest as a small box (about 2.5 km each side of it). */
export function pointBox([lon, lat], halfKm = 2.5) {
  const dLat = halfKm / 110.574;
  const dLon = halfKm / (111.32 * Math.max(Math.cos((lat * Math.PI) / 180), 0.01));
  return [lon - dLon, lat - dLat, lon + dLon, lat + dLat].map(round);
}

/** "w, s, e, n" -> [w, s, e, n] in degrees, or an Error saying what is wrong. */
export function parseBbox(text) {
  const parts = String(text).split(/[\s,;]+/).filter(Boolean).map(Number);
  if (parts.length !== 4 || parts.some((v) => !Number.isFinite(v))) {
    throw new Error("The bounding box needs four numbers: west, south, east, north.");
  }
  const [w, s, e, n] = parts;
  if (w < -180 || e > 180 || s < -90 || n > 90 || w >= e || s >= n) {
    throw new Error("The bounding box must have west < east and south < north, in degrees.");
  }
  return parts;
}

/** The date input: a full date, or an interval of full dates with ".." for an open end
 * (RFC 3339 date-times when the schema asks for "date-time"). */
export function datetimeInput(start, end, format) {
  if (!start && !end) return undefined;
  const stamp = (d, edge) => (format === "date-time" ? `${d}T${edge}Z` : d);
  if (start && end && start === end) {
    return format === "date-time" ? `${stamp(start, "00:00:00")}/${stamp(end, "23:59:59")}` : start;
  }
  const from = start ? stamp(start, "00:00:00") : "..";
  const to = end ? stamp(end, "23:59:59") : "..";
  return `${from}/${to}`;
}

/** The execute request's inputs from the form's state, for the process's capabilities.
 * state: {source, image, shape: {kind, bbox, geometry}, start, end, cloud, method, threshold} */
export function buildInputs(caps, state) {
  const inputs = {};
  const byPlace = placeCapable(caps) && (state.source === "place" || !caps.image);
  if (byPlace) {
    const shape = state.shape;
    if (!shape) {
      throw new Error("Choose the place: draw a box, a polygon or a point on the map, "
                      + "or type a bounding box.");
    }
    if (caps.geometry && shape.kind === "polygon" && shape.geometry) {
      inputs.geometry = shape.geometry;
    } else if (caps.bbox) {
      inputs.bbox = shape.bbox.map(round);
    } else {
      inputs.geometry = shape.geometry;
    }
    if (caps.datetime) {
      const datetime = datetimeInput(state.start, state.end, caps.datetimeFormat);
      if (datetime) inputs.datetime = datetime;
    }
    if (caps.cloud && state.cloud !== undefined && state.cloud !== "") {
      inputs.max_cloud_cover = Number(state.cloud);
    }
  } else {
    const href = (state.image || "").trim();
    if (!href) {
      throw new Error("Choose the image: pick a scene from the list, click an outlined scene "
                      + "or draw a box over it.");
    }
    inputs.image = { href };
  }
  if (caps.method && state.method) inputs.method = state.method;
  if (caps.threshold && state.threshold !== undefined && state.threshold !== "") {
    inputs.threshold = Number(state.threshold);
  }
  return inputs;
}

const hrefOf = (value) => (typeof value === "string" ? value : value && value.href) || null;
// an object output of OGC API - Processes 1.0 results is a qualified value: {value, mediaType}
export const valueOf = (output) => (output && typeof output === "object" && "mediaType" in output
  && "value" in output ? output.value : output);

function entryOf(doc, extra = {}) {
  return {
    // a single result's acquisition time (null: unknown); never a request's date interval
    datetime: doc.acquired || extra.datetime || null,
    water_area_km2: doc.water_area_km2 ?? null,
    water_fraction: doc.water_fraction ?? null,
    valid_fraction: doc.valid_fraction ?? null,
    bbox: doc.bbox || extra.bbox || null,
    layer: valueOf(doc.layer) || extra.layer || null,
    time: extra.time || null,
    mask: hrefOf(doc.mask),
    probability: hrefOf(doc.probability),
    stac_item: hrefOf(doc.stac_item),
    method: doc.method || extra.method || null,
    job: extra.job || null,
    href: extra.href || null,
  };
}

const OK = "ok";  // a series row that has a mask (the others were skipped or failed)

/** A results document as a list of dated entries: a time-series process's `timeseries` rows
 * that have a mask (each drawn from the series' time-enabled layer at its TIME), or the one
 * result. */
export function seriesFromResults(doc, extra = {}) {
  const rows = valueOf(doc.timeseries);
  if (Array.isArray(rows)) {
    return rows.filter((row) => row.status === OK).map((row) => entryOf(
      { ...row, acquired: row.datetime, layer: null },
      { layer: valueOf(doc.layer), time: row.layer_time, bbox: doc.bbox, method: doc.method,
        job: extra.job, href: extra.href }));
  }
  return [entryOf(doc, extra)];
}

/** The series as CSV text. */
export function seriesCSV(entries) {
  const header = "datetime,water_area_km2,water_fraction,valid_fraction,job,mask";
  const cell = (v) => {
    if (v === null || v === undefined) return "";
    const s = String(v);
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  const rows = entries.map((e) => [e.datetime, e.water_area_km2, e.water_fraction,
                                   e.valid_fraction, e.job, e.mask].map(cell).join(","));
  return [header, ...rows].join("\n") + "\n";
}

function area(b) {
  return Math.max(b[2] - b[0], 0) * Math.max(b[3] - b[1], 0);
}

export function overlap(a, b) {
  return area([Math.max(a[0], b[0]), Math.max(a[1], b[1]), Math.min(a[2], b[2]),
               Math.min(a[3], b[3])]);
}

/** The scene a drawn box (or point) points at: the one it overlaps most (for a point, the
 * smallest scene holding it); null when it touches none. */
export function sceneUnder(scenes, bbox) {
  let best = null;
  let bestScore = 0;
  const isPoint = bbox[0] === bbox[2] && bbox[1] === bbox[3];
  for (const scene of scenes) {
    if (!scene.bbox) continue;
    const b = scene.bbox;
    let score;
    if (isPoint) {
      const inside = bbox[0] >= b[0] && bbox[0] <= b[2] && bbox[1] >= b[1] && bbox[1] <= b[3];
      score = inside ? 1 / (area(b) + 1e-12) : 0;
    } else {
      score = overlap(b, bbox);
    }
    if (score > bestScore) {
      best = scene;
      bestScore = score;
    }
  }
  return best;
}

export function inputHref(inputs) {
  const image = inputs && inputs.image;
  return (typeof image === "string" ? image : image && image.href) || null;
}

// degrees (about 50 m): the same box typed again or drawn again by hand moves a pixel or two
const PLACE_TOLERANCE = 5e-4;

function samePlace(a, b) {
  if (Array.isArray(a.bbox) && Array.isArray(b.bbox)) {
    return a.bbox.length === b.bbox.length
      && a.bbox.every((v, i) => Math.abs(v - b.bbox[i]) <= PLACE_TOLERANCE);
  }
  if (a.geometry && b.geometry) return JSON.stringify(a.geometry) === JSON.stringify(b.geometry);
  return false;
}

const SAME_INPUTS = ["method", "threshold", "source", "collection", "max_cloud_cover",
                     "bbox-crs"];

/** The one series a single result belongs to: the earlier results of the same process over the
 * same place (the same box or polygon), with the same method and settings, one per acquisition
 * date. An image is one acquisition, and results of other places or inputs are never joined:
 * without a place or a known date a result stands alone. */
export function historyFor(current, currentInputs, processId, results) {
  if (!current.datetime || inputHref(currentInputs)
      || !(currentInputs.bbox || currentInputs.geometry)) {
    return [current];
  }
  const same = results
    .filter((r) => r.id !== current.job && r.process_id === processId && r.datetime
            && !inputHref(r.inputs) && samePlace(r.inputs || {}, currentInputs)
            && SAME_INPUTS.every((k) => JSON.stringify((r.inputs || {})[k])
                                        === JSON.stringify(currentInputs[k])))
    .map((r) => entryOf(r.outputs || {}, { job: r.id, datetime: r.datetime }));
  const byDate = new Map([[current.datetime, current]]);
  for (const e of same) if (!byDate.has(e.datetime)) byDate.set(e.datetime, e);
  return [...byDate.values()].sort((a, b) => String(a.datetime).localeCompare(
    String(b.datetime)));
}
