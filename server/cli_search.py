"""``aquamask search``: list the scenes a place source finds, for a user to choose from."""
from __future__ import annotations

import json
import sys
from typing import NoReturn

import click

from aquamask.processes.errors import AquamaskError
from aquamask.processes.settings import Settings


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.command()
@click.option("--bbox", help="minx,miny,maxx,maxy in --bbox-crs (default lon/lat)")
@click.option("--bbox-crs", "bbox_crs", help="CRS of --bbox, e.g. EPSG:32630 (default CRS84)")
@click.option("--geometry", help="a GeoJSON Polygon, inline or @file.geojson")
@click.option("--datetime", "when", required=True,
              help="2023-08-01, an RFC 3339 date-time, or an interval start/end ('..' open)")
@click.option("--source", help="a configured source (default: sources.default)")
@click.option("--collection", help="STAC collection (default: the source's)")
@click.option("--max-cloud-cover", "max_cloud", type=float,
              help="percent (default: sources.max_cloud_cover)")
@click.option("--limit", type=int, default=50, show_default=True, help="most scenes listed")
@click.option("--json", "as_json", is_flag=True, help="print the scenes as JSON")
def search(bbox: str | None, bbox_crs: str | None, geometry: str | None, when: str,
           source: str | None, collection: str | None, max_cloud: float | None, limit: int,
           as_json: bool) -> None:
    """List the Sentinel-2 scenes of a place and dates: date, cloud cover and id.

    The scenes water-detection would read are marked with *; the last line says how much of
    the place they cover. --json gives every field of each scene.
    """
    from aquamask.processes.ogc.inputs import place_query
    from aquamask.processes.pipeline.sources import place_source
    from aquamask.processes.pipeline.sources.compose import select

    settings = Settings.load()
    inputs: dict = {"datetime": when}
    try:
        if geometry:
            text = geometry
            if geometry.startswith("@"):
                with open(geometry[1:], encoding="utf-8") as fh:
                    text = fh.read()
            inputs["geometry"] = json.loads(text)
        if bbox:
            inputs["bbox"] = [float(v) for v in bbox.split(",")]
    except (OSError, ValueError) as err:
        _fail(f"cannot read the place: {err}")
    for key, value in (("bbox-crs", bbox_crs), ("source", source),
                       ("collection", collection), ("max_cloud_cover", max_cloud)):
        if value is not None:
            inputs[key] = value
    if "bbox" not in inputs and "geometry" not in inputs:
        _fail("give a place: --bbox minx,miny,maxx,maxy or --geometry")
    try:
        query, name = place_query(inputs, settings)
        found = place_source(settings, name).search(query, limit=limit)
        chosen, coverage = select(found, query)
    except AquamaskError as err:
        _fail(err.message)
    chosen_ids = {item.id for item in chosen}
    found.sort(key=lambda it: it.datetime, reverse=True)
    if as_json:
        click.echo(json.dumps([dict(it.summary(), chosen=it.id in chosen_ids)
                               for it in found], indent=2))
        return
    if not found:
        click.echo(f"no scene in '{name}' matches {query.describe()}", err=True)
        sys.exit(1)
    click.echo(f"{'':1} {'date (UTC)':20} {'cloud %':>7}  id")
    for item in found:
        cloud = f"{item.cloud_cover:7.1f}" if item.cloud_cover is not None else f"{'?':>7}"
        click.echo(f"{'*' if item.id in chosen_ids else ' '} "
                   f"{item.datetime.strftime('%Y-%m-%d %H:%M:%S'):20} {cloud}  "
                   f"{item.product_id or item.id}")
    click.echo(f"{len(found)} scene(s) from '{name}'; * = what water-detection would read "
               f"({coverage:.0%} of the place)", err=True)
