"""A job's outputs as OGC API - Processes 1.0 has a client receive them, derived from what its
processor stored.

The execute request says which outputs a client wants (``outputs``, each with a
``transmissionMode``), in which form (``response``: ``raw`` or ``document``) and where to be
called back (``subscriber``): an :class:`Execution`, checked before a job exists and kept with
the job. A processor stores every output it made (its ``work`` document: values, and links to
the result's files); what a client gets is derived from that here:

* only outputs the process description declares (and, when it names some, the client asked
  for); an output a result lacks (``probability`` turned off) is left out;
* a value by ``value`` (the default for values): as it is when it is a number, string, array or
  boolean (1.0's ``inputValueNoObject``); a JSON object as a qualified value (``{"value": {...},
  "mediaType": "application/json"}``: 1.0 results allow no bare object);
* a file by ``reference`` (the default for files: COGs are large): a link to it; by ``value``:
  its content as a qualified value (JSON parsed, text as text, anything else base64), up to
  ``VALUE_LIMIT`` bytes;
* a value by ``reference``: a link to ``/jobs/<id>/results/<output>``, which answers it raw;
* ``raw`` with one output: that output itself (a value as JSON, a file's bytes, or a redirect
  to the file or value by reference); ``raw`` with several: the results document, as for
  ``document`` (this server offers no multipart/related answer).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable, Mapping

from aquamask.processes.constants import JSON_MEDIA_TYPE
from aquamask.processes.errors import InvalidInput, TooLarge

TRANSMISSION_MODES = ("value", "reference")
RESPONSES = ("raw", "document")
SUBSCRIBER_URIS = ("successUri", "inProgressUri", "failedUri")
VALUE_LIMIT = 16 * 2**20  # bytes of a file sent inline, base64 making it a third larger


@dataclass(frozen=True)
class Execution:
    """How a client asked for a job's results, and where to call it back.

    ``outputs``: the outputs asked for, each with its transmission mode (None: the server's
    default); empty: every output. ``subscriber``: ``successUri``, ``inProgressUri``,
    ``failedUri`` (those given)."""

    outputs: Mapping[str, str | None] = field(default_factory=dict)
    response: str = "raw"
    subscriber: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"outputs": dict(self.outputs), "response": self.response,
                "subscriber": dict(self.subscriber)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Execution":
        """An Execution as stored with a job (a job stored before there was one: the
        defaults)."""
        data = data or {}
        return cls(dict(data.get("outputs") or {}), data.get("response") or "raw",
                   dict(data.get("subscriber") or {}))


def parse_execution(outputs: Any, response: Any, subscriber: Any,
                    declared: Mapping[str, Any]) -> Execution:
    """The execute request's ``outputs``, ``response`` and ``subscriber`` checked against the
    process's ``declared`` outputs; InvalidInput (a 400) naming what is wrong."""
    return Execution(_parse_outputs(outputs, declared), _parse_response(response),
                     _parse_subscriber(subscriber))


def _parse_outputs(outputs: Any, declared: Mapping[str, Any]) -> dict[str, str | None]:
    if outputs is None:
        return {}
    if not isinstance(outputs, dict):
        raise InvalidInput("outputs must be an object naming outputs of the process")
    unknown = sorted(set(outputs) - set(declared))
    if unknown:
        raise InvalidInput(f"no output {unknown[0]!r} in this process; its outputs are "
                           + ", ".join(declared))
    modes: dict[str, str | None] = {}
    for name, spec in outputs.items():
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise InvalidInput(f"outputs.{name} must be an object (with transmissionMode "
                               "and format, both optional)")
        mode = spec.get("transmissionMode")
        if mode is not None and mode not in TRANSMISSION_MODES:
            raise InvalidInput(f"outputs.{name}.transmissionMode must be value or reference "
                               f"(got {mode!r})")
        modes[name] = mode
    return modes


def _parse_response(response: Any) -> str:
    if response is None:
        return "raw"
    if response not in RESPONSES:
        raise InvalidInput(f"response must be raw or document (got {response!r})")
    return response


def _parse_subscriber(subscriber: Any) -> dict[str, str]:
    if subscriber is None:
        return {}
    if not isinstance(subscriber, dict):
        raise InvalidInput("subscriber must be an object with successUri (and optionally "
                           "inProgressUri, failedUri)")
    unknown = sorted(set(subscriber) - set(SUBSCRIBER_URIS))
    if unknown:
        raise InvalidInput(f"subscriber.{unknown[0]} is not a callback; they are "
                           + ", ".join(SUBSCRIBER_URIS))
    if not subscriber.get("successUri"):
        raise InvalidInput("subscriber.successUri is required")
    for key, value in subscriber.items():
        if not isinstance(value, str):
            raise InvalidInput(f"subscriber.{key} must be a URL")
    return dict(subscriber)


