"""The embedded map engine: MapServer 8 serves the published layers over WMS 1.3.0 and WCS 2.0.1.

The layers themselves live in the job store (``layers`` rows, written by
``aquamask.processes.publishing.service``); every file here is derived from those rows and can be
rebuilt from them at any time:

* ``layers/<name>.layer``: a product's LAYER block (``config/mapfile-layer.j2``), written once
  when it is published, and ``layers/<name>.map``, a mapfile of its own that INCLUDEs it (a
  request for one layer parses one small file: MapServer parses its whole mapfile on every
  request, 255 ms with 1,000 layers in one).
* ``series/<key>.layer``, ``.geojson`` and ``.map``: a time series (the dates of one job) as
  one WMS layer with a TIME dimension over a tile index of its dates' COGs.
* ``views/<view>.map``: what one owner may see (their layers and the public ones; everything
  for managers), for GetCapabilities and requests naming several layers; rendered when first
  asked for after the catalogue's revision changed, so a publish stays O(1) in the number of
  layers.
* ``sets/<digest>.map``: the mapfile of a request naming several layers, rendered on demand.

Every file is written to a temporary name and renamed into place, so MapServer never reads
half of one. A layer's files outlive its unpublishing by ``grace_s`` (a request that already
chose a view including it can still read them), then ``collect()`` removes them. A file that is
missing or cut short (its last line is not the end marker) is rendered again from its row.

Beside them, the MapServer 8 configuration file (``mapserver.conf``) that ``mapserv`` gets in
``MAPSERVER_CONFIG_FILE``: no map paths from clients, no POST bodies, no raw VRT bands, and the
object store's GDAL options (secrets stay out of MapServer's environment: ``mapserver.conf`` is
readable by the server's user only).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import jinja2

from aquamask.processes.files import write_atomic
from aquamask.processes.publishing.base import Publisher, getmap_params, ogc_url, service_layer
from aquamask.processes.publishing.names import SERIES_PREFIX, utc_time
from aquamask.processes.storage.jobstore import job_store
from aquamask.processes.storage.results import results_store
from aquamask.processes.styles import (
    BAND_DESCRIPTIONS,
    CHANGE_CLASSES,
    FREQUENCY_CLASSES,
    PROBABILITY_VIEW,
    RANGE_LABELS,
    SCENE_VIEWS,
    STRETCH_TAG,
    STYLE_ABSTRACTS,
    STYLE_DTYPES,
    WATER_RGB,
    raster_style,
)
from aquamask.processes.types import Layer, Product

LOGGER = logging.getLogger(__name__)

NAME = "embedded"
LAYER_NAME = re.compile(r"^(water|series)-[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CONFIG_FILE = "mapserver.conf"
LAYERS_DIR, SERIES_DIR, VIEWS_DIR, SETS_DIR = "layers", "series", "views", "sets"
TEMPLATE = "mapfile.j2"
LAYER_TEMPLATE = "mapfile-layer.j2"
SERIES_TEMPLATE = "mapfile-series.j2"
SCENE_TEMPLATE = "mapfile-scene.j2"
# the first line of every file written; a file of another format is rendered again
FORMAT = "aquamask mapfile format 4"
END_MARKER = "# end of aquamask file\n"
BASE_SRS = ("EPSG:4326", "EPSG:3857")
# what GetFeatureInfo answers in: the mapfile advertises these (config/mapfile.j2) and /ows
# accepts these and no other (aquamask.server.ows_gateway); MapServer writes the first two
# itself, GeoJSON through OGR
INFO_FORMATS = ("text/plain", "application/vnd.ogc.gml", "application/json")


def _mapserver_string(value: Any) -> str:
    """A double-quoted MapServer string that cannot end early or span lines."""
    text = "" if value is None else str(value)
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).replace("\\", "/").replace('"', "'")
    return f'"{text}"'


def safe_path(path: Path | str) -> str:
    text = str(path)
    if re.search(r'["\x00-\x1f\x7f]', text):
        raise ValueError("a path with quotes or control characters cannot be written into a "
                         "mapfile")
    return text


def _write(path: Path, text: str, durable: bool = False, mode: int = 0o644) -> None:
    """A derived file, whole. Without ``durable`` the fsync is skipped (a few ms each): after a
    power loss one may be cut short, and is then rendered again from the store (``_intact``)."""
    write_atomic(path, text, durable=durable, mode=mode)


# files found whole, by path: (inode, mtime, size) when they were read. Every derived file is
# replaced by a rename (a new inode), so an unchanged signature is the same whole file, and a
# GetMap's check costs one stat instead of an open and two reads
_FOUND_INTACT: dict[Path, tuple[int, int, int]] = {}


def _intact(path: Path) -> bool:
    """Whether a derived file is there whole: of this format and ending with the marker."""
    try:
        info = os.stat(path)
        signature = (info.st_ino, info.st_mtime_ns, info.st_size)
        if _FOUND_INTACT.get(path) == signature:
            return True
        with open(path, "rb") as fh:
            head = fh.read(len(FORMAT) + 2)
            fh.seek(max(0, info.st_size - len(END_MARKER)))
            tail = fh.read()
    except FileNotFoundError:
        _FOUND_INTACT.pop(path, None)
        return False
    whole = head == f"# {FORMAT}".encode() and tail == END_MARKER.encode()
    if whole:
        if len(_FOUND_INTACT) > 4096:
            _FOUND_INTACT.clear()
        _FOUND_INTACT[path] = signature
    return whole


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    """Templates compiled once per process (job workers fork from a process that did it)."""
    import aquamask.config

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(aquamask.config.__file__).parent),
        autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["q"] = _mapserver_string
    return env


def is_vsi(path: str | os.PathLike) -> bool:
    """A path GDAL reads through a virtual file system (/vsis3/, /vsigs/, /vsiaz/...): a
    result on an object store (``aquamask.processes.storage.results``)."""
    return str(path).startswith("/vsi")


def _grid(src, name: str) -> dict[str, Any]:
    """A raster's native extent, size, resolution and CRS."""
    if src.crs is None:
        raise ValueError(f"{name} has no CRS")
    epsg = src.crs.to_epsg()
    left, bottom, right, top = src.bounds
    return {
        "extent": [left, bottom, right, top],
        "width": src.width,
        "height": src.height,
        "resolution": [abs(src.transform.a), abs(src.transform.e)],
        "epsg": int(epsg) if epsg else None,
        "wkt": src.crs.to_wkt(),
    }


