"""Bounded load test: concurrent WMS GetMap and process executions against the real server
(gunicorn, HTTP on loopback only), per-kind latency percentiles, throughput and errors.

C GetMap clients each request 256 x 256 PNGs of random bboxes inside a published layer; E
execution clients each run water-detection (NDWI) on a small image, asynchronously (submit with
``Prefer: respond-async``, then poll the job until it ends) and every ``--sync-every``-th time
synchronously. Every client is a thread with its own ``requests`` session and runs until the
time limit or its kind's request budget is spent, whichever comes first (each request has a
timeout too), so the run is bounded in count and time. An error is any non-2xx answer, a
transport error or timeout, a GetMap answer that is not a PNG, or a job that does not end
``successful``.

    .venv/bin/python benchmarks/load.py [--getmap-clients 4] [--exec-clients 2]
        [--duration 60] [--max-getmap 5000] [--max-executions 500] [--workers 4]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aquamask.processes.demo import make_demo_scene  # noqa: E402
from benchmarks import settle  # noqa: E402
from tests.conftest import start_server  # noqa: E402  (the tests' real-server launcher)

RESULTS = Path(__file__).parent / "results"
FINAL = ("successful", "failed", "dismissed")
GETMAP, ASYNC, SUBMIT, SYNC = ("GetMap 256x256", "execute async (submit to done)",
                               "execute async: submit (201)", "execute sync")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Recorder:
    """Latencies and errors per kind, shared by the client threads."""
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    samples_of_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, kind: str, ms: float) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(ms)

    def error(self, kind: str, why: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if len(self.samples_of_errors) < 20:
                self.samples_of_errors.append(f"{kind}: {why[:300]}")


class Budget:
    """A shared request count for one kind of client, and the common deadline."""

    def __init__(self, count: int, deadline: float) -> None:
        self.left = count
        self.deadline = deadline
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0 or time.monotonic() >= self.deadline:
                return False
            self.left -= 1
            return True


def getmap_client(url: str, layer: str, bbox: list[float], budget: Budget, rec: Recorder,
                  seed: int) -> None:
    rng = random.Random(seed)
    west, south, east, north = bbox
    session = requests.Session()
    while budget.take():
        # a random square-ish window covering 5-100 % of the layer's width, inside it
        frac = rng.uniform(0.05, 1.0)
        w, h = (east - west) * frac, (north - south) * frac
        x0, y0 = rng.uniform(west, east - w), rng.uniform(south, north - h)
        query = urlencode({"SERVICE": "WMS", "VERSION": "1.3.0", "REQUEST": "GetMap",
                           "LAYERS": layer, "STYLES": "", "CRS": "EPSG:4326",
                           "BBOX": f"{y0},{x0},{y0 + h},{x0 + w}", "WIDTH": 256,
                           "HEIGHT": 256, "FORMAT": "image/png", "TRANSPARENT": "TRUE"})
        start = time.perf_counter()
        try:
            response = session.get(f"{url}/ows?{query}", timeout=30)
        except requests.RequestException as err:
            rec.error(GETMAP, repr(err))
            continue
        ms = (time.perf_counter() - start) * 1000
        if not response.ok:
            rec.error(GETMAP, f"HTTP {response.status_code} {response.text[:200]}")
        elif response.headers.get("Content-Type") != "image/png":
            rec.error(GETMAP, f"not a PNG: {response.text[:200]}")
        else:
            rec.ok(GETMAP, ms)


def execute_client(url: str, body: dict, budget: Budget, rec: Recorder, sync_every: int,
                   index: int, job_timeout: float) -> None:
    session = requests.Session()
    endpoint = f"{url}/processes/water-detection/execution"
    n = index  # the clients take their sync turns at different times
    while budget.take():
        n += 1
        synchronous = sync_every > 0 and n % sync_every == 0
        start = time.perf_counter()
        try:
            if synchronous:
                response = session.post(endpoint, json=body, timeout=job_timeout)
                if response.status_code != 200:
                    rec.error(SYNC, f"HTTP {response.status_code} {response.text[:200]}")
                else:
                    rec.ok(SYNC, (time.perf_counter() - start) * 1000)
                continue
            response = session.post(endpoint, json=body, headers={"Prefer": "respond-async"},
                                    timeout=60)
            if response.status_code != 201 or "Location" not in response.headers:
                rec.error(ASYNC, f"submit: HTTP {response.status_code} {response.text[:200]}")
                continue
            rec.ok(SUBMIT, (time.perf_counter() - start) * 1000)
            job_url = response.headers["Location"]
            give_up = time.monotonic() + job_timeout
            status: dict = {}
            while time.monotonic() < give_up:
                poll = session.get(job_url, params={"f": "json"}, timeout=30)
                if not poll.ok:
                    status = {"status": f"HTTP {poll.status_code}"}
                    break
                status = poll.json()
                if status.get("status") in FINAL:
                    break
                time.sleep(0.1)
            if status.get("status") == "successful":
                rec.ok(ASYNC, (time.perf_counter() - start) * 1000)
            else:
                rec.error(ASYNC, f"job {job_url}: {status.get('status', 'timed out')} "
                                 f"{status.get('message', '')}")
        except (requests.RequestException, ValueError) as err:
            rec.error(SYNC if synchronous else ASYNC, repr(err))


def summary(rec: Recorder, elapsed: float) -> dict[str, dict]:
    report = {}
    for kind in (GETMAP, ASYNC, SUBMIT, SYNC):
        samples = rec.latencies.get(kind, [])
        errors = rec.errors.get(kind, 0)
        if not samples and not errors:
            continue
        row = {"ok": len(samples), "errors": errors,
               "per_s": round(len(samples) / elapsed, 2)}
        if samples:
            row.update(p50_ms=round(statistics.median(samples), 1),
                       p95_ms=round(percentile(samples, 0.95), 1),
                       p99_ms=round(percentile(samples, 0.99), 1),
                       max_ms=round(max(samples), 1))
        report[kind] = row
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--getmap-clients", type=int, default=4)
    parser.add_argument("--exec-clients", type=int, default=2)
    parser.add_argument("--duration", type=float, default=60, help="seconds of load")
    parser.add_argument("--max-getmap", type=int, default=5000, help="GetMap requests at most")
    parser.add_argument("--max-executions", type=int, default=500,
                        help="executions at most (async and sync together)")
    parser.add_argument("--sync-every", type=int, default=4,
                        help="every n-th execution of a client is synchronous (0: never)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--size", type=int, default=64, help="side of the executed image")
    parser.add_argument("--layer-size", type=int, default=1024,
                        help="side of the scene published for GetMap")
    parser.add_argument("--job-timeout", type=float, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="aquamask-load-"))
    make_demo_scene(home / "data" / "scene.tif", size=args.layer_size)
    make_demo_scene(home / "data" / "small.tif", size=args.size)
    # all clients are one anonymous loopback user: the per-user cap on active jobs is off
    server = start_server(home, {"AQUAMASK__DETECTION__METHOD": "ndwi",
                                 "AQUAMASK__LIMITS__MAX_JOBS_PER_USER": "0"},
                          workers=args.workers)
    rec = Recorder()
    warmup = settle(server.process.pid)
    try:
        published = server.execute({"image": {"href": "scene.tif"}})
        published.raise_for_status()
        outputs = published.json()
        layer, bbox = outputs["layer"]["value"]["name"], outputs["bbox"]
        body = {"inputs": {"image": {"href": "small.tif"}, "method": "ndwi"}}

        start = time.monotonic()
        deadline = start + args.duration
        getmaps, executions = Budget(args.max_getmap, deadline), \
            Budget(args.max_executions, deadline)
        threads = [threading.Thread(target=getmap_client,
                                    args=(server.url, layer, bbox, getmaps, rec,
                                          args.seed + i), daemon=True)
                   for i in range(args.getmap_clients)]
        threads += [threading.Thread(target=execute_client,
                                     args=(server.url, body, executions, rec,
                                           args.sync_every, i, args.job_timeout),
                                     daemon=True)
                    for i in range(args.exec_clients)]
        for thread in threads:
            thread.start()
        # a request started just before the deadline still ends within its own timeout
        for thread in threads:
            thread.join(max(1.0, deadline + args.job_timeout + 30 - time.monotonic()))
        elapsed = time.monotonic() - start
    finally:
        server.stop()
    shutil.rmtree(home, ignore_errors=True)  # kept (server.log) when the run failed

    report = summary(rec, elapsed)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    config = {"getmap_clients": args.getmap_clients, "exec_clients": args.exec_clients,
              "duration_s": args.duration, "max_getmap": args.max_getmap,
              "max_executions": args.max_executions, "sync_every": args.sync_every,
              "gunicorn_workers": args.workers, "warmup_s": round(warmup, 1),
              "image_px": args.size ** 2,
              "layer_px": args.layer_size ** 2, "method": "ndwi"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(
        {"machine": machine, "config": config, "elapsed_s": round(elapsed, 1),
         # each successful job publishes a layer (a GetMap of one layer reads its own mapfile)
         "layers_published": 1 + len(rec.latencies.get(ASYNC, []))
                             + len(rec.latencies.get(SYNC, [])),
         "results": report,
         "errors_total": sum(rec.errors.values()), "error_samples": rec.samples_of_errors},
        indent=2))
    lines = [f"Load: {args.getmap_clients} GetMap + {args.exec_clients} execution clients, "
             f"{elapsed:.0f} s after {warmup:.0f} s of warm-up, {args.workers} gunicorn "
             f"workers ({machine}); executions of a "
             f"{args.size}² image (NDWI), 1 in {args.sync_every} synchronous", "",
             "| kind | ok | errors | per s | p50 ms | p95 ms | p99 ms | max ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, r in report.items():
        lines.append(f"| {kind} | {r['ok']} | {r['errors']} | {r['per_s']} | "
                     f"{r.get('p50_ms', '-')} | {r.get('p95_ms', '-')} | "
                     f"{r.get('p99_ms', '-')} | {r.get('max_ms', '-')} |")
    (RESULTS / "load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for sample in rec.samples_of_errors[:5]:
        print("error:", sample)


if __name__ == "__main__":
    main()
