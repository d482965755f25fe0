// The map: an offline world layer (or a configured XYZ/WMS base map), the scenes' outlines, the
// place the user draws, and the result's water mask from the server's WMS.
import Feature from "ol/Feature.js";
import Map from "ol/Map.js";
import View from "ol/View.js";
import { defaults as defaultControls, ScaleLine } from "ol/control.js";
import { boundingExtent, getCenter } from "ol/extent.js";
import TopoJSON from "ol/format/TopoJSON.js";
import { fromExtent } from "ol/geom/Polygon.js";
import Draw from "ol/interaction/Draw.js";
import PointerInteraction from "ol/interaction/Pointer.js";
import Graticule from "ol/layer/Graticule.js";
import TileLayer from "ol/layer/Tile.js";
import VectorLayer from "ol/layer/Vector.js";
import { fromLonLat, toLonLat, transformExtent } from "ol/proj.js";
import TileWMS from "ol/source/TileWMS.js";
import VectorSource from "ol/source/Vector.js";
import XYZ from "ol/source/XYZ.js";
import { Fill, Stroke, Style, Text } from "ol/style.js";
import CircleStyle from "ol/style/Circle.js";

import { pointBox, root } from "./api.js";

const LAND = new Style({
  fill: new Fill({ color: "#f7f5ef" }),
  stroke: new Stroke({ color: "#b8b2a2", width: 0.8 }),
});

function sceneStyle(selected) {
  return (feature, resolution) => new Style({
    stroke: new Stroke({ color: selected(feature) ? "#d9480f" : "#343a40",
                         width: selected(feature) ? 3 : 1.5,
                         lineDash: selected(feature) ? undefined : [6, 4] }),
    fill: new Fill({ color: "rgba(0,0,0,0)" }),
    text: resolution < 200 ? new Text({
      text: feature.get("href"), font: "12px system-ui, sans-serif", overflow: true,
      placement: "point", offsetY: -8,
      fill: new Fill({ color: "#212529" }), stroke: new Stroke({ color: "#fff", width: 3 }),
    }) : undefined,
  });
}

// no fill once drawn: the place's outline must not tint the water drawn under it
const DRAWN = new Style({
  stroke: new Stroke({ color: "#7048e8", width: 2.5 }),
  fill: new Fill({ color: "rgba(0,0,0,0)" }),
  image: new CircleStyle({ radius: 6, fill: new Fill({ color: "#7048e8" }),
                           stroke: new Stroke({ color: "#fff", width: 2 }) }),
});

const SKETCH = new Style({
  stroke: new Stroke({ color: "#7048e8", width: 2, lineDash: [5, 4] }),
  fill: new Fill({ color: "rgba(112,72,232,0.08)" }),
  image: new CircleStyle({ radius: 5, fill: new Fill({ color: "#7048e8" }) }),
});

const wgs84 = (extent) => transformExtent(extent, "EPSG:3857", "EPSG:4326");
const webMercator = (bbox) => transformExtent(bbox, "EPSG:4326", "EPSG:3857");

