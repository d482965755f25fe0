"""The charts of a time series: water area over time, and the water area beside the field
measurements. Matplotlib's Agg backend, a fixed size and no metadata: the same request gives the
same bytes."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

from aquamask.processes.files import write_atomic
from aquamask.processes.monitoring.dates import FAILED, OK, SKIPPED, record_time
from aquamask.processes.monitoring.insitu import FieldSeries

# pixels (width, height) of every PNG
CHART_SIZE = (1200, 600)
CHART_DPI = 100


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(CHART_SIZE[0] / CHART_DPI, CHART_SIZE[1] / CHART_DPI),
                  dpi=CHART_DPI)


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    # no bbox_inches: every chart is exactly CHART_SIZE; no software/date metadata, so the same
    # request gives the same bytes
    figure.savefig(buffer, format="png", dpi=CHART_DPI, metadata={"Software": None})
    write_atomic(path, buffer.getvalue())


def _legend_below(figure, handles: list, labels: list[str]) -> None:
    """The legend in its own band under the date axis: inside the plot it would hide points
    (a series' first dates sit in the upper left as often as anywhere)."""
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=len(handles), frameon=False)


def timeseries_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    _save(timeseries_figure(rows, title), path)


def timeseries_figure(rows: list[dict[str, Any]], title: str):
    """Water area over time; skipped (cloudy) dates marked as grey crosses and failed dates as
    red crosses along the bottom."""
    import matplotlib.dates as mdates

    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    ok = [r for r in rows if r["status"] == OK]
    skipped = [r for r in rows if r["status"] == SKIPPED]
    failed = [r for r in rows if r["status"] == FAILED]
    if ok:
        axes.plot([record_time(r) for r in ok], [r["water_area_km2"] for r in ok], "-o",
                  color="#0070ff", label="water area (km²)")
    top = max([r["water_area_km2"] for r in ok] or [1.0]) or 1.0
    if skipped:
        axes.plot([record_time(r) for r in skipped], [0.0] * len(skipped), "x", color="#808080",
                  markersize=9, label="skipped: cloudy or too little valid data")
    if failed:
        axes.plot([record_time(r) for r in failed], [0.0] * len(failed), "x", color="#d73027",
                  markersize=9, label="failed")
    axes.set_ylim(-0.04 * top, 1.1 * top)
    axes.set_ylabel("water area (km²)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    _legend_below(figure, *axes.get_legend_handles_labels())
    figure.subplots_adjust(left=0.08, right=0.97, top=0.92, bottom=0.17)
    return figure


def validation_chart(result: dict[str, Any], rows: list[dict[str, Any]], field: FieldSeries,
                     path: Path) -> None:
    _save(validation_figure(result, rows, field), path)


def validation_figure(result: dict[str, Any], rows: list[dict[str, Any]], field: FieldSeries):
    """The water area and the field measurements on one time axis (two y axes), the matched
    pairs joined by a line, the coefficients in the title."""
    import matplotlib.dates as mdates

    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    ok = [r for r in rows if r["status"] == OK]
    axes.plot([record_time(r) for r in ok], [r["water_area_km2"] for r in ok], "-o",
              color="#0070ff", label="water area (km²)")
    axes.set_ylabel("water area (km²)", color="#0070ff")
    other = axes.twinx()
    other.plot([m.when for m in field.measurements], [m.value for m in field.measurements],
               "-s", color="#e66100", markersize=4, label=f"field ({field.unit})")
    for pair in result["pairs"]:
        when = dt.datetime.fromisoformat(pair["field_datetime"].replace("Z", "+00:00"))
        other.plot([when], [pair["field_value"]], "o", color="#e66100", markersize=9,
                   markerfacecolor="none")
    other.set_ylabel(f"field value ({field.unit})", color="#e66100")

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    axes.set_title(f"Water area and field measurements: n = {result['n']}, Pearson r = "
                   f"{fmt(result['pearson_r'])}, Spearman rho = {fmt(result['spearman_rho'])}")
    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes.grid(True, alpha=0.3)
    handles = axes.get_legend_handles_labels()
    more = other.get_legend_handles_labels()
    _legend_below(figure, handles[0] + more[0], handles[1] + more[1])
    figure.subplots_adjust(left=0.08, right=0.92, top=0.92, bottom=0.17)
    return figure
