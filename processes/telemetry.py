"""The telemetry hook: what the processing code reports (a scene detected, a job finished),
without knowing who records it (as titiler's ``core/telemetry.py``).

Nothing is recorded until a sink is registered. The server registers its Prometheus sink
(``aquamask.server.metrics``) at start; the job workers, forked from a fork server that is a
process of its own, find it by the dotted path ``register`` put in ``AQUAMASK_TELEMETRY``, which
they inherit; Dask workers get it from the server's worker plugin (``use``). A sink never fails
the work: its errors are logged (``Cancelled``, a dismissal arriving meanwhile, goes through).
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Protocol

from aquamask.processes.errors import Cancelled

LOGGER = logging.getLogger(__name__)
ENV = "AQUAMASK_TELEMETRY"  # "module:attribute" of the sink, for processes started later


class Sink(Protocol):
    def detection(self, method: str, seconds: float, stage_seconds: dict[str, float],
                  pixels: int) -> None:
        """One scene detected: wall time, time per stage (read, predict, write), pixels."""

    def job(self, process: str, method: str | None, outcome: str, seconds: float) -> None:
        """A processor's run ended: ``outcome`` successful, failed or dismissed."""


_sink: Sink | None = None
_loaded_from: str | None = None


def register(sink: Sink, dotted: str | None = None) -> None:
    """Record through ``sink`` in this process; with ``dotted`` ("module:attribute", naming
    the same sink), in the job workers it starts too."""
    global _sink, _loaded_from
    _sink, _loaded_from = sink, dotted
    if dotted:
        os.environ[ENV] = dotted


def exported() -> str | None:
    """The dotted path of the sink this process's children and workers record through."""
    return os.environ.get(ENV)


def use(dotted: str) -> None:
    """Record through the sink ``dotted`` names ("module:attribute"), loaded at first use:
    in a process the server did not start (a Dask worker)."""
    os.environ[ENV] = dotted


def _current() -> Sink | None:
    global _sink, _loaded_from
    dotted = os.environ.get(ENV)
    if dotted and dotted != _loaded_from:
        module, _, name = dotted.partition(":")
        try:
            _sink = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            LOGGER.warning("telemetry: cannot load %s; nothing is recorded", dotted)
            _sink = None
        _loaded_from = dotted
    return _sink


def detection(method: str, seconds: float, stage_seconds: dict[str, float], pixels: int) -> None:
    _report("detection", method, seconds, stage_seconds, pixels)


def job(process: str, method: str | None, outcome: str, seconds: float) -> None:
    _report("job", process, method, outcome, seconds)


def _report(event: str, *args) -> None:
    sink = _current()
    if sink is None:
        return
    try:
        getattr(sink, event)(*args)
    except Cancelled:  # SIGTERM (dismissal) came meanwhile: the job stops all the same
        raise
    except Exception:  # noqa: BLE001 - telemetry never fails a job
        LOGGER.warning("telemetry: %s not recorded", event, exc_info=True)
