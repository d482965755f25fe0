"""The strict OGC gateway in front of MapServer: a WMS 1.3.0 / 1.1.1 or WCS 2.0.1 KVP request is
parsed as the standards define it, each value validated and normalised, and the query MapServer
gets is rebuilt from those values alone.

MapServer's CGI reads far more than OGC parameters (``map``, ``mode``, ``context``, runtime
substitutions, SLD URLs, ...), decodes before it splits, and parses numbers with ``atoi``; a
filter that removes bad parameters from the client's query can always be bypassed
(``map%3DX``, ``map%00=X``, ``WIDTH=8192abc``). So nothing of the client's query is passed on:
only the parameters each operation defines, in canonical names, with values this module wrote.
Everything else is an OGC exception, apart from a few parameters common clients add that no
server needs (``DPI``, ``MAP_RESOLUTION``, ``FORMAT_OPTIONS``, ``TILED`` and cache busters),
which are accepted and dropped.

Written by hand: OWSLib and the other OGC libraries are clients; no Python library parses
server-side WMS/WCS KVP requests.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from html import escape
from typing import Iterable, Sequence
from urllib.parse import quote

from aquamask.processes.publishing.mapserver import INFO_FORMATS

WMS_VERSIONS = ("1.3.0", "1.1.1")
WCS_VERSION = "2.0.1"
WMS_OPERATIONS = ("GetCapabilities", "GetMap", "GetFeatureInfo", "GetLegendGraphic")
WCS_OPERATIONS = ("GetCapabilities", "DescribeCoverage", "GetCoverage")
# what the embedded engine draws and describes (config/mapfile.j2 declares the same)
MAP_FORMATS = ("image/png",)
COVERAGE_FORMATS = ("image/tiff",)
EXCEPTION_FORMATS = {
    "1.3.0": {"XML": "XML", "INIMAGE": "INIMAGE", "BLANK": "BLANK"},
    "1.1.1": {"APPLICATION/VND.OGC.SE_XML": "application/vnd.ogc.se_xml",
              "APPLICATION/VND.OGC.SE_INIMAGE": "application/vnd.ogc.se_inimage",
              "APPLICATION/VND.OGC.SE_BLANK": "application/vnd.ogc.se_blank"},
}
# sent by common clients (QGIS, OpenLayers, Leaflet, browsers' cache busters); no server needs
# them here, so they are accepted and not passed on
IGNORED = frozenset({"DPI", "MAP_RESOLUTION", "FORMAT_OPTIONS", "TILED", "_", "WMTVER"})
LAYER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,159}$")
CRS_CODE = re.compile(r"^(?:EPSG:\d{1,6}|CRS:(?:84|83|27))$", re.IGNORECASE)
CRS_URI = re.compile(r"^(?:http://www\.opengis\.net/def/crs/(?:EPSG/0/\d{1,6}|OGC/1\.3/CRS84)"
                     r"|urn:ogc:def:crs:(?:EPSG::\d{1,6}|OGC:1\.3:CRS84))$")
NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?$")
INTEGER = re.compile(r"^\+?\d{1,6}$")
TIME_VALUE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?"
                        r"(?:Z|[+-]\d{2}:\d{2})?)?$")
AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
SUBSET = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]{0,31})(?:,([^()]{1,120}))?\(([^()]{1,200})\)$")
SUBSET_VALUE = re.compile(r'^(?:\*|"?\d{4}-\d{2}-\d{2}(?:T[0-9:.]{2,15}(?:Z|[+-]\d{2}:\d{2})?)?"?'
                          r"|[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?)$")
INTERPOLATIONS = {
    "NEAREST": "NEAREST", "BILINEAR": "BILINEAR", "AVERAGE": "AVERAGE",
    "HTTP://WWW.OPENGIS.NET/DEF/INTERPOLATION/OGC/1/NEAREST-NEIGHBOR": "NEAREST",
    "HTTP://WWW.OPENGIS.NET/DEF/INTERPOLATION/OGC/1/LINEAR": "BILINEAR",
    "HTTP://WWW.OPENGIS.NET/DEF/INTERPOLATION/OGC/1/AVERAGE": "AVERAGE",
}
WCS_SECTIONS = ("All", "ServiceIdentification", "ServiceProvider", "OperationsMetadata",
                "ServiceMetadata", "Contents", "CoverageSummary")
MAX_LAYERS = 100
MAX_VALUE_LENGTH = 4096


class OwsError(Exception):
    """An OGC exception: ``code`` from the standard, the parameter it is about (``locator``)
    and the HTTP status. Its ``body()`` is the exception document of the service asked."""

    def __init__(self, code: str, message: str, locator: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.locator, self.status = code, message, locator, status
        self.service, self.version = "WMS", "1.3.0"

    def about(self, service: str, version: str) -> "OwsError":
        self.service, self.version = service, version
        return self

    def body(self) -> tuple[str, str]:
        """(document, content type) in the exception format of the request's service."""
        locator = f' locator="{escape(self.locator)}"' if self.locator else ""
        if self.service == "WCS":
            return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                    '<ows:ExceptionReport xmlns:ows="http://www.opengis.net/ows/2.0" '
                    'version="2.0.1" xml:lang="en">\n'
                    f'  <ows:Exception exceptionCode="{escape(self.code)}"{locator}>\n'
                    f"    <ows:ExceptionText>{escape(self.message)}</ows:ExceptionText>\n"
                    "  </ows:Exception>\n"
                    "</ows:ExceptionReport>\n", "application/xml; charset=utf-8")
        if self.version == "1.1.1":
            return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                    '<ServiceExceptionReport version="1.1.1">\n'
                    f'  <ServiceException code="{escape(self.code)}"{locator}>'
                    f"{escape(self.message)}</ServiceException>\n"
                    "</ServiceExceptionReport>\n", "application/vnd.ogc.se_xml")
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">\n'
                f'  <ServiceException code="{escape(self.code)}"{locator}>'
                f"{escape(self.message)}</ServiceException>\n"
                "</ServiceExceptionReport>\n", "text/xml; charset=utf-8")


