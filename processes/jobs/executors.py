"""Where jobs execute: worker processes on this machine, or the workers of a Dask cluster.

The manager hands every job to one executor, chosen by ``jobs.scheduler``: null keeps jobs on
this machine (``LocalExecutor``), an address such as ``tcp://scheduler:8786`` sends them to a
dask.distributed cluster (``DaskExecutor``). Both run the same ``aquamask.processes.jobs.worker``
code, which writes status, progress, heartbeats and the outcome to the shared job store, so
the API reads a job the same way wherever it ran.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable, Protocol

from aquamask.processes import telemetry
from aquamask.processes.jobs import worker
from aquamask.processes.procfs import is_alive, process_start
from aquamask.processes.settings import Settings

LOGGER = logging.getLogger(__name__)
Wait = Callable[[], None]

FORKSERVER = multiprocessing.get_context("forkserver")


def preload(processors: Iterable[str]) -> None:
    """What the fork server imports once, so each forked worker starts warm: the worker, the
    modules of the configured processors (dotted class paths) and torch (imported there
    without starting a thread pool, which would not survive a fork). Before it starts."""
    modules = [dotted.rpartition(".")[0] for dotted in processors]
    FORKSERVER.set_forkserver_preload(["aquamask.processes.jobs.worker",
                                       *dict.fromkeys(modules), "torch"])


def start_fork_server() -> None:
    """Start this process's fork server now rather than on its first job: the server imports
    torch and the processes, which takes seconds that a first request should not wait for."""
    from multiprocessing import forkserver
    forkserver.ensure_running()


def worker_alive(pid: int | None, started: str | None) -> bool:
    """Whether the worker recorded as (``pid``, ``started``) still runs."""
    return is_alive(pid, started)


def forked_worker(record: dict[str, Any]) -> int | None:
    """The pid of a job's forked worker on this host while it runs, else None (an inline
    job's pid is a web worker's, a Dask job's another host's)."""
    pid, started = record.get("pid"), record.get("pid_start")
    if record.get("runner") not in (None, "fork") or record.get("host") != worker.HOST \
            or not worker_alive(pid, started):
        return None
    return pid


def kill_worker(record: dict[str, Any]) -> None:
    """Kill the process group of a job's forked worker on this host, if it still runs (a
    worker declared failed must not keep its slot)."""
    pid = forked_worker(record)
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Executor(Protocol):
    runner: str  # how the job store records who runs the job: fork or dask

    def submit(self, job_id: str, processor_path: str, database: str) -> Wait:
        """Start the job; the returned function waits for its end (synchronous execution)."""

    def stop(self, record: dict[str, Any]) -> None:
        """Stop a dismissed job's work (its record is already marked dismissed)."""

    def health(self) -> str:
        """'ok' or what is wrong, for /health."""

    def lost(self, record: dict[str, Any]) -> bool:
        """Whether a job queued here (not started) is known to have been lost."""


class LocalExecutor:
    """Each job in a process forked from the warm fork server, in a session of its own (so
    dismissal stops its whole group and a restarted web worker leaves it running), bounded
    by ``jobs.max_running`` file-lock slots across every gunicorn worker."""

    runner = "fork"

    def __init__(self, store) -> None:
        self.store = store

    def submit(self, job_id: str, processor_path: str, database: str) -> Wait:
        process = FORKSERVER.Process(target=worker.run_forked, name=f"aquamask-job-{job_id}",
                                     args=(job_id, processor_path, database), daemon=False)
        process.start()  # the fork server reaps it when it ends
        pid = process.pid or 0  # started: it has one
        self.store.update(job_id, {"pid": pid, "pid_start": process_start(pid)})
        return process.join

    def stop(self, record: dict[str, Any], grace: float = 10.0) -> None:
        pid, started = forked_worker(record), record.get("pid_start")
        if pid is None:
            return  # an inline job stops at its next progress
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while worker_alive(pid, started) and time.monotonic() < deadline:
            time.sleep(0.05)
        if worker_alive(pid, started):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def health(self) -> str:
        return "ok"

    def lost(self, record: dict[str, Any]) -> bool:
        return False  # a local worker's death shows in its pid


