"""Slow, oversized and many clients against the real server (gunicorn with aquamask's web
worker, server/http_worker.py; real sockets on loopback): slowloris heads and slow bodies hold
no thread and end in 408, chunked bodies over the limit end in 413 before the app sees them,
/health answers while every request thread is busy, and a full home disk leaves the web
workers alive (the metrics files are elsewhere). Every loop here ends by itself."""
from __future__ import annotations

import json
import os
import select
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from aquamask.processes.settings import Settings
from aquamask.server.cli import gunicorn_command
from aquamask.server.metrics import default_multiprocess_dir
from tests.support.server import REPO, Server, free_port, start_server
from tests.support.tmpfs import mounted_tmpfs

MAX_BODY = 1048576  # limits.max_request_bytes, the default
HEADER_TIMEOUT_S = 10  # server.header_timeout_s, the default
BODY_TIMEOUT_S = 3  # server.body_timeout_s: 30 by default, shorter to keep the test short


def start_front(home: Path, overrides: dict[str, str] | None = None,
                workers: int = 2) -> Server:
    """`aquamask serve`, its app wrapped in tests/e2e/slow_app.py (GET /test/sleep holds a
    request thread, as a synchronous job does)."""
    from aquamask.processes.demo import make_demo_scene

    make_demo_scene(home / "data" / "demo.tif")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AQUAMASK__HOME=str(home), AQUAMASK__SERVER__URL=url,
               PYTHONPATH=str(REPO), **(overrides or {}))
    command = gunicorn_command(Settings.load(environ=env), "127.0.0.1", port, workers)
    process = subprocess.Popen(command + ["tests.e2e.slow_app:app"], env=env, cwd=REPO,
                               stdout=open(home / "server.log", "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, (home / "server.log").read_text()[-3000:]
        try:
            if requests.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return Server(url=url, home=home, data_root=home / "data", process=process)
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start in 90 s")


def stop(srv: Server) -> None:
    srv.stop()


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    """The default settings, but for the body deadline."""
    srv = start_front(tmp_path_factory.mktemp("front-home"),
                      {"AQUAMASK__SERVER__BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)})
    yield srv
    stop(srv)


def connect(srv: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])), timeout=5)


def read_to_end(sock: socket.socket, timeout: float = 5) -> bytes:
    """What the server sends until it closes the connection (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def json_of(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def timed_get(url: str, timeout: float = 10) -> tuple[int, float]:
    began = time.monotonic()
    code = requests.get(url, timeout=timeout).status_code
    return code, time.monotonic() - began


def jobs_of(srv: Server) -> int:
    return len(requests.get(f"{srv.url}/jobs?f=json&limit=1000", timeout=10).json()["jobs"])


def test_slowloris_holds_no_thread_and_is_answered_408_at_the_header_deadline(front):
    slow = [connect(front) for _ in range(16)]
    opened = time.monotonic()
    for sock in slow:
        sock.sendall(b"GET /conformance HTTP/1.1\r\nHost: slow\r\n")
    answers: dict[socket.socket, bytes] = {}
    answered_after: list[float] = []
    latencies: list[float] = []
    while len(answers) < len(slow) and time.monotonic() - opened < HEADER_TIMEOUT_S + 5:
        for sock in slow:  # one header line a second, until the server answers
            if sock not in answers:
                sock.sendall(b"X-Slow: 1\r\n")
        for path in ("/conformance", "/health/live"):
            code, took = timed_get(front.url + path)
            assert code == 200
            latencies.append(took)
        readable, _, _ = select.select([s for s in slow if s not in answers], [], [], 1.0)
        for sock in readable:
            answers[sock] = read_to_end(sock)
            answered_after.append(time.monotonic() - opened)
    for sock in slow:
        sock.close()
    assert len(latencies) >= 2 * HEADER_TIMEOUT_S - 4  # normal requests all the while
    assert max(latencies) < 1.5, latencies
    assert [status_of(a) for a in answers.values()] == [408] * 16
    assert json_of(next(iter(answers.values())))["code"] == "RequestTimeout"
    # a deadline for the whole head, whatever the client keeps sending
    assert HEADER_TIMEOUT_S - 0.5 < min(answered_after) <= max(answered_after) \
        < HEADER_TIMEOUT_S + 2, answered_after


def test_health_answers_while_every_request_thread_is_busy(front):
    sleep_s = 2.0

    def probe(path: str) -> tuple[int, float, str]:
        began = time.monotonic()
        response = requests.get(front.url + path, timeout=5)
        return response.status_code, time.monotonic() - began, response.headers["X-Worker-Pid"]

    with ThreadPoolExecutor(16) as pool:
        began = time.monotonic()
        sleepers = [pool.submit(requests.get, f"{front.url}/test/sleep?s={sleep_s}", timeout=30)
                    for _ in range(16)]
        time.sleep(0.3)
        probes = []
        while time.monotonic() - began < sleep_s - 0.5:
            for path in ("/health/live", "/health/ready", "/health"):
                probes.append(probe(path))
        sleeping = Counter(s.result().headers["X-Worker-Pid"] for s in sleepers)
    # the kernel spreads connections over the 2 workers unevenly: the probes that count are
    # those answered by a worker that had a sleeper for each of its 4 threads
    saturated = {pid for pid, count in sleeping.items() if count >= 4}
    counted = [(code, took) for code, took, pid in probes if pid in saturated]
    assert len(counted) >= 3, (sleeping, probes)
    assert {code for code, _ in counted} == {200}
    assert max(took for _, took in counted) < 1.0, counted
    # the sleepers beyond the threads waited for one: every thread was busy
    assert time.monotonic() - began > 2 * sleep_s - 0.5


def test_a_chunked_body_over_the_limit_is_refused_413_before_the_app_sees_it(front):
    before = jobs_of(front)
    head = (b"POST /processes/water-detection/execution HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    # a valid execute request padded past the limit with blanks (a truncated read of it
    # would be a valid request)
    body = b'{"inputs": {"image": {"href": "demo.tif"}, "method": "ndwi"}}'
    body += b" " * (MAX_BODY + 1 - len(body))
    framing = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                       for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
    with connect(front) as sock:
        sock.sendall(head)
        try:
            sock.sendall(framing)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it was all sent
        answer = read_to_end(sock)
    assert status_of(answer) == 413, answer[:300]
    refusal = json_of(answer)
    assert refusal["status"] == 413 and "1048576" in refusal["description"]
    # the same keys as the app's own errors
    assert set(refusal) == set(requests.get(f"{front.url}/no/such/path", timeout=10).json())
    # a chunk announced past the limit is refused at once, before its data
    with connect(front) as sock:
        sock.sendall(head + b"%x\r\n" % (MAX_BODY + 1))
        assert status_of(read_to_end(sock, timeout=2)) == 413
    assert jobs_of(front) == before


def test_a_body_over_the_limit_sent_at_once_gets_its_413_and_a_clean_close(front):
    """Most clients send the whole body before they read the answer: the worker reads and
    discards it after its 413 instead of closing on it, which would reset the connection
    (and may lose the answer on a real network)."""
    body = b" " * (3 * MAX_BODY)
    with connect(front) as sock:
        sock.sendall(b"POST /processes/water-detection/execution HTTP/1.1\r\nHost: a\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = b""
        while chunk := sock.recv(65536):  # a reset raises ConnectionResetError here
            answer += chunk
    assert status_of(answer) == 413


def test_a_chunked_execution_under_the_limit_runs(front):
    before = jobs_of(front)
    body = json.dumps({"inputs": {"image": {"href": "demo.tif"}, "method": "ndwi",
                                  "probability": False}}).encode()
    pieces = (body[i:i + 10] for i in range(0, len(body), 10))  # requests sends it chunked
    response = requests.post(f"{front.url}/processes/water-detection/execution", data=pieces,
                             headers={"Content-Type": "application/json"}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.json()["water_fraction"] >= 0
    assert jobs_of(front) == before + 1  # as anonymous from loopback: the peer address kept


def test_expect_100_continue_is_answered_before_the_body(front):
    body = b"[]"  # reaches the app, which refuses it with its own 400
    with connect(front) as sock:
        sock.sendall(b"POST /processes/water-detection/execution HTTP/1.1\r\nHost: a\r\n"
                     b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                     b"Connection: close\r\nContent-Length: 2\r\n\r\n")
        sock.settimeout(2)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = read_to_end(sock)
    final = answer[answer.rindex(b"HTTP/1.1 "):]  # past any further interim answer
    assert status_of(final) == 400 and "JSON object" in json_of(final)["description"]


def test_pipelined_and_kept_alive_requests_are_all_answered(front):
    with connect(front) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /conformance HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /health/ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = read_to_end(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 3, answer[:500]
    with requests.Session() as session:
        for _ in range(20):
            assert session.get(f"{front.url}/conformance", timeout=10).status_code == 200


def test_a_slow_body_holds_no_thread_and_is_answered_408(front):
    slow = [connect(front) for _ in range(16)]  # twice the server's threads
    for sock in slow:
        sock.sendall(b"POST /processes/water-detection/execution HTTP/1.1\r\nHost: a\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 102400\r\n\r\n")
    sent = time.monotonic()
    answers: dict[socket.socket, tuple[bytes, float]] = {}
    latencies = []
    while len(answers) < len(slow) and time.monotonic() - sent < BODY_TIMEOUT_S + 5:
        for sock in slow:  # 1 KB a second
            if sock not in answers:
                try:
                    sock.sendall(b" " * 1024)
                except (BrokenPipeError, ConnectionResetError):
                    pass
        code, took = timed_get(f"{front.url}/conformance")
        assert code == 200
        latencies.append(took)
        readable, _, _ = select.select([s for s in slow if s not in answers], [], [], 1.0)
        for sock in readable:
            answers[sock] = (read_to_end(sock), time.monotonic() - sent)
    for sock in slow:
        sock.close()
    assert max(latencies) < 1.5, latencies
    assert [status_of(a) for a, _ in answers.values()] == [408] * 16
    assert all(BODY_TIMEOUT_S - 0.5 < after < BODY_TIMEOUT_S + 2
               for _, after in answers.values()), answers.values()


def test_readiness_names_no_sql_when_the_job_store_breaks(front):
    assert requests.get(f"{front.url}/health/ready", timeout=10).status_code == 200
    with sqlite3.connect(front.home / "jobs.sqlite") as db:
        db.execute("ALTER TABLE jobs RENAME TO jobs_away")  # every query of the store fails
    try:
        for path in ("/health/ready", "/health"):
            response = requests.get(f"{front.url}{path}", timeout=10)
            assert response.status_code == 503
            assert response.json() == {"status": "degraded", "checks": {
                "job_store": "error: the job store does not answer", "map_engine": "ok"}}
        live = requests.get(f"{front.url}/health/live", timeout=10)
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
    finally:
        with sqlite3.connect(front.home / "jobs.sqlite") as db:
            db.execute("ALTER TABLE jobs_away RENAME TO jobs")
    # the details are in the server's log, for its operator
    assert "no such table: jobs" in (front.home / "server.log").read_text()
    assert requests.get(f"{front.url}/health/ready", timeout=10).status_code == 200


# -- a full home disk (needs root, to mount a small tmpfs as home) ------------------------------
@pytest.fixture
def small_home(tmp_path):
    with mounted_tmpfs(tmp_path / "home", "24m") as home:
        yield home


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * (1 << 20))
                filler.flush()
        except OSError:  # No space left on device
            pass


def web_workers(srv, count: int, timeout: float = 30) -> list[int]:
    """The pids of the server's web workers, once ``count`` of them run."""
    deadline = time.monotonic() + timeout
    while True:
        pids = sorted(p.pid for p in psutil.Process(srv.process.pid).children())
        if len(pids) >= count or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def test_a_full_home_disk_leaves_the_web_workers_alive(small_home):
    srv = start_server(small_home)
    try:
        metrics_dir = default_multiprocess_dir(
            Settings.load(environ={"AQUAMASK__HOME": str(small_home)}))
        assert any(metrics_dir.glob("*.db"))
        assert os.stat(metrics_dir).st_dev != os.stat(small_home).st_dev
        workers = web_workers(srv, 2)  # both booted: /health answers once one has
        fill(small_home)
        # requests of new routes and statuses: each adds values to the metrics files
        paths = ["/conformance", "/processes", "/processes/water-detection", "/jobs?f=json",
                 "/collections", "/openapi?f=json", "/health/ready", "/viewer",
                 "/processes/nope", "/jobs/nope", "/nope"] * 4
        codes = [requests.get(f"{srv.url}{path}", timeout=10).status_code for path in paths]
        for path in paths[:11]:
            requests.head(f"{srv.url}{path}", timeout=10)
            requests.options(f"{srv.url}{path}", timeout=10)
        assert 200 in codes and all(code < 500 for code in codes), codes
        assert sorted(p.pid for p in psutil.Process(srv.process.pid).children()) == workers
        assert requests.get(f"{srv.url}/metrics", timeout=10).status_code == 200
    finally:
        stop(srv)
    assert not metrics_dir.exists()  # off the memory filesystem once the server stopped
