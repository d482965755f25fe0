"""The interface of a map engine (``Publisher``) and the OGC URLs every engine's layers share.

An engine turns a finished ``Product`` and its layer row (``aquamask.processes.storage.jobstore``
``layers``, written by ``publishing.service``) into a served WMS/WCS ``Layer`` and back. The
engine that serves layers on this server is the class ``publisher.name`` names, loaded by its
dotted path (``load_publisher``) as pygeoapi loads its plugins; GeoServer, when configured, is
tried first by the service (``geoserver.GeoServerPublisher``).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import urlencode

from aquamask.processes.errors import ConfigError
from aquamask.processes.types import Layer, Product

if TYPE_CHECKING:
    from aquamask.processes.settings import Settings

GETMAP_WIDTH = 512
# the largest WMS image the embedded /ows asks MapServer for (MapServer's own default MAXSIZE)
WMS_MAX_SIZE = 4096


def ogc_url(base: str, **params: Any) -> str:
    return f"{base}?{urlencode(params, safe=',:/')}"


def getmap_params(layers: str, bbox_wgs84: Sequence[float], **extra: Any) -> dict[str, Any]:
    """A WMS 1.3.0 GetMap of ``bbox_wgs84`` in EPSG:4326 (BBOX axis order lat,lon), 512 px
    wide and as tall as the box's aspect asks."""
    minx, miny, maxx, maxy = (float(v) for v in bbox_wgs84)
    aspect = (maxy - miny) / (maxx - minx) if maxx > minx else 1.0
    height = max(1, min(WMS_MAX_SIZE, round(GETMAP_WIDTH * aspect)))
    return dict(SERVICE="WMS", VERSION="1.3.0", REQUEST="GetMap", LAYERS=layers, STYLES="",
                CRS="EPSG:4326", BBOX=f"{miny!r},{minx!r},{maxy!r},{maxx!r}",
                WIDTH=GETMAP_WIDTH, HEIGHT=height, FORMAT="image/png", TRANSPARENT="TRUE",
                **extra)


def service_layer(name: str, publisher: str, wms: str, wcs: str, bbox_wgs84: Sequence[float],
                  legend: dict[str, str]) -> Layer:
    """The ``Layer`` of coverage ``name`` served at ``wms``/``wcs``; ``legend`` holds the
    GetLegendGraphic parameters the engine wants."""
    return Layer(
        name=name, publisher=publisher, wms_url=wms, wcs_url=wcs,
        get_capabilities_url=ogc_url(wms, SERVICE="WMS", VERSION="1.3.0",
                                     REQUEST="GetCapabilities"),
        get_map_url=ogc_url(wms, **getmap_params(name, bbox_wgs84)),
        get_coverage_url=ogc_url(wcs, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
                                 COVERAGEID=name, FORMAT="image/tiff"),
        describe_coverage_url=ogc_url(wcs, SERVICE="WCS", VERSION="2.0.1",
                                      REQUEST="DescribeCoverage", COVERAGEID=name),
        legend_url=ogc_url(wms, SERVICE="WMS", REQUEST="GetLegendGraphic", LAYER=name,
                           FORMAT="image/png", **legend),
    )


class Publisher(ABC):
    """Interface of every map engine. The layer rows live in the job store (the publishing
    service writes them); an engine turns a row into a served layer and back, and gives its
    service URLs. What an engine derives from the rows (files, a catalogue) it keeps current
    in ``refresh``, ``collect`` and ``rebuild``; engines with nothing derived keep the no-ops."""

    name: str

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: "Settings") -> "Publisher":
        """The engine as ``settings`` configure it."""

    @classmethod
    def configured(cls, settings: "Settings") -> bool:
        """Whether ``settings`` configure this engine at all."""
        return True

    @abstractmethod
    def publish(self, product: Product, row: dict[str, Any]) -> Layer:
        """Serve ``product`` as the layer of ``row``; doing it again must not duplicate it."""

    @abstractmethod
    def unpublish(self, row: dict[str, Any]) -> None:
        """Stop serving the layer of ``row``; a no-op when it is not served."""

    @abstractmethod
    def layer(self, row: dict[str, Any]) -> Layer:
        """The service URLs of the layer of ``row``."""

    @abstractmethod
    def series_urls(self, series: str, bbox_wgs84: Sequence[float], times: Sequence[str]
                    ) -> dict[str, str]:
        """A GetMap of the time-enabled layer ``series`` at each of ``times``."""

    def refresh(self, row: dict[str, Any]) -> None:
        """``row`` was just stored: bring what is derived from the rows up to date."""

    def collect(self) -> int:
        """Remove what layers unpublished a while ago left; the number removed."""
        return 0

    def rebuild(self) -> int:
        """Derive again from the rows whatever is missing or broken (at start); the number
        rendered."""
        return 0


def load_publisher(settings: "Settings") -> Publisher:
    """The engine serving layers on this server: the class ``publisher.name`` names
    (``package.module.Class``), made from ``settings``."""
    dotted = settings.publisher.name
    module, _, name = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"publisher.name: cannot load {dotted!r} ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Publisher)):
        raise ConfigError(f"publisher.name: {dotted!r} is not a Publisher class")
    return cls.from_settings(settings)