class DaskExecutor:
    """Each job as one task on a dask.distributed cluster (``dask_worker.run_job``).

    The cluster's workers need the aquamask package, the job store's network reach and the
    results folder at the same path as the server; each task carries the server's settings
    (secrets from its environment included: keep the cluster's network private or use TLS).
    ``dask_worker.ModelPlugin`` loads the water model once per worker. A task's key is the
    job id, so a job is never queued twice; it is released to the scheduler (fire and
    forget), so it runs on when the web worker that submitted it ends.
    """

    runner = "dask"

    def __init__(self, address: str, settings: Settings) -> None:
        self.address = address
        self.settings = settings
        self._client = None
        self._client_pid = None
        self._plugin_registered = False
        self._lock = threading.Lock()

    @property
    def client(self):
        # one client per process: gunicorn forks its workers after the app is loaded; a
        # client closed by a scheduler restart is replaced, not kept failing every submit
        with self._lock:
            if self._client is None or self._client_pid != os.getpid() \
                    or self._client.status in ("closed", "closing", "failed"):
                from distributed import Client
                self._client = Client(self.address, set_as_default=False, timeout=10)
                self._client_pid = os.getpid()
                self._plugin_registered = False
            return self._client

    def _register_plugin(self) -> None:
        """Once per process, before its first job (registering waits for every worker to
        load the model, so it is not done on /health's path)."""
        client = self.client
        if not self._plugin_registered:
            from aquamask.processes.jobs import dask_worker
            client.register_plugin(dask_worker.ModelPlugin(self.settings.portable(),
                                                           telemetry.exported()))
            self._plugin_registered = True

    @staticmethod
    def key(job_id: str) -> str:
        return f"aquamask-job-{job_id}"

    def submit(self, job_id: str, processor_path: str, database: str) -> Wait:
        from distributed import fire_and_forget

        from aquamask.processes.jobs import dask_worker
        self._register_plugin()
        future = self.client.submit(dask_worker.run_job, job_id, processor_path, database,
                                    self.settings.portable(), key=self.key(job_id), pure=False)
        fire_and_forget(future)

        def wait() -> None:
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - the job record tells the outcome
                LOGGER.warning("job %s: dask task ended with %s", job_id, err)
        return wait

    def stop(self, record: dict[str, Any]) -> None:
        """A queued task is cancelled; a running one stops at its next progress report (a
        thread in a Dask worker cannot be interrupted), which sees the dismissal."""
        from distributed import Future
        try:
            self.client.cancel([Future(self.key(record["identifier"]), self.client)])
        except Exception as err:  # noqa: BLE001 - the worker still sees the dismissal
            LOGGER.warning("job %s: cancelling its dask task failed: %s",
                           record["identifier"], err)

    def lost(self, record: dict[str, Any]) -> bool:
        """The scheduler no longer knows the job's task (it restarted): only when it answers."""
        key = self.key(record["identifier"])
        try:
            known = self.client.run_on_scheduler(_scheduler_knows, key)
        except Exception as err:  # noqa: BLE001 - unreachable: nothing is known to be lost
            LOGGER.warning("cannot ask the scheduler about job %s: %s",
                           record["identifier"], err)
            return False
        return not known

    def health(self) -> str:
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception as err:  # noqa: BLE001 - reported, not raised
            return f"error: {self.address}: {err}"
        return "ok" if workers else f"no workers connected to {self.address}"


def _scheduler_knows(key: str, dask_scheduler=None) -> bool:
    return key in dask_scheduler.tasks


def executor_from_settings(settings: Settings, store) -> Executor:
    address = settings.jobs.scheduler
    return DaskExecutor(address, settings) if address else LocalExecutor(store)
