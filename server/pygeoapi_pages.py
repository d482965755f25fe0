"""pygeoapi's HTML pages under the server's strict Content-Security-Policy (scripts and styles
from this server only, no inline script).

At start the few templates that need it are derived from the installed pygeoapi's own into
``{home}/pygeoapi-templates`` (pygeoapi's ``server.templates.path``, searched before its
defaults): each asset they take from a CDN points at its copy from npm
(``/viewer/static/vendor``), each inline script at a file of ours (``/viewer/static/pygeoapi``),
and data an inline script carried goes in a JSON data block that is not run. A template whose
text no longer holds what an edit replaces fails the start, naming it: a pygeoapi upgrade is
then checked, not silently served broken."""
from __future__ import annotations

import re
from pathlib import Path

from pygeoapi.util import TEMPLATES

from aquamask.processes.files import write_atomic

URL = "{{ config['server']['url'] }}"
VENDOR = f"{URL}/viewer/static/vendor"
SCRIPTS = f"{URL}/viewer/static/pygeoapi"


def _script(name: str) -> str:
    return f'<script src="{SCRIPTS}/{name}"></script>'


def _inline(marker: str) -> str:
    """The inline script whose text holds ``marker`` (a pattern)."""
    return r"<script>(?:(?!</script>).)*" + marker + r"(?:(?!</script>).)*</script>"


# template -> (pattern, replacement, how many times the template holds the pattern)
EDITS: dict[str, list[tuple[str, str, int]]] = {
    "_base.html": [
        (re.escape('<link rel="stylesheet" '
                   'href="https://unpkg.com/bootstrap@5.1.3/dist/css/bootstrap.min.css">'),
         f'<link rel="stylesheet" href="{VENDOR}/bootstrap.min.css">', 1),
        (r"<!--\[if lt IE 9\]>.*?<!\[endif\]-->", "", 1),  # html5shiv from a CDN, for IE 8
        (_inline("jsonld_datablock"), _script("jsonld.js"), 1),
    ],
    "jobs/index.html": [(_inline("getElementById\\('limits'\\)"), _script("jobs-limit.js"), 1)],
    "jobs/job.html": [(
        _inline("job-parameters"),
        '<script type="application/json" data-into="job-parameters">'
        "{{ data['jobs']['parameters'] | tojson }}</script>" + _script("data.js"), 1)],
    "jobs/results/index.html": [(
        _inline("getElementById\\('results'\\)"),
        '<script type="application/json" data-into="results">{{ data.result | tojson }}'
        "</script>" + _script("data.js"), 1)],
    # ReDoc (a CDN bundle) is not shipped: the landing page offers Swagger UI alone, and
    # ?ui=redoc draws Swagger UI too (REUSED) rather than a blank page
    "landing_page.html": [(
        r"\s*<a href=\"\{\{ config\['server'\]\['url'\] \}\}/openapi\?f=html&ui=redoc\">"
        r"\{% trans %\}ReDoc\{% endtrans %\}</a>", "", 1)],
    "openapi/swagger.html": [
        # its five assets (styles, icons, scripts) in one folder of swagger-ui-dist
        (re.escape("https://unpkg.com/swagger-ui-dist/"), f"{VENDOR}/", 5),
        (re.escape('<div id="swagger-ui"></div>'),
         "<div id=\"swagger-ui\" data-url=\"{{ data['openapi-document-path'] }}?f=json\">"
         "</div>", 1),
        (_inline("SwaggerUIBundle\\("), _script("swagger-init.js"), 1),
    ],
}


# template -> the derived template it is a copy of
REUSED = {"openapi/redoc.html": "openapi/swagger.html"}


def derive(text: str, edits: list[tuple[str, str, int]], name: str) -> str:
    for pattern, replacement, times in edits:
        text, count = re.subn(pattern, lambda _: replacement, text, flags=re.S)
        if count != times:
            raise RuntimeError(f"pygeoapi's template {name} does not hold what aquamask "
                               f"replaces ({pattern[:60]!r} found {count} times): check it "
                               "against this pygeoapi version")
    return text


def write_templates(folder: Path) -> Path:
    """The derived templates in ``folder`` (pygeoapi's ``server.templates.path``)."""
    for name, edits in EDITS.items():
        source = (Path(TEMPLATES) / name).read_text(encoding="utf-8")
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, derive(source, edits, name))
    for name, original in REUSED.items():
        write_atomic(folder / name, (folder / original).read_text(encoding="utf-8"))
    return folder
