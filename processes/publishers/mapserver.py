"""The embedded publisher: MapServer 8 serves every published mask over WMS 1.3.0 and WCS 2.0.1.

The publisher keeps a small catalogue (``catalogue.json``) of the products it has published.
Each product's LAYER block is written once, when it is published, to ``layers/<layer>.layer``
(``config/mapfile-layer.j2``), with a mapfile of its own that includes it
(``layers/<layer>.map``); the catalogue's mapfile (``config/mapfile.j2``, capabilities, time
series, requests naming several layers) includes every block and is rewritten on each
publish/unpublish. MapServer reads its mapfile on each request, so nothing has to be reloaded;
``/ows`` answers a request naming one product's layer from that layer's own mapfile, because
MapServer parses the whole mapfile on every request (GetMap took 255 ms with 1,000 layers in
one mapfile and 766 ms with 5,000, against 146 ms with 100).

Gunicorn workers and job worker processes publish concurrently, so the read-modify-write of the
catalogue and the rendering of the mapfiles run under one cross-process file lock, and every
file is written to a temporary name and renamed into place: a reader (MapServer, another
worker) sees the old file or the new one, never half of one.

Beside the mapfile it writes the MapServer 8 configuration file (``mapserver.conf``) that the
``/ows`` endpoint (``aquamask.server.ows``) hands to ``mapserv`` through ``MAPSERVER_CONFIG_FILE``:
it forbids map paths from the client; ``/ows`` names the mapfile in ``MS_MAPFILE``.
"""
from __future__ import annotations

import datetime as dt
from functools import lru_cache
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jinja2
from filelock import FileLock

from aquamask.processes.publishers import WMS_MAX_SIZE, Publisher, service_layer
from aquamask.processes.types import Layer, Product

LOGGER = logging.getLogger(__name__)

NAME = "embedded"
PRODUCT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
LAYER_PREFIX = "water-"
CATALOGUE_FILE = "catalogue.json"
MAPFILE = "aquamask.map"
LAYER_MAPS_DIR = "layers"
CONFIG_FILE = "mapserver.conf"
LOCK_FILE = ".publish.lock"
MAP_ALIAS = "AQUAMASK"
TEMPLATE = "mapfile.j2"
LAYER_TEMPLATE = "mapfile-layer.j2"
# in the first line of every mapfile written: a mapfile without it (an older layout) is
# rendered again when a publisher starts
MAPFILE_FORMAT = "aquamask mapfile format 2"
# One blue for the mapfile, the SLD (config/styles/water.sld) and the viewer legend.
WATER_RGB = (0, 112, 255)
WATER_HEX = "#0070ff"
BASE_SRS = ("EPSG:4326", "EPSG:3857")
LOCK_TIMEOUT_S = 120
# time series: one WMS layer with a TIME dimension per area, over a tile index of its dates
SERIES_PREFIX = "series-"
SERIES_DIR = "series"
# monitoring products name their style in a GDAL tag of the COG; each style's data type
# (config/mapfile.j2 draws each; config/styles/<style>.sld is the same for GeoServer)
STYLE_TAG = "AQUAMASK_STYLE"
STYLE_DTYPES = {"water": "uint8", "change": "uint8", "frequency": "uint8"}
# the classes of each monitoring style: config/styles/change.sld and frequency.sld use the
# same colours (tests/processes/test_monitoring_styles.py checks it)
CHANGE_CLASSES = (("Dry at both dates", 0, (237, 232, 208)),
                  ("Water gained", 1, (26, 152, 80)),
                  ("Water lost", 2, (215, 48, 39)),
                  ("Permanent water", 3, WATER_RGB),
                  ("No data at either date", 255, (160, 160, 160)))
# (label, low, high, colour): drawn where low < frequency (%) <= high; 0 (never wet) and 255
# (no valid observation) transparent
FREQUENCY_CLASSES = (("Water in up to 10 % of observations", 0, 10, (222, 235, 247)),
                     ("10-25 %", 10, 25, (158, 202, 225)),
                     ("25-50 %", 25, 50, (66, 146, 198)),
                     ("50-75 %", 50, 75, (33, 113, 181)),
                     ("75-100 %", 75, 100, (8, 48, 107)))