@dataclass(frozen=True)
class Limits:
    max_image_size: int = 4096     # WMS WIDTH/HEIGHT, pixels
    max_coverage_size: int = 16384  # WCS SCALESIZE/SCALEEXTENT, pixels a side


@dataclass(frozen=True)
class OwsRequest:
    """A validated request: what MapServer gets (``params``, in canonical names), the layers
    or coverages it names, and its TIME (validated against the layers by the caller)."""

    service: str
    version: str
    operation: str
    params: tuple[tuple[str, str], ...]
    layers: tuple[str, ...] = ()
    time: str | None = None
    subsets: tuple[str, ...] = field(default=())

    def query(self) -> str:
        pairs = list(self.params) + [("SUBSET", s) for s in self.subsets]
        return "&".join(f"{k}={quote(v, safe=',:()*/')}" for k, v in pairs)

    def error(self, code: str, message: str, locator: str | None = None,
              status: int = 400) -> OwsError:
        return OwsError(code, message, locator, status).about(self.service, self.version)


class _Params:
    """The client's parameters with case-insensitive names, each used at most once."""

    def __init__(self, pairs: Iterable[tuple[str, str]], service: str, version: str) -> None:
        self.service, self.version = service, version
        self.values: dict[str, list[str]] = {}
        for key, value in pairs:
            name = key.strip().upper()
            if not re.fullmatch(r"[A-Z_][A-Z0-9_:.-]{0,63}", name):
                raise self.error("InvalidParameterValue",
                                 f"{key[:40]!r} is not a parameter name", None)
            if len(value) > MAX_VALUE_LENGTH or re.search(r"[\x00-\x1f\x7f]", value):
                raise self.error("InvalidParameterValue",
                                 "parameter values must be short text without control "
                                 "characters", name)
            self.values.setdefault(name, []).append(value)
        self.used: set[str] = set()

    def error(self, code: str, message: str, locator: str | None) -> OwsError:
        status = 404 if code in ("NoSuchCoverage",) else 400
        return OwsError(code, message, locator, status).about(self.service, self.version)

    def get(self, name: str, *, required: bool = False, many: bool = False) -> str | None:
        self.used.add(name)
        found = self.values.get(name)
        if not found:
            if required:
                raise self.error("MissingParameterValue", f"{name} is required", name)
            return None
        if len(found) > 1 and not many:
            raise self.error("InvalidParameterValue", f"{name} is given more than once", name)
        return found[0]

    def all(self, name: str) -> list[str]:
        self.used.add(name)
        return self.values.get(name, [])

    def refuse_others(self, operation: str) -> None:
        extra = sorted(set(self.values) - self.used - IGNORED)
        if "SLD" in extra or "SLD_BODY" in extra:
            raise self.error("InvalidParameterValue",
                             "styles from clients (SLD, SLD_BODY) are not accepted; choose one "
                             "of the layer's styles with STYLES", "SLD")
        if extra:
            raise self.error("InvalidParameterValue",
                             f"{extra[0]} is not a parameter of {self.service} {operation}",
                             extra[0])


