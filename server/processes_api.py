"""OGC API - Processes 1.0 where pygeoapi 0.21 departs from it, over pygeoapi's Flask app.

pygeoapi's views of the processes and jobs routes answer an asynchronous execution with a
``null`` body, list jobs without their filters, give job statuses with ``finished: null`` and
fractional progress, results as HTML unless JSON is asked for, ignore ``outputs``, ``response``
and ``transmissionMode``, answer a dismissal as ``text/html``, and exceptions without the
spec's types; none of it is configurable. So their views are replaced here (``install``) for
every request that does not ask for HTML, answering from aquamask's job manager and the
documents of :mod:`aquamask.processes.jobs.documents`; HTML (``f=html``, or a browser's
``Accept``) is still pygeoapi's pages. The landing page, conformance and OpenAPI stay
pygeoapi's; the conformance classes this adds (job-list, dismiss) are appended to its list.
"""
from __future__ import annotations

import json
import logging
from copy import deepcopy
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import urlencode

from flask import Flask, Response, request
from pygeoapi import l10n
from pygeoapi.api import SYSTEM_LOCALE, evaluate_limit
from pygeoapi.api import processes as pygeoapi_processes
from pygeoapi.process.base import JobNotFoundError, ProcessorExecuteError
from pygeoapi.util import JobStatus, RequestedProcessExecutionMode, render_j2_template

from aquamask.processes.errors import AquamaskError, exception_document
from aquamask.processes.jobs.documents import (
    execution_of,
    failure,
    job_outputs,
    status_info,
)
from aquamask.processes.ogc.results import Answer, Document, RawFile, RawValue, Redirect
from aquamask.processes.settings import Settings
from aquamask.processes.storage.results import results_store
from aquamask.server.result_files import serve_file

LOGGER = logging.getLogger(__name__)
CONFORMANCE = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/"
ADDED_CONFORMANCE = (CONFORMANCE + "job-list", CONFORMANCE + "dismiss")
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
JSON = "application/json"
STATUSES = tuple(s.value for s in JobStatus)
JOB_TYPES = ("process",)


class ClientError(Exception):
    """A request this module answers with an exception document."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def exception(status: int, code: str, detail: str) -> Response:
    """An exception document; a client's error is logged at INFO, without a traceback."""
    LOGGER.log(logging.ERROR if status >= 500 else logging.INFO, "%s %s: %d %s: %s",
               request.method, request.path, status, code, detail)
    return Response(json.dumps(exception_document(status, code, detail)), status=status,
                    mimetype=JSON)


def wants_html() -> bool:
    """Whether the request asks for pygeoapi's HTML (or another format it has): ``f``
    other than json, or an ``Accept`` that prefers text/html (a browser)."""
    f = (request.args.get("f") or "").strip().lower()
    if f:
        return f != "json"
    return request.accept_mimetypes.best_match([JSON, "text/html"]) == "text/html"


def install(app: Flask, api, settings: Settings) -> None:
    """Replace pygeoapi's views of the processes and jobs routes (see the module's
    docstring), add ``/jobs/<id>/results/<output>`` and the conformance classes."""
    views = ProcessesViews(api, settings)
    replaced: dict[str, Callable[..., Response]] = {
        "pygeoapi.get_processes": views.processes,
        "pygeoapi.get_jobs": views.jobs,
        "pygeoapi.get_job_result": views.results,
    }
    for endpoint, view in replaced.items():
        app.view_functions[endpoint] = _unless_html(view, app.view_functions[endpoint])
    app.view_functions["pygeoapi.execute_process_jobs"] = _answering(views.execute)
    app.add_url_rule("/jobs/<job_id>/results/<output_id>", "aquamask_job_output",
                     _answering(views.output))
    classes = pygeoapi_processes.CONFORMANCE_CLASSES
    classes.extend(c for c in ADDED_CONFORMANCE if c not in classes)
    api.get_exception = _get_exception(api)