RANGE_LABELS = {"water": "water mask classes", "change": "water change classes",
                "frequency": "water frequency (%)"}
BAND_DESCRIPTIONS = {
    "water": "0 dry, 1 water, 255 no data",
    "change": "0 dry, 1 water gained, 2 water lost, 3 permanent water, 255 no data",
    "frequency": "percent of the valid observations that saw water (0-100), 255 none valid"}
STYLE_ABSTRACTS = {
    "change": "Water change between two dates: green gained, red lost, blue permanent water, "
              "sand dry at both, grey no data at either. WCS: 0 dry, 1 gained, 2 lost, "
              "3 permanent, 255 no data.",
    "frequency": "Water frequency: the percentage of the valid observations in which water "
                 "was seen, from pale (rarely) to dark blue (always); never wet and no valid "
                 "observation are transparent. WCS: 0-100 %, 255 no valid observation.",
}


def layer_name(product_id: str) -> str:
    """The WMS layer name and WCS coverage id of a product.

    WCS 2.0 coverage ids are NCNames, which cannot start with a digit, and product ids are often
    UUIDs: the letter prefix makes every valid id a valid coverage id.
    """
    return LAYER_PREFIX + validate_product_id(product_id)


def series_key(facts: dict[str, Any]) -> str:
    """The area of a product, shared by both engines: its pixel grid (CRS, extent and
    resolution, to a tenth of a pixel). Products of one area form one time series layer named
    by this key (a mosaic needs one CRS, and stepping through dates only means something on one
    footprint); any other grid is another area."""
    import hashlib

    res_x, res_y = facts["resolution"]
    left, bottom, right, top = facts["extent"]
    crs = f"EPSG:{facts['epsg']}" if facts.get("epsg") else facts["wkt"]
    grid = [round(left / res_x * 10), round(bottom / res_y * 10), round(right / res_x * 10),
            round(top / res_y * 10), round(res_x, 9), round(res_y, 9)]
    digest = hashlib.sha256(json.dumps([crs, grid]).encode()).hexdigest()
    return SERIES_PREFIX + digest[:16]


def _utc_time(text: str) -> str:
    """An ISO 8601 time as UTC ``YYYY-MM-DDTHH:MM:SSZ`` (naive times are taken as UTC)."""
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_product_id(product_id: str) -> str:
    if not isinstance(product_id, str) or not PRODUCT_ID.fullmatch(product_id):
        raise ValueError(f"invalid product id {product_id!r}: expected 1 to 64 letters, digits, "
                         "'-' or '_', starting with a letter or digit")
    return product_id


def _mapserver_string(value: Any) -> str:
    """A double-quoted MapServer string that cannot end early or span lines."""
    text = "" if value is None else str(value)
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).replace("\\", "/").replace('"', "'")
    return f'"{text}"'


def _safe_path(path: Path) -> str:
    text = str(path)
    if re.search(r'["\x00-\x1f\x7f]', text):
        raise ValueError(f"path {text!r} cannot be written into a mapfile")
    return text


def _atomic_write(path: Path, text: str, durable: bool = True) -> None:
    """``text`` into ``path`` through a temporary file and a rename. ``durable=False`` skips
    the fsync (a few ms a file) for files derived from the catalogue: after a power loss one
    may be empty; an empty layer mapfile is not used, an empty catalogue mapfile is rendered
    again when the next publisher starts."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    """Templates compiled once per process (job workers fork from a process that did it)."""
    import aquamask.config

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(aquamask.config.__file__).parent),
        autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["q"] = _mapserver_string
    return env


def render_layer(entry: dict[str, Any]) -> str:
    """A catalogue entry's LAYER block (``config/mapfile-layer.j2``)."""
    native = [f"EPSG:{entry['epsg']}"] if entry.get("epsg") else []
    layer = {
        "name": entry["name"],
        "srs": native + [s for s in BASE_SRS if s not in native],
        "path": _safe_path(Path(entry["path"])),
        "epsg": entry.get("epsg"),
        "extent": [float(v) for v in entry["extent"]],
        "width": int(entry["width"]),
        "height": int(entry["height"]),
        "resolution": [float(v) for v in entry["resolution"]],
        "title": entry.get("title") or entry["name"],
        "abstract": entry.get("abstract") or "",
        "style": entry.get("style") or "water",
    }
    return _templates().get_template(LAYER_TEMPLATE).render(
        layer=layer, water_rgb=WATER_RGB, change_classes=CHANGE_CLASSES,
        frequency_classes=FREQUENCY_CLASSES, range_labels=RANGE_LABELS,
        band_descriptions=BAND_DESCRIPTIONS)