def parse(pairs: Iterable[tuple[str, str]], limits: Limits = Limits()) -> OwsRequest:
    """The validated request of the client's KVP ``pairs``, or an OwsError."""
    pairs = list(pairs)
    lookup = {k.strip().upper(): v for k, v in pairs}
    operation = (lookup.get("REQUEST") or "").strip()
    service = (lookup.get("SERVICE") or "").strip().upper()
    if not service:
        # WMS 1.1.1 and older clients may leave SERVICE out of map requests
        service = "WCS" if operation.lower() in ("describecoverage", "getcoverage") else "WMS"
    if service not in ("WMS", "WCS"):
        raise OwsError("InvalidParameterValue", "SERVICE must be WMS or WCS", "SERVICE")
    version = (lookup.get("VERSION") or "").strip()
    if service == "WMS":
        return _wms(_Params(pairs, "WMS", version if version in WMS_VERSIONS else "1.3.0"),
                    operation, version, limits)
    return _wcs(_Params(pairs, "WCS", WCS_VERSION), operation, version, limits)


# -- values --------------------------------------------------------------------------------------
def _operation(p: _Params, allowed: Sequence[str]) -> str:
    raw = p.get("REQUEST", required=True) or ""
    for name in allowed:
        if raw.strip().lower() == name.lower():
            return name
    raise p.error("OperationNotSupported",
                  f"{p.service} operations here: {', '.join(allowed)}", "REQUEST")


def _integer(p: _Params, name: str, low: int, high: int, *, required: bool = True
             ) -> str | None:
    raw = p.get(name, required=required)
    if raw is None:
        return None
    if not INTEGER.fullmatch(raw.strip()):
        raise p.error("InvalidParameterValue", f"{name} must be a whole number", name)
    value = int(raw.strip())
    if not low <= value <= high:
        raise p.error("InvalidParameterValue",
                      f"{name}={value} is out of range: {low} to {high}", name)
    return str(value)


def _number(p: _Params, name: str, text: str) -> float:
    if not NUMBER.fullmatch(text.strip()):
        raise p.error("InvalidParameterValue", f"{name} must hold numbers", name)
    value = float(text)
    if not math.isfinite(value):
        raise p.error("InvalidParameterValue", f"{name} must hold finite numbers", name)
    return value


def _bbox(p: _Params) -> str:
    raw = p.get("BBOX", required=True) or ""
    parts = raw.split(",")
    if len(parts) != 4:
        raise p.error("InvalidParameterValue", "BBOX must be four numbers minx,miny,maxx,maxy",
                      "BBOX")
    values = [_number(p, "BBOX", v) for v in parts]
    if not (values[0] < values[2] and values[1] < values[3]):
        raise p.error("InvalidParameterValue", "BBOX minimum must be below its maximum",
                      "BBOX")
    return ",".join(repr(v) for v in values)


def _crs(p: _Params, name: str, *, required: bool = True) -> str | None:
    raw = p.get(name, required=required)
    if raw is None:
        return None
    value = raw.strip()
    if CRS_CODE.fullmatch(value):
        return value.upper()
    if CRS_URI.fullmatch(value):
        return value
    raise p.error("InvalidCRS" if p.service == "WMS" else "InvalidParameterValue",
                  f"{name} must be an EPSG code (EPSG:4326) or CRS:84", name)


