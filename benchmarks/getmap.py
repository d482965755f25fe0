"""WMS GetMap 256 x 256 through aquamask's /ows (a real server: gunicorn, the gateway, the
MapServer pool, HTTP on loopback) against its peers in the same run:

* MapServer FastCGI called directly: the same persistent processes, the same mapfile and
  rebuilt query, no HTTP, no gateway (the floor /ows is measured against),
* MapServer CGI called directly: one ``mapserv`` process per request (what /ows did before).

Each arm runs with 1 client and with ``--clients`` clients at once (threads), in ``--rounds``
rounds taken in turns (each number is the median of its rounds); every image is compared byte
for byte with the first one. /ows is called through urllib3 keep-alive connections.

    .venv/bin/python benchmarks/getmap.py [--requests 200] [--clients 8] [--rounds 5] [--layers 1]

``--layers N`` publishes N - 1 more results (small NDWI jobs) first, to show that a GetMap of
one layer does not slow down as the catalogue grows.
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
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode, urlsplit

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aquamask.processes.demo import make_demo_scene  # noqa: E402
from aquamask.processes.publishing.mapserver import MapServerPublisher  # noqa: E402
from aquamask.processes.settings import Settings  # noqa: E402
from aquamask.processes.storage.jobstore import job_store
from aquamask.server.fastcgi import MapServerPool  # noqa: E402
from aquamask.server.ows import find_mapserv  # noqa: E402
from aquamask.server.ows_gateway import parse  # noqa: E402
from benchmarks import settle  # noqa: E402
from tests.conftest import start_server  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(call: Callable[[], bytes], requests_: int, clients: int) -> dict:
    """``requests_`` calls of ``call`` shared by ``clients`` threads: latencies, throughput,
    and the distinct images returned."""
    latencies: list[float] = []
    images: set[bytes] = set()
    lock = threading.Lock()
    remaining = [requests_]

    def client() -> None:
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            start = time.perf_counter()
            image = call()
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)
                images.add(image)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "per_s": round(len(latencies) / wall, 1), "images": images}


def body_of(cgi_output: bytes) -> bytes:
    head, _, body = cgi_output.partition(b"\r\n\r\n")
    if not head.lower().startswith(b"content-type: image/png"):
        raise RuntimeError(cgi_output[:300])
    return body


def ratios_of(report: dict[str, dict], clients: int) -> dict[str, float]:
    """The goals' ratios of one set of arms' numbers."""
    ows1 = report["/ows (HTTP, gateway, pool), 1 client(s)"]
    fcgi1 = report["MapServer FastCGI direct, 1 client(s)"]
    owsn = report[f"/ows (HTTP, gateway, pool), {clients} client(s)"]
    fcgin = report[f"MapServer FastCGI direct, {clients} client(s)"]
    return {"p50 /ows : FastCGI, 1 client": round(ows1["p50_ms"] / fcgi1["p50_ms"], 2),
            f"p50 /ows : FastCGI, {clients} clients": round(owsn["p50_ms"] / fcgin["p50_ms"], 2),
            f"throughput FastCGI : /ows, {clients} clients":
                round(fcgin["per_s"] / owsn["per_s"], 2),
            f"/ows p99 : p50, {clients} clients": round(owsn["p99_ms"] / owsn["p50_ms"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=1,
                        help="layers published when GetMap is measured")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="aquamask-getmap-"))
    make_demo_scene(home / "data" / "scene.tif", size=1024)
    make_demo_scene(home / "data" / "small.tif", size=64)
    processes = 2  # per web worker (mapserver.processes); 2 web workers
    server = start_server(home, {"AQUAMASK__DETECTION__METHOD": "ndwi",
                                 "AQUAMASK__MAPSERVER__PROCESSES": str(processes)})
    try:
        outputs = server.execute({"image": {"href": "scene.tif"}, "public": True}).json()
        layer = outputs["layer"]["value"]["name"]
        for _ in range(args.layers - 1):
            assert server.execute({"image": {"href": "small.tif"}}).status_code == 200
        west, south, east, north = outputs["bbox"]
        pairs = {"SERVICE": "WMS", "VERSION": "1.3.0", "REQUEST": "GetMap", "LAYERS": layer,
                 "STYLES": "", "CRS": "EPSG:4326", "BBOX": f"{south},{west},{north},{east}",
                 "WIDTH": "256", "HEIGHT": "256", "FORMAT": "image/png",
                 "TRANSPARENT": "TRUE"}
        target = f"/ows?{urlencode(pairs)}"
        settings = Settings.load(environ={"AQUAMASK__HOME": str(home),
                                          "AQUAMASK__SERVER__URL": server.url})
        publisher = MapServerPublisher.from_settings(settings)
        mapfile = publisher.layer_mapfile(job_store(settings).layer_named(layer))
        query = parse(pairs.items()).query()  # what the gateway hands MapServer
        params = {"REQUEST_METHOD": "GET", "QUERY_STRING": query, "MS_MAPFILE": str(mapfile),
                  "SCRIPT_NAME": "/ows", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
                  "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1"}
        environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                       "MAPSERVER_CONFIG_FILE": str(publisher.config_path)}
        pool = MapServerPool(find_mapserv(), 2 * processes, environment)
        # keep-alive connections through urllib3 (what requests runs on): requests' own
        # layers cost the client ~0.5 ms a call, which is the client's time, not the server's
        where = urlsplit(server.url)
        front = urllib3.HTTPConnectionPool(where.hostname, where.port, maxsize=args.clients,
                                           block=True, timeout=30)

        def via_ows() -> bytes:
            response = front.request("GET", target)
            assert response.headers["Content-Type"] == "image/png", response.data[:300]
            return response.data

        def fastcgi() -> bytes:
            answer = pool.request(params)
            try:
                return body_of(answer.stdout.read())
            finally:
                answer.stdout.close()

        def cgi() -> bytes:
            done = subprocess.run([find_mapserv()], env={**environment, **params},
                                  capture_output=True, check=True)
            return body_of(done.stdout)

        for warm in (via_ows, fastcgi):  # every process busy at least once, caches warm
            measure(warm, 8 * args.clients, args.clients)
        settle(server.process.pid)
        rounds: dict[str, list[dict]] = {}
        images: set[bytes] = set()
        # the arms take turns, round after round: a slow spell of the machine falls on all of
        # them, and each number is the median of its rounds
        for round_ in range(args.rounds):
            for name, call in (("/ows (HTTP, gateway, pool)", via_ows),
                               ("MapServer FastCGI direct", fastcgi),
                               ("MapServer CGI direct", cgi)):
                if name == "MapServer CGI direct" and round_ > 0:
                    continue  # 30x slower: one round says enough
                for clients in (1, args.clients):
                    count = args.requests if name != "MapServer CGI direct" else \
                        max(args.requests // 4, 20)
                    result = measure(call, count, clients)
                    images |= result.pop("images")
                    rounds.setdefault(f"{name}, {clients} client(s)", []).append(result)
        report = {arm: {key: round(statistics.median(r[key] for r in results), 2)
                        for key in results[0]} for arm, results in rounds.items()}
        pool.close()
        front.close()
    finally:
        server.stop()
    ratios = ratios_of(report, args.clients)
    per_round = [ratios_of({arm: results[i] for arm, results in rounds.items()
                            if len(results) > i}, args.clients) for i in range(args.rounds)]
    spread = {k: (min(r[k] for r in per_round), max(r[k] for r in per_round)) for k in ratios}
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "getmap.json").write_text(json.dumps(
        {"machine": machine, "layers": args.layers, "requests": args.requests,
         "rounds": args.rounds,
         "results": report, "ratios": ratios, "ratio_range_over_rounds": spread,
         "identical_images": len(images) == 1},
        indent=2))
    lines = [f"WMS GetMap 256x256 ({machine}, {args.layers} layer(s) published, "
             f"{args.requests} requests an arm and round, medians of {args.rounds} rounds)", "",
             "| arm | p50 ms | p99 ms | requests/s |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {v['p50_ms']} | {v['p99_ms']} | {v['per_s']} |"
              for k, v in report.items()]
    lines += ["", "| ratio | median | rounds (min-max) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v} | {spread[k][0]}-{spread[k][1]} |" for k, v in ratios.items()]
    lines.append(f"| images identical across arms | {'yes' if len(images) == 1 else 'NO'} | |")
    (RESULTS / "getmap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
