"""The demo's dated scene library: "Sentinel-2 by place and date" works on a fresh install
(issue #18, item 7)."""
from __future__ import annotations

import datetime as dt

from aquamask.processes.demo import make_demo_library
from aquamask.processes.pipeline.sources import place_source
from aquamask.processes.settings import Settings


def test_the_demo_library_is_found_by_date_and_an_operators_own_is_left_alone(tmp_path):
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    source = place_source(settings)  # the default: the local folder {home}/scenes
    written = make_demo_library(source.root)
    assert [p.name for p in written] == ["demo_2024-05-10.tif", "demo_2024-06-12.tif"]
    days = sorted(item.datetime for item in source.items())
    assert days == [dt.datetime(2024, 5, 10, tzinfo=dt.timezone.utc),
                    dt.datetime(2024, 6, 12, tzinfo=dt.timezone.utc)]
    # run again, or over a folder of someone's scenes: nothing is added or overwritten
    assert make_demo_library(source.root) == []
    own = tmp_path / "own"
    own.mkdir()
    (own / "mine_2020-01-01.tif").write_bytes(written[0].read_bytes())
    assert make_demo_library(own) == [] and len(list(own.iterdir())) == 1
