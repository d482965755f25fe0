"""Field validation: in-situ measurements (a CSV of date, value, unit: a gauge level, a reservoir
volume...) matched by date with a water-area series, their Pearson and Spearman correlations,
and a chart of both.

Pure functions of plain values, so the CSV is checked in the web request (a bad file is a 400
naming its row and column, before any job exists) and matched in the job.

Spearman's rho is Pearson's r of the ranks (ties get their average rank), computed with numpy:
scipy is not a dependency of aquamask and this is the only statistic it would be used for.
No p-values are given for the same reason; ``n`` says how many pairs each coefficient rests on.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aquamask.processes.errors import InvalidInput, TooLarge
from aquamask.processes.pipeline.sources.urls import check_href_text, file_under

REQUIRED_COLUMNS = ("date", "value", "unit")
MIN_PAIRS = 3  # fewer matched pairs: no correlation is reported


@dataclass(frozen=True)
class FieldMeasurement:
    when: dt.datetime  # UTC
    value: float
    line: int  # line of the CSV (the header is line 1)


@dataclass(frozen=True)
class FieldSeries:
    measurements: tuple[FieldMeasurement, ...]
    unit: str
    name: str = "field"

    def as_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "name": self.name,
                "rows": [[m.when.isoformat(), m.value, m.line] for m in self.measurements]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FieldSeries":
        return cls(measurements=tuple(FieldMeasurement(dt.datetime.fromisoformat(w), float(v),
                                                       int(n)) for w, v, n in data["rows"]),
                   unit=data["unit"], name=data.get("name") or "field")


def _parse_when(text: str) -> dt.datetime:
    text = text.strip()
    if not text:
        raise ValueError("it is empty")
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 date-time") \
            from None
    if when.tzinfo is None:  # a date or a naive time: taken as UTC
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def parse_field_csv(text: str, name: str = "field") -> FieldSeries:
    """The measurements of a CSV whose header names ``date``, ``value`` and ``unit`` (any case,
    any order, other columns ignored); every problem is an InvalidInput naming the line (the
    header is line 1) and the column."""
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInput("field_data is empty: give a CSV with a header row naming the "
                           "columns date, value and unit") from None
    except csv.Error as err:
        raise InvalidInput(f"field_data line 1: not readable as CSV ({err})") from None
    columns = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InvalidInput(f"field_data line 1 (header): missing column(s) "
                           f"{', '.join(repr(c) for c in missing)}; the header must name date, "
                           "value and unit (got "
                           f"{', '.join(repr(h) for h in header) or 'nothing'})")
    index = {c: columns.index(c) for c in REQUIRED_COLUMNS}
    measurements: list[FieldMeasurement] = []
    unit: str | None = None
    unit_line = 0
    line = 1
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(columns):
                absent = [c for c in REQUIRED_COLUMNS if index[c] >= len(row)]
                if absent:
                    raise InvalidInput(f"field_data line {line}, column {absent[0]!r}: the "
                                       f"row has {len(row)} cell(s), the header {len(columns)}")
            try:
                when = _parse_when(row[index["date"]])
            except ValueError as err:
                raise InvalidInput(f"field_data line {line}, column 'date': {err}") from None
            raw = row[index["value"]].strip()
            try:
                value = float(raw)
            except ValueError:
                raise InvalidInput(f"field_data line {line}, column 'value': {raw!r} is not a "
                                   "number") from None
            if not math.isfinite(value):
                raise InvalidInput(f"field_data line {line}, column 'value': {raw!r} is not a "
                                   "finite number")
            row_unit = row[index["unit"]].strip()
            if not row_unit:
                raise InvalidInput(f"field_data line {line}, column 'unit': it is empty")
            if unit is None:
                unit, unit_line = row_unit, line
            elif row_unit != unit:
                raise InvalidInput(f"field_data line {line}, column 'unit': {row_unit!r} differs "
                                   f"from {unit!r} on line {unit_line}; one series has one unit")
            measurements.append(FieldMeasurement(when, value, line))
    except csv.Error as err:
        raise InvalidInput(f"field_data line {reader.line_num}: not readable as CSV ({err})") \
            from None
    if not measurements:
        raise InvalidInput("field_data has a header but no measurement rows")
    measurements.sort(key=lambda m: (m.when, m.line))
    return FieldSeries(tuple(measurements), unit or "", name)


def read_field_input(value: Any, data_root: Path, max_bytes: int) -> FieldSeries:
    """The ``field_data`` input: CSV text, ``{"value": text}``, or ``{"href": path}`` of a file
    under the data root."""
    if isinstance(value, dict) and "href" in value:
        href = check_href_text(value["href"], "field_data.href")
        if "://" in href:
            raise InvalidInput("field_data.href must be a file under the server's data root; "
                               "send remote CSVs inline ({\"value\": \"date,value,unit\\n...\"})")
        path = file_under(data_root, href.lstrip("/"), href, "field_data.href")
        if path.stat().st_size > max_bytes:
            raise TooLarge(f"field_data is {path.stat().st_size:,} bytes; at most "
                           f"{max_bytes:,} (monitoring.max_field_bytes)")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise InvalidInput(f"field_data.href {href!r} is not UTF-8 text ({err})") from None
        return parse_field_csv(text, Path(href).stem or "field")
    if isinstance(value, dict):
        if "value" not in value:
            raise InvalidInput("field_data must be CSV text, {\"value\": CSV text} or "
                               "{\"href\": path under the data root}")
        value = value["value"]
    if not isinstance(value, str):
        raise InvalidInput("field_data must be CSV text, {\"value\": CSV text} or "
                           "{\"href\": path under the data root}")
    if len(value.encode("utf-8")) > max_bytes:
        raise TooLarge(f"field_data is larger than {max_bytes:,} bytes "
                       "(monitoring.max_field_bytes)")
    return parse_field_csv(value)


# -- statistics ----------------------------------------------------------------------------------
def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as Spearman's rho needs)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values), dtype=float)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranked[order[start:stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return ranked


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_PAIRS:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    if denominator == 0:
        return None  # a constant series correlates with nothing
    return float(np.clip(np.dot(dx, dy) / denominator, -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < MIN_PAIRS:
        return None
    return pearson(ranks(x), ranks(y))


# -- matching ------------------------------------------------------------------------------------
def match(dates: list[dict[str, Any]], field: FieldSeries, tolerance_days: float
          ) -> list[dict[str, Any]]:
    """For each usable date of the series (``status`` ok), the field measurement nearest in
    time within ``tolerance_days`` (the earlier one on a tie)."""
    tolerance = dt.timedelta(days=tolerance_days)
    pairs = []
    for row in dates:
        if row.get("status") != "ok":
            continue
        when = dt.datetime.fromisoformat(row["datetime"].replace("Z", "+00:00"))
        best = None
        for m in field.measurements:
            gap = abs(m.when - when)
            if gap <= tolerance and (best is None or gap < best[0]):
                best = (gap, m)
        if best is None:
            continue
        gap, m = best
        pairs.append({"date": row["date"], "datetime": row["datetime"],
                      "water_area_km2": row["water_area_km2"],
                      "field_datetime": m.when.isoformat().replace("+00:00", "Z"),
                      "field_value": m.value, "field_line": m.line,
                      "gap_days": round(gap.total_seconds() / 86400, 4)})
    return pairs


def validate_series(dates: list[dict[str, Any]], field: FieldSeries,
                    tolerance_days: float) -> dict[str, Any]:
    """The matched pairs and both correlations of water area with the field values."""
    pairs = match(dates, field, tolerance_days)
    x = np.array([p["water_area_km2"] for p in pairs], dtype=float)
    y = np.array([p["field_value"] for p in pairs], dtype=float)
    r, rho = pearson(x, y), spearman(x, y)
    note = None
    if len(pairs) < MIN_PAIRS:
        note = (f"{len(pairs)} date(s) matched a field measurement within {tolerance_days:g} "
                f"day(s); a correlation needs at least {MIN_PAIRS}")
    elif r is None:
        note = "one of the series is constant over the matched dates: no correlation"
    return {"unit": field.unit, "measurements": len(field.measurements),
            "tolerance_days": tolerance_days, "n": len(pairs),
            "pearson_r": None if r is None else round(r, 6),
            "spearman_rho": None if rho is None else round(rho, 6),
            "pairs": pairs, **({"note": note} if note else {})}


PAIRS_COLUMNS = ("date", "datetime", "water_area_km2", "field_datetime", "field_value",
                 "gap_days", "field_line")


def pairs_csv(result: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*PAIRS_COLUMNS[:4], f"field_value ({result['unit']})", *PAIRS_COLUMNS[5:]])
    for pair in result["pairs"]:
        writer.writerow([pair[c] for c in PAIRS_COLUMNS])
    return out.getvalue()