export function createMap(target, { onDrawn, onSceneClicked, onPointClicked, onLayerError,
                                    authHeaders, hasToken }) {
  target.tabIndex = 0;
  target.setAttribute("role", "application");
  target.setAttribute("aria-label", "Map. Arrow keys pan, plus and minus zoom.");

  const world = new VectorLayer({
    source: new VectorSource({ url: new URL("viewer/static/countries-50m.json", root).href,
                               format: new TopoJSON({ layers: ["countries"] }),
                               attributions: "Natural Earth" }),
    style: LAND,
  });
  const graticule = new Graticule({
    strokeStyle: new Stroke({ color: "rgba(60,60,60,0.25)", width: 1, lineDash: [2, 4] }),
    showLabels: true, wrapX: false,
  });
  let basemap = null;
  const scenes = new VectorSource();
  let selectedHref = null;
  const scenesLayer = new VectorLayer({
    source: scenes, style: sceneStyle((f) => f.get("href") === selectedHref), zIndex: 20,
  });
  const drawn = new VectorSource();
  const drawnLayer = new VectorLayer({ source: drawn, style: DRAWN, zIndex: 30 });
  // the result as 256 px WMS tiles on the view's tile grid: a pan or zoom fetches only the
  // tiles it has not seen, which the browser keeps (the server sends ETags and max-age)
  const resultLayer = new TileLayer({ zIndex: 10, opacity: 0.85 });
  // the input scene of the mask (true or false colour), under it and above the base map
  const sceneLayer = new TileLayer({ zIndex: 5 });
  const owsUrl = new URL("ows", root).href;

  const map = new Map({
    target,
    layers: [world, graticule, sceneLayer, resultLayer, scenesLayer, drawnLayer],
    controls: defaultControls({ attributionOptions: { collapsible: true } })
      .extend([new ScaleLine()]),
    view: new View({ center: fromLonLat([0, 20]), zoom: 2, maxZoom: 20 }),
  });

  // -- layer state for people and tests: none | loading | loaded | shown | error ----------------
  let pendingShown = false;
  const setLayerState = (value) => { target.dataset.layerState = value; };
  map.on("rendercomplete", () => {
    if (pendingShown) {
      pendingShown = false;
      setLayerState("shown");
    }
  });

  // -- drawing -----------------------------------------------------------------------------
  const CLICK_PX = 5;  // a press released within this is a click, not a drag

  function boxShape(extent) {
    const bbox = wgs84(extent);
    const [w, s, e, n] = bbox;
    return { kind: "box", bbox,
             geometry: { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] } };
  }

  /** The box tool: drag from one corner to the other, or click one corner then the other.
   * Our own pointer handling: the press is the box's, so the map does not pan under it. */
  function boxTool() {
    let first = null;
    let downPixel = null;
    let startedHere = false;
    const sketch = (corner) => {
      drawn.clear();
      const feature = new Feature(fromExtent(boundingExtent([first, corner])));
      feature.setStyle(SKETCH);
      drawn.addFeature(feature);
    };
    return new PointerInteraction({
      handleDownEvent(event) {
        downPixel = event.pixel;
        startedHere = first === null;
        if (startedHere) first = event.coordinate;
        return true;
      },
      handleDragEvent(event) { sketch(event.coordinate); },
      handleMoveEvent(event) { if (first) sketch(event.coordinate); },
      handleUpEvent(event) {
        const moved = Math.hypot(event.pixel[0] - downPixel[0],
                                 event.pixel[1] - downPixel[1]) > CLICK_PX;
        if (!moved && startedHere) return false;  // the first corner's click: wait
        const extent = boundingExtent([first, event.coordinate]);
        first = null;
        drawn.clear();
        drawn.addFeature(new Feature(fromExtent(extent)));
        setTimeout(() => onDrawn(boxShape(extent)), 0);
        return false;
      },
    });
  }

  let draw = null;
  function setTool(tool) {
    if (draw) map.removeInteraction(draw);
    draw = null;
    if (!tool) return;
    if (tool === "box") {
      draw = boxTool();
      map.addInteraction(draw);
      return;
    }
    const options = { polygon: { type: "Polygon" }, point: { type: "Point" } }[tool];
    draw = new Draw({ source: drawn, ...options, style: SKETCH });
    draw.on("drawstart", () => drawn.clear());
    draw.on("drawend", (event) => {
      const geometry = event.feature.getGeometry();
      const lonlat = geometry.clone().transform("EPSG:3857", "EPSG:4326");
      let shape;
      if (tool === "point") {
        const point = lonlat.getCoordinates();
        shape = { kind: "point", point, bbox: pointBox(point),
                  geometry: { type: "Point", coordinates: point } };
      } else {
        shape = { kind: tool, bbox: lonlat.getExtent(),
                  geometry: { type: "Polygon", coordinates: lonlat.getCoordinates() } };
      }
      // the drawing ends after this event; report it once the feature is in place
      setTimeout(() => onDrawn(shape), 0);
    });
    map.addInteraction(draw);
  }

  function showBox(bbox) {
    drawn.clear();
    drawn.addFeature(new Feature(fromExtent(webMercator(bbox))));
    return { ...boxShape(webMercator(bbox)), bbox };
  }

  map.on("singleclick", (event) => {
    if (draw) return;
    if (viewsOf) onPointClicked(pointInfoUrls(event.coordinate), toLonLat(event.coordinate));
    const features = map.getFeaturesAtPixel(event.pixel, { layerFilter: (l) => l === scenesLayer,
                                                           hitTolerance: 3 });
    let hit = features.length ? features[0] : null;
    if (!hit) {  // inside an outline (the fill is transparent, so test the geometry)
      const inside = scenes.getFeaturesAtCoordinate(event.coordinate);
      inside.sort((a, b) => a.get("area") - b.get("area"));
      hit = inside[0] || null;
    }
    if (hit && scenesLayer.getVisible()) onSceneClicked(hit.get("scene"));
  });

  // -- scenes ------------------------------------------------------------------------------
  function setScenes(list) {
    scenes.clear();
    const extents = [];
    for (const scene of list) {
      if (!scene.bbox) continue;
      const extent = webMercator(scene.bbox);
      extents.push(extent);
      const [w, s, e, n] = scene.bbox;
      scenes.addFeature(new Feature({ geometry: fromExtent(extent), href: scene.href, scene,
                                      area: (e - w) * (n - s) }));
    }
    if (extents.length && !target.dataset.fitted) {
      const all = boundingExtent(extents.flatMap((e) => [[e[0], e[1]], [e[2], e[3]]]));
      map.getView().fit(all, { padding: [40, 40, 40, 40], maxZoom: 13 });
    }
  }

  function selectScene(href) {
    selectedHref = href;
    scenesLayer.changed();
  }

  function fitBbox(bbox) {
    target.dataset.fitted = "true";
    map.getView().fit(webMercator(bbox), { padding: [40, 40, 40, 40], maxZoom: 17 });
  }

  // -- base map ----------------------------------------------------------------------------
  function setBasemap(config) {
    if (basemap) map.removeLayer(basemap);
    basemap = null;
    if (!config || !config.url) {
      world.setVisible(true);
      return;
    }
    const attributions = config.attribution || undefined;
    const source = config.type === "wms"
      ? new TileWMS({ url: config.url, params: { LAYERS: config.layers, TILED: true },
                      attributions, crossOrigin: null })
      : new XYZ({ url: config.url, attributions, crossOrigin: null });
    basemap = new TileLayer({ source, zIndex: 0 });
    // the offline layer stays underneath, visible where the base map has no tile
    map.getLayers().insertAt(1, basemap);
  }

  // -- the result layer --------------------------------------------------------------------
  let shownKey = null;
  function loadWithToken(tile, src) {
    fetch(src, { headers: authHeaders() })
      .then((response) => {
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        return response.blob();
      })
      .then((blob) => {
        const url = URL.createObjectURL(blob);
        const img = tile.getImage();
        img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
        img.src = url;
      })
      .catch(() => { tile.getImage().src = "data:,"; });
  }

  function showLayer(layer, time, opacity) {
    const key = `${layer.wms}|${layer.name}|${time || ""}|${hasToken()}`;
    if (opacity !== undefined) resultLayer.setOpacity(opacity);
    if (key === shownKey) return;
    shownKey = key;
    const wmsUrl = layer.wms || new URL("ows", root).href;
    const params = { LAYERS: layer.name, FORMAT: "image/png", TRANSPARENT: true,
                     VERSION: "1.3.0" };
    if (time) params.TIME = time;
    const options = { url: wmsUrl, params, interpolate: false, transition: 0 };
    if (hasToken()) options.tileLoadFunction = loadWithToken;
    const source = new TileWMS(options);
    let loading = 0;  // tiles on their way: "loaded" once the last of them has come
    source.on("tileloadstart", () => { loading += 1; setLayerState("loading"); });
    source.on("tileloadend", () => {
      loading = Math.max(0, loading - 1);
      if (loading === 0) { setLayerState("loaded"); pendingShown = true; }
    });
    source.on("tileloaderror", () => {
      loading = Math.max(0, loading - 1);
      setLayerState("error");
      onLayerError(`The map server did not draw the layer ${layer.name}.`);
    });
    resultLayer.setSource(source);
  }

  // -- what is shown with a water mask: its scene under it, its class and probability on click
  let viewsOf = null;  // the mask layer whose scene and probability layers are shown, queried
  let sceneName = null;
  function showViews(mask, view) {
    viewsOf = mask;
    const name = mask && view ? `${mask}--${view}` : null;
    if (name === sceneName) return;
    sceneName = name;
    if (!name) {
      sceneLayer.setSource(null);
      target.dataset.sceneLayer = "";
      return;
    }
    const params = { LAYERS: name, FORMAT: "image/png", TRANSPARENT: true, VERSION: "1.3.0" };
    const options = { url: owsUrl, params, transition: 0 };
    if (hasToken()) options.tileLoadFunction = loadWithToken;
    const source = new TileWMS(options);
    source.on("tileloaderror", () => onLayerError(`The map server did not draw the layer ${name}.`));
    sceneLayer.setSource(source);
    target.dataset.sceneLayer = name;
  }

  /** GetFeatureInfo of the mask (its class) and of its probability at ``coordinate``. */
  function pointInfoUrls(coordinate) {
    const resolution = map.getView().getResolution();
    const info = new TileWMS({ url: owsUrl, params: { VERSION: "1.3.0" } });
    const url = (name) => info.getFeatureInfoUrl(coordinate, resolution, "EPSG:3857", {
      LAYERS: name, QUERY_LAYERS: name, INFO_FORMAT: "application/json" });
    return { water: url(viewsOf), probability: url(`${viewsOf}--probability`) };
  }

  function clearDrawing() {
    drawn.clear();
  }

  function hideLayer() {
    shownKey = null;
    resultLayer.setSource(null);
    showViews(null, null);
    setLayerState("none");
  }

  return {
    setTool, showBox, setScenes, selectScene, fitBbox, setBasemap, showLayer, hideLayer,
    showViews, clearDrawing,
    setOpacity: (value) => resultLayer.setOpacity(value),
    showScenes: (visible) => scenesLayer.setVisible(visible),
    debug: {
      map,
      // in the page's CSS pixels, as a mouse event or a screenshot of the page sees them
      pixelOf: (lon, lat) => {
        const [x, y] = map.getPixelFromCoordinate(fromLonLat([lon, lat]));
        const rect = target.getBoundingClientRect();
        return [rect.left + x, rect.top + y];
      },
      lonLatOf: (x, y) => toLonLat(map.getCoordinateFromPixel([x, y])),
      viewBbox: () => wgs84(map.getView().calculateExtent(map.getSize())),
      center: () => toLonLat(getCenter(map.getView().calculateExtent(map.getSize()))),
    },
  };
}
