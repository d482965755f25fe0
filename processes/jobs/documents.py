"""The OGC API - Processes 1.0 documents of a job, from its record: its status (``statusInfo``),
its results (through :mod:`aquamask.processes.ogc.results`) and the exception of its failure.
The web layer answers with them and the worker sends them to a job's callbacks."""
from __future__ import annotations

from typing import Any

from pygeoapi.util import JobStatus

from aquamask.processes.errors import exception_document
from aquamask.processes.ogc import PROCESSES, processor_class
from aquamask.processes.ogc.results import Execution, JobOutputs
from aquamask.processes.settings import Settings
from aquamask.processes.storage.results import results_store

RESULTS_REL = "http://www.opengis.net/def/rel/ogc/1.0/results"


def status_info(record: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The job's statusInfo: ``started`` and ``finished`` only once they happened, progress a
    whole percentage, and a results link only once there are results."""
    job_url = f"{base_url}/jobs/{record['identifier']}"
    info: dict[str, Any] = {
        "type": "process", "processID": record["process_id"], "jobID": record["identifier"],
        "status": record["status"], "message": record.get("message") or "",
        "progress": max(0, min(100, round(record.get("progress") or 0)))}
    for key in ("created", "started", "finished", "updated"):
        if record.get(key):
            info[key] = record[key]
    links = [{"href": job_url, "rel": "self", "type": "application/json",
              "title": "this job's status"},
             {"href": f"{job_url}?f=html", "rel": "alternate", "type": "text/html",
              "title": "this job's status as HTML"}]
    if record["status"] == JobStatus.successful.value:
        links.append({"href": f"{job_url}/results", "rel": RESULTS_REL,
                      "type": "application/json", "title": "this job's results"})
    info["links"] = links
    return info


def execution_of(record: dict[str, Any]) -> Execution:
    """How the job's client asked for its results and callbacks."""
    return Execution.from_dict(record.get("execution"))


def job_outputs(record: dict[str, Any], settings: Settings) -> JobOutputs:
    """A successful job's stored outputs, ready to be answered in any form."""
    processor = processor_class(PROCESSES[record["process_id"]])
    store = results_store(settings)
    job_id = record["identifier"]
    return JobOutputs(
        job_id=job_id, stored=record.get("outputs") or {},
        declared=processor.METADATA["outputs"], files=processor.RESULT_FILES,
        base_url=settings.url, read=lambda name: store.read_bytes(job_id, name),
        size=lambda name: (store.info(job_id, name) or {}).get("size"))


def failure(record: dict[str, Any]) -> dict[str, Any]:
    """The exception of a failed job: its recorded status (the request's fault: 4xx) and
    reason."""
    return exception_document(record.get("error_status") or 500,
                              record.get("error_code") or "NoApplicableCode",
                              record.get("message") or "the job failed")
