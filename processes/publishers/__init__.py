"""Publishers turn a finished ``Product`` into a WMS/WCS ``Layer``, one small class per engine."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence
from urllib.parse import urlencode

from aquamask.processes.types import Layer, Product

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
    """Interface of every map engine. The layer rows live in the job store
    (``aquamask.processes.publishing`` writes them); an engine turns a row into a served layer
    and back, and gives its service URLs."""

    name: str

    @abstractmethod
    def publish(self, product: Product, row: dict[str, Any]) -> Layer:
        """Serve ``product`` as the layer of ``row``; doing it again must not duplicate it."""

    @abstractmethod
    def unpublish(self, row: dict[str, Any]) -> None:
        """Stop serving the layer of ``row``; a no-op when it is not served."""

    @abstractmethod
    def layer(self, row: dict[str, Any]) -> Layer:
        """The service URLs of the layer of ``row``."""
