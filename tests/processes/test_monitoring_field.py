"""Field validation (processes/monitoring/insitu.py): the CSV checks that name the line and the
column, date matching with a tolerance, and Pearson/Spearman against values worked by hand."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from aquamask.processes.errors import Forbidden, InvalidInput, TooLarge
from aquamask.processes.monitoring.insitu import (
    match,
    parse_field_csv,
    pearson,
    ranks,
    read_field_input,
    spearman,
    validate_series,
)

GOOD = "date,value,unit\n2023-01-10,1.5,m\n2023-02-09T10:00:00Z,2.0,m\n"


def test_a_csv_is_read_in_any_column_order_and_dialect():
    series = parse_field_csv("\ufeffUnit;Comment;Value;DATE\nm3;a;120;2023-01-10\n"
                             "m3;b;130.5;2023-01-11T06:00:00+02:00\n\nm3;;90;2022-12-31\n")
    assert series.unit == "m3"
    assert [(m.when.isoformat(), m.value, m.line) for m in series.measurements] == [
        ("2022-12-31T00:00:00+00:00", 90.0, 5), ("2023-01-10T00:00:00+00:00", 120.0, 2),
        ("2023-01-11T04:00:00+00:00", 130.5, 3)]
    assert parse_field_csv(GOOD).as_dict() == type(parse_field_csv(GOOD)).from_dict(
        parse_field_csv(GOOD).as_dict()).as_dict()


@pytest.mark.parametrize("text, message", [
    ("", "field_data is empty"),
    ("when,value,unit\n2023-01-01,1,m\n",
     "field_data line 1 (header): missing column(s) 'date'"),
    ("date,level\n2023-01-01,1\n", "missing column(s) 'value', 'unit'"),
    (GOOD + "2023-02-30,3,m\n", "field_data line 4, column 'date': '2023-02-30' is not a date"),
    (GOOD + "yesterday,3,m\n", "field_data line 4, column 'date': 'yesterday' is not a date"),
    (GOOD + ",3,m\n", "field_data line 4, column 'date': it is empty"),
    (GOOD + "2023-03-01,high,m\n", "field_data line 4, column 'value': 'high' is not a number"),
    (GOOD + "2023-03-01,nan,m\n", "field_data line 4, column 'value': 'nan' is not a finite"),
    (GOOD + "2023-03-01,3,cm\n",
     "field_data line 4, column 'unit': 'cm' differs from 'm' on line 2"),
    (GOOD + "2023-03-01,3,\n", "field_data line 4, column 'unit': it is empty"),
    (GOOD + "2023-03-01\n", "field_data line 4, column 'value': the row has 1 cell(s)"),
    ("date,value,unit\n", "no measurement rows"),
])
def test_a_bad_csv_names_the_line_and_the_column(text, message):
    with pytest.raises(InvalidInput) as raised:
        parse_field_csv(text)
    assert message in raised.value.message


def test_the_input_forms(tmp_path):
    root = tmp_path / "data"
    (root / "gauges").mkdir(parents=True)
    (root / "gauges" / "dam.csv").write_text(GOOD)
    assert read_field_input(GOOD, root, 10_000).unit == "m"
    assert read_field_input({"value": GOOD}, root, 10_000).unit == "m"
    from_file = read_field_input({"href": "gauges/dam.csv"}, root, 10_000)
    assert from_file.name == "dam" and len(from_file.measurements) == 2
    (tmp_path / "secret.csv").write_text(GOOD)
    with pytest.raises(Forbidden, match="outside the data root"):
        read_field_input({"href": "../secret.csv"}, root, 10_000)
    with pytest.raises(InvalidInput, match="no such file"):
        read_field_input({"href": "gauges/none.csv"}, root, 10_000)
    with pytest.raises(InvalidInput, match="send remote CSVs inline"):
        read_field_input({"href": "https://example.org/a.csv"}, root, 10_000)
    with pytest.raises(TooLarge, match="monitoring.max_field_bytes"):
        read_field_input(GOOD, root, 10)
    with pytest.raises(InvalidInput, match="must be CSV text"):
        read_field_input(42, root, 10_000)


def test_ranks_share_ties():
    assert ranks(np.array([10.0, 30.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 5.0, 3.5, 3.5, 1.0]


def test_coefficients_against_hand_values():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    # x = 1..5, y = 2, 1, 4, 3, 5: one swap in each pair -> sum d^2 = 4 -> rho = 1 - 24/120
    y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    assert spearman(x, y) == pytest.approx(0.8)
    assert pearson(x, y) == pytest.approx(0.8)  # ranks are the values themselves here
    # a monotone but non-linear relation: Spearman 1, Pearson below 1
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert pearson(x, np.exp(x)) == pytest.approx(np.corrcoef(x, np.exp(x))[0, 1])
    assert pearson(x[:2], y[:2]) is None and pearson(x, np.ones(5)) is None


def _row(day: str, area: float, status: str = "ok") -> dict:
    return {"date": day, "datetime": f"{day}T10:56:19Z", "status": status,
            "water_area_km2": area}


def test_matching_picks_the_nearest_measurement_within_the_tolerance():
    field = parse_field_csv("date,value,unit\n2023-01-09,1,m\n2023-01-11T12:00:00Z,2,m\n"
                            "2023-02-02,3,m\n2023-03-03,4,m\n")
    rows = [_row("2023-01-10", 1.0), _row("2023-02-03", 2.0), _row("2023-03-03", 3.0),
            _row("2023-03-04", 9.0, "skipped")]
    pairs = match(rows, field, tolerance_days=1)
    # 2023-01-10T10:56: 2023-01-09 is 1.46 days off, 2023-01-11T12:00 1.04: neither within 1
    assert [p["date"] for p in pairs] == ["2023-03-03"]
    pairs = match(rows, field, tolerance_days=2)
    assert [(p["date"], p["field_value"]) for p in pairs] == [
        ("2023-01-10", 2.0), ("2023-02-03", 3.0), ("2023-03-03", 4.0)]
    assert pairs[0]["gap_days"] == pytest.approx((dt.timedelta(days=1, hours=1, minutes=3,
                                                               seconds=41)).total_seconds()
                                                 / 86400, abs=1e-4)
    result = validate_series(rows, field, 2)
    assert result["n"] == 3 and result["pearson_r"] == pytest.approx(1.0)
    assert validate_series(rows, field, 1)["note"].startswith("1 date(s) matched")