def raster_facts(path: Path | str, env=None) -> dict[str, Any]:
    """What a mapfile needs from the COG itself: native extent, size, resolution, CRS, and
    the style it is drawn with. ``env``: the ``rasterio.Env`` to open it in (an object
    store's credentials)."""
    import contextlib

    import rasterio

    with env or contextlib.nullcontext(), rasterio.open(str(path)) as src:
        style = raster_style(src.tags())
        if src.count < 1 or src.dtypes[0] != STYLE_DTYPES[style]:
            raise ValueError(f"{Path(str(path)).name} is not a {STYLE_DTYPES[style]} "
                             + ("mask" if style == "water" else f"{style} raster"))
        return {**_grid(src, Path(str(path)).name), "style": style}


def _product_path(path: Path, results_store) -> tuple[Path, Any]:
    """A product file's path as MapServer reads it, and the ``rasterio.Env`` to open it in."""
    path = path if is_vsi(path) else path.expanduser().resolve()
    safe_path(path)
    return path, (results_store.gdal_env()
                  if is_vsi(path) and results_store is not None else None)


def _bbox(product: Product) -> list[float]:
    bbox = [float(v) for v in product.bbox_wgs84]
    if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
        raise ValueError(f"invalid WGS84 bbox {product.bbox_wgs84!r}")
    return bbox


def product_facts(product: Product, results_store=None) -> dict[str, Any]:
    """The ``facts`` of a product's layer row: its COG's facts, WGS84 box, title, abstract."""
    path, env = _product_path(Path(product.mask_cog), results_store)
    facts = raster_facts(path, env)
    bbox = _bbox(product)
    stats = product.stats
    when = utc_time(product.datetime.isoformat()) if product.datetime else None
    abstract = STYLE_ABSTRACTS.get(facts["style"]) or (
        "Water mask" + (f" of {when}" if when else " (acquisition time unknown)")
        + f": {stats.water_area_km2:.3f} km2 of water in {stats.valid_area_km2:.3f} km2 "
          "observed. Blue is water; dry land and no data are transparent. WCS: 0 dry, "
          "1 water, 255 no data.")
    return {**facts, "path": str(path), "bbox_wgs84": bbox, "crs": product.crs,
            "title": product.title or "Water mask", "abstract": abstract}


