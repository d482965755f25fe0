"""Any STAC API, through pystac-client: Earth Search (sentinel-2-l2a, sentinel-2-c1-l2a),
Microsoft Planetary Computer (asset URLs signed with its ``planetary-computer`` package) and
the Copernicus Data Space Ecosystem STAC are presets in aquamask.yml.

Only the windows of the COG assets that cover the place are read (GDAL /vsicurl range
requests through a WarpedVRT, see :mod:`.compose`); whole tiles are never downloaded.
"""
from __future__ import annotations

import logging
from typing import Any

import requests
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from shapely.geometry import mapping

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import InvalidInput, UpstreamError
from aquamask.processes.pipeline.sources import PlaceSource
from aquamask.processes.pipeline.sources.acquired import parse_time
from aquamask.processes.pipeline.sources.bands import SourceItem, item_assets
from aquamask.processes.pipeline.sources.query import PlaceQuery

LOGGER = logging.getLogger(__name__)


def self_href(item: dict[str, Any]) -> str | None:
    return next((link.get("href") for link in item.get("links") or []
                 if link.get("rel") == "self"), None)


def source_item(item: dict[str, Any], source: str, resolve=lambda href: href,
                href: str | None = None) -> SourceItem | None:
    """A STAC item (dict) as a SourceItem, or None when it lacks a detection band."""
    properties = item.get("properties") or {}
    when = properties.get("datetime") or properties.get("start_datetime")
    assets, rule, missing = item_assets(properties, item.get("assets") or {}, resolve)
    if not when or any(b in missing for b in DETECTION_BANDS):
        LOGGER.info("skipping %s: no %s", item.get("id"),
                    "datetime" if not when else ", ".join(missing))
        return None
    product = properties.get("s2:product_uri") or properties.get("s2:product_id")
    return SourceItem(
        id=item["id"], source=source, datetime=parse_time(when),
        cloud_cover=properties.get("eo:cloud_cover"), geometry=item.get("geometry"),
        href=href or self_href(item), collection=item.get("collection"),
        product_id=product.removesuffix(".SAFE") if isinstance(product, str) else None,
        assets=assets, radiometry=rule,
        extra={"processing_baseline": properties.get("s2:processing_baseline")})


class StacSource(PlaceSource):
    kind = "stac"

    def __init__(self, name: str, config: dict[str, Any], settings) -> None:
        super().__init__(name, config, settings)
        self.url = config.get("url")
        self.sign = config.get("sign")
        self.headers = {str(k): str(v) for k, v in (config.get("headers") or {}).items()}

    def check(self) -> None:
        if not self.url:
            raise UpstreamError(f"the source '{self.name}' has no url configured "
                                f"(sources.{self.name}.url)")
        if self.sign not in (None, "planetary_computer"):
            raise UpstreamError(f"the source '{self.name}': unknown signing '{self.sign}'")

    def client(self) -> Client:
        self.check()
        stac_io = StacApiIO(headers=self.headers, timeout=self.http.timeout,
                            max_retries=self.http.retry())
        try:
            return Client.open(str(self.url), stac_io=stac_io)
        except APIError as err:
            raise self._api_error(err) from err
        except requests.RequestException as err:
            raise UpstreamError(f"the STAC API of '{self.name}' ({self.url}) cannot be reached "
                                f"after {self.http.retries} retries ({err})") from err

    def _api_error(self, err: APIError) -> UpstreamError:
        status = getattr(err, "status_code", None)
        if status in (401, 403):
            return UpstreamError(f"the STAC API of '{self.name}' ({self.url}) refused the "
                                 f"request (HTTP {status}): check its credentials/headers")
        return UpstreamError(f"the STAC API of '{self.name}' ({self.url}) failed"
                             f"{f' (HTTP {status})' if status else ''}: {err}")

    def search(self, query: PlaceQuery, limit: int | None = None) -> list[SourceItem]:
        client = self.client()
        collection = query.collection or self.collection
        if not collection:
            raise InvalidInput(f"collection: the source '{self.name}' has no default "
                               "collection; name one")
        limit = limit or self.max_items
        parameters: dict[str, Any] = {
            "collections": [collection], "datetime": query.datetime_text,
            "max_items": limit, "limit": min(limit, 100)}
        if query.is_bbox:
            parameters["bbox"] = list(query.bbox)
        else:
            parameters["intersects"] = mapping(query.geometry)
        if query.max_cloud_cover < 100:
            if client.conforms_to(ConformanceClasses.QUERY):
                parameters["query"] = {"eo:cloud_cover": {"lte": query.max_cloud_cover}}
            elif client.conforms_to(ConformanceClasses.FILTER):
                parameters["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"},
                                                             query.max_cloud_cover]}
                parameters["filter_lang"] = "cql2-json"
            # else: filtered below, from each item's eo:cloud_cover
        try:
            found = list(client.search(**parameters).items_as_dicts())
        except APIError as err:
            raise self._api_error(err) from err
        except requests.RequestException as err:
            raise UpstreamError(f"searching '{self.name}' ({self.url}) failed after "
                                f"{self.http.retries} retries ({err})") from err
        items = []
        for raw in found:
            item = source_item(raw, self.name)
            if item is None:
                continue
            if item.cloud_cover is not None and item.cloud_cover > query.max_cloud_cover:
                continue
            if self.sign:
                item.materialize = self._signed
            items.append(item)
        return items

    def _signed(self, item: SourceItem) -> SourceItem:
        """Planetary Computer: append a SAS token to each asset URL just before reading (the
        tokens expire, so not at search time)."""
        from dataclasses import replace

        import planetary_computer

        signed = {}
        for band, asset in item.assets.items():
            href = asset.path.removeprefix("/vsicurl/")
            try:
                signed_href = planetary_computer.sign_url(href)
            except requests.RequestException as err:
                raise UpstreamError(f"the Planetary Computer refused a token for {href} "
                                    f"({err})") from err
            signed[band] = replace(asset, path=f"/vsicurl/{signed_href}")
        return item.with_assets(signed, item.radiometry)
