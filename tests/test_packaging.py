"""The package build: every package folder of the card's top-level folders is installed under
the one import name ``aquamask`` (pyproject.toml lists them), and nothing else is."""
from __future__ import annotations

import tomllib

from tests.support.server import REPO

FOLDERS = {"aquamask": "aquamask", "model": "aquamask.model",
           "processes": "aquamask.processes", "server": "aquamask.server",
           "config": "aquamask.config"}


def test_every_package_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for folder, name in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            if "node_modules" in init.parts:
                continue
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *parts)))
    assert set(setuptools["packages"]) == found
    assert set(setuptools["package-dir"].values()) == set(FOLDERS)
