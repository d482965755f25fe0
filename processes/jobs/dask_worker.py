"""What runs on the workers of a Dask cluster (``jobs.scheduler``): a job as one task, and a
worker plugin that loads the water model once per worker."""
from __future__ import annotations

import logging

from distributed import WorkerPlugin
from pygeoapi.util import JobStatus, get_current_datetime

from aquamask.processes import telemetry
from aquamask.processes.jobs import worker
from aquamask.processes.pipeline import methods
from aquamask.processes.settings import PINNED, Settings
from aquamask.processes.storage.jobstore import JobStore

LOGGER = logging.getLogger("aquamask.worker")


def run_job(job_id: str, processor_path: str, database: str, settings: dict) -> int:
    """The task of one job, run with the server's ``settings`` (``Settings.portable``), so
    that a worker needs no configuration of its own. Dask runs a task again only when the
    worker running it died, and a job is not worth a second run on a machine that was killed
    under it (a scene that exhausts memory would kill every worker in turn): a job found
    ``running`` here is failed with that reason, at once, on any host. Concurrency is bounded
    by the workers' threads."""
    token = PINNED.set(Settings(settings))
    try:
        return _run_job(job_id, processor_path, database)
    finally:
        PINNED.reset(token)


def _run_job(job_id: str, processor_path: str, database: str) -> int:
    store = JobStore(database, create=False)
    record = store.get(job_id)
    if record is not None and record["status"] == JobStatus.running.value:
        now = get_current_datetime()
        where = f"{record.get('host')}, pid {record.get('pid')}"
        store.update(job_id, {"status": JobStatus.failed.value, "error_status": 500,
                              "error_code": "NoApplicableCode", "finished": now,
                              "updated": now,
                              "message": f"the Dask worker running the job ({where}) died "
                                         "before finishing it; it was killed or crashed"},
                     only_if_status=worker.RUNNING)
        worker.remove_job_files(Settings.load(), job_id)
        return 1
    return worker.run(job_id, processor_path, database, use_slots=False, runner="dask")


class ModelPlugin(WorkerPlugin):
    """Prepares each worker when it starts: the server's telemetry sink (``sink``, a dotted
    path: the detections and jobs a worker runs are recorded there, for its dashboard's
    /metrics) and the water model, so the first job there does not pay for it
    (``methods.load_model`` keeps it for the worker's life). The server registers it with its
    own settings."""

    idempotent = True
    name = "aquamask-model"

    def __init__(self, settings: dict, sink: str | None = None) -> None:
        self.settings = settings
        self.sink = sink

    def setup(self, worker=None) -> None:
        if self.sink:
            telemetry.use(self.sink)
        settings = Settings(self.settings)
        model = methods.model_for(settings.detection.method, settings)
        if model is None:
            return
        LOGGER.info("water model %s %s loaded on %s", model.name, model.version, model.device)