def _choice(p: _Params, name: str, allowed: Sequence[str], *, default: str | None = None
            ) -> str | None:
    raw = p.get(name)
    if raw is None:
        return default
    for value in allowed:
        if raw.strip().lower() == value.lower():
            return value
    code = "InvalidFormat" if name in ("FORMAT", "INFO_FORMAT") and p.service == "WMS" \
        else "InvalidParameterValue"
    raise p.error(code, f"{name} must be one of: {', '.join(allowed)}", name)


def _names(p: _Params, name: str, *, required: bool = True) -> list[str]:
    raw = p.get(name, required=required)
    if raw is None:
        return []
    names = [n.strip() for n in raw.split(",")]
    if not names or not all(names) or len(names) > MAX_LAYERS:
        raise p.error("LayerNotDefined" if p.service == "WMS" else "NoSuchCoverage",
                      f"{name} must name 1 to {MAX_LAYERS} layers, separated by commas", name)
    for n in names:
        if not LAYER_NAME.fullmatch(n):
            raise p.error("LayerNotDefined" if p.service == "WMS" else "NoSuchCoverage",
                          f"no layer {n[:80]!r} here", name)
    return names


def _styles(p: _Params, count: int, name: str = "STYLES") -> str:
    raw = p.get(name)
    styles = [s.strip() for s in (raw or "").split(",")] if raw else []
    if any(s and s.lower() != "default" for s in styles) or len(styles) > max(count, 1):
        raise p.error("StyleNotDefined", "each layer has one style: leave STYLES empty",
                      name)
    return ",".join("" for _ in range(count)) if raw is not None else ""


def _time(p: _Params) -> str | None:
    raw = p.get("TIME")
    if raw is None or raw.strip() == "":
        return None
    problem = p.error("InvalidDimensionValue", "TIME must be one date-time of the layer's "
                      "time dimension, e.g. 2023-07-01T10:56:21Z", "TIME")
    if not TIME_VALUE.fullmatch(raw.strip()):
        raise problem
    try:  # one spelling, UTC, as the dimension lists its values
        when = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise problem from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- WMS -----------------------------------------------------------------------------------------
