"""The base of every aquamask processor (as pygeoapi's ``process/base.py`` is of pygeoapi's):
what the job manager and the worker call, and where core errors meet pygeoapi's.

A processor parses its inputs into a request (``parse``: every check that needs no data, a 4xx
before any job exists), may check more before the job (``check``: the image's header, the
source's configuration) and does the work in the job (``work``). ``validate`` and ``run`` are
what the manager and the worker call; ``execute`` is pygeoapi's own entry, for completeness.
"""
from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any, Callable, ClassVar, Generic, Mapping, TypeVar

from pygeoapi.process.base import BaseProcessor, ProcessorExecuteError

from aquamask.processes import telemetry
from aquamask.processes.errors import AquamaskError, Cancelled
from aquamask.processes.monitoring.files import Links
from aquamask.processes.monitoring.request import MonitoringRequest
from aquamask.processes.ogc.inputs import check_source
from aquamask.processes.ogc.outputs import result_links
from aquamask.processes.settings import Settings
from aquamask.processes.types import ProgressCallback, no_progress

R = TypeVar("R")


class OgcError(ProcessorExecuteError):
    """An ``AquamaskError`` as pygeoapi reports it: an OGC exception with its status."""

    def __init__(self, err: AquamaskError) -> None:
        super().__init__(err.message, user_msg=err.message)
        self.http_status_code = err.http_status_code
        self.ogc_exception_code = err.ogc_exception_code


def as_ogc_error(err: AquamaskError) -> ProcessorExecuteError:
    return OgcError(err)


def describe_process(process_id: str, title: str, description: str, keywords: list[str],
                     inputs: dict[str, Any], outputs: dict[str, Any],
                     example: dict[str, Any]) -> dict[str, Any]:
    """A process description (pygeoapi's PROCESS_METADATA) with what every aquamask process
    shares: sync and async execution and dismissal, outputs by value or reference, the
    viewer's link."""
    return {
        "version": "0.1.0",
        "id": process_id,
        "title": {"en": title},
        "description": {"en": description},
        "jobControlOptions": ["sync-execute", "async-execute", "dismiss"],
        "outputTransmission": ["value", "reference"],
        "keywords": keywords,
        "links": [{"type": "text/html", "rel": "about", "title": "aquamask viewer",
                   "href": "/viewer", "hreflang": "en-US"}],
        "inputs": inputs,
        "outputs": outputs,
        "example": {"inputs": example},
    }


class AquamaskProcessor(BaseProcessor, Generic[R]):
    """``METADATA`` is the process description (pygeoapi's PROCESS_METADATA);
    ``RESULT_FILES`` the files of a result served under ``/results/<job>/<name>``, with their
    media types (the app serves no other name)."""

    METADATA: ClassVar[dict[str, Any]]
    RESULT_FILES: ClassVar[Mapping[str, str]]

    def __init__(self, processor_def: dict) -> None:
        super().__init__(processor_def, self.METADATA)
        self.settings = Settings.load()

    @abstractmethod
    def parse(self, data: dict[str, Any]) -> R:
        """The inputs checked into a request; AquamaskError (a 4xx) naming what is wrong."""

    def check(self, request: R) -> int | None:
        """More checks before the job exists; the pixels to process when known."""
        return None

    @abstractmethod
    def work(self, request: R, job_id: str, progress: ProgressCallback) -> dict[str, Any]:
        """Do the job: its outputs document."""

    def validate(self, data: dict[str, Any]) -> int | None:
        """Everything that can be checked before a job exists (the manager calls it)."""
        return self.check(self.parse(data))

    def run(self, data: dict[str, Any], job_id: str,
            progress: ProgressCallback) -> dict[str, Any]:
        """The job (the worker calls it): timed and its outcome reported to telemetry."""
        started, outcome = time.perf_counter(), "failed"
        try:
            outputs = self.work(self.parse(data), job_id, progress)
            outcome = "successful"
            return outputs
        except Cancelled:
            outcome = "dismissed"
            raise
        finally:
            method = (data or {}).get("method") or self.settings.detection.method
            telemetry.job(str(self.metadata.get("id", "unknown")), method, outcome,
                          time.perf_counter() - started)

    def execute(self, data: dict[str, Any], outputs: dict | None = None):
        try:
            return "application/json", self.run(data, self.job_id, no_progress)
        except AquamaskError as err:
            raise as_ogc_error(err) from err

    def links(self, job_id: str) -> Links:
        """The links of this job's result files, for its outputs."""
        return result_links(self.settings.url, job_id, self.RESULT_FILES)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class MonitoringProcessor(AquamaskProcessor[MonitoringRequest]):
    """A monitoring process: its inputs parsed by ``PARSE``, its source checked before the
    job, its work one of the monitoring runs (``RUN``)."""

    PARSE: ClassVar[Callable[..., MonitoringRequest]]  # (inputs, settings) -> request
    RUN: ClassVar[Callable[..., dict[str, Any]]]

    def parse(self, data: dict[str, Any]) -> MonitoringRequest:
        return type(self).PARSE(data, self.settings)

    def check(self, request: MonitoringRequest) -> None:
        check_source(request, self.settings)

    def work(self, request: MonitoringRequest, job_id: str,
             progress: ProgressCallback) -> dict[str, Any]:
        return type(self).RUN(request, self.settings, job_id, progress, self.links(job_id))