def _answering(view: Callable[..., Response]) -> Callable[..., Response]:
    """``view`` with its ClientError, AquamaskError and pygeoapi errors answered as
    exception documents."""
    def answer(**kwargs: Any) -> Response:
        try:
            return view(**kwargs)
        except ClientError as err:
            return exception(err.status, err.code, err.detail)
        except AquamaskError as err:
            return exception(int(err.http_status_code), err.ogc_exception_code, err.message)
        except ProcessorExecuteError as err:
            return exception(int(err.http_status_code), err.ogc_exception_code, err.message)
    answer.__name__ = view.__name__
    return answer


def _unless_html(view: Callable[..., Response], pygeoapi_view: Callable[..., Any]
                 ) -> Callable[..., Any]:
    answering = _answering(view)

    def route(**kwargs: Any) -> Any:
        if request.method == "GET" and wants_html():
            return pygeoapi_view(**kwargs)
        return answering(**kwargs)
    route.__name__ = view.__name__
    return route


def _get_exception(api):
    """pygeoapi's ``get_exception`` for the routes it still answers: an exception document
    (HTML in its template when HTML was asked for), a client's error logged at INFO without
    the traceback pygeoapi logs for every one, 404s included."""
    def get_exception(status, headers, format_, code, description):
        status = int(status)
        LOGGER.log(logging.ERROR if status >= 500 else logging.INFO, "%d %s: %s", status,
                   code, description)
        document = exception_document(status, code, str(description))
        if format_ == "html":
            headers["Content-Type"] = "text/html"
            return headers, status, render_j2_template(
                api.tpl_config, api.config["server"]["templates"], "exception.html",
                document, SYSTEM_LOCALE)
        headers["Content-Type"] = JSON
        return headers, status, json.dumps(document, indent=4)
    return get_exception