def _wms(p: _Params, raw_operation: str, raw_version: str, limits: Limits) -> OwsRequest:
    operation = _operation(p, WMS_OPERATIONS)
    p.get("SERVICE")
    if operation == "GetCapabilities":
        version = _negotiate_wms(raw_version)
        p.service, p.version = "WMS", version
        p.get("VERSION")
        fmt = p.get("FORMAT")
        if fmt is not None and fmt.strip().lower() not in ("text/xml",
                                                           "application/vnd.ogc.wms_xml"):
            raise p.error("InvalidFormat", "capabilities are XML (FORMAT=text/xml)", "FORMAT")
        p.get("UPDATESEQUENCE")
        p.refuse_others(operation)
        return OwsRequest("WMS", version, operation, (
            ("SERVICE", "WMS"), ("VERSION", version), ("REQUEST", "GetCapabilities")))
    given = p.get("VERSION")
    if operation != "GetLegendGraphic" and given is None:
        raise p.error("MissingParameterValue", "VERSION is required (1.3.0 or 1.1.1)",
                      "VERSION")
    version = (given or "1.3.0").strip()
    if version not in WMS_VERSIONS:
        raise p.error("InvalidParameterValue", "VERSION must be 1.3.0 or 1.1.1", "VERSION")
    p.version = version
    if operation == "GetLegendGraphic":
        return _legend(p, version)
    layers = _names(p, "LAYERS")
    params = [("SERVICE", "WMS"), ("VERSION", version), ("REQUEST", operation),
              ("LAYERS", ",".join(layers)), ("STYLES", _styles(p, len(layers)))]
    crs_key = "CRS" if version == "1.3.0" else "SRS"
    params.append((crs_key, _crs(p, crs_key) or ""))
    params.append(("BBOX", _bbox(p)))
    width = _integer(p, "WIDTH", 1, limits.max_image_size) or ""
    height = _integer(p, "HEIGHT", 1, limits.max_image_size) or ""
    params += [("WIDTH", width), ("HEIGHT", height)]
    fmt = _choice(p, "FORMAT", MAP_FORMATS, default="image/png")
    if operation == "GetMap" or p.values.get("FORMAT"):
        params.append(("FORMAT", fmt or "image/png"))
    transparent = _choice(p, "TRANSPARENT", ("TRUE", "FALSE"))
    if transparent:
        params.append(("TRANSPARENT", transparent))
    bgcolor = p.get("BGCOLOR")
    if bgcolor is not None:
        if not re.fullmatch(r"0[xX][0-9A-Fa-f]{6}", bgcolor.strip()):
            raise p.error("InvalidParameterValue", "BGCOLOR must be 0xRRGGBB", "BGCOLOR")
        params.append(("BGCOLOR", "0x" + bgcolor.strip()[2:].upper()))
    exceptions = p.get("EXCEPTIONS")
    if exceptions is not None:
        allowed = EXCEPTION_FORMATS[version]
        if exceptions.strip().upper() not in allowed:
            raise p.error("InvalidParameterValue",
                          f"EXCEPTIONS must be one of: {', '.join(allowed.values())}",
                          "EXCEPTIONS")
        params.append(("EXCEPTIONS", allowed[exceptions.strip().upper()]))
    time = _time(p)
    if time is not None:
        params.append(("TIME", time))
    p.get("ELEVATION")  # no layer has an elevation: ignored, as WMS asks of servers
    if operation == "GetFeatureInfo":
        query_layers = _names(p, "QUERY_LAYERS")
        if not set(query_layers) <= set(layers):
            raise p.error("LayerNotDefined", "QUERY_LAYERS must be among LAYERS",
                          "QUERY_LAYERS")
        params.append(("QUERY_LAYERS", ",".join(query_layers)))
        info = _choice(p, "INFO_FORMAT", INFO_FORMATS, default="text/plain")
        params.append(("INFO_FORMAT", info or "text/plain"))
        count = _integer(p, "FEATURE_COUNT", 1, 100, required=False)
        if count:
            params.append(("FEATURE_COUNT", count))
        i_key, j_key = ("I", "J") if version == "1.3.0" else ("X", "Y")
        params.append((i_key, _integer(p, i_key, 0, int(width) - 1) or "0"))
        params.append((j_key, _integer(p, j_key, 0, int(height) - 1) or "0"))
    p.refuse_others(operation)
    return OwsRequest("WMS", version, operation, tuple(params), tuple(layers), time)


def _negotiate_wms(raw: str) -> str:
    """WMS version negotiation: the requested version when served, else the highest one
    below it, else the lowest served (WMS 1.3.0, 6.2.4)."""
    if not raw:
        return WMS_VERSIONS[0]
    try:
        wanted = tuple(int(x) for x in raw.strip().split("."))
    except ValueError:
        return WMS_VERSIONS[0]
    served = sorted(WMS_VERSIONS, key=lambda v: tuple(int(x) for x in v.split(".")))
    below = [v for v in served if tuple(int(x) for x in v.split(".")) <= wanted]
    return below[-1] if below else served[0]


def _legend(p: _Params, version: str) -> OwsRequest:
    layer = _names(p, "LAYER")
    if len(layer) != 1:
        raise p.error("LayerNotDefined", "LAYER names one layer", "LAYER")
    fmt = _choice(p, "FORMAT", MAP_FORMATS, default="image/png") or "image/png"
    params = [("SERVICE", "WMS"), ("VERSION", version), ("REQUEST", "GetLegendGraphic"),
              ("LAYER", layer[0]), ("FORMAT", fmt),
              ("SLD_VERSION", _choice(p, "SLD_VERSION", ("1.1.0", "1.0.0"), default="1.1.0")
               or "1.1.0")]
    _styles(p, 1, "STYLE")
    for key, high in (("WIDTH", 512), ("HEIGHT", 512)):
        value = _integer(p, key, 1, high, required=False)
        if value:
            params.append((key, value))
    rule = p.get("RULE")
    if rule is not None:
        if not re.fullmatch(r"[\w %.,-]{1,80}", rule):
            raise p.error("InvalidParameterValue", "RULE must name a class of the legend",
                          "RULE")
        params.append(("RULE", rule))
    scale = p.get("SCALE")
    if scale is not None:
        params.append(("SCALE", repr(_number(p, "SCALE", scale))))
    exceptions = p.get("EXCEPTIONS")
    if exceptions is not None and exceptions.strip().upper() in EXCEPTION_FORMATS[version]:
        params.append(("EXCEPTIONS", EXCEPTION_FORMATS[version][exceptions.strip().upper()]))
    p.refuse_others("GetLegendGraphic")
    return OwsRequest("WMS", version, "GetLegendGraphic", tuple(params), (layer[0],))


