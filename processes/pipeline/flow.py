"""The one path from a request to a product: source -> detection -> products.

``run_detection`` is water-detection's (an image, or the best scene of a place and a date);
``detect_product`` is the step every date takes, water-detection's one and each of a monitoring
series'; ``detect_to_file`` is the CLI's, with no server around it. None of them knows HTTP or
publishing: the processors (``aquamask.processes.ogc``) publish and build the outputs.
"""
from __future__ import annotations

import datetime as dt
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from aquamask.processes.errors import InvalidInput
from aquamask.processes.pipeline import methods
from aquamask.processes.pipeline.detection import BlockFanOut, ModelSpec, detect
from aquamask.processes.pipeline.products import (
    STYLE_ASSETS,
    stac_item,
    write_cogs,
    write_item,
    write_product,
)
from aquamask.processes.pipeline.sources import place_source
from aquamask.processes.pipeline.sources.acquired import parse_time
from aquamask.processes.pipeline.sources.query import PlaceQuery
from aquamask.processes.pipeline.sources.raster import RasterSource
from aquamask.processes.pipeline.sources.urls import HrefPolicy
from aquamask.processes.settings import Settings
from aquamask.processes.storage.disk import explain
from aquamask.processes.storage.results import ResultStoreError, results_store
from aquamask.processes.styles import style_files, write_style_files
from aquamask.processes.types import Mask, Product, ProgressCallback, Scene, no_progress, scaled

if TYPE_CHECKING:
    from aquamask.model.inference import WaterModel
    from aquamask.processes.storage.results import ResultStore


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
    acquired: str | None = None  # an image's acquisition time, when its file does not say

    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "href" and v is not None}

    def query(self) -> PlaceQuery:
        return PlaceQuery.from_dict(self.place or {})


@contextmanager
def block_fan_out(settings: Settings, pixels: int, method: str) -> Iterator[BlockFanOut | None]:
    """Where the blocks of a scene are predicted: on every worker of the Dask cluster this
    job runs on when the scene has at least ``detection.fan_out_pixels`` (the job's thread
    leaves the worker's pool meanwhile), else here (None)."""
    threshold = settings.detection.fan_out_pixels
    if not threshold or pixels < threshold or "distributed" not in sys.modules:
        yield None
        return
    from distributed import get_worker, worker_client
    try:
        get_worker()
    except ValueError:  # not a Dask task
        yield None
        return
    spec = ModelSpec(settings.detection.model, settings.detection.device,
                     settings.detection.weights_dir) \
        if methods.get(method).needs_model else None
    with worker_client() as client:
        threads = sum(client.nthreads().values())
        yield BlockFanOut(client, spec, depth=max(2, 2 * threads))


def detect_product(scene: Scene, method: str, threshold: float, model: "WaterModel | None",
                   work: Path, product_id: str, parameters: dict[str, Any],
                   results: "Path | ResultStore", started: dt.datetime, *,
                   with_probability: bool = True, fan_out: BlockFanOut | None = None,
                   with_scene: bool = False,
                   progress: ProgressCallback = no_progress) -> tuple[Mask, Product]:
    """Detect water in ``scene`` (its files in ``work``), then write the product ``product_id``
    into ``results`` (a store, or a folder): its COGs and STAC item."""
    mask = detect(scene, method, threshold, work, model=model, progress=scaled(progress, 0, 97),
                  with_probability=with_probability, fan_out=fan_out)
    progress(97, "writing the cloud-optimized GeoTIFFs and the STAC item")
    return mask, write_product(product_id, mask, scene, parameters, results, started,
                               with_scene=with_scene)


def run_detection(request: DetectionRequest, settings: Settings, product_id: str,
                  progress: ProgressCallback) -> Product:
    """water-detection's work: the image or the place's scene, detected into a product."""
    started = dt.datetime.now(dt.timezone.utc)
    if request.href is not None:
        progress(2, f"opening {request.href}")
        scene = RasterSource.from_settings(settings).read(request.href, request.bands)
        if request.acquired:
            scene.acquired = parse_time(request.acquired)
    else:  # a place and a date: search the configured source, read the chosen scenes
        scene = place_source(settings, request.source).read(request.query(),
                                                            scaled(progress, 1, 4))
    if methods.get(request.method).needs_model:
        progress(4, "loading the water model")
    model = methods.model_for(request.method, settings)
    store = results_store(settings)
    work = store.work_dir(product_id)
    try:
        with block_fan_out(settings, scene.width * scene.height, request.method) as fan_out:
            _, product = detect_product(
                scene, request.method, request.threshold, model, work, product_id,
                request.parameters(), store, started, with_probability=request.probability,
                fan_out=fan_out, progress=_detection_progress(progress),
                with_scene=scene.width * scene.height
                <= settings.detection.scene_layers_max_pixels)
    except ResultStoreError:  # the object store's own words; nothing of the job was kept
        raise
    except OSError as err:  # asked now: the partial files are removed below
        raise explain(err, settings.results_dir)
    finally:
        scene.close()
        shutil.rmtree(work, ignore_errors=True)
    return product


def _detection_progress(progress: ProgressCallback) -> ProgressCallback:
    """detect_product's 0-97 % as 5-80 % of the job, its product writing at 82 %."""
    def report(percent: float, message: str) -> None:
        progress(82 if percent >= 97 else 5 + 75 * percent / 97, message)
    return report


def item_path(out: Path) -> Path:
    """Where the CLI writes the STAC item of the mask ``out``: beside it."""
    return out.with_suffix(".item.json")


def detect_to_file(href: str, out: Path, settings: Settings, method: str = "unet",
                   threshold: float = 0.5, bands: dict[str, int] | None = None,
                   progress: ProgressCallback = no_progress,
                   with_probability: bool = True, model: "WaterModel | None" = None) -> Mask:
    """The CLI's detection: one mask COG at ``out``, ``out``'s .probability.tif and its STAC
    item (``item_path``), no server.

    Local paths are read as given (the data-root rule protects the server, not the CLI user),
    and messages name the IMAGE argument and the file as given. ``model``: the CLI user's own
    weights (``--weights``), else the configured model.
    """
    started = dt.datetime.now(dt.timezone.utc)
    out = out.resolve()
    source = RasterSource(Path("/"), settings.limits.max_pixels, (), policy=HrefPolicy.of(
        ["http", "https"], field="IMAGE", local="a file path"))
    if "://" not in href:
        path = Path(href).expanduser().resolve()
        if not path.is_file():
            raise InvalidInput(f"IMAGE: no such file '{href}'")
        href = str(path)
    scene = source.read(href, bands)
    model = model or methods.model_for(method, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".aquamask-", dir=out.parent))
    try:
        mask = detect(scene, method, threshold, work, model=model, progress=progress,
                      with_probability=with_probability)
        mask_cog, probability_cog = write_cogs(mask, work)
        parameters = {"method": method, "threshold": threshold,
                      **({"bands": bands} if bands else {})}
        item = stac_item(out.stem, mask, scene, parameters, started)
        for key, name in zip(STYLE_ASSETS, style_files(out.name, "water")):
            item.assets[key].href = f"./{name}"
        item.assets["mask"].href = f"./{out.name}"
        mask_cog.replace(out)
        if probability_cog is not None:
            probability = out.with_suffix(".probability.tif")
            item.assets["probability"].href = f"./{probability.name}"
            probability_cog.replace(probability)
        write_item(item, item_path(out))
        write_style_files(out, "water")
    finally:
        scene.close()
        shutil.rmtree(work, ignore_errors=True)
    return mask
