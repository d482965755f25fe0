"""The OGC API - Processes processors: thin classes over the pipeline and monitoring on one base
(``base.AquamaskProcessor``), with one module of shared inputs (``inputs``) and one of outputs
(``outputs``).

``PROCESSES`` is the one list of the server's processes: pygeoapi's configuration
(config/pygeoapi.yml.j2), the files ``/results`` serves and the modules the job workers'
fork server imports in advance all come from it. A process is added by its module here and
one line below.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aquamask.processes.ogc.base import AquamaskProcessor

# process id -> the dotted path of its processor class, as pygeoapi names plugins
PROCESSES: dict[str, str] = {
    "water-detection": "aquamask.processes.ogc.water_detection.WaterDetectionProcessor",
    "water-timeseries": "aquamask.processes.ogc.water_timeseries.WaterTimeseriesProcessor",
    "water-change": "aquamask.processes.ogc.water_change.WaterChangeProcessor",
    "water-frequency": "aquamask.processes.ogc.water_frequency.WaterFrequencyProcessor",
}


def processor_class(dotted: str) -> "type[AquamaskProcessor]":
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def result_files() -> dict[str, str]:
    """The file names of every process's results, with their media types."""
    files: dict[str, str] = {}
    for dotted in PROCESSES.values():
        files.update(processor_class(dotted).RESULT_FILES)
    return files