# -- WCS -----------------------------------------------------------------------------------------
def _wcs(p: _Params, raw_operation: str, raw_version: str, limits: Limits) -> OwsRequest:
    operation = _operation(p, WCS_OPERATIONS)
    p.get("SERVICE", required=True)
    if operation == "GetCapabilities":
        accepted = p.get("ACCEPTVERSIONS")
        version = p.get("VERSION")
        offered = [v.strip() for v in (accepted or version or WCS_VERSION).split(",")]
        if not any(v in ("2.0.1", "2.0.0") for v in offered):
            raise p.error("VersionNegotiationFailed", "this server speaks WCS 2.0.1",
                          "ACCEPTVERSIONS")
        params = [("SERVICE", "WCS"), ("VERSION", WCS_VERSION), ("REQUEST", "GetCapabilities")]
        sections = p.get("SECTIONS")
        if sections is not None:
            names = [s.strip() for s in sections.split(",")]
            unknown = [s for s in names if s not in WCS_SECTIONS]
            if unknown:
                raise p.error("InvalidParameterValue",
                              f"SECTIONS: one or more of {', '.join(WCS_SECTIONS)}", "SECTIONS")
            params.append(("SECTIONS", ",".join(names)))
        formats = p.get("ACCEPTFORMATS")
        if formats is not None and not any(f.strip() in ("text/xml", "application/xml")
                                           for f in formats.split(",")):
            raise p.error("InvalidParameterValue", "capabilities are XML", "ACCEPTFORMATS")
        p.get("ACCEPTLANGUAGES")
        p.get("UPDATESEQUENCE")
        p.refuse_others(operation)
        return OwsRequest("WCS", WCS_VERSION, operation, tuple(params))
    version = (p.get("VERSION", required=True) or "").strip()
    if version not in ("2.0.1", "2.0.0"):
        raise p.error("InvalidParameterValue", "VERSION must be 2.0.1", "VERSION")
    ids = _names(p, "COVERAGEID")
    params = [("SERVICE", "WCS"), ("VERSION", WCS_VERSION), ("REQUEST", operation),
              ("COVERAGEID", ",".join(ids))]
    if operation == "DescribeCoverage":
        # GDAL's WCS driver (3.6, Debian 12's, under QGIS) asks for FORMAT=text/xml: the XML
        # it answers in anyway; accepted with that value only, not passed on
        _choice(p, "FORMAT", ("text/xml", "application/xml"))
        p.refuse_others(operation)
        return OwsRequest("WCS", WCS_VERSION, operation, tuple(params), tuple(ids))
    if len(ids) != 1:
        raise p.error("InvalidParameterValue", "GetCoverage takes one COVERAGEID",
                      "COVERAGEID")
    fmt = _choice(p, "FORMAT", COVERAGE_FORMATS)
    if fmt:
        params.append(("FORMAT", fmt))
    media = _choice(p, "MEDIATYPE", ("multipart/related",))
    if media:
        params.append(("MEDIATYPE", media))
    subsets = []
    for raw in p.all("SUBSET"):
        match = SUBSET.fullmatch(raw.strip())
        if not match:
            raise p.error("InvalidSubsetting", "SUBSET must be axis(low,high) or axis(point)",
                          "SUBSET")
        axis, crs, inner = match.groups()
        values = [v.strip() for v in inner.split(",")]
        if len(values) not in (1, 2) or not all(SUBSET_VALUE.fullmatch(v) for v in values):
            raise p.error("InvalidSubsetting", f"SUBSET on {axis}: numbers, dates or *",
                          "SUBSET")
        if crs is not None and not CRS_URI.fullmatch(crs.strip()):
            raise p.error("InvalidParameterValue", "a SUBSET's CRS must be an EPSG URI",
                          "SUBSET")
        subsets.append(f"{axis}{',' + crs.strip() if crs else ''}({','.join(values)})")
    for key in ("SUBSETTINGCRS", "OUTPUTCRS"):
        crs = p.get(key)
        if crs is not None:
            if not (CRS_URI.fullmatch(crs.strip()) or CRS_CODE.fullmatch(crs.strip())):
                raise p.error("InvalidParameterValue", f"{key} must be an EPSG URI", key)
            params.append((key, crs.strip()))
    params += _scaling(p, limits)
    interpolation = p.get("INTERPOLATION")
    if interpolation is not None:
        chosen = INTERPOLATIONS.get(interpolation.strip().upper())
        if chosen is None:
            raise p.error("InterpolationMethodNotSupported",
                          "INTERPOLATION: nearest-neighbor, linear or average",
                          "INTERPOLATION")
        params.append(("INTERPOLATION", interpolation.strip()))
    ranges = p.get("RANGESUBSET")
    if ranges is not None:
        if not re.fullmatch(r"[A-Za-z_][\w.:-]{0,63}(?:[,:][A-Za-z_][\w.:-]{0,63})*",
                            ranges.strip()):
            raise p.error("NoSuchField", "RANGESUBSET names the coverage's fields (class)",
                          "RANGESUBSET")
        params.append(("RANGESUBSET", ranges.strip()))
    p.refuse_others(operation)
    return OwsRequest("WCS", WCS_VERSION, operation, tuple(params), tuple(ids),
                      subsets=tuple(subsets))


