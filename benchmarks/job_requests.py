"""Request cost of the job API as jobs accumulate: GET /jobs/{id} and GET /jobs with 0 and
10,000 jobs stored, against a real server (gunicorn, loopback). Writes JSON and a markdown table.

    .venv/bin/python benchmarks/job_requests.py [--jobs 10000] [--requests 200]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aquamask.processes.storage.jobstore import JobStore  # noqa: E402
from benchmarks import settle  # noqa: E402
from tests.conftest import start_server  # noqa: E402  (the tests' real-server launcher)


def timed(url: str, n: int) -> dict[str, float]:
    session = requests.Session()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert session.get(url, timeout=10).status_code == 200
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p99_ms": samples[int(0.99 * (n - 1))]}


def fill(store: JobStore, count: int, start: int = 0) -> None:
    rows = [{"identifier": f"bench-{i:06d}", "process_id": "water-detection", "type": "process",
             "status": "successful", "progress": 100, "message": "Job complete",
             "created": f"2026-01-01T00:00:00.{i:06d}Z", "started": f"2026-01-01T00:00:00.{i:06d}Z",
             "mimetype": "application/json", "outputs": {"water_area_km2": 1.0},
             # the benchmark's requests come from loopback without a token: that user's jobs
             "owner": "anonymous"}
            for i in range(start, start + count)]
    from aquamask.processes.storage.jobstore import jobs
    with store.engine.begin() as conn:
        conn.execute(jobs.insert(), [store._encode(r) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="aquamask-bench-"))
    server = start_server(home)
    try:
        store = JobStore(f"sqlite:///{home}/jobs.sqlite")
        fill(store, 1)
        settle(server.process.pid)
        results = {}
        for label, extra in (("1 job", 0), (f"{args.jobs} jobs", args.jobs - 1)):
            if extra:
                fill(store, extra, start=1)
            results[label] = {
                "GET /jobs/{id}": timed(f"{server.url}/jobs/bench-000000?f=json", args.requests),
                "GET /jobs?limit=20": timed(f"{server.url}/jobs?limit=20&f=json", args.requests),
            }
    finally:
        server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{__import__('os').cpu_count()} cores", "results": results}
    (args.out / "job_requests.json").write_text(json.dumps(report, indent=2))
    lines = ["| jobs stored | request | p50 ms | p99 ms |", "| --- | --- | --- | --- |"]
    for label, by_request in results.items():
        for name, r in by_request.items():
            lines.append(f"| {label} | {name} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    table = "\n".join(lines)
    (args.out / "job_requests.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
