"""aquamask's pygeoapi process manager: jobs in SQL, executed by worker processes.

pygeoapi's own managers run a job as a thread inside the web worker: no bound, no progress, no
cancellation, and a killed web worker leaves the job ``accepted`` for ever. Here every execution,
sync or async, is handed to an executor (``aquamask.processes.jobs.executors``): a process forked on
this machine, or a task on a Dask cluster. The worker writes progress, heartbeats and the outcome
to the job store and stops on dismissal.

Every job that is not final has a process answering for it (the web worker that accepted it,
then its worker), and a sweep (at start, every ``jobs.sweep_s`` seconds, and on each read)
settles the ones whose process is gone: a job handed to no executor is removed (nobody was
told of it), one whose worker died or fell silent for ``jobs.stale_after_s`` is failed with the
reason and its worker killed, one that ran past ``jobs.max_runtime_s`` is stopped and failed,
and a queued Dask task the cluster lost is queued again. A failed job's layers are taken down
with it, so no layer outlives its job's files.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Optional, Tuple

from pygeoapi.process.base import JobNotFoundError, JobResultNotFoundError, ProcessorExecuteError
from pygeoapi.process.manager.base import BaseManager
from pygeoapi.util import (
    JobStatus,
    ProcessExecutionMode,
    RequestedProcessExecutionMode,
    RequestedResponse,
    get_current_datetime,
)

from aquamask.processes.errors import AquamaskError, TooManyJobs
from aquamask.processes.identity import current_identity
from aquamask.processes.jobs import callbacks, worker
from aquamask.processes.jobs.executors import (
    LocalExecutor,
    executor_from_settings,
    kill_worker,
    preload,
    worker_alive,
)
from aquamask.processes.jobs.worker import ACTIVE, HOST, remove_job_files
from aquamask.processes.ogc.base import AquamaskProcessor, as_ogc_error
from aquamask.processes.ogc.results import Execution, parse_execution
from aquamask.processes.procfs import process_start
from aquamask.processes.publishing import service as publishing
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import JobStore, StoreUnavailable

LOGGER = logging.getLogger(__name__)
# how long a record may wait for its web worker to hand it to an executor
SUBMIT_GRACE_S = 30.0
REQUEST_STORE_RETRY_S = 5.0


class JobFailed(ProcessorExecuteError):
    """A synchronous job's failure, re-raised with the status the worker recorded."""

    def __init__(self, record: dict[str, Any]) -> None:
        message = record.get("message") or "the job failed"
        super().__init__(message, user_msg=message)
        self.http_status_code = HTTPStatus(record.get("error_status") or 500)
        self.ogc_exception_code = record.get("error_code") or "NoApplicableCode"


class SyncTimeout(ProcessorExecuteError):
    """A synchronous execution that outlived ``server.timeout``: stopped and failed."""

    http_status_code = HTTPStatus.GATEWAY_TIMEOUT
    ogc_exception_code = "NoApplicableCode"


class JobDismissed(ProcessorExecuteError):
    """A synchronous job dismissed (DELETE) while its client waited for it."""

    http_status_code = HTTPStatus.CONFLICT
    ogc_exception_code = "NoApplicableCode"


@dataclass(frozen=True)
class Submitted:
    """An execution accepted: the job as added (``record``), the outputs of a synchronous one
    that succeeded, its status, how its client asked for the results, and the preference
    applied (``Preference-Applied``)."""

    record: dict[str, Any]
    outputs: dict[str, Any] | None
    status: JobStatus
    execution: Execution
    preference_applied: str | None


