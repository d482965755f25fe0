"""The README's OWSLib example runs as written against a real server (issue #18, item 10)."""
from __future__ import annotations

import contextlib
import io
import re

from tests.support.server import REPO


def test_the_readme_owslib_example_runs(server):
    readme = (REPO / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
                   if "owslib" in block)
    assert '"http://127.0.0.1:5000"' in snippet  # run against the test server instead
    code = snippet.replace('"http://127.0.0.1:5000"', repr(server.url))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own code
    title, area = printed.getvalue().strip().rsplit(" ", 1)
    assert title.startswith("Water detection") and float(area) > 0, printed.getvalue()
