"""The names of what is published: product ids, WMS layer / WCS coverage names, the series of a
job's dates, and times as layers give them (UTC, to the second)."""
from __future__ import annotations

import datetime as dt

from aquamask.processes.constants import PRODUCT_ID

LAYER_PREFIX = "water-"
SERIES_PREFIX = "series-"
DERIVED_SEPARATOR = "--"


def validate_product_id(product_id: str) -> str:
    if not isinstance(product_id, str) or not PRODUCT_ID.fullmatch(product_id):
        raise ValueError(f"invalid product id {product_id!r}: expected 1 to 64 letters, digits, "
                         "'-' or '_', starting with a letter or digit")
    return product_id


def layer_name(product_id: str) -> str:
    """The WMS layer name and WCS coverage id of a product.

    WCS 2.0 coverage ids are NCNames, which cannot start with a digit, and product ids are
    UUIDs: the letter prefix makes every valid id a valid coverage id."""
    return LAYER_PREFIX + validate_product_id(product_id)


def series_name(job_id: str) -> str:
    """The time-enabled layer of one job's dates (a series is one place over dates: never
    another job's, never another place's)."""
    return SERIES_PREFIX + validate_product_id(job_id)


def utc_time(text: str) -> str:
    """An ISO 8601 time as UTC ``YYYY-MM-DDTHH:MM:SSZ`` (naive times are taken as UTC)."""
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_of(product_id: str) -> str:
    """The job a product belongs to: its own id, or the part before ``--`` of a derived id."""
    return validate_product_id(product_id).split(DERIVED_SEPARATOR, 1)[0]


def derived_id(job_id: str, suffix: str) -> str:
    """The id of one of several products a job publishes (a time series' dates):
    ``{job_id}--{suffix}``; unpublishing the job removes them with the job's own."""
    return validate_product_id(f"{job_id}{DERIVED_SEPARATOR}{suffix}")