def scene_facts(product: Product, view: str, results_store=None) -> dict[str, Any]:
    """The ``facts`` of one view of a product's input scene (``SCENE_VIEWS``): its COG's grid,
    the 1-based bands drawn as red, green and blue, and their stretch."""
    import contextlib

    import rasterio

    if product.scene_cog is None:
        raise ValueError(f"{product.id} has no scene")
    path, env = _product_path(Path(product.scene_cog), results_store)
    title, bands = SCENE_VIEWS[view]
    with env or contextlib.nullcontext(), rasterio.open(str(path)) as src:
        grid = _grid(src, path.name)
        stretch = json.loads(src.tags()[STRETCH_TAG])
        names = list(src.descriptions)
    return {**grid, "style": view, "path": str(path), "bbox_wgs84": _bbox(product),
            "crs": product.crs, "bands": [names.index(b) + 1 for b in bands],
            "scale": [[float(v) for v in stretch[b]] for b in bands],
            "title": f"{title}: {product.title or 'input scene'}",
            "abstract": f"The input scene of water mask {product.id} in {title.lower()} "
                        f"({', '.join(bands)} as red, green, blue), stretched between each "
                        "band's 2 and 98 % percentiles."}


def probability_facts(product: Product, results_store=None) -> dict[str, Any]:
    """The ``facts`` of the layer of a product's water probability (``probability_cog``)."""
    import contextlib

    import rasterio

    if product.probability_cog is None:
        raise ValueError(f"{product.id} has no probability")
    path, env = _product_path(Path(product.probability_cog), results_store)
    with env or contextlib.nullcontext(), rasterio.open(str(path)) as src:
        grid = _grid(src, path.name)
    return {**grid, "style": PROBABILITY_VIEW, "path": str(path), "bbox_wgs84": _bbox(product),
            "crs": product.crs, "title": f"Water probability: {product.title or product.id}",
            "abstract": f"The water probability (0 to 1) that water mask {product.id} was "
                        "thresholded from, white to blue; GetFeatureInfo answers it."}


