"""The checked inputs of a monitoring process (parsed by ``aquamask.processes.ogc.inputs``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aquamask.processes.pipeline.sources.query import PlaceQuery


@dataclass
class MonitoringRequest:
    """JSON-able: the job parses its inputs again into the same request."""

    place: dict[str, Any]  # PlaceQuery.as_dict() over the whole interval, max_cloud_cover 100
    source: str
    method: str
    threshold: float
    max_cloud_cover: float
    min_valid_fraction: float = 0.0
    before: dict[str, Any] | None = None  # change: PlaceQuery.as_dict() of each side
    after: dict[str, Any] | None = None
    field: dict[str, Any] | None = None  # insitu.FieldSeries.as_dict()
    field_tolerance_days: float = 1.0

    def query(self, which: str = "place") -> PlaceQuery:
        return PlaceQuery.from_dict(getattr(self, which))

    def parameters(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "field"}
        if self.field:
            out["field"] = {"unit": self.field["unit"], "rows": len(self.field["rows"])}
        return out

    def describe_place(self, which: str = "place") -> str:
        west, south, east, north = self.query(which).bbox
        return f"[{west:.4f}, {south:.4f}, {east:.4f}, {north:.4f}]"

    def describe_dates(self) -> str:
        query = self.query()
        return (f"{query.start.date().isoformat() if query.start else '..'} to "
                f"{query.end.date().isoformat() if query.end else '..'}")
