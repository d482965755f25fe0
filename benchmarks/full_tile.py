"""Full Sentinel-2 tile, end to end: a 10980 x 10980 6-band COG on local disk -> mask COG with
overviews, per method; wall time, per-stage times, overlap ratio and peak memory; beside them,
in the same run, the peer arm "read alone": every block of the tile read the way detection reads
it (same reader, one thread, no prediction, no writing), so each method's speed is a ratio.

The scene is synthetic (generated on the fly into a temporary folder, never committed): the
deterministic demo scene's surfaces repeated over the tile. Speed, not accuracy, is measured.

    .venv/bin/python benchmarks/full_tile.py [--size 10980] [--methods ndwi mndwi unet]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from aquamask.processes.demo import make_demo_scene

RESULTS = Path(__file__).parent / "results"


def make_tile(path: Path, size: int) -> Path:
    """A tiled 6-band int16 GeoTIFF of ``size`` x ``size`` px, written block by block."""
    block = 512
    demo = make_demo_scene(path.with_name("demo.tif"), size=block)
    with rasterio.open(demo) as src:
        pattern = src.read()
    pattern[pattern == 0] = 1  # no no-data holes: every pixel is work
    profile = dict(driver="GTiff", width=size, height=size, count=6, dtype="int16",
                   crs="EPSG:32630", transform=from_origin(600000, 4300020, 10, 10),
                   tiled=True, blockxsize=512, blockysize=512, nodata=0, BIGTIFF="YES")
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, block):
            for col in range(0, size, block):
                h, w = min(block, size - row), min(block, size - col)
                dst.write(pattern[:, :h, :w], window=Window(col, row, w, h))
    return path


def run_one(image: str, method: str, out: str, probability: bool) -> dict:
    """Runs in a child process so that peak RSS is this method's alone."""
    from aquamask.processes.pipeline.detection import detect
    from aquamask.processes.pipeline.methods import load_model
    from aquamask.processes.pipeline.products import write_cogs
    from aquamask.processes.pipeline.sources.raster import RasterSource

    model = load_model(None, None) if method == "unet" else None
    start = time.perf_counter()
    scene = RasterSource(Path("/"), 10**9, []).read(image)
    hashed = time.perf_counter()
    timings: dict[str, float] = {}
    work = Path(out)
    mask = detect(scene, method, 0.5, work, model=model, stage_seconds=timings,
                  with_probability=probability)
    detected = time.perf_counter()
    write_cogs(mask, work)
    done = time.perf_counter()
    slowest = max(timings.values())
    return {"method": method + ("" if probability else " (mask only)"),
            "wall_s": round(done - start, 2),
            "input_sha256_s": round(hashed - start, 2),
            "detect_s": round(detected - hashed, 2), "cog_s": round(done - detected, 2),
            "stages_s": {k: round(v, 2) for k, v in timings.items()},
            "overlap_ratio": round((detected - hashed) / slowest, 2) if slowest else None,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "water_fraction": round(mask.stats.water_fraction, 4)}


def read_alone(image: str) -> dict:
    """The peer arm: the detection's reads of every block, nothing else (a child process)."""
    from aquamask.processes.pipeline.blocks import BLOCK, windows
    from aquamask.processes.pipeline.sources.raster import RasterSource

    scene = RasterSource(Path("/"), 10**9, []).read(image)
    start = time.perf_counter()
    for window in windows(scene.width, scene.height, BLOCK):
        scene.read(window)
    seconds = time.perf_counter() - start
    scene.close()
    return {"method": "read alone", "wall_s": round(seconds, 2),
            "mpx_per_s": round(scene.width * scene.height / seconds / 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--methods", nargs="+", default=["ndwi", "mndwi", "unet"])
    parser.add_argument("--no-probability", action="store_true",
                        help="also run each method without the probability COG")
    parser.add_argument("--child", nargs=4, metavar=("IMAGE", "METHOD", "OUT", "PROB"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        image, method, out, probability = args.child
        print(json.dumps(read_alone(image) if method == "read" else
                         run_one(image, method, out, probability == "1")))
        return
    with tempfile.TemporaryDirectory(prefix="aquamask-tile-") as tmp:
        t0 = time.perf_counter()
        tile = make_tile(Path(tmp) / "tile.tif", args.size)
        print(f"tile {args.size} px written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rows = []
        runs = [("read", "0")] + [(m, "1") for m in args.methods]
        if args.no_probability:
            runs += [(m, "0") for m in args.methods]
        for method, probability in runs:
            out = Path(tmp) / f"{method}-{probability}"
            child = subprocess.run([sys.executable, __file__, "--child", str(tile), method,
                                    str(out), probability], capture_output=True, text=True,
                                   check=True)
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    read = rows.pop(0)
    for r in rows:  # detection's speed (reading included) against reading alone
        r["mpx_per_s"] = round(args.size**2 / r["detect_s"] / 1e6, 2)
        r["of_read_alone"] = round(r["mpx_per_s"] / read["mpx_per_s"], 2)
    RESULTS.mkdir(exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    report = {"machine": machine, "size": args.size, "read_alone": read, "results": rows}
    (RESULTS / "full_tile.json").write_text(json.dumps(report, indent=2))
    lines = [f"Full tile {args.size} x {args.size} px ({machine}); read alone: "
             f"{read['wall_s']} s, {read['mpx_per_s']} Mpx/s", "",
             "| method | wall s | sha256 s | detect s | Mpx/s (÷ read alone) | read s | "
             "predict s | write s | overlap (detect / slowest stage) | COG s | peak RSS GiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        st = r["stages_s"]
        lines.append(f"| {r['method']} | {r['wall_s']} | {r['input_sha256_s']} | "
                     f"{r['detect_s']} | {r['mpx_per_s']} ({r['of_read_alone']}) | "
                     f"{st['read']} | {st['predict']} | {st['write']} | "
                     f"{r['overlap_ratio']} | {r['cog_s']} | {r['peak_rss_gib']} |")
    (RESULTS / "full_tile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
