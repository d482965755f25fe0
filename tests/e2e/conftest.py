"""Fixtures of the end-to-end tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from aquamask.processes.demo import make_demo_scene
    data = tmp_path_factory.mktemp("fault-scenes")
    make_demo_scene(data / "demo.tif")
    make_demo_scene(data / "big.tif", size=2560)  # a U-Net job of several seconds
    return data