# -- answers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Document:
    """A results document (JSON)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class RawValue:
    """One output's value itself, sent as JSON with ``media_type``."""

    value: Any
    media_type: str


@dataclass(frozen=True)
class RawFile:
    """One output's file itself: the result file ``name`` of the job."""

    name: str
    media_type: str


@dataclass(frozen=True)
class Redirect:
    """One output by reference: where it is (303 See Other)."""

    href: str
    media_type: str


Answer = Document | RawValue | RawFile | Redirect


class NoSuchOutput(InvalidInput):
    """``/jobs/<id>/results/<output>`` of an output the job's results do not hold."""

    http_status_code = HTTPStatus.NOT_FOUND
    ogc_exception_code = "NotFound"


@dataclass(frozen=True)
class JobOutputs:
    """What a job's processor stored (``stored``), with what is needed to answer from it: the
    process's ``declared`` outputs, its result ``files`` (name -> media type), the server's
    ``base_url``, and how to ``read`` a result file and know its ``size``."""

    job_id: str
    stored: Mapping[str, Any]
    declared: Mapping[str, Any]
    files: Mapping[str, str]
    base_url: str
    read: Callable[[str], bytes]
    size: Callable[[str], int | None]

    def selected(self, execution: Execution) -> list[str]:
        """The outputs to send: those asked for (else all declared), that the result has."""
        names = list(execution.outputs) or list(self.declared)
        return [n for n in names if n in self.declared and self.stored.get(n) is not None]

    def document(self, execution: Execution) -> dict[str, Any]:
        """The results document: each selected output by its transmission mode."""
        return {name: self._output(name, execution.outputs.get(name))
                for name in self.selected(execution)}

    def answer(self, execution: Execution) -> Answer:
        """What a client gets: one output raw, or the results document."""
        names = self.selected(execution)
        if execution.response == "raw" and len(names) == 1:
            return self.raw(names[0], execution.outputs.get(names[0]))
        return Document(self.document(execution))

    def raw(self, name: str, mode: str | None = None) -> Answer:
        """The output ``name`` itself (``/jobs/<id>/results/<name>``, or a raw answer)."""
        if name not in self.declared or self.stored.get(name) is None:
            raise NoSuchOutput(f"job {self.job_id} has no output {name!r}")
        value = self.stored[name]
        file = self._file_name(value)
        mode = mode or ("reference" if file else "value")
        if file is not None:
            if mode == "reference":
                return Redirect(value["href"], self.files[file])
            return RawFile(file, self.files[file])
        if mode == "reference":
            return Redirect(self._value_url(name), self._media_type(name))
        return RawValue(value, self._media_type(name))

    # -- one output ---------------------------------------------------------------------------
    def _output(self, name: str, mode: str | None) -> Any:
        value = self.stored[name]
        file = self._file_name(value)
        if file is not None:
            if mode == "value":
                return self._file_value(file)
            return {k: v for k, v in value.items() if k in ("href", "type", "title")}
        if mode == "reference":
            return {"href": self._value_url(name), "type": self._media_type(name),
                    "title": self.declared[name].get("title", name)}
        if isinstance(value, dict):
            return {"value": value, "mediaType": self._media_type(name)}
        return value

    def _file_name(self, value: Any) -> str | None:
        """The result file a stored output links to, if it is one."""
        if not isinstance(value, dict) or not isinstance(value.get("href"), str):
            return None
        name = value["href"].rsplit("/", 1)[-1]
        return name if name in self.files else None

    def _file_value(self, name: str) -> dict[str, Any]:
        size = self.size(name)
        if size is not None and size > VALUE_LIMIT:
            raise TooLarge(f"{name} is {size:,} bytes, more than the {VALUE_LIMIT:,} this "
                           "server sends by value; ask for it by reference "
                           '(transmissionMode "reference")')
        data, media_type = self.read(name), self.files[name]
        essence = media_type.split(";")[0].strip()
        if essence.endswith(("/json", "+json")):
            return {"value": json.loads(data), "mediaType": media_type}
        if essence.startswith("text/"):
            return {"value": data.decode("utf-8"), "mediaType": media_type}
        return {"value": base64.b64encode(data).decode("ascii"), "mediaType": media_type,
                "encoding": "base64"}

    def _media_type(self, name: str) -> str:
        return self.declared[name].get("schema", {}).get("contentMediaType") \
            or JSON_MEDIA_TYPE

    def _value_url(self, name: str) -> str:
        return f"{self.base_url}/jobs/{self.job_id}/results/{name}"
