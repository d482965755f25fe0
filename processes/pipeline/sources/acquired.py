"""When an image was acquired, from what its file says: a time tag (``datetime``,
``ACQUISITION_DATE``, ``SENSING_TIME``, as STAC, ESA and common exports write them; a SAFE's
``PRODUCT_START_TIME``; GDAL's IMAGERY ``ACQUISITIONDATETIME`` from vendor sidecars), else a date
in its name (``..._20230801T105619_...`` as in Sentinel-2 product names, or ``2023-08-01``).
Never the file's own times (TIFFTAG_DATETIME, the modification time): they say when it was
written. None when nothing says: the acquisition time is then unknown, never invented."""
from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

LOGGER = logging.getLogger(__name__)
TAGS = ("datetime", "DATETIME", "ACQUISITION_DATE", "acquisition_date", "SENSING_TIME",
        "ACQUISITIONDATETIME", "PRODUCT_START_TIME", "DATATAKE_1_DATATAKE_SENSING_START")
_NAME_TIME = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?:[T_](\d{2})(\d{2})(\d{2}))?(?!\d)")


def parse_time(value: str) -> dt.datetime:
    """An ISO 8601 time; naive times are UTC."""
    parsed = dt.datetime.fromisoformat(value.strip().replace("z", "Z"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def from_tags(tags: dict[str, str]) -> dt.datetime | None:
    for key in TAGS:
        if tags.get(key):
            try:
                return parse_time(tags[key])
            except ValueError:
                LOGGER.warning("unreadable %s tag %r", key, tags[key])
    return None


def from_name(name: str) -> dt.datetime | None:
    for match in _NAME_TIME.finditer(name):
        year, month, day, hh, mm, ss = match.groups()
        try:
            return dt.datetime(int(year), int(month), int(day), int(hh or 0), int(mm or 0),
                               int(ss or 0), tzinfo=dt.timezone.utc)
        except ValueError:
            continue
    return None


def acquisition_time(tags: dict[str, str], name: str) -> dt.datetime | None:
    """The acquisition time a file's tags or its name (without suffix) give, or None."""
    return from_tags(tags) or from_name(name)


def dataset_time(dataset: Any, name: str) -> dt.datetime | None:
    """A rasterio dataset's acquisition time: its own tags, then GDAL's IMAGERY domain (which
    GDAL fills from DigitalGlobe, Pleiades, Landsat MTL... sidecar files), then its name."""
    return acquisition_time({**dataset.tags(ns="IMAGERY"), **dataset.tags()}, name)
