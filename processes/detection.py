"""Detection: stream a Scene block by block through a method, into a classes GeoTIFF and a
probability GeoTIFF, accumulating the statistics on the way (bounded memory for any size).

The overlap of reading, prediction and writing is three small threads and bounded queues rather
than dask: the blocks must be written in order into two open GDAL datasets, and one scene's
work fits in one process."""
from __future__ import annotations

import time
from collections import deque
from contextlib import ExitStack
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from rasterio.windows import Window

from aquamask.model.indices import mndwi, ndwi
from aquamask.processes.areas import pixel_areas_km2
from aquamask.processes.types import (DETECTION_BANDS, DRY, INVALID, WATER, Mask, MaskStats,
                                      ProgressCallback, Scene)

METHODS = ("unet", "ndwi", "mndwi")
BLOCK = 1024
PREFETCH = 2  # blocks read ahead of the one being predicted
_BAND = {name: i for i, name in enumerate(DETECTION_BANDS)}

Predict = Callable[[np.ndarray], np.ndarray]


def index_probability(index: np.ndarray) -> np.ndarray:
    """Map a normalised difference index in [-1, 1] onto [0, 1], so that the ``threshold``
    input means the same for every method: 0.5 is the customary index > 0 rule."""
    return np.clip((index + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def predictor(method: str, model=None) -> tuple[Predict, int]:
    """The per-block function of ``method`` and the halo (context pixels) it needs."""
    if method == "ndwi":
        return (lambda b: index_probability(ndwi(b[_BAND["B03"]], b[_BAND["B08"]]))), 0
    if method == "mndwi":
        return (lambda b: index_probability(mndwi(b[_BAND["B03"]], b[_BAND["B11"]]))), 0
    if method == "unet":
        if model is None:
            raise ValueError("the unet method needs a loaded WaterModel")
        return model.predict, int(model.halo)
    raise ValueError(f"unknown method {method!r}")


@dataclass(frozen=True)
class ModelSpec:
    """How a Dask worker finds the model of a fanned-out block: the weights and device the
    job's settings name (``pipeline.load_model`` caches it per worker process)."""

    weights: str | None
    device: str | None


def predict_block(method: str, spec: ModelSpec | None, bands: np.ndarray) -> np.ndarray:
    """One block's probability, as a task on a Dask worker."""
    model = None
    if method == "unet":
        from aquamask.processes.pipeline import load_model
        model = load_model(spec.weights, spec.device)
    return predictor(method, model)[0](bands)


class BlockFanOut:
    """Sends each block's prediction to the workers of a Dask cluster (``client``), with at
    most ``depth`` blocks in flight; the job's own thread still reads and writes in order."""

    def __init__(self, client, spec: ModelSpec | None, depth: int) -> None:
        self.client, self.spec, self.depth = client, spec, depth

    def submit(self, method: str, bands: np.ndarray) -> Future:
        return self.client.submit(predict_block, method, self.spec, bands, pure=False,
                                  key=f"aquamask-block-{uuid.uuid4().hex}")


def _windows(width: int, height: int, block: int):
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _output_profile(scene: Scene, dtype: str, nodata) -> dict:
    profile = {k: scene.profile[k] for k in ("width", "height", "crs", "transform")}
    # uncompressed: this file is read once more, by the COG writer, which compresses
    profile.update(driver="GTiff", count=1, dtype=dtype, nodata=nodata, tiled=True,
                   blockxsize=256, blockysize=256, BIGTIFF="IF_SAFER")
    return profile


def detect(scene: Scene, method: str, threshold: float, workdir: Path, *,
           model=None, block: int = BLOCK,
           progress: ProgressCallback = lambda pct, msg: None,
           stage_seconds: dict[str, float] | None = None,
           with_probability: bool = True, fan_out: BlockFanOut | None = None) -> Mask:
    """Classify every pixel of ``scene`` as water, dry or invalid.

    Each block is read with ``halo`` pixels of context on every side so that tiled inference
    sees the same neighbourhood it would see on the whole scene; the halo is cropped on write.
    Reading, prediction and writing overlap: a reader thread prefetches the next blocks and a
    writer thread writes the previous one while the current one is predicted (GDAL and torch
    release the GIL), with at most PREFETCH blocks in flight, so memory stays bounded.
    ``stage_seconds``, when given, receives the time spent in each stage. Without
    ``with_probability`` only the classes are written. With ``fan_out`` the predictions run
    on a Dask cluster's workers, several blocks at once ("predict" is then the time spent
    waiting for them).
    """
    started = time.perf_counter()
    predict, halo = predictor(method, model)
    workdir.mkdir(parents=True, exist_ok=True)
    classes_path = workdir / "classes.tif"
    probability_path = workdir / "probability.tif"
    crs_wkt = scene.profile["crs"].to_wkt()
    transform = scene.profile["transform"]
    windows = list(_windows(scene.width, scene.height, block))
    timings = stage_seconds if stage_seconds is not None else {}
    timings.update(read=0.0, predict=0.0, write=0.0)
    totals = {"water_px": 0, "valid_px": 0, "water_km2": 0.0, "valid_km2": 0.0}

    def read(window: Window) -> np.ndarray:
        start = time.perf_counter()
        outer = Window(window.col_off - halo, window.row_off - halo,
                       window.width + 2 * halo, window.height + 2 * halo)
        bands = scene.read(outer)
        timings["read"] += time.perf_counter() - start
        return bands

    with ExitStack() as files:
        cls_ds = files.enter_context(
            rasterio.open(classes_path, "w", **_output_profile(scene, "uint8", INVALID)))
        prob_ds = files.enter_context(rasterio.open(
            probability_path, "w", **_output_profile(scene, "float32", float("nan")))
        ) if with_probability else None
        cls_ds.write_colormap(1, {DRY: (0, 0, 0, 0), WATER: (0, 112, 255, 255),
                                  INVALID: (0, 0, 0, 0)})

        def write(window: Window, probability: np.ndarray) -> None:
            start = time.perf_counter()
            valid = np.isfinite(probability)
            water = probability >= threshold  # NaN compares False
            classes = water.astype(np.uint8)  # WATER = 1, DRY = 0
            classes[~valid] = INVALID
            cls_ds.write(classes, 1, window=window)
            if prob_ds is not None:
                prob_ds.write(probability.astype(np.float32, copy=False), 1, window=window)
            areas = pixel_areas_km2(transform, crs_wkt, window)
            totals["water_px"] += int(np.count_nonzero(water))
            totals["valid_px"] += int(np.count_nonzero(valid))
            totals["water_km2"] += float(np.sum(areas, where=water))
            totals["valid_km2"] += float(np.sum(areas, where=valid))
            timings["write"] += time.perf_counter() - start

        with ThreadPoolExecutor(1, thread_name_prefix="aquamask-read") as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="aquamask-write") as writer:
            reads = deque(reader.submit(read, w) for w in windows[:PREFETCH])
            next_read = len(reads)
            # blocks whose prediction is under way: one here, several on a cluster
            in_flight = fan_out.depth if fan_out is not None else 1
            predictions: deque[Future] = deque()
            written = None
            for n, window in enumerate(windows):
                while reads and len(predictions) < in_flight:
                    bands = reads.popleft().result()
                    if next_read < len(windows):
                        reads.append(reader.submit(read, windows[next_read]))
                        next_read += 1
                    predictions.append(fan_out.submit(method, bands) if fan_out is not None
                                       else _done(bands))
                start = time.perf_counter()
                future = predictions.popleft()
                probability = (future.result() if fan_out is not None else predict(
                    future.result()))[halo:halo + window.height, halo:halo + window.width]
                timings["predict"] += time.perf_counter() - start
                if written is not None:
                    written.result()  # one write in flight; re-raises its error here
                written = writer.submit(write, window, probability)
                progress(100.0 * (n + 1) / len(windows),
                         f"detected water in block {n + 1} of {len(windows)}")
            if written is not None:
                written.result()
    from aquamask.server.metrics import observe_detection  # Prometheus, in the job's process
    observe_detection(method, time.perf_counter() - started, timings, scene.width * scene.height)
    stats = MaskStats(water_pixels=totals["water_px"], valid_pixels=totals["valid_px"],
                      total_pixels=scene.width * scene.height,
                      water_area_km2=totals["water_km2"], valid_area_km2=totals["valid_km2"])
    model_info = None
    if method == "unet":
        model_info = {"name": model.name, "version": model.version,
                      "weights_sha256": model.weights_sha256}
    return Mask(path=classes_path,
                probability_path=probability_path if with_probability else None,
                profile=_output_profile(scene, "uint8", INVALID), method=method,
                threshold=threshold, stats=stats, model=model_info)
