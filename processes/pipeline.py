"""The water-detection pipeline as plain functions: read -> detect -> write -> publish.

Process plugins validate their inputs into a ``DetectionRequest`` and call ``run_detection``;
the CLI calls ``detect_to_file``. Neither knows about HTTP.
"""
from __future__ import annotations

import datetime as dt
import importlib
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from aquamask.processes.detection import BlockFanOut, ModelSpec, detect
from aquamask.processes.products import COG_MEDIA_TYPE, write_cogs, write_product
from aquamask.processes.publishers import Publisher
from aquamask.processes.results import ResultStoreError
from aquamask.processes.settings import Settings
from aquamask.processes.sources import place_source
from aquamask.processes.sources.query import PlaceQuery
from aquamask.processes.sources.raster import RasterSource
from aquamask.processes.storage import explain
from aquamask.processes.types import Layer, Product, ProgressCallback


@dataclass
class DetectionRequest:
    """Either ``href`` (an image) or ``place`` (a PlaceQuery as a dict: geometry, datetime,
    max_cloud_cover, collection) with the ``source`` to search."""

    href: str | None = None
    method: str = "unet"
    threshold: float = 0.5
    bands: dict[str, int] | None = field(default=None)
    place: dict[str, Any] | None = field(default=None)
    source: str | None = None
    probability: bool = True

    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "href" and v is not None}

    def query(self) -> PlaceQuery:
        return PlaceQuery.from_dict(self.place or {})


@lru_cache(maxsize=2)
def load_model(weights: str | None, device: str | None):
    """The U-Net, loaded once per process (job workers run many blocks, the CLI one scene)."""
    from aquamask.model.inference import WaterModel  # torch is imported only when needed
    return WaterModel.load(weights, device=None if device in (None, "auto") else device)


@contextmanager
def block_fan_out(settings: Settings, pixels: int, method: str) -> Iterator[BlockFanOut | None]:
    """Where the blocks of a scene are predicted: on every worker of the Dask cluster this
    job runs on when the scene has at least ``detection.fan_out_pixels`` (the job's thread
    leaves the worker's pool meanwhile), else here (None)."""
    threshold = int(settings.get("detection", "fan_out_pixels") or 0)
    if not threshold or pixels < threshold or "distributed" not in sys.modules:
        yield None
        return
    from distributed import get_worker, worker_client
    try:
        get_worker()
    except ValueError:  # not a Dask task
        yield None
        return
    spec = ModelSpec(settings.get("detection", "weights"),
                     settings.get("detection", "device")) if method == "unet" else None
    with worker_client() as client:
        threads = sum(client.nthreads().values())
        yield BlockFanOut(client, spec, depth=max(2, 2 * threads))


def source_from_settings(settings: Settings) -> RasterSource:
    return RasterSource.from_settings(settings)


def publisher_from_settings(settings: Settings) -> Publisher:
    dotted = settings.get("publisher", "name")
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name).from_settings(settings)


def _scaled(progress: ProgressCallback, start: float, end: float) -> ProgressCallback:
    return lambda pct, msg: progress(start + (end - start) * pct / 100.0, msg)


def run_detection(request: DetectionRequest, settings: Settings, product_id: str,
                  progress: ProgressCallback) -> tuple[Product, Layer]:
    started = dt.datetime.now(dt.timezone.utc)
    if request.href is not None:
        progress(2, f"opening {request.href}")
        scene = source_from_settings(settings).read({"href": request.href,
                                                     "bands": request.bands})
    else:  # a place and a date: search the configured source, read the chosen scenes
        scene = place_source(settings, request.source).read(
            {"query": request.query(), "progress": _scaled(progress, 1, 4)})
    model = None
    if request.method == "unet":
        progress(4, "loading the water model")
        model = load_model(settings.get("detection", "weights"),
                           settings.get("detection", "device"))
    store = settings.results_store
    work = store.work_dir(product_id)
    try:
        with block_fan_out(settings, scene.width * scene.height, request.method) as fan_out:
            mask = detect(scene, request.method, request.threshold, work, model=model,
                          progress=_scaled(progress, 5, 80),
                          with_probability=request.probability, fan_out=fan_out)
        progress(82, "writing the cloud-optimized GeoTIFFs and the STAC item")
        product = write_product(product_id, mask, scene, request.parameters(), store, started)
    except ResultStoreError:  # the object store's own words; nothing of the job was kept
        raise
    except OSError as err:  # asked now: the partial files are removed below
        raise explain(err, settings.results_dir)
    finally:
        scene.close()
        shutil.rmtree(work, ignore_errors=True)
    progress(95, "publishing the WMS/WCS layer")
    from aquamask.processes import publishing  # GeoServer, else/meanwhile embedded
    layer = publishing.publish(product, settings)
    return product, layer


def outputs_document(product: Product, layer: Layer, request: DetectionRequest,
                     base_url: str) -> dict[str, Any]:
    """The OGC API - Processes results document: values inline, files as links."""
    results = f"{base_url}/results/{product.id}"
    stats = product.stats
    files = {"mask": {"href": f"{results}/{product.mask_cog.name}", "type": COG_MEDIA_TYPE,
                      "title": "water mask: 1 water, 0 dry, 255 no data"}}
    if product.probability_cog is not None:
        files["probability"] = {"href": f"{results}/{product.probability_cog.name}",
                                "type": COG_MEDIA_TYPE, "title": "water probability"}
    return {
        **files,
        "stac_item": {"href": f"{results}/{product.stac_item.name}",
                      "type": "application/geo+json", "title": "STAC Item with provenance"},
        "water_area_km2": round(stats.water_area_km2, 6),
        "water_fraction": round(stats.water_fraction, 6),
        "valid_fraction": round(stats.valid_fraction, 6),
        "valid_area_km2": round(stats.valid_area_km2, 6),
        "bbox": list(product.bbox_wgs84),
        "crs": product.crs,
        "method": request.method,
        "threshold": request.threshold,
        "layer": layer.as_output(),
    }


def detect_to_file(href: str, out: Path, settings: Settings, method: str = "unet",
                   threshold: float = 0.5, bands: dict[str, int] | None = None,
                   progress: ProgressCallback = lambda pct, msg: None,
                   with_probability: bool = True):
    """The CLI's detection: one mask COG at ``out`` (and ``out``'s .probability.tif), no server.

    Local paths are read as given (the data-root rule protects the server, not the CLI user).
    """
    out = out.resolve()
    source = RasterSource(Path("/"), int(settings.get("limits", "max_pixels")), ["http", "https"])
    if "://" not in href:
        href = str(Path(href).expanduser().resolve())
    scene = source.read({"href": href, "bands": bands})
    model = load_model(settings.get("detection", "weights"),
                       settings.get("detection", "device")) if method == "unet" else None
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".aquamask-", dir=out.parent))
    try:
        mask = detect(scene, method, threshold, work, model=model, progress=progress,
                      with_probability=with_probability)
        mask_cog, probability_cog = write_cogs(mask, work)
        mask_cog.replace(out)
        if probability_cog is not None:
            probability_cog.replace(out.with_suffix(".probability.tif"))
    finally:
        scene.close()
        shutil.rmtree(work, ignore_errors=True)
    return mask