def raster_style(tags: dict[str, str]) -> str:
    """The style a COG asks for in its ``AQUAMASK_STYLE`` tag (monitoring products: ``change``,
    ``frequency``); a plain water mask has none."""
    style = tags.get(STYLE_TAG) or "water"
    if style not in STYLE_DTYPES:
        raise ValueError(f"unknown {STYLE_TAG} {style!r}: one of {', '.join(STYLE_DTYPES)}")
    return style


def is_vsi(path: str | os.PathLike) -> bool:
    """A path GDAL reads through a virtual file system (/vsis3/, /vsigs/, /vsiaz/...): a
    result on an object store (``aquamask.processes.results``)."""
    return str(path).startswith("/vsi")


def _present(path: str | os.PathLike) -> bool:
    """Whether a layer's COG is there: a local file is looked at; a result on an object store
    is taken as there (it is removed by unpublishing, and a listing per layer on every render
    would cost a request each)."""
    return is_vsi(path) or os.path.isfile(path)


def _raster_facts(path: Path | str, env=None) -> dict[str, Any]:
    """What the mapfile needs from the COG itself: native extent, size, resolution, CRS, and
    the style it is drawn with. ``env``: the ``rasterio.Env`` to open it in (an object
    store's credentials)."""
    import contextlib

    import rasterio

    with env or contextlib.nullcontext(), rasterio.open(str(path)) as src:
        style = raster_style(src.tags())
        if src.count < 1 or src.dtypes[0] != STYLE_DTYPES[style]:
            raise ValueError(f"{path} is not a {STYLE_DTYPES[style]} "
                             + ("mask" if style == "water" else f"{style} raster"))
        if src.crs is None:
            raise ValueError(f"{path} has no CRS")
        epsg = src.crs.to_epsg()
        left, bottom, right, top = src.bounds
        return {
            "extent": [left, bottom, right, top],
            "width": src.width,
            "height": src.height,
            "resolution": [abs(src.transform.a), abs(src.transform.e)],
            "epsg": int(epsg) if epsg else None,
            "wkt": src.crs.to_wkt(),
            "style": style,
        }