class AquamaskManager(BaseManager):
    def __init__(self, manager_def: dict) -> None:
        super().__init__(manager_def)
        self.is_async = True
        self.supports_subscribing = True
        self.settings = Settings.load()
        self.settings.ensure_dirs()
        self.database = manager_def.get("connection") or self.settings.database_url
        # a request waits a few seconds for a store that is away, then answers 503; the
        # workers wait jobs.store_retry_s (their jobs carry on once it is back)
        self.store = JobStore(self.database, retry_s=REQUEST_STORE_RETRY_S)
        self.executor = executor_from_settings(self.settings, self.store)
        preload(p["processor"]["name"] for p in self.processes.values())
        jobs = self.settings.jobs
        self.inline_max_pixels = jobs.inline_max_pixels
        self._validated = threading.local()  # what validate() found, for the same request
        self.stale_after_s = jobs.stale_after_s
        self.max_runtime_s = jobs.max_runtime_s
        self.sweep_s = jobs.sweep_s
        self.sync_timeout_s = float(self.settings.server.timeout)
        self._sweeper_pid = 0
        self._sweeper_lock = threading.Lock()
        self._store_back = 0.0  # when the store last came back after an outage
        self.sweep()

    # -- liveness ---------------------------------------------------------------------------
    def sweep(self) -> int:
        """Settle every active job whose process is gone (see the module docstring); the
        number settled."""
        settled = 0
        try:
            active = self.store.active()
        except StoreUnavailable:
            # while the store is away no heartbeat can be written: once it is back, workers
            # get a full stale_after_s to be heard from before any is judged silent
            self._store_back = math.inf
            raise
        if self._store_back == math.inf:
            self._store_back = time.time()
        for record in active:
            settled += self._checked(record) is not record
        if settled:
            LOGGER.warning("%d job(s) without a live worker were settled", settled)
        return settled

    def _ensure_sweeper(self) -> None:
        """A daemon thread per process sweeping every ``sweep_s`` (started on first use, so
        it runs in each gunicorn worker, not in the master that preloads the app)."""
        if self._sweeper_pid == os.getpid() or self.sweep_s <= 0:
            return
        with self._sweeper_lock:
            if self._sweeper_pid == os.getpid():
                return
            self._sweeper_pid = os.getpid()
            threading.Thread(target=self._sweep_forever, name="aquamask-sweeper",
                             daemon=True).start()

    def _sweep_forever(self) -> None:
        while True:
            time.sleep(self.sweep_s)
            try:
                self.sweep()
                publishing.collect(self.settings)
            except Exception:  # noqa: BLE001 - the next round tries again
                LOGGER.exception("the job sweep failed")

    def _death(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """(what to do, why) for an active job whose process is known to be gone or that ran
        too long: ``forget`` (never handed to an executor), ``requeue`` (lost by the cluster
        before it started), ``fail``; None while it may be alive."""
        if record["status"] not in ACTIVE:
            return None
        now = time.time()
        local = record.get("host") == HOST and record.get("pid")
        gone = bool(local) and not worker_alive(record["pid"], record.get("pid_start"))
        if not record.get("submitted") and record["status"] == JobStatus.accepted.value:
            beat = record.get("heartbeat") or 0
            if gone or (not local and now - beat > SUBMIT_GRACE_S):
                return "forget", "the web worker accepting it ended before starting it"
            return None
        if gone:
            return "fail", (f"the worker process (pid {record['pid']}) ended without finishing "
                            "the job; it was killed or crashed")
        if record.get("runner") == "dask" and record["status"] == JobStatus.accepted.value:
            if self.executor.lost(record):
                return "requeue", "the cluster lost the queued job (its scheduler restarted)"
            return None
        beat = record.get("heartbeat")
        if beat is not None and now - max(beat, self._store_back) > self.stale_after_s:
            return "fail", (f"the worker on {record.get('host')} sent no heartbeat for "
                            f"{now - beat:.0f} s (limit {self.stale_after_s:.0f} s); it was "
                            "killed, crashed or lost its connection")
        started = _epoch(record.get("started"))
        if record["status"] == JobStatus.running.value and self.max_runtime_s and started \
                and now - started > self.max_runtime_s + self.stale_after_s:
            # its own watchdog should have stopped it: it is stuck where no signal reaches
            return "fail", (f"the job ran longer than the limit of {self.max_runtime_s:.0f} s "
                            "(jobs.max_runtime_s) and was stopped")
        return None

    def _checked(self, record: dict[str, Any]) -> dict[str, Any]:
        """Settle a job whose process is gone; the record as it is now."""
        verdict = self._death(record)
        if verdict is None:
            return record
        action, reason = verdict
        job_id = record["identifier"]
        if action == "forget":
            if self.store.update(job_id, {"status": JobStatus.dismissed.value},
                                 only_if_status=(JobStatus.accepted.value,)):
                self.store.delete(job_id)
                LOGGER.warning("job %s: removed, %s", job_id, reason)
            return self.store.get(job_id) or dict(record, status=JobStatus.dismissed.value)
        if action == "requeue":
            LOGGER.warning("job %s: %s; queued again", job_id, reason)
            self._submit(job_id, record["process_id"])
            return self.store.get(job_id) or record
        now = get_current_datetime()
        changes = {"status": JobStatus.failed.value, "finished": now, "updated": now,
                   "error_status": 500, "error_code": "NoApplicableCode", "message": reason}
        if self.store.update(job_id, changes, only_if_status=ACTIVE):
            LOGGER.warning("job %s: %s", job_id, reason)
            kill_worker(record)  # a silent or overdue worker would hold its slot
            self._take_down(job_id)
            worker.notify_failed(self.settings, dict(record, **changes))
        return self.store.get(job_id) or dict(record, **changes)

    def _take_down(self, job_id: str) -> None:
        """A failed or dismissed job's layers and files."""
        try:
            publishing.unpublish(job_id, self.settings)
        except Exception:  # a layer that cannot be removed must not keep the files alive
            LOGGER.exception("job %s: unpublishing failed", job_id)
        remove_job_files(self.settings, job_id)

    # -- execution ------------------------------------------------------------------------
    def execute_process(self, process_id: str, data_dict: dict, execution_mode=None,
                        requested_outputs: Optional[dict] = None, subscriber=None,
                        requested_response=RequestedResponse.raw.value):
        """pygeoapi's ``execute_process``, over ``submit`` (aquamask's own execution endpoint
        calls ``submit`` itself, for the statusInfo and results it answers with)."""
        prefer = None if execution_mode is None else RequestedProcessExecutionMode(
            execution_mode).value
        urls = {key: getattr(subscriber, attr) for key, attr in (
            ("successUri", "success_uri"), ("inProgressUri", "in_progress_uri"),
            ("failedUri", "failed_uri")) if getattr(subscriber, attr, None)}
        submitted = self.submit(process_id, data_dict, prefer=prefer, outputs=requested_outputs,
                                response=requested_response, subscriber=urls or None)
        applied = submitted.preference_applied
        return (submitted.record["identifier"], "application/json", submitted.outputs,
                submitted.status, {"Preference-Applied": applied} if applied else None)

    def submit(self, process_id: str, inputs: Any, *, prefer: str | None = None,
               outputs: Any = None, response: Any = None, subscriber: Any = None
               ) -> Submitted:
        """Execute ``process_id``: asynchronously when ``prefer`` is ``respond-async`` (and the
        process allows it), else synchronously. Everything that can be checked is checked
        before a job exists (bad input is a 4xx with nothing stored): the inputs, the outputs
        and response asked for, the callback URLs. Job ids are random (uuid4, rather than
        pygeoapi's uuid1 of time and host) and the owner's limit of active jobs is applied
        atomically when the job is added. Core errors (``AquamaskError``) become pygeoapi's
        here."""
        try:
            return self._submit_job(process_id, inputs, prefer, outputs, response, subscriber)
        except AquamaskError as err:
            raise as_ogc_error(err) from err

    def _submit_job(self, process_id: str, inputs: Any, prefer: str | None, outputs: Any,
                    response: Any, subscriber: Any) -> Submitted:
        self._ensure_sweeper()
        processor: AquamaskProcessor = self.get_processor(process_id)
        execution = parse_execution(outputs, response, subscriber,
                                    processor.metadata["outputs"])
        callbacks.check(execution.subscriber, self.settings)
        self._validated.pixels = processor.validate(inputs)
        job_id = str(uuid.uuid4())
        processor.set_job_id(job_id)
        can_async = ProcessExecutionMode.async_execute.value in \
            processor.metadata.get("jobControlOptions", [])
        asynchronous = prefer == RequestedProcessExecutionMode.respond_async.value and can_async
        now = get_current_datetime()
        # started stays empty until a worker runs the job
        self.add_job({"type": "process", "identifier": job_id, "process_id": process_id,
                      "created": now, "started": None, "updated": now, "finished": None,
                      "status": JobStatus.accepted.value, "location": None,
                      "mimetype": "application/json",
                      "message": "Job accepted and ready for execution", "progress": 0,
                      "execution": execution.as_dict()})
        record = dict(self._validated.added)
        if asynchronous:
            self._spawn(processor, job_id, inputs)
            results, status = None, JobStatus.accepted
        else:
            _, results, status = self._execute_handler_sync(processor, job_id, inputs)
        applied = RequestedProcessExecutionMode.respond_async.value if asynchronous else (
            RequestedProcessExecutionMode.wait.value if prefer else None)
        return Submitted(record, results, status, execution, applied)

    def _submit(self, job_id: str, process_id: str):
        dotted = self.processes[process_id]["processor"]["name"]
        wait = self.executor.submit(job_id, dotted, self.database)
        changes: dict[str, Any] = {"submitted": True, "runner": self.executor.runner}
        if self.executor.runner == "dask":  # the cluster answers for it now, not this process
            changes.update(pid=None, pid_start=None, heartbeat=None)
        self.store.update(job_id, changes, only_if_status=(JobStatus.accepted.value,))
        return wait

    def _spawn(self, p: AquamaskProcessor, job_id: str, data_dict: dict):
        self.store.update(job_id, {"inputs": data_dict, "host": HOST, "heartbeat": time.time(),
                                   "message": "queued: waiting for a worker"})
        return self._submit(job_id, p.metadata["id"])

    def _inline(self) -> bool:
        """Whether a synchronous job is small enough to run in this web worker's thread: no
        fork, the processor and model already warm (the request waits either way)."""
        pixels = getattr(self._validated, "pixels", None)
        return isinstance(self.executor, LocalExecutor) and pixels is not None \
            and pixels <= self.inline_max_pixels

    def _execute_handler_sync(self, p, job_id, data_dict):
        if self._inline():
            # the record this thread just added: neither read back first nor after success
            added = getattr(self._validated, "added", None)
            record = dict(added) if added and added.get("identifier") == job_id else None
            self.store.update(job_id, {"submitted": True})
            worker.run_job(self.store, self.settings, job_id, lambda: p, runner="inline",
                           inputs=data_dict, record=record,
                           deadline=time.monotonic() + self.sync_timeout_s,
                           overdue=self._sync_overdue())
            if record is not None and record["status"] == JobStatus.successful.value:
                return "application/json", record["outputs"], JobStatus.successful
        else:
            self._spawn(p, job_id, data_dict)
        return self._outcome(job_id)

    def _outcome(self, job_id: str):
        """The answer of a synchronous request: what the job store says once the job is final
        (never the state of the process the request waited on: a fork server that died under
        a job that succeeded must not turn its success into a 500)."""
        deadline = time.monotonic() + self.sync_timeout_s
        delay = 0.02
        while True:
            record = self.store.get(job_id)
            if record is None or record["status"] == JobStatus.dismissed.value:
                raise JobDismissed("the job was dismissed before it finished",
                                   user_msg="the job was dismissed before it finished")
            if record["status"] == JobStatus.successful.value:
                return "application/json", record["outputs"], JobStatus.successful
            if record["status"] == JobStatus.failed.value:
                raise JobFailed(record)
            record = self._checked(record)
            if record["status"] not in ACTIVE:
                continue
            if time.monotonic() > deadline:
                message = self._sync_overdue()
                self._stop(record, JobStatus.failed, message, 504)
                raise SyncTimeout(message, user_msg=message)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _sync_overdue(self) -> str:
        return (f"the job did not finish within the {self.sync_timeout_s:.0f} s a synchronous "
                "request may take (server.timeout); it was stopped: execute it "
                "asynchronously (Prefer: respond-async)")

    def _stop(self, record: dict[str, Any], status: JobStatus, message: str,
              error_status: int | None = None) -> bool:
        now = get_current_datetime()
        changes = {"status": status.value, "message": message, "updated": now,
                   "finished": now}
        if error_status:
            changes.update(error_status=error_status, error_code="NoApplicableCode")
        if not self.store.update(record["identifier"], changes, only_if_status=ACTIVE):
            return False
        if record.get("runner") != "inline":  # that one stops at its next progress
            self.executor.stop(record)
        if status == JobStatus.failed:
            worker.notify_failed(self.settings, dict(record, **changes))
        return True

    # -- job records ----------------------------------------------------------------------
    @staticmethod
    def _caller_owner() -> str | None:
        """The owner whose jobs the caller sees, None for all (managers, CLI, workers)."""
        identity = current_identity.get()
        return None if identity is None or identity.sees_all_jobs else identity.owner

    def get_jobs(self, status: JobStatus = None, limit: Optional[int] = None,
                 offset: Optional[int] = None, process_id=None) -> dict:
        self._ensure_sweeper()
        records, total = self.store.list(limit, offset,
                                         status.value if isinstance(status, JobStatus)
                                         else status, self._caller_owner(), process_id)
        # pygeoapi's own (HTML) job list sorts on "started", which a queued job has not
        return {"jobs": [dict(r, started=r.get("started") or "") for r in
                         map(self._checked, records)], "numberMatched": total}

    def list_jobs(self, *, limit: int, offset: int = 0, status: list[str] | None = None,
                  process_ids: list[str] | None = None) -> tuple[list[dict[str, Any]], int]:
        """The caller's jobs, newest first, filtered by status and process, and how many
        match."""
        self._ensure_sweeper()
        records, total = self.store.list(limit, offset, status, self._caller_owner(),
                                         process_ids)
        return [self._checked(r) for r in records], total

    def add_job(self, job_metadata: dict) -> str:
        """Add the job with the web worker that accepted it answering for it until an
        executor has it; refused (429) when its owner already has ``max_jobs_per_user``
        active jobs, counted and added in one transaction."""
        identity = current_identity.get()
        job_metadata = dict(job_metadata, progress=0, host=HOST, pid=os.getpid(),
                            pid_start=process_start(os.getpid()), heartbeat=time.time(),
                            submitted=False)
        if identity is not None:
            job_metadata["owner"] = identity.owner
        limit = self.settings.limits.max_jobs_per_user
        if not self.store.add(job_metadata, owner_limit=limit if identity is not None else 0):
            raise TooManyJobs(f"you have {limit} jobs queued or running; the limit is {limit}: "
                              "wait for one to finish or dismiss one")
        self._validated.added = job_metadata  # an inline job starts from it
        return job_metadata["identifier"]

    def update_job(self, job_id: str, update_dict: dict) -> bool:
        return self.store.update(job_id, update_dict)

    def get_job(self, job_id: str) -> dict:
        """The job, if it exists and the caller may see it: someone else's job is 'not found'
        rather than 'forbidden', so job ids cannot be probed."""
        record = self.store.get(job_id)
        owner = self._caller_owner()
        if record is None or (owner is not None and record.get("owner") != owner):
            raise JobNotFoundError()
        record = self._checked(record)
        if record["status"] == JobStatus.dismissed.value and not self.store.get(job_id):
            raise JobNotFoundError()
        return record

    def get_job_result(self, job_id: str) -> Tuple[Any, ...]:
        record = self.get_job(job_id)
        if record["status"] != JobStatus.successful.value:
            return (None,)
        if record.get("outputs") is None:
            raise JobResultNotFoundError()
        return "application/json", record["outputs"]

    def delete_job(self, job_id: str) -> bool:
        """Dismiss: stop the worker if it runs, take down its layers and files, remove the
        record. Of two simultaneous dismissals one removes the job, the other finds none."""
        record = self.get_job(job_id)
        if record["status"] in ACTIVE:
            self._stop(record, JobStatus.dismissed, "dismissed")
        if not self.store.delete(job_id):
            raise JobNotFoundError()
        self._take_down(job_id)
        return True

    def __repr__(self) -> str:
        return f"<AquamaskManager> {self.database}"


def _epoch(text: str | None) -> float | None:
    import datetime as dt

    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
