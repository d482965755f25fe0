"""pygeoapi's templates derived for the strict CSP: no CDN, no inline script left, and a
pygeoapi whose templates changed is refused by name (issue #18, item 6)."""
from __future__ import annotations

import re

import pytest

from aquamask.server.pygeoapi_pages import EDITS, REUSED, derive, write_templates


def test_derived_templates_take_nothing_from_cdns_and_run_no_inline_script(tmp_path):
    write_templates(tmp_path)
    for name in [*EDITS, *REUSED]:
        text = (tmp_path / name).read_text()
        assert not re.search(r"https://(unpkg\.com|cdn)", text), name
        assert not re.search(r"<script>", text), name  # only src= and JSON data blocks
    results = (tmp_path / "jobs/results/index.html").read_text()
    assert '<script type="application/json" data-into="results">' \
        "{{ data.result | tojson }}</script>" in results  # tojson escapes < > & '


def test_a_changed_pygeoapi_template_fails_the_start_by_name():
    with pytest.raises(RuntimeError, match="template _base.html does not hold"):
        derive("<html></html>", EDITS["_base.html"], "_base.html")


def test_the_landing_page_offers_no_redoc_and_redoc_draws_swagger_ui(tmp_path):
    """ReDoc's bundle comes from a CDN the CSP refuses (a blank page): not linked, and its URL
    draws the same Swagger UI as /openapi?f=html."""
    write_templates(tmp_path)
    landing = (tmp_path / "landing_page.html").read_text()
    assert "ui=redoc" not in landing and "/openapi?f=html" in landing
    assert (tmp_path / "openapi/redoc.html").read_text() \
        == (tmp_path / "openapi/swagger.html").read_text()