class ProcessesViews:
    """The JSON answers of the processes and jobs routes."""

    def __init__(self, api, settings: Settings) -> None:
        self.api = api
        self.manager = api.manager
        self.settings = settings
        self.base = settings.url
        self.limits = api.config["server"].get("limits", {})
        self.indent = 4 if api.pretty_print else None

    def _json(self, body: Any, status: int = 200, **headers: str) -> Response:
        return Response(json.dumps(body, indent=self.indent), status=status, mimetype=JSON,
                        headers=headers)

    # -- processes ----------------------------------------------------------------------------
    def processes(self, process_id: str | None = None) -> Response:
        if process_id is not None:
            return self._json(self._description(process_id, summary=False))
        limit, offset = self._paging()
        ids = list(self.manager.processes)
        body = {"processes": [self._description(p, summary=True)
                              for p in ids[offset:offset + limit]],
                "links": self._page_links(f"{self.base}/processes", limit, offset, len(ids),
                                          "processes")}
        return self._json(body)

    def _description(self, process_id: str, summary: bool) -> dict[str, Any]:
        """The process's description as it declares it (its job control options and output
        transmission included), links absolute; a summary without inputs and outputs."""
        if process_id not in self.manager.processes:
            raise ClientError(404, "NoSuchProcess", f"no process {process_id!r} here; see "
                                                    f"{self.base}/processes")
        processor = self.manager.get_processor(process_id)
        doc = l10n.translate_struct(deepcopy(processor.metadata), self.api.default_locale)
        if summary:
            for key in ("inputs", "outputs", "example"):
                doc.pop(key, None)
        url = f"{self.base}/processes/{process_id}"
        links = [dict(link, href=self.base + link["href"]) if link["href"].startswith("/")
                 else link for link in doc.get("links", [])]
        links += [{"href": url, "rel": "self", "type": JSON,
                   "title": "the process description"},
                  {"href": f"{url}?f=html", "rel": "alternate", "type": "text/html",
                   "title": "the process description as HTML"},
                  {"href": f"{url}/execution", "rel": REL + "execute", "type": JSON,
                   "title": "execute the process"},
                  {"href": f"{self.base}/jobs?processID={process_id}", "rel": REL + "job-list",
                   "type": JSON, "title": "the jobs of this process"}]
        doc["links"] = links
        return doc

    # -- paging -------------------------------------------------------------------------------
    def _paging(self) -> tuple[int, int]:
        try:
            limit = evaluate_limit(request.args.get("limit"), self.limits, {})
        except ValueError as err:
            raise ClientError(400, "InvalidParameterValue", f"limit: {err}") from None
        raw = request.args.get("offset", "0")
        if not raw.isdigit():
            raise ClientError(400, "InvalidParameterValue",
                              "offset must be a whole number, 0 or more")
        return limit, int(raw)

    @staticmethod
    def _page_links(url: str, limit: int, offset: int, total: int, what: str
                    ) -> list[dict[str, str]]:
        """Links of one page of a list: itself, as HTML, and the next and previous pages."""
        kept = [(k, v) for k, v in request.args.items(multi=True)
                if k not in ("limit", "offset", "f")]

        def page(start: int) -> str:
            return f"{url}?{urlencode(kept + [('limit', limit), ('offset', start)])}"
        links = [{"href": page(offset), "rel": "self", "type": JSON, "title": f"these {what}"},
                 {"href": page(offset) + "&f=html", "rel": "alternate", "type": "text/html",
                  "title": f"these {what} as HTML"}]
        if offset + limit < total:
            links.append({"href": page(offset + limit), "rel": "next", "type": JSON,
                          "title": f"the next {what}"})
        if offset > 0:
            links.append({"href": page(max(0, offset - limit)), "rel": "prev", "type": JSON,
                          "title": f"the previous {what}"})
        return links

    # -- jobs ---------------------------------------------------------------------------------
    def jobs(self, job_id: str | None = None) -> Response:
        if job_id is None:
            return self._job_list()
        if request.method == "DELETE":
            return self._dismiss(job_id)
        return self._json(status_info(self._job(job_id), self.base))

    def _job(self, job_id: str) -> dict[str, Any]:
        try:
            return self.manager.get_job(job_id)
        except JobNotFoundError:
            raise ClientError(404, "NoSuchJob", f"no job {job_id!r} here") from None

    def _job_list(self) -> Response:
        limit, offset = self._paging()
        statuses = _values("status")
        wrong = [s for s in statuses if s not in STATUSES]
        if wrong:
            raise ClientError(400, "InvalidParameterValue", f"status {wrong[0]!r} is none of "
                                                            + ", ".join(STATUSES))
        types = _values("type")
        if types and not set(types) & set(JOB_TYPES):  # every job here is a process's
            records, total = [], 0
        else:
            records, total = self.manager.list_jobs(limit=limit, offset=offset,
                                                    status=statuses,
                                                    process_ids=_values("processID"))
        return self._json({"jobs": [status_info(r, self.base) for r in records],
                           "numberMatched": total,
                           "links": self._page_links(f"{self.base}/jobs", limit, offset, total,
                                                     "jobs")})

    def _dismiss(self, job_id: str) -> Response:
        record = self._job(job_id)
        try:
            self.manager.delete_job(job_id)
        except JobNotFoundError:  # dismissed meanwhile by another request
            raise ClientError(404, "NoSuchJob", f"no job {job_id!r} here") from None
        info = status_info(dict(record, status=JobStatus.dismissed.value,
                                message="Job dismissed"), self.base)
        info["links"] = [{"href": f"{self.base}/jobs", "rel": "up", "type": JSON,
                          "title": "the job list"}]
        return self._json(info)

    # -- execution ----------------------------------------------------------------------------
    def execute(self, process_id: str) -> Response:
        if process_id not in self.manager.processes:
            raise ClientError(404, "NoSuchProcess", f"no process {process_id!r} here")
        body = _execute_body()
        submitted = self.manager.submit(
            process_id, body.get("inputs") or {}, prefer=_prefer(),
            outputs=body.get("outputs"), response=body.get("response"),
            subscriber=body.get("subscriber"))
        record = submitted.record
        headers = {"Location": f"{self.base}/jobs/{record['identifier']}"}
        if submitted.preference_applied:
            headers["Preference-Applied"] = submitted.preference_applied
        if submitted.status == JobStatus.accepted:
            return self._json(status_info(record, self.base), 201, **headers)
        outputs = job_outputs(dict(record, outputs=submitted.outputs), self.settings)
        response = self._answer(record["identifier"], outputs.answer(submitted.execution))
        for name, value in headers.items():  # a redirect to an output keeps its Location
            response.headers.setdefault(name, value)
        return response

    # -- results ------------------------------------------------------------------------------
    def results(self, job_id: str) -> Response:
        record = self._finished(job_id)
        return self._answer(job_id, job_outputs(record, self.settings)
                            .answer(execution_of(record)))

    def output(self, job_id: str, output_id: str) -> Response:
        """One output of a job, raw: what a value ``by reference`` links to."""
        record = self._finished(job_id)
        return self._answer(job_id, job_outputs(record, self.settings).raw(output_id))

    def _finished(self, job_id: str) -> dict[str, Any]:
        """A successful job's record; the exception of any other."""
        record = self._job(job_id)
        status = record["status"]
        if status in (JobStatus.accepted.value, JobStatus.running.value):
            raise ClientError(404, "ResultNotReady", f"job {job_id} is {status}: its results "
                                                     "are not ready")
        if status == JobStatus.failed.value:
            document = failure(record)
            raise ClientError(document["status"], document["code"], document["detail"])
        if status != JobStatus.successful.value or record.get("outputs") is None:
            raise ClientError(404, "NoSuchJob", f"job {job_id} has no results")
        return record

    def _answer(self, job_id: str, answer: Answer) -> Response:
        if isinstance(answer, Document):
            return self._json(answer.body)
        if isinstance(answer, RawValue):
            return Response(json.dumps(answer.value), mimetype=answer.media_type)
        if isinstance(answer, Redirect):
            response = Response(status=HTTPStatus.SEE_OTHER,
                                headers={"Location": answer.href})
            response.headers["Link"] = f'<{answer.href}>; rel="alternate"; ' \
                                       f'type="{answer.media_type}"'
            return response
        if isinstance(answer, RawFile):
            missing = exception(404, "NotFound", f"job {job_id}'s {answer.name} is gone")
            return serve_file(results_store(self.settings), self.settings, job_id,
                              answer.name, answer.media_type, missing)
        raise TypeError(answer)


def _values(name: str) -> list[str]:
    """A list parameter, repeated or comma-separated."""
    return [v.strip() for raw in request.args.getlist(name) for v in raw.split(",")
            if v.strip()]


def _prefer() -> str | None:
    """The execution mode a ``Prefer`` header asks for (RFC 7240: respond-async, wait)."""
    tokens = {part.split("=", 1)[0].split(";", 1)[0].strip().lower()
              for header in request.headers.getlist("Prefer") for part in header.split(",")}
    for mode in (RequestedProcessExecutionMode.respond_async,
                 RequestedProcessExecutionMode.wait):
        if mode.value in tokens:
            return mode.value
    return None


def _execute_body() -> dict[str, Any]:
    """The execute request (the app refused bodies that are not a JSON object already)."""
    raw = request.get_data(cache=True)
    if not raw:
        raise ClientError(400, "MissingParameterValue", "the execute request has no body: "
                                                        'send {"inputs": {...}}')
    try:
        body = json.loads(raw)
    except ValueError:
        raise ClientError(400, "InvalidParameterValue",
                          "the execute request is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs", {}), (dict, type(None))):
        raise ClientError(400, "InvalidParameterValue",
                          "the execute request must be an object with 'inputs' an object")
    return body