def _scaling(p: _Params, limits: Limits) -> list[tuple[str, str]]:
    """WCS 2.0 Scaling extension: sizes and extents bounded by the largest coverage served."""
    out = []
    factor = p.get("SCALEFACTOR")
    if factor is not None:
        value = _number(p, "SCALEFACTOR", factor)
        if not 0 < value <= 64:
            raise p.error("InvalidScaleFactor", "SCALEFACTOR must be above 0 (at most 64)",
                          "SCALEFACTOR")
        out.append(("SCALEFACTOR", repr(value)))
    for key, is_size in (("SCALEAXES", False), ("SCALESIZE", True), ("SCALEEXTENT", None)):
        raw = p.get(key)
        if raw is None:
            continue
        items = []
        for item in raw.split(","):
            match = re.fullmatch(r"\s*([A-Za-z_][\w.-]{0,31})\(([^()]{1,60})\)\s*", item)
            if not match:
                raise p.error("InvalidParameterValue", f"{key} must be axis(value),...", key)
            axis, inner = match.groups()
            if is_size is None:  # SCALEEXTENT: axis(low:high)
                low_high = inner.split(":")
                if len(low_high) != 2 or not all(INTEGER.fullmatch(v.strip().lstrip("-"))
                                                 for v in low_high):
                    raise p.error("InvalidExtent", f"{key} must be axis(low:high)", key)
                low, high = (int(v) for v in low_high)
                if not 0 < high - low <= limits.max_coverage_size:
                    raise p.error("InvalidExtent", f"{key}: at most "
                                  f"{limits.max_coverage_size} pixels a side", key)
                items.append(f"{axis}({low}:{high})")
            elif is_size:
                if not INTEGER.fullmatch(inner.strip()) \
                        or not 0 < int(inner) <= limits.max_coverage_size:
                    raise p.error("InvalidScaleFactor", f"{key}: 1 to "
                                  f"{limits.max_coverage_size} pixels", key)
                items.append(f"{axis}({int(inner)})")
            else:
                value = _number(p, key, inner)
                if not 0 < value <= 64:
                    raise p.error("InvalidScaleFactor", f"{key}: factors above 0 (at most 64)",
                                  key)
                items.append(f"{axis}({value!r})")
        out.append((key, ",".join(items)))
    return out
