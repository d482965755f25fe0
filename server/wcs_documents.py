"""MapServer's WCS 2.0.1 documents corrected from the layer rows (the facts of each published
COG in the job store), as no mapfile setting can:

* DescribeCoverage: MapServer 8 prints a grid's origin and offset vectors with 6 decimals, so
  a pixel of 8.983152841e-05° reads 9e-05° and GDAL's WCS client puts the grid about one pixel
  off over 512 pixels. The origin and offsets are written again here, exact, from the COG's
  extent and resolution, in the axis order MapServer used (the CRS's: lat/long for EPSG:4326).
* GetCapabilities: MapServer gives a CoverageSummary no ``ows:WGS84BoundingBox``; one is added
  from the layer's WGS84 box, where the WCS 2.0 schema puts it (before ``wcs:CoverageId``).

Each coverage's numbers are replaced only when its row is known; anything else is left as
MapServer wrote it.
"""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from functools import lru_cache
from typing import Any, Iterator, Mapping

NS = {"wcs": "http://www.opengis.net/wcs/2.0", "gml": "http://www.opengis.net/gml/3.2",
      "ows": "http://www.opengis.net/ows/2.0"}
Facts = Mapping[str, Any]


def _parse(document: bytes) -> ET.Element:
    # keep MapServer's prefixes (ElementTree names unknown namespaces ns0, ns1, ...)
    for _, (prefix, uri) in ET.iterparse(io.BytesIO(document), events=("start-ns",)):
        try:
            ET.register_namespace(prefix, uri)
        except ValueError:  # a reserved prefix (xml, ns0, ...): ElementTree names it
            pass
    return ET.fromstring(document)


def _serialize(root: ET.Element) -> bytes:
    out = io.BytesIO()
    ET.ElementTree(root).write(out, encoding="UTF-8", xml_declaration=True)
    return out.getvalue()


@lru_cache(maxsize=64)
def _northing_first(srs_name: str) -> bool:
    """Whether a CRS URI's first axis is northing or latitude (EPSG:4326)."""
    from pyproj import CRS

    try:
        axes = CRS.from_user_input(srs_name).axis_info
    except Exception:  # noqa: BLE001 - an unknown CRS: as MapServer writes others, x first
        return False
    return bool(axes) and axes[0].direction.lower() in ("north", "south")


def _numbers(values: tuple[float, float], swap: bool) -> str:
    first, second = (values[1], values[0]) if swap else values
    return f"{first!r} {second!r}"


def _grid(facts: Facts) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """The COG's exact grid: the centre of its first pixel, and its column and row steps."""
    left, _, _, top = (float(v) for v in facts["extent"])
    x_res, y_res = (float(v) for v in facts["resolution"])
    return (left + x_res / 2, top - y_res / 2), (x_res, 0.0), (0.0, -y_res)


def _descriptions(root: ET.Element) -> Iterator[tuple[str, ET.Element]]:
    for description in root.iter(f"{{{NS['wcs']}}}CoverageDescription"):
        name = description.findtext("wcs:CoverageId", default="", namespaces=NS).strip()
        yield name, description


def describe_coverage(document: bytes, facts: Mapping[str, Facts]) -> bytes:
    """The DescribeCoverage ``document`` with each known coverage's origin and offset
    vectors exact (``facts``: layer name -> its row's facts)."""
    root = _parse(document)
    for name, description in _descriptions(root):
        known = facts.get(name)
        grid = description.find("gml:domainSet/gml:RectifiedGrid", NS)
        if known is None or grid is None:
            continue
        pos = grid.find("gml:origin/gml:Point/gml:pos", NS)
        point = grid.find("gml:origin/gml:Point", NS)
        vectors = grid.findall("gml:offsetVector", NS)
        if pos is None or point is None or len(vectors) != 2:
            continue
        swap = _northing_first(point.get("srsName", ""))
        origin, column, row = _grid(known)
        pos.text = _numbers(origin, swap)
        vectors[0].text = _numbers(column, swap)
        vectors[1].text = _numbers(row, swap)
    return _serialize(root)


def capabilities(document: bytes, facts: Mapping[str, Facts]) -> bytes:
    """The WCS capabilities ``document`` with a WGS84 bounding box in each known
    CoverageSummary."""
    root = _parse(document)
    for summary in root.iter(f"{{{NS['wcs']}}}CoverageSummary"):
        coverage_id = summary.find("wcs:CoverageId", NS)
        known = facts.get((coverage_id.text or "").strip()) if coverage_id is not None \
            else None
        if coverage_id is None or known is None or summary.find("ows:WGS84BoundingBox", NS) \
                is not None:
            continue
        west, south, east, north = (float(v) for v in known["bbox_wgs84"])
        box = ET.Element(f"{{{NS['ows']}}}WGS84BoundingBox")
        ET.SubElement(box, f"{{{NS['ows']}}}LowerCorner").text = f"{west!r} {south!r}"
        ET.SubElement(box, f"{{{NS['ows']}}}UpperCorner").text = f"{east!r} {north!r}"
        summary.insert(list(summary).index(coverage_id), box)
    return _serialize(root)
