"""Input validation of the water-detection process and the settings it reads."""
from __future__ import annotations

import pytest

from aquamask.processes.errors import InvalidInput, MissingInput, TooLarge
from aquamask.processes.ogc.water_detection import parse_inputs
from aquamask.processes.settings import Settings


@pytest.fixture
def settings(tmp_path):
    return Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})


def test_defaults_come_from_settings(settings):
    request = parse_inputs({"image": {"href": " scene.tif "}}, settings)
    assert (request.href, request.method, request.threshold) == ("scene.tif", "unet", 0.5)


def test_otsu_mndwi_is_offered_and_accepted(settings):
    from aquamask.processes.ogc.inputs import method_input
    assert "otsu-mndwi" in method_input()["schema"]["enum"]
    request = parse_inputs({"image": {"href": "a.tif"}, "method": "otsu-mndwi"}, settings)
    assert (request.method, request.threshold) == ("otsu-mndwi", 0.5)


@pytest.mark.parametrize("inputs,error,match", [
    ({}, MissingInput, "'image' is required"),
    ({"image": {"href": ""}}, InvalidInput, "string 'href'"),
    ({"image": {"href": "a.tif"}, "method": "magic"}, InvalidInput, "method must be one of"),
    ({"image": {"href": "a.tif"}, "threshold": 1.5}, InvalidInput, "between 0 and 1"),
    ({"image": {"href": "a.tif"}, "threshold": "high"}, InvalidInput, "between 0 and 1"),
    ({"image": {"href": "a.tif"}, "threshold": True}, InvalidInput, "between 0 and 1"),
    ({"image": {"href": "a.tif"}, "bands": {"B02": 1}}, InvalidInput, "bands must map"),
    ({"image": {"href": "a.tif"}, "colour": "red"}, InvalidInput, "unknown input"),
])
def test_bad_inputs_are_4xx_errors_with_a_message(settings, inputs, error, match):
    with pytest.raises(error, match=match) as info:
        parse_inputs(inputs, settings)
    assert 400 <= int(info.value.http_status_code) < 500


def test_environment_overrides_the_file(tmp_path):
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path),
                                      "AQUAMASK__JOBS__MAX_RUNNING": "7",
                                      "AQUAMASK__LIMITS__HREF_SCHEMES": "[https]"})
    assert settings.jobs.max_running == 7
    assert settings.limits.href_schemes == ["https"]
    assert settings.database_url == f"sqlite:///{tmp_path}/jobs.sqlite"
    assert settings.data_root == tmp_path / "data"


def test_date_spans_beyond_the_limit_are_413(tmp_path):
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path),
                                      "AQUAMASK__LIMITS__MAX_DATE_SPAN_DAYS": "31"})
    place = {"bbox": [-1.2, 38.0, -1.19, 38.01]}
    assert parse_inputs(dict(place, datetime="2023-07-01/2023-07-31"), settings)
    with pytest.raises(TooLarge, match="span 62 days.*at most 31") as info:
        parse_inputs(dict(place, datetime="2023-07-01/2023-08-31"), settings)
    assert int(info.value.http_status_code) == 413
    with pytest.raises(TooLarge, match="max_date_span_days"):
        parse_inputs(dict(place, datetime="../2023-08-31"), settings)
