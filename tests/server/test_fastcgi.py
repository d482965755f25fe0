"""The MapServer pool (issue #17): free processes go to waiting requests first come, first
served; a web worker starts its processes before its first map; a process that died is
started again by the request that takes it. Real MapServer FastCGI processes, a real job
store, no mocks."""
from __future__ import annotations

import os
import queue
import signal
import threading
import time

import pytest

from aquamask.server.fastcgi import FairLifo
from aquamask.server.ows import ENGINE_KEY, start_map_engine
from tests.support.mapserver import catalogue_at, ows_app
from tests.support.server import start_server


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def queue_waiter(free: FairLifo, served: list, name: str) -> threading.Thread:
    """A thread that waits for an item, notes its name, and gives the item back; returned once
    it is in the queue of waiters."""
    waiting = len(free._waiters)

    def take() -> None:
        item = free.get(timeout=10)
        served.append(name)
        free.put(item)

    thread = threading.Thread(target=take)
    thread.start()
    wait_until(lambda: len(free._waiters) == waiting + 1)
    return thread


def test_a_returned_item_goes_to_the_threads_waiting_in_their_order():
    free = FairLifo(["process"])
    held = free.get(timeout=0)
    served: list[str] = []
    threads = [queue_waiter(free, served, name) for name in ("first", "second", "third")]
    free.put(held)
    for thread in threads:
        thread.join(10)
    assert served == ["first", "second", "third"]
    assert free.get(timeout=0) == "process"


def test_a_newcomer_does_not_take_an_item_ahead_of_a_waiting_thread():
    """With queue.LifoQueue the newcomer usually wins: the waiter is woken, but the item is
    free to whoever asks first."""
    free = FairLifo(["process"])
    held = free.get(timeout=0)
    served: list[str] = []
    gate = threading.Event()
    waiter_item: list[str] = []

    def waiter() -> None:
        waiter_item.append(free.get(timeout=10))
        served.append("waiter")
        gate.wait(10)  # holds the item until the newcomer has tried
        free.put(waiter_item[0])

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: len(free._waiters) == 1)
    free.put(held)
    with pytest.raises(queue.Empty):
        free.get(timeout=0.05)  # the newcomer: the item is already the waiter's
    gate.set()
    thread.join(10)
    assert served == ["waiter"] and waiter_item == ["process"]


def test_a_wait_that_times_out_leaves_nothing_behind():
    free = FairLifo(["process"])
    held = free.get(timeout=0)
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        free.get(timeout=0.2)
    assert time.monotonic() - started >= 0.2
    free.put(held)  # not handed to the waiter that gave up
    assert free.get(timeout=0) == "process"


def test_items_come_back_most_recently_used_first():
    free = FairLifo(["a", "b", "c"])
    assert free.get(timeout=0) == "c"
    free.put("c")
    assert free.get(timeout=0) == "c"  # the warm one again, not the longest idle


@pytest.fixture()
def engine_app(tmp_path):
    catalogue = catalogue_at(tmp_path, AQUAMASK__MAPSERVER__PROCESSES="2")
    app = ows_app(catalogue)
    yield app
    app.extensions[ENGINE_KEY]()[1].pool.close()


def capabilities(app) -> int:
    return app.test_client().get("/ows?SERVICE=WMS&REQUEST=GetCapabilities").status_code


def test_a_worker_starts_its_map_engine_before_its_first_map(engine_app):
    pool = engine_app.extensions[ENGINE_KEY]()[1].pool
    assert pool.pids() == []  # nothing runs until the worker starts it
    start_map_engine(engine_app)
    pids = pool.pids()
    assert len(pids) == 2 and all(os.path.exists(f"/proc/{pid}") for pid in pids)
    assert capabilities(engine_app) == 200
    assert sorted(pool.pids()) == sorted(pids)  # served by the processes already running


def test_a_killed_map_engine_process_is_started_again_by_the_next_request(engine_app):
    pool = engine_app.extensions[ENGINE_KEY]()[1].pool
    start_map_engine(engine_app)
    killed = pool.pids()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    # at once: a request that finds its process dead, or dying, is served by a fresh one
    assert [capabilities(engine_app) for _ in range(4)] == [200] * 4
    assert pool.pids() and not set(pool.pids()) & set(killed)


def test_aquamask_serve_starts_the_map_engine_with_each_web_worker(tmp_path):
    """A real server (gunicorn, one web worker): its MapServer processes run before any map
    was asked for."""
    import psutil

    server = start_server(tmp_path, {"AQUAMASK__MAPSERVER__PROCESSES": "3"}, workers=1)
    try:
        def engines() -> list[psutil.Process]:
            tree = psutil.Process(server.process.pid).children(recursive=True)
            return [p for p in tree if p.name() == "mapserv"]

        wait_until(lambda: len(engines()) == 3, timeout=30)
        assert not (tmp_path / "server.log").read_text().count("GET /ows")
    finally:
        server.stop()
