"""Detection: stream a Scene block by block through a method, into a classes GeoTIFF and a
probability GeoTIFF, accumulating the statistics on the way (bounded memory for any size).

The overlap of reading, prediction and writing is three small threads and bounded queues rather
than dask: the blocks must be written in order into two open GDAL datasets, and one scene's
work fits in one process."""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from aquamask.processes import telemetry
from aquamask.processes.constants import INVALID
from aquamask.processes.pipeline import methods
from aquamask.processes.pipeline.areas import pixel_areas_km2
from aquamask.processes.pipeline.blocks import BLOCK, gtiff_profile, windows
from aquamask.processes.styles import colormap
from aquamask.processes.types import Mask, MaskStats, ProgressCallback, Scene

PREFETCH = 2  # blocks read ahead of the one being predicted
# niceness added to the reader and writer threads: on few cores they would preempt one of
# torch's intra-op threads, and every parallel operator then waits for the one preempted; run
# below them, they fill the cores' idle moments (PREFETCH blocks ahead) instead
IO_NICENESS = 5


def _below_compute() -> None:
    """Thread initializer: this thread's scheduling priority lowered (Linux: per thread)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + IO_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at the same priority
        pass


@dataclass(frozen=True)
class ModelSpec:
    """How a Dask worker finds the model of a fanned-out block: the model, weights folder and
    device the job's settings name (``methods.load_model`` caches it per worker process)."""

    model: str | None
    device: str | None
    weights_dir: str | None = None


def predict_block(method: str, spec: ModelSpec | None, bands: np.ndarray) -> np.ndarray:
    """One block's probability, as a task on a Dask worker."""
    model = (methods.load_model(spec.model, spec.device, spec.weights_dir)
             if spec is not None else None)
    return methods.get(method).predictor(model)[0](bands)


class BlockFanOut:
    """Sends each block's prediction to the workers of a Dask cluster (``client``), with at
    most ``depth`` blocks in flight; the job's own thread still reads and writes in order."""

    def __init__(self, client, spec: ModelSpec | None, depth: int) -> None:
        self.client, self.spec, self.depth = client, spec, depth

    def submit(self, method: str, bands: np.ndarray) -> Future:
        return self.client.submit(predict_block, method, self.spec, bands, pure=False,
                                  key=f"aquamask-block-{uuid.uuid4().hex}")


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


# the detection's own rasters (read once more, by the COG writer) stay in memory up to this
# size: the classes and probability of a full Sentinel-2 tile (120.6 Mpx) are 0.6 GB; a larger
# scene writes them under the job's work folder instead
IN_MEMORY_BYTES = 1 << 30


def intermediate_folder(workdir: Path, nbytes: int) -> Path:
    """Where rasters of ``nbytes`` in between go (detection's classes and probability, the
    scene's display bands): GDAL's in-memory file system when they fit ``IN_MEMORY_BYTES``
    (then only the COGs ever reach the disk), else ``workdir``. ``release`` frees them."""
    workdir.mkdir(parents=True, exist_ok=True)  # the caller's COGs go there
    if nbytes <= IN_MEMORY_BYTES:
        return Path(f"/vsimem/aquamask-{uuid.uuid4().hex}")
    return workdir


