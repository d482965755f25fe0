"""Synchronous execution overhead: HTTP + pygeoapi + job bookkeeping over the compute itself,
for a small image, with 10,000 jobs already stored; beside pygeoapi's hello-world process on
its own TinyDB manager (both served by gunicorn on loopback).

Two ways: the request's p50 minus the p50 of the same work run in this process (detection +
products, and publishing), and paired per request: each request's time minus its own job's run
in the server (the record's ``started`` to ``finished``), which leaves out the drift of a
shared machine between two separate series.

    .venv/bin/python benchmarks/execute_overhead.py [--jobs 10000] [--requests 30]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aquamask.processes.demo import make_demo_scene  # noqa: E402
from aquamask.processes.storage.jobstore import JobStore  # noqa: E402
from benchmarks import settle  # noqa: E402
from benchmarks.job_requests import fill  # noqa: E402
from tests.conftest import free_port, start_server  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def timed_posts(url: str, body: dict, n: int) -> list[tuple[float, dict]]:
    """``n`` synchronous executions: (ms, outputs) of each, after one that warms caches."""
    session = requests.Session()
    samples = []
    for _ in range(n + 1):
        start = time.perf_counter()
        response = session.post(url, json=body, timeout=120)
        assert response.status_code == 200, response.text
        samples.append(((time.perf_counter() - start) * 1000, response.json()))
    return samples[1:]


def p50(url: str, body: dict, n: int) -> float:
    return statistics.median(ms for ms, _ in timed_posts(url, body, n))


def paired_overhead_ms(samples: list[tuple[float, dict]], store: JobStore) -> tuple[float, float]:
    """p50 of each request's time minus its job's own run (``started`` to ``finished`` in the
    job record: the processor's work, detection to publishing), and p50 of that run. Paired
    per request, so the machine's drift between two series does not enter the difference."""
    def parse(text: str) -> float:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() * 1000

    overheads, runs = [], []
    for ms, outputs in samples:
        job_id = outputs["mask"]["href"].rstrip("/").split("/")[-2]
        record = store.get(job_id)
        run = parse(record["finished"]) - parse(record["started"])
        overheads.append(ms - run)
        runs.append(run)
    return statistics.median(overheads), statistics.median(runs)


def compute_ms(image: Path, n: int) -> tuple[float, float]:
    """The process's own work, in this process: detection + products (read, NDWI, COGs,
    STAC item), and publishing the layer in the embedded map engine; p50 of each."""
    from aquamask.processes.pipeline.detection import detect
    from aquamask.processes.pipeline.products import write_product
    from aquamask.processes.pipeline.sources.raster import RasterSource
    from aquamask.processes.publishing import service as publishing
    from aquamask.processes.settings import Settings

    detecting, publishing_ms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(environ={"AQUAMASK__HOME": tmp})
        settings.ensure_dirs()
        for i in range(n + 1):
            start = time.perf_counter()
            scene = RasterSource(image.parent, 10**9, []).read(image.name)
            mask = detect(scene, "ndwi", 0.5, Path(tmp) / f"w{i}")
            product = write_product(f"p{i}", mask, scene, {}, settings.results_dir,
                                    dt.datetime.now(dt.timezone.utc))
            scene.close()
            published = time.perf_counter()
            publishing.publish(product, settings)
            detecting.append((published - start) * 1000)
            publishing_ms.append((time.perf_counter() - published) * 1000)
    return statistics.median(detecting[1:]), statistics.median(publishing_ms[1:])


def pygeoapi_hello_world(home: Path) -> tuple[subprocess.Popen, str]:
    from pygeoapi.openapi import get_oas

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = {
        "server": {"bind": {"host": "127.0.0.1", "port": port}, "url": url,
                   "mimetype": "application/json; charset=UTF-8", "encoding": "utf-8",
                   "languages": ["en-US"], "limits": {"default_items": 10, "max_items": 10},
                   "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
                           "attribution": "osm"},
                   "manager": {"name": "TinyDB", "connection": str(home / "jobs.db"),
                               "output_dir": str(home)}},
        "logging": {"level": "ERROR"},
        "metadata": {"identification": {"title": "t", "description": "d", "keywords": ["k"],
                                        "url": url, "terms_of_service": url},
                     "license": {"name": "l", "url": url}, "provider": {"name": "p", "url": url},
                     "contact": {"name": "c"}},
        "resources": {"hello-world": {"type": "process",
                                      "processor": {"name": "HelloWorld"}}}}
    (home / "hello.yml").write_text(yaml.safe_dump(config))
    (home / "hello-openapi.yml").write_text(yaml.safe_dump(get_oas(config)))
    env = dict(os.environ, PYGEOAPI_CONFIG=str(home / "hello.yml"),
               PYGEOAPI_OPENAPI=str(home / "hello-openapi.yml"))
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                                "--workers", "2", "pygeoapi.flask_app:APP"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            requests.get(f"{url}/processes", timeout=5)
            break
        except requests.RequestException:
            time.sleep(0.1)
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--size", type=int, default=64, help="side of the small test image")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="aquamask-overhead-"))
    image = make_demo_scene(home / "data" / "small.tif", size=args.size)
    server = start_server(home, {"AQUAMASK__DETECTION__METHOD": "ndwi"})
    hello, hello_url = pygeoapi_hello_world(home)
    try:
        fill(JobStore(f"sqlite:///{home}/jobs.sqlite"), args.jobs)
        settle(server.process.pid)
        samples = timed_posts(f"{server.url}/processes/water-detection/execution",
                              {"inputs": {"image": {"href": "small.tif"}}}, args.requests)
        total = statistics.median(ms for ms, _ in samples)
        paired, run = paired_overhead_ms(samples, JobStore(f"sqlite:///{home}/jobs.sqlite"))
        compute, publish = compute_ms(image, args.requests)
        hello_ms = p50(f"{hello_url}/processes/hello-world/execution",
                       {"inputs": {"name": "x"}}, args.requests)
    finally:
        server.process.terminate()
        hello.terminate()
    rows = {"aquamask sync execute p50 ms": round(total, 1),
            "detection + products alone p50 ms": round(compute, 1),
            "publishing the layer alone p50 ms": round(publish, 1),
            "overhead over detection + products p50 ms": round(total - compute, 1),
            "overhead over detection + products + publishing p50 ms":
                round(total - compute - publish, 1),
            "the job's own run in the server (started to finished) p50 ms": round(run, 1),
            "overhead per request over its job's run (paired) p50 ms": round(paired, 1),
            "pygeoapi hello-world (TinyDB) sync execute p50 ms": round(hello_ms, 1)}
    RESULTS.mkdir(exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    (RESULTS / "execute_overhead.json").write_text(json.dumps(
        {"machine": machine, "jobs_stored": args.jobs, "image_px": args.size ** 2,
         "results": rows}, indent=2))
    table = "\n".join([f"Sync execution, {args.size}² px image, {args.jobs} jobs stored "
                       f"({machine})", "", "| measure | ms |", "| --- | --- |"]
                      + [f"| {k} | {v} |" for k, v in rows.items()])
    (RESULTS / "execute_overhead.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
