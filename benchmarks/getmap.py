"""WMS GetMap 256 x 256 latency: through aquamask's /ows (real server, HTTP on loopback) against
the map engine alone (MapServer's CGI run directly with the same mapfile and query).

    .venv/bin/python benchmarks/getmap.py [--requests 50] [--layers 1]

``--layers N`` publishes N - 1 more results (small NDWI jobs) before measuring, to show how
GetMap scales with the number of published layers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import settle  # noqa: E402
from tests.conftest import start_server  # noqa: E402

from aquamask.processes.demo import make_demo_scene  # noqa: E402
from aquamask.processes.publishers.mapserver import MapServerPublisher  # noqa: E402
from aquamask.processes.settings import Settings  # noqa: E402
from aquamask.server.ows import MapServCGI  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--layers", type=int, default=1,
                        help="layers published when GetMap is measured")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="aquamask-getmap-"))
    make_demo_scene(home / "data" / "scene.tif", size=1024)
    make_demo_scene(home / "data" / "small.tif", size=64)
    server = start_server(home, {"AQUAMASK__DETECTION__METHOD": "ndwi"})
    try:
        outputs = server.execute({"image": {"href": "scene.tif"}}).json()
        layer = outputs["layer"]["name"]
        for _ in range(args.layers - 1):
            assert server.execute({"image": {"href": "small.tif"}}).status_code == 200
        settle(server.process.pid)
        west, south, east, north = outputs["bbox"]
        query = urlencode({"SERVICE": "WMS", "VERSION": "1.3.0", "REQUEST": "GetMap",
                           "LAYERS": layer, "STYLES": "", "CRS": "EPSG:4326",
                           "BBOX": f"{south},{west},{north},{east}", "WIDTH": 256,
                           "HEIGHT": 256, "FORMAT": "image/png", "TRANSPARENT": "TRUE"})
        session = requests.Session()
        via_ows = []
        for _ in range(args.requests):
            start = time.perf_counter()
            response = session.get(f"{server.url}/ows?{query}", timeout=30)
            via_ows.append((time.perf_counter() - start) * 1000)
            assert response.headers["Content-Type"] == "image/png", response.text[:300]
        settings = Settings.load(environ={"AQUAMASK__HOME": str(home)})
        publisher = MapServerPublisher.from_settings(settings)
        engine = MapServCGI(publisher.config_path, publisher.mapfile_path,
                            layer_mapfile=publisher.layer_mapfile)
        env = engine.environ("GET", query)
        alone = []
        for _ in range(args.requests):
            start = time.perf_counter()
            done = subprocess.run([engine.binary], env=env, capture_output=True, check=True)
            alone.append((time.perf_counter() - start) * 1000)
            assert b"image/png" in done.stdout[:200]
    finally:
        server.process.terminate()
    rows = {"via /ows (HTTP)": via_ows, "mapserv alone (CGI)": alone}
    report = {k: {"p50_ms": round(statistics.median(v), 1),
                  "p99_ms": round(percentile(v, 0.99), 1)} for k, v in rows.items()}
    ratio = report["via /ows (HTTP)"]["p50_ms"] / report["mapserv alone (CGI)"]["p50_ms"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "getmap.json").write_text(json.dumps(
        {"machine": machine, "layers": args.layers, "results": report,
         "p50_ratio": round(ratio, 2)}, indent=2))
    lines = [f"WMS GetMap 256x256 ({machine}, {args.layers} layer(s) published, "
             f"{args.requests} requests)", "",
             "| path | p50 ms | p99 ms |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['p50_ms']} | {v['p99_ms']} |" for k, v in report.items()]
    lines.append(f"| ratio /ows : engine (p50) | {ratio:.2f} | |")
    (RESULTS / "getmap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