class MapServerPublisher(Publisher):
    """Derives MapServer's files in ``workdir`` from the layer rows of ``store``.

    ``base_url`` is the public URL of the server; the services are at ``{base_url}/ows``.
    ``max_size``: MapServer's MAXSIZE (largest WMS image or WCS coverage side), fixed by
    configuration rather than by what was published."""

    name = NAME

    def __init__(self, workdir: Path | str, base_url: str, store, results_store=None, *,
                 max_size: int = 16384, grace_s: float = 180.0) -> None:
        self.store = store
        self.results_store = results_store
        self.workdir = Path(workdir).expanduser().resolve()
        self.base_url = base_url.rstrip("/")
        self.ows_url = f"{self.base_url}/ows"
        self.max_size = int(max_size)
        self.grace_s = float(grace_s)
        safe_path(self.workdir)
        for folder in (LAYERS_DIR, SERIES_DIR, VIEWS_DIR, SETS_DIR):
            (self.workdir / folder).mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._header_tag = hashlib.sha256(f"{self.ows_url}\n{self.max_size}".encode()) \
            .hexdigest()[:12]

    @classmethod
    def from_settings(cls, settings) -> "MapServerPublisher":
        return cls(settings.path(settings.mapserver.workdir), settings.url,
                   job_store(settings), results_store(settings),
                   max_size=settings.mapserver.max_size,
                   grace_s=2 * settings.mapserver.timeout + 60)

    # -- the configuration file ----------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        """The MapServer 8 config file to pass as ``MAPSERVER_CONFIG_FILE``."""
        return self.workdir / CONFIG_FILE

    def config_text(self) -> str:
        gdal = self.results_store.cgi_environment() if self.results_store is not None else {}
        env = {
            # clients never name a mapfile: /ows gives each request's in MS_MAPFILE
            "MS_MAP_NO_PATH": "1",
            # /ows sends GET requests only: nothing can be fed to mapserv's standard input
            "MS_NO_POST": "1",
            # MapServer's errors go to its stderr, which /ows logs
            "MS_ERRORFILE": "stderr",
            # defence in depth: no VRT may read raw bytes of a local file
            "GDAL_VRT_ENABLE_RAWRASTERBAND": "NO",
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            **gdal,
        }
        lines = [f"# {FORMAT}; generated by aquamask: the MapServer 8 configuration of /ows",
                 "CONFIG", "  ENV"]
        lines += [f"    {key} {_mapserver_string(value)}" for key, value in env.items()]
        lines += ["  END", "  MAPS", "  END", "END", END_MARKER.rstrip("\n"), ""]
        return "\n".join(lines)

    def _write_config(self) -> None:
        text = self.config_text()
        try:
            if self.config_path.read_text(encoding="utf-8") == text:
                return
        except FileNotFoundError:
            pass
        # 0600: the object store's secrets may be in it
        _write(self.config_path, text, durable=True, mode=0o600)

    # -- rendering -----------------------------------------------------------------------------
    def _block_path(self, row: dict[str, Any]) -> Path:
        return self.workdir / LAYERS_DIR / f"{row['name']}.layer"

    def _own_path(self, name: str) -> Path:
        folder = SERIES_DIR if name.startswith(SERIES_PREFIX) else LAYERS_DIR
        return self.workdir / folder / f"{name}.map"

    def _mapfile(self, includes: Sequence[Path], extents: Sequence[Sequence[float]],
                 epsgs: Iterable[int | None], note: str) -> str:
        srs = list(BASE_SRS) + sorted({f"EPSG:{e}" for e in epsgs if e} - set(BASE_SRS))
        if extents:
            box = [min(b[0] for b in extents), min(b[1] for b in extents),
                   max(b[2] for b in extents), max(b[3] for b in extents)]
        else:
            box = [-180.0, -90.0, 180.0, 90.0]
        return _templates().get_template(TEMPLATE).render(
            format=FORMAT, note=f"{note}; header {self._header_tag}", ows_url=self.ows_url,
            title="aquamask water masks",
            abstract="Water detected in satellite imagery by aquamask: blue is water; dry land "
                     "and no data are transparent. WCS coverages hold the classes "
                     "(0 dry, 1 water, 255 no data).",
            srs=srs, map_extent=box, maxsize=self.max_size, info_formats=INFO_FORMATS,
            includes=[safe_path(p) for p in includes], end_marker=END_MARKER)

    def render(self, row: dict[str, Any]) -> None:
        """A product's block, then its own mapfile, which includes it (before anything that
        advertises it: the row's commit makes views render again)."""
        facts = row["facts"]
        native = [f"EPSG:{facts['epsg']}"] if facts.get("epsg") else []
        layer = {
            "name": row["name"],
            "srs": native + [s for s in BASE_SRS if s not in native],
            "path": safe_path(facts["path"]),
            "epsg": facts.get("epsg"),
            "extent": [float(v) for v in facts["extent"]],
            "width": int(facts["width"]),
            "height": int(facts["height"]),
            "resolution": [float(v) for v in facts["resolution"]],
            "title": facts.get("title") or row["name"],
            "abstract": facts.get("abstract") or "",
            "style": facts.get("style") or "water",
        }
        if layer["style"] in SCENE_VIEWS:
            layer.update(bands=[int(b) for b in facts["bands"]],
                         scale=[[float(v) for v in pair] for pair in facts["scale"]])
        template = SCENE_TEMPLATE if layer["style"] in (*SCENE_VIEWS, PROBABILITY_VIEW) \
            else LAYER_TEMPLATE
        block = _templates().get_template(template).render(
            format=FORMAT, layer=layer, water_rgb=WATER_RGB, change_classes=CHANGE_CLASSES,
            frequency_classes=FREQUENCY_CLASSES, range_labels=RANGE_LABELS,
            band_descriptions=BAND_DESCRIPTIONS, end_marker=END_MARKER)
        _write(self._block_path(row), block)
        _write(self._own_path(row["name"]), self._mapfile(
            [self._block_path(row)], [row["facts"]["bbox_wgs84"]], [facts.get("epsg")],
            f"layer {row['name']}"))
        self._retired_marker(row["name"]).unlink(missing_ok=True)

    def render_series(self, series: str) -> bool:
        """A job's series layer from its dated rows: tile index, block and mapfile. False (and
        the series' files retired) when it has no served member left."""
        members = [r for r in self.store.layers(series=series)
                   if r["engine"] == NAME and r.get("datetime") and r["facts"].get("epsg")]
        if not members:
            self.retire(series)
            return False
        members.sort(key=lambda r: utc_time(r["datetime"]))
        epsg = members[0]["facts"]["epsg"]
        members = [r for r in members if r["facts"]["epsg"] == epsg]  # one CRS a mosaic
        folder = self.workdir / SERIES_DIR
        index = folder / f"{series}.geojson"
        features = []
        for row in members:
            left, bottom, right, top = (float(v) for v in row["facts"]["extent"])
            features.append({
                "type": "Feature",
                "properties": {"location": row["facts"]["path"],
                               "time": utc_time(row["datetime"])},
                "geometry": {"type": "Polygon", "coordinates": [[
                    [left, bottom], [right, bottom], [right, top], [left, top],
                    [left, bottom]]]}})
        _write(index, json.dumps({"type": "FeatureCollection", "crs": {
            "type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}},
            "features": features}) + "\n")
        extents = [r["facts"]["extent"] for r in members]
        times = [utc_time(r["datetime"]) for r in members]
        block = _templates().get_template(SERIES_TEMPLATE).render(
            format=FORMAT, end_marker=END_MARKER, water_rgb=WATER_RGB, series={
                "name": series, "index_name": f"{series}-index", "index_path": safe_path(index),
                "epsg": epsg,
                "srs": [f"EPSG:{epsg}"] + [s for s in BASE_SRS if s != f"EPSG:{epsg}"],
                "extent": [min(e[0] for e in extents), min(e[1] for e in extents),
                           max(e[2] for e in extents), max(e[3] for e in extents)],
                "times": times})
        block_path = folder / f"{series}.layer"
        _write(block_path, block)
        boxes = [r["facts"]["bbox_wgs84"] for r in members]
        _write(self._own_path(series), self._mapfile([block_path], boxes, [epsg],
                                                           f"series {series}"))
        self._retired_marker(series).unlink(missing_ok=True)
        return True

    def _block_of(self, name: str) -> Path:
        folder = SERIES_DIR if name.startswith(SERIES_PREFIX) else LAYERS_DIR
        return self.workdir / folder / f"{name}.layer"

    # -- serving -------------------------------------------------------------------------------
    def layer_mapfile(self, row: dict[str, Any]) -> Path:
        """The mapfile of one product's layer, rendered again if missing or cut short."""
        path = self._own_path(row["name"])
        if not (_intact(path) and _intact(self._block_path(row))):
            LOGGER.warning("layer %s: its mapfile was missing or broken; rendered again",
                           row["name"])
            self.render(row)
        return path

    def series_mapfile(self, series: str) -> Path | None:
        path = self._own_path(series)
        if not (_intact(path) and _intact(self._block_of(series))):
            if not self.render_series(series):
                return None
        return path

    def view_mapfile(self, owner: str | None, everyone: bool = False) -> Path:
        """The mapfile of every layer ``owner`` may see (``everyone``: a manager), rendered
        again when the catalogue changed since it was written."""
        key = "all" if everyone else hashlib.sha256(
            (owner or "\0public").encode()).hexdigest()[:24]
        path = self.workdir / VIEWS_DIR / f"{key}.map"
        revision = self.store.revision()
        stamp = f"revision {revision}"
        if _intact(path) and self._note_of(path) == f"{stamp}; header {self._header_tag}":
            return path
        revision, rows = self.store.visible_layers(owner, everyone=everyone)
        served = [r for r in rows if r["engine"] == NAME]
        path = self._render_set(path, served, f"revision {revision}")
        return path

    def set_mapfile(self, rows: Sequence[dict[str, Any]]) -> Path:
        """The mapfile of a request naming several layers (products and series)."""
        names = sorted({r["name"] for r in rows})
        digest = hashlib.sha256("\n".join(names + [self._header_tag]).encode()).hexdigest()[:24]
        path = self.workdir / SETS_DIR / f"{digest}.map"
        if _intact(path) and all(_intact(self._block_of(n)) for n in names):
            os.utime(path)  # in use: collect() keeps it
            return path
        return self._render_set(path, rows, "set")

    def _render_set(self, path: Path, rows: Sequence[dict[str, Any]], note: str) -> Path:
        includes, extents, epsgs, series = [], [], [], set()
        for row in rows:
            if row.get("series"):
                series.add(row["series"])
            if row["name"].startswith(SERIES_PREFIX):
                continue
            self.layer_mapfile(row)  # its block there and whole
            includes.append(self._block_path(row))
            extents.append(row["facts"]["bbox_wgs84"])
            epsgs.append(row["facts"].get("epsg"))
        for key in sorted(series | {r["name"] for r in rows
                                    if r["name"].startswith(SERIES_PREFIX)}):
            if self.series_mapfile(key) is not None:
                includes.append(self._block_of(key))
        _write(path, self._mapfile(includes, extents, epsgs, note))
        return path

    @staticmethod
    def _note_of(path: Path) -> str:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        return first.split("; ", 1)[1].strip() if "; " in first else ""

    # -- unpublishing and collection -----------------------------------------------------------
    def _retired_marker(self, name: str) -> Path:
        folder = SERIES_DIR if name.startswith(SERIES_PREFIX) else LAYERS_DIR
        return self.workdir / folder / f"{name}.retired"

    def retire(self, name: str) -> None:
        """Mark a layer's files for removal once no request can still read them."""
        if self._own_path(name).exists():
            _write(self._retired_marker(name), f"{time.time()}\n")

    def collect(self) -> int:
        """Remove the files of layers retired longer than ``grace_s`` ago, and sets not used
        for as long; the number of layers removed."""
        now = time.time()
        removed = 0
        for folder in (LAYERS_DIR, SERIES_DIR):
            for marker in (self.workdir / folder).glob("*.retired"):
                try:
                    retired = float(marker.read_text().strip() or 0)
                except (OSError, ValueError):
                    retired = 0.0
                if now - retired < self.grace_s:
                    continue
                for suffix in (".map", ".layer", ".geojson", ".retired"):
                    (marker.parent / f"{marker.stem}{suffix}").unlink(missing_ok=True)
                removed += 1
        for folder in (SETS_DIR, VIEWS_DIR):
            for path in (self.workdir / folder).glob("*.map"):
                try:
                    if now - path.stat().st_mtime > max(self.grace_s, 3600):
                        path.unlink()
                except FileNotFoundError:
                    pass
        return removed

    def rebuild(self) -> int:
        """Every layer's files from the store (at start, or on demand): the missing and broken
        ones rendered, those of layers no longer in the store retired; the number rendered."""
        rows = self.store.layers(engine=NAME)
        rendered = 0
        for row in rows:
            if not (_intact(self._own_path(row["name"])) and _intact(self._block_path(row))
                    and self._note_of(self._own_path(row["name"])).endswith(self._header_tag)):
                self.render(row)
                rendered += 1
        for key in sorted({r["series"] for r in rows if r.get("series")}):
            self.render_series(key)
        known = {r["name"] for r in rows} | {r["series"] for r in rows if r.get("series")}
        for folder in (LAYERS_DIR, SERIES_DIR):
            for path in (self.workdir / folder).glob("*.map"):
                if path.stem not in known and not self._retired_marker(path.stem).exists():
                    self.retire(path.stem)
        return rendered

    # -- Publisher -----------------------------------------------------------------------------
    def publish(self, product: Product, row: dict[str, Any]) -> Layer:
        self.render(row)
        if row.get("series"):
            self.render_series(row["series"])
        return self.layer(row)

    def unpublish(self, row: dict[str, Any]) -> None:
        self.retire(row["name"])
        if row.get("series"):
            self.render_series(row["series"])
        self.collect()

    def layer(self, row: dict[str, Any]) -> Layer:
        """The ``Layer`` (service URLs) of a layer row."""
        # MapServer's legend for WMS 1.3.0 needs SLD_VERSION
        return service_layer(row["name"], self.name, self.ows_url, self.ows_url,
                             row["facts"]["bbox_wgs84"], {"VERSION": "1.3.0",
                                                          "SLD_VERSION": "1.1.0"})

    def series_urls(self, series: str, bbox_wgs84: Sequence[float], times: Sequence[str]
                    ) -> dict[str, str]:
        """A GetMap of the series at each of ``times``."""
        return {t: ogc_url(self.ows_url, **getmap_params(series, bbox_wgs84, TIME=t))
                for t in times}

    def refresh(self, row: dict[str, Any]) -> None:
        """A date of a series was stored: its series' files list it from now on."""
        if row.get("series"):
            self.render_series(row["series"])
