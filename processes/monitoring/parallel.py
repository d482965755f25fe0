"""Independent tasks (a series' dates) through dask: threads in the job's process by default, a
dask.distributed cluster when the job runs on one or ``monitoring.scheduler`` names one, at most
``monitoring.max_parallel_dates`` at once."""
from __future__ import annotations

import sys
import threading
import uuid
from typing import Any, Callable

from aquamask.processes.errors import Cancelled


def _cluster_client(scheduler: str):
    """A context giving a dask.distributed client when the dates go to a cluster: the one
    ``scheduler`` names, or (``auto``) the one this job runs on, whose worker thread is
    handed back while the dates run (``worker_client``); None for local threads."""
    if "://" in scheduler:
        try:
            from distributed import Client
        except ImportError as err:
            raise RuntimeError("monitoring.scheduler names a dask.distributed scheduler but "
                               "the distributed package is not installed") from err
        return Client(scheduler)
    if scheduler == "auto" and "distributed" in sys.modules:
        from distributed import get_worker, worker_client
        try:
            get_worker()
        except ValueError:  # not in a Dask task
            return None
        return worker_client()
    return None


def run_parallel(tasks: list[Callable[[], Any]], on_done: Callable[[int, Any], None], *,
                 scheduler: str, workers: int) -> list[Any]:
    """Run independent ``tasks`` through dask (``scheduler``), at most ``workers`` at once;
    ``on_done(index, result)`` is called in this thread as each finishes (it may raise to
    stop: the job was dismissed). Results in the tasks' order."""
    import dask
    from dask.callbacks import Callback

    if not tasks:
        return []
    # When on_done raises (dismissal) dask stops waiting but its threads finish the dates they
    # started: those are let finish and counted, so the caller's clean-up sees all they did,
    # and dates not yet started do not start.
    stopped = threading.Event()
    running = [0]
    idle = threading.Condition()

    def guarded(task: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with idle:
                if stopped.is_set():
                    raise Cancelled()
                running[0] += 1
            try:
                return task()
            finally:
                with idle:
                    running[0] -= 1
                    idle.notify_all()
        return run

    cluster = _cluster_client(scheduler)
    if cluster is not None:  # a dask.distributed cluster: each date a task on its workers
        from distributed import as_completed
        results: list[Any] = [None] * len(tasks)
        # leaving the client releases the futures: dates not started do not start
        with cluster as client:
            batch = uuid.uuid4().hex
            futures = client.compute([dask.delayed(task, pure=False)(
                dask_key_name=f"aquamask-date-{batch}-{i}") for i, task in enumerate(tasks)])
            index = {f.key: i for i, f in enumerate(futures)}
            for future in as_completed(futures):
                i = index[future.key]
                results[i] = future.result()
                on_done(i, results[i])
        return results
    local = "threads" if scheduler == "auto" else scheduler
    delayed = [dask.delayed(guarded(task), pure=False, name=f"aquamask-date-{i}")()
               for i, task in enumerate(tasks)]
    keys = {d.key: i for i, d in enumerate(delayed)}
    done: dict[int, Any] = {}

    def posttask(key, result, dsk, state, worker_id):
        if key in keys and keys[key] not in done:
            done[keys[key]] = result
            on_done(keys[key], result)

    try:
        with Callback(posttask=posttask):
            computed = dask.compute(*delayed, scheduler=local, num_workers=workers)
    except BaseException:
        stopped.set()
        with idle:
            idle.wait_for(lambda: running[0] == 0)
        raise
    return list(computed)