def release(mask: Mask) -> None:
    """Delete the detection's own rasters of ``mask`` (in memory or on disk) once its COGs
    are written."""
    from rasterio.errors import RasterioIOError
    from rasterio.shutil import delete

    for path in (mask.path, mask.probability_path):
        if path is not None:
            try:
                delete(str(path))
            except RasterioIOError:
                pass  # already gone


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
    chosen = methods.get(method)
    if chosen.fit is not None:
        # index arithmetic is cheap: the fitted predictor runs here, not on a cluster
        predict, halo, fan_out = chosen.fit(
            scene.read(w) for w in windows(scene.width, scene.height, block)), 0, None
    else:
        predict, halo = chosen.predictor(model)
    fit_seconds = time.perf_counter() - started
    # uint8 classes, and float32 probability
    folder = intermediate_folder(workdir, scene.width * scene.height
                                 * (5 if with_probability else 1))
    # not the COGs' names: a caller may write those into the same work folder
    classes_path = folder / "classes.raw.tif"
    probability_path = folder / "probability.raw.tif"
    timings = stage_seconds if stage_seconds is not None else {}
    timings.update(read=fit_seconds, predict=0.0, write=0.0)  # a fit's pass is reading
    try:
        stats = _detect_into(scene, classes_path, probability_path if with_probability
                             else None, predict, halo, method, threshold, block, progress,
                             timings, fan_out)
    except BaseException:
        release(Mask(classes_path, probability_path, {}, method, threshold,
                     MaskStats(0, 0, 0, 0.0, 0.0)))
        raise
    telemetry.detection(method, time.perf_counter() - started, timings,
                        scene.width * scene.height)
    model_info = None
    if model is not None:
        model_info = {"name": model.name, "version": model.version,
                      "weights_sha256": model.weights_sha256}
    return Mask(path=classes_path,
                probability_path=probability_path if with_probability else None,
                profile=gtiff_profile(scene.profile, "uint8", INVALID), method=method,
                threshold=threshold, stats=stats, model=model_info)


def _detect_into(scene: Scene, classes_path: Path, probability_path: Path | None, predict,
                 halo: int, method: str, threshold: float, block: int,
                 progress: ProgressCallback, timings: dict[str, float],
                 fan_out: BlockFanOut | None) -> MaskStats:
    """``detect``'s overlapped read / predict / write of every block; the statistics."""
    crs_wkt = scene.profile["crs"].to_wkt()
    transform = scene.profile["transform"]
    blocks = list(windows(scene.width, scene.height, block))
    counts = {"water_px": 0, "valid_px": 0}
    areas_km2 = {"water": 0.0, "valid": 0.0}

    def read(window: Window) -> np.ndarray:
        start = time.perf_counter()
        outer = Window(window.col_off - halo, window.row_off - halo,
                       window.width + 2 * halo, window.height + 2 * halo)
        bands = scene.read(outer)
        timings["read"] += time.perf_counter() - start
        return bands

    with ExitStack() as files:
        cls_ds = files.enter_context(
            rasterio.open(classes_path, "w", **gtiff_profile(scene.profile, "uint8", INVALID)))
        prob_ds = files.enter_context(rasterio.open(
            probability_path, "w", **gtiff_profile(scene.profile, "float32", float("nan")))
        ) if probability_path is not None else None
        cls_ds.write_colormap(1, colormap("water"))

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
            counts["water_px"] += int(np.count_nonzero(water))
            counts["valid_px"] += int(np.count_nonzero(valid))
            areas_km2["water"] += float(np.sum(areas, where=water))
            areas_km2["valid"] += float(np.sum(areas, where=valid))
            timings["write"] += time.perf_counter() - start

        with ThreadPoolExecutor(1, thread_name_prefix="aquamask-read",
                                initializer=_below_compute) as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="aquamask-write",
                                   initializer=_below_compute) as writer:
            reads = deque(reader.submit(read, w) for w in blocks[:PREFETCH])
            next_read = len(reads)
            # blocks whose prediction is under way: one here, several on a cluster
            in_flight = fan_out.depth if fan_out is not None else 1
            predictions: deque[Future] = deque()
            written = None
            for n, window in enumerate(blocks):
                while reads and len(predictions) < in_flight:
                    bands = reads.popleft().result()
                    if next_read < len(blocks):
                        reads.append(reader.submit(read, blocks[next_read]))
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
                progress(100.0 * (n + 1) / len(blocks),
                         f"detected water in block {n + 1} of {len(blocks)}")
            if written is not None:
                written.result()
    return MaskStats(water_pixels=counts["water_px"], valid_pixels=counts["valid_px"],
                     total_pixels=scene.pixels,
                     water_area_km2=areas_km2["water"], valid_area_km2=areas_km2["valid"])