class MapServerPublisher(Publisher):
    """Publishes products as layers of one MapServer mapfile in ``workdir``.

    ``base_url`` is the public URL of the server; the services are at ``{base_url}/ows``.
    """

    name = NAME

    def __init__(self, workdir: Path | str, base_url: str, results_store=None) -> None:
        # the results store (``aquamask.processes.results``) of products on an object store
        self.results_store = results_store
        self.workdir = Path(workdir).expanduser().resolve()
        self.base_url = base_url.rstrip("/")
        self.ows_url = f"{self.base_url}/ows"
        self.workdir.mkdir(parents=True, exist_ok=True)
        _safe_path(self.workdir)
        self._lock = FileLock(str(self.workdir / LOCK_FILE), timeout=LOCK_TIMEOUT_S)
        if not self._files_current():
            with self._lock:
                if not self._files_current():
                    self._write_config()
                    self._render_all(self._read_catalogue())

    @classmethod
    def from_settings(cls, settings) -> "MapServerPublisher":
        """``mapserver.workdir`` (default ``mapserver`` under ``home``) and ``server.url``."""
        workdir = settings.get("mapserver", "workdir") or "mapserver"
        return cls(settings.path(workdir), settings.url, settings.results_store)

    # -- files ---------------------------------------------------------------------------------
    @property
    def mapfile_path(self) -> Path:
        return self.workdir / MAPFILE

    @property
    def config_path(self) -> Path:
        """The MapServer 8 config file to pass as ``MAPSERVER_CONFIG_FILE``."""
        return self.workdir / CONFIG_FILE

    @property
    def layer_maps_dir(self) -> Path:
        return self.workdir / LAYER_MAPS_DIR

    def _layer_block(self, name: str) -> Path:
        return self.layer_maps_dir / f"{name}.layer"

    def layer_mapfile(self, name: str) -> Path | None:
        """The mapfile of the product published as layer ``name`` alone, None if there is no
        such layer (any other name: a series, several layers, a typo)."""
        if not name.startswith(LAYER_PREFIX) \
                or not PRODUCT_ID.fullmatch(name[len(LAYER_PREFIX):]):
            return None
        path = self.layer_maps_dir / f"{name}.map"
        try:  # either file empty: cut by a crash
            return path if path.stat().st_size and self._layer_block(name).stat().st_size \
                else None
        except FileNotFoundError:
            return None

    @property
    def catalogue_path(self) -> Path:
        return self.workdir / CATALOGUE_FILE

    def config_text(self) -> str:
        mapfile = _safe_path(self.mapfile_path)
        return (
            "# Generated by aquamask: the MapServer 8 configuration of the /ows endpoint.\n"
            "CONFIG\n"
            "  ENV\n"
            "    # clients never name a mapfile: only the aliases below, and /ows strips map=;\n"
            "    # /ows names the mapfile of each request in MS_MAPFILE (not set here: this\n"
            "    # file's ENV would override it)\n"
            '    MS_MAP_NO_PATH "1"\n'
            "    # MapServer's errors go to its stderr, which /ows logs\n"
            '    MS_ERRORFILE "stderr"\n'
            "  END\n"
            "  MAPS\n"
            f'    {MAP_ALIAS} "{mapfile}"\n'
            "  END\n"
            "END\n"
        )

    def _files_current(self) -> bool:
        """The config file is this one and the mapfile advertises this ``base_url``."""
        try:
            mapfile = self.mapfile_path.read_text(encoding="utf-8")
            return (self.config_path.read_text(encoding="utf-8") == self.config_text()
                    and mapfile.startswith(f"# {MAPFILE_FORMAT};")
                    and f'"ows_onlineresource" "{self.ows_url}?"' in mapfile)
        except FileNotFoundError:
            return False

    def _write_config(self) -> None:
        text = self.config_text()
        try:
            if self.config_path.read_text(encoding="utf-8") == text:
                return
        except FileNotFoundError:
            pass
        _atomic_write(self.config_path, text)

    def _read_catalogue(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.catalogue_path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        return {entry["id"]: entry for entry in data.get("products", [])}

    def _write_catalogue(self, catalogue: dict[str, dict[str, Any]]) -> None:
        products = sorted(catalogue.values(), key=lambda e: (e.get("published", ""), e["id"]))
        # one product a line: json's C encoder (indent= would take the pure-Python one, ~10x
        # slower at every publish of a large catalogue), and still readable
        lines = ",\n".join(json.dumps(product) for product in products)
        _atomic_write(self.catalogue_path,
                      f'{{"version": 1, "products": [\n{lines}\n]}}\n')

    @staticmethod
    def _available(catalogue: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """The entries whose COG is there, oldest first: a COG removed without unpublishing
        would make every request naming it fail."""
        entries = sorted(catalogue.values(), key=lambda e: (e.get("published", ""), e["id"]))
        missing = [e["id"] for e in entries if not _present(e["path"])]
        if missing:
            LOGGER.warning("left out of the mapfile, their COG is gone: %s", ", ".join(missing))
            entries = [e for e in entries if e["id"] not in missing]
        return entries

    def render_mapfile(self, entries: list[dict[str, Any]],
                       series: Sequence[dict[str, Any]] = ()) -> str:
        """The mapfile of ``entries`` (available ones, see ``_available``) and of the time
        ``series`` layers (``_series``)."""
        epsgs = []
        for entry in entries:
            if entry.get("epsg") and f"EPSG:{entry['epsg']}" not in BASE_SRS + tuple(epsgs):
                epsgs.append(f"EPSG:{entry['epsg']}")
        # each layer's block is its own file (written when it was published), included
        layers = [{"include": _safe_path(self._layer_block(e["name"]))} for e in entries]
        if entries:
            boxes = [e["bbox_wgs84"] for e in entries]
            map_extent = [min(b[0] for b in boxes), min(b[1] for b in boxes),
                          max(b[2] for b in boxes), max(b[3] for b in boxes)]
        else:
            map_extent = [-180.0, -90.0, 180.0, 90.0]
        return _templates().get_template(TEMPLATE).render(
            format=MAPFILE_FORMAT,
            generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            title="aquamask water masks",
            abstract="Water detected in satellite imagery by aquamask: blue is water; dry land "
                     "and no data are transparent. WCS coverages hold the classes "
                     "(0 dry, 1 water, 255 no data).",
            ows_url=self.ows_url,
            srs=list(BASE_SRS) + epsgs,
            map_extent=map_extent,
            layers=layers,
            series=series,
            maxsize=max([WMS_MAX_SIZE]
                        + [max(int(e["width"]), int(e["height"])) for e in entries]),
            water_rgb=WATER_RGB,
        )

    @property
    def series_dir(self) -> Path:
        return self.workdir / SERIES_DIR

    def _series(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The time series layers: the dated products of each area (EPSG grids only)."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            if entry.get("datetime") and entry.get("epsg") \
                    and (entry.get("style") or "water") == "water":
                groups.setdefault(series_key(entry), []).append(entry)
        series = []
        for key, members in sorted(groups.items()):
            members = sorted(members, key=lambda e: _utc_time(e["datetime"]))
            times = sorted({_utc_time(e["datetime"]) for e in members})
            extents = [e["extent"] for e in members]
            series.append({
                "name": key,
                "index_name": f"{key}-index",
                "index_path": _safe_path(self.series_dir / f"{key}.geojson"),
                "epsg": members[0]["epsg"],
                "srs": [f"EPSG:{members[0]['epsg']}"]
                + [s for s in BASE_SRS if s != f"EPSG:{members[0]['epsg']}"],
                "extent": [min(e[0] for e in extents), min(e[1] for e in extents),
                           max(e[2] for e in extents), max(e[3] for e in extents)],
                "times": times,
                "members": members,
            })
        return series

    @staticmethod
    def _index_geojson(series: dict[str, Any]) -> str:
        """The tile index of a series: one footprint per date, its COG and its time."""
        features = []
        for entry in series["members"]:
            left, bottom, right, top = (float(v) for v in entry["extent"])
            features.append({
                "type": "Feature",
                "properties": {"location": entry["path"], "time": _utc_time(entry["datetime"]),
                               "id": entry["id"]},
                "geometry": {"type": "Polygon", "coordinates": [[
                    [left, bottom], [right, bottom], [right, top], [left, top],
                    [left, bottom]]]}})
        return json.dumps({"type": "FeatureCollection", "crs": {
            "type": "name",
            "properties": {"name": f"urn:ogc:def:crs:EPSG::{series['epsg']}"}},
            "features": features}) + "\n"  # no indent=: json's C encoder, on every publish

    def _render_layer(self, entry: dict[str, Any]) -> None:
        """The layer's block, then its own mapfile, which includes it."""
        self.layer_maps_dir.mkdir(exist_ok=True)
        _atomic_write(self._layer_block(entry["name"]), render_layer(entry), durable=False)
        _atomic_write(self.layer_maps_dir / f"{entry['name']}.map",
                      self.render_mapfile([entry]),
                      durable=False)

    def _render_all(self, catalogue: dict[str, dict[str, Any]]) -> None:
        """Every mapfile (at start, when the config or the server URL changed)."""
        for entry in catalogue.values():
            if _present(entry["path"]):
                self._render_layer(entry)
        self._render(catalogue)
        keep = {entry["name"] for entry in catalogue.values()}
        if self.layer_maps_dir.is_dir():
            for stale in self.layer_maps_dir.iterdir():
                if stale.suffix in (".map", ".layer") and stale.stem not in keep:
                    stale.unlink(missing_ok=True)

    def _render(self, catalogue: dict[str, dict[str, Any]]) -> None:
        entries = self._available(catalogue)
        series = self._series(entries)
        text = self.render_mapfile(entries, series)
        # the tile indexes before the mapfile that names them; stale ones after it
        if series:
            self.series_dir.mkdir(exist_ok=True)
        for item in series:
            _atomic_write(Path(item["index_path"]), self._index_geojson(item), durable=False)
        _atomic_write(self.mapfile_path, text, durable=False)
        keep = {f"{item['name']}.geojson" for item in series}
        if self.series_dir.is_dir():
            for stale in self.series_dir.glob("*.geojson"):
                if stale.name not in keep:
                    stale.unlink(missing_ok=True)

    def series_of(self, product_id: str) -> str | None:
        """The time series layer holding ``product_id``, if it has a date and an EPSG grid."""
        entry = self._read_catalogue().get(validate_product_id(product_id))
        if not entry or not entry.get("datetime") or not entry.get("epsg"):
            return None
        return series_key(entry)

    # -- Publisher -----------------------------------------------------------------------------
    def publish(self, product: Product) -> Layer:
        name = layer_name(product.id)
        path = Path(product.mask_cog)
        path = path if is_vsi(path) else path.expanduser().resolve()
        _safe_path(path)
        facts = _raster_facts(path, self.results_store.gdal_env()
                              if is_vsi(path) and self.results_store is not None else None)
        bbox = [float(v) for v in product.bbox_wgs84]
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
            raise ValueError(f"invalid WGS84 bbox {product.bbox_wgs84!r}")
        stats = product.stats
        abstract = STYLE_ABSTRACTS.get(facts["style"]) or (
            f"Water mask {product.id}"
            + (f", acquired {product.datetime.isoformat()}" if product.datetime else "")
            + f": {stats.water_area_km2:.3f} km2 of water in {stats.valid_area_km2:.3f} "
              "km2 observed. Blue is water; dry land and no data are transparent.")
        entry = {
            "id": product.id,
            "name": name,
            "title": product.title or f"Water mask {product.id}",
            "abstract": abstract,
            "path": str(path),
            "bbox_wgs84": bbox,
            "crs": product.crs,
            "datetime": product.datetime.isoformat() if product.datetime else None,
            **facts,
        }
        with self._lock:
            catalogue = self._read_catalogue()
            previous = catalogue.get(product.id)
            entry["published"] = (previous or {}).get("published") or \
                dt.datetime.now(dt.timezone.utc).isoformat()
            catalogue[product.id] = entry
            self._write_config()
            # the mapfiles first: a failed render leaves the catalogue unchanged; the layer's
            # own before the catalogue's, which advertises it
            self._render_layer(entry)
            self._render(catalogue)
            self._write_catalogue(catalogue)
        LOGGER.info("published %s as %s", product.id, name)
        return self.layer(product.id, bbox)

    def unpublish(self, product_id: str) -> None:
        validate_product_id(product_id)
        with self._lock:
            catalogue = self._read_catalogue()
            entry = catalogue.pop(product_id, None)
            if entry is None:
                return
            self._render(catalogue)
            self._write_catalogue(catalogue)
            (self.layer_maps_dir / f"{entry['name']}.map").unlink(missing_ok=True)
            self._layer_block(entry["name"]).unlink(missing_ok=True)
        LOGGER.info("unpublished %s", product_id)

    # -- reading -------------------------------------------------------------------------------
    def layers(self) -> list[dict[str, Any]]:
        """The published products, oldest first, as stored in the catalogue."""
        return sorted(self._read_catalogue().values(),
                      key=lambda e: (e.get("published", ""), e["id"]))

    def is_published(self, product_id: str) -> bool:
        return validate_product_id(product_id) in self._read_catalogue()

    def layer(self, product_id: str, bbox_wgs84: tuple[float, ...] | list[float] | None = None
              ) -> Layer:
        """The ``Layer`` (service URLs) of a product; ``bbox_wgs84`` defaults to the catalogue's."""
        if bbox_wgs84 is None:
            entry = self._read_catalogue().get(product_id)
            if entry is None:
                raise KeyError(product_id)
            bbox_wgs84 = entry["bbox_wgs84"]
        # MapServer's legend for WMS 1.3.0 needs SLD_VERSION
        return service_layer(layer_name(product_id), self.name, self.ows_url, self.ows_url,
                             bbox_wgs84, {"VERSION": "1.3.0", "SLD_VERSION": "1.1.0"})
