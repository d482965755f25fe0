"""Where a result is published, recorded as one ``layers`` row of the job store: GeoServer when
configured, the embedded engine otherwise or meanwhile, and the bounded retries that move a
layer to GeoServer later.

``publish(product, settings)`` is what the pipeline calls. The layer belongs to the product's
job: its owner is the job's owner, and it is shown to others only when the job asked for it
(the ``public`` input).

* GeoServer not configured (``geoserver.url`` empty): the embedded engine serves it
  (``engine`` embedded, ``state`` published).
* GeoServer publishes it: ``engine`` geoserver; the layer URLs are GeoServer's.
* GeoServer fails (unreachable, 401/403, 5xx, slower than ``geoserver.timeout_s``): the embedded
  engine serves it, the job still succeeds with ``published: pending``, and a retry process
  (``python -m aquamask.processes.publishing retry ID``) tries GeoServer again after each of
  ``geoserver.retry_delays_s``. The first success switches the job's ``layer`` output to
  GeoServer's URLs and retires the embedded copy; when every retry failed the layer stays
  embedded (``publish_error`` says why) and an operator can run ``aquamask publish JOB_ID``.

Every change of a row is one transaction, guarded by the state it expects (a retry that finds
the layer unpublished meanwhile takes it off GeoServer again), so no file lock is needed and
nothing is published twice. ``unpublish(job_id, settings)`` removes every layer of a job from
both engines; when GeoServer cannot be reached its row stays ``unpublish-pending`` (not served
here) and the deletion is retried in the background.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from aquamask.processes.procfs import command_line
from aquamask.processes.publishing.base import Publisher, load_publisher
from aquamask.processes.publishing.geoserver import GeoServerError, GeoServerPublisher
from aquamask.processes.publishing.mapserver import (
    probability_facts,
    product_facts,
    scene_facts,
)
from aquamask.processes.publishing.names import (
    derived_id,
    job_of,
    layer_name,
    series_name,
    utc_time,
    validate_product_id,
)
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import job_store
from aquamask.processes.storage.results import results_store
from aquamask.processes.styles import PROBABILITY_VIEW, SCENE_VIEWS
from aquamask.processes.types import Layer, MaskStats, Product

LOGGER = logging.getLogger(__name__)

GEOSERVER, EMBEDDED, PENDING, NONE = "geoserver", "embedded", "pending", "none"
PUBLISHED, UNPUBLISH_PENDING = "published", "unpublish-pending"
RETRY_MODULE = "aquamask.processes.publishing"
FINAL_JOB_STATES = ("successful", "failed", "dismissed")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def public_state(row: dict[str, Any] | None) -> str:
    """Where a layer stands, in one word: geoserver, embedded, pending, unpublish-pending, or
    none when it is not published."""
    if row is None:
        return NONE
    return row["engine"] if row["state"] == PUBLISHED else row["state"]


# -- products ------------------------------------------------------------------------------------
def describe(product: Product) -> dict[str, Any]:
    """What a retry needs to rebuild the ``Product`` (paths, bbox, CRS, time, stats)."""
    return {
        "directory": str(product.directory), "mask_cog": str(product.mask_cog),
        "stac_item": str(product.stac_item),
        "probability_cog": str(product.probability_cog) if product.probability_cog else None,
        "scene_cog": str(product.scene_cog) if product.scene_cog else None,
        "bbox_wgs84": [float(v) for v in product.bbox_wgs84], "crs": product.crs,
        "title": product.title,
        "datetime": product.datetime.isoformat() if product.datetime else None,
        "stats": dataclasses.asdict(product.stats),
    }


def product_from_results(product_id: str, settings: Settings) -> Product:
    """The ``Product`` of a finished job: from its layer row, else from its STAC item."""
    validate_product_id(product_id)
    store = results_store(settings)
    row = job_store(settings).layer(product_id) or {}
    described = row.get("product")
    if described:
        mask = Path(described["mask_cog"])
        if not store.is_file(mask):
            raise FileNotFoundError(f"the mask of {product_id} is gone")
        return Product(
            id=product_id, directory=Path(described["directory"]), mask_cog=mask,
            stac_item=Path(described["stac_item"]), stats=MaskStats(**described["stats"]),
            bbox_wgs84=tuple(described["bbox_wgs84"]), crs=described["crs"],
            probability_cog=Path(described["probability_cog"])
            if described.get("probability_cog") else None,
            scene_cog=Path(described["scene_cog"]) if described.get("scene_cog") else None,
            title=described.get("title") or "",
            datetime=dt.datetime.fromisoformat(described["datetime"])
            if described.get("datetime") else None)
    import json

    directory = Path(store.gdal_path(product_id))
    item_path, mask = directory / "item.json", directory / "mask.tif"
    if not (store.is_file(item_path) and store.is_file(mask)):
        raise FileNotFoundError(f"no result for {product_id} in the results store")
    item = json.loads(store.read_text(product_id, "item.json"))
    props = item.get("properties") or {}
    crs = props.get("proj:code") or props.get("proj:wkt2")
    if not crs:
        import rasterio
        with store.gdal_env(), rasterio.open(str(mask)) as src:
            crs = src.crs.to_string()
    stats = MaskStats(0, 0, 0, float(props.get("aquamask:water_area_km2") or 0.0),
                      float(props.get("aquamask:valid_area_km2") or 0.0))
    acquired = props.get("aquamask:acquired") or None
    probability, scene = directory / "probability.tif", directory / "scene.tif"
    return Product(id=product_id, directory=directory, mask_cog=mask, stac_item=item_path,
                   stats=stats, bbox_wgs84=tuple(item["bbox"]), crs=crs,
                   probability_cog=probability if store.is_file(probability) else None,
                   scene_cog=scene if store.is_file(scene) else None,
                   title=props.get("title") or "",
                   datetime=dt.datetime.fromisoformat(acquired) if acquired else None)


# -- the job's outputs ---------------------------------------------------------------------------
def layer_output(layer: Layer, error: str | None = None, **extra: Any) -> dict[str, Any]:
    output = layer.as_output()
    output.update(extra)
    if error:
        output["publish_error"] = error
    return output


def update_job_layer(product_id: str, output: dict[str, Any], settings: Settings,
                     wait_s: float = 0.0) -> bool:
    """Replace the ``layer`` output of job ``product_id`` once the job has its outputs.

    Waits up to ``wait_s`` for a job still running (its worker stores the outputs right after
    publishing). False when the job is gone or did not succeed: its result is not served."""
    store = job_store(settings)
    deadline = time.monotonic() + wait_s
    while True:
        record = store.get(product_id)
        if record is None:
            return False
        if record["status"] == "successful" and isinstance(record.get("outputs"), dict):
            outputs = dict(record["outputs"], layer=output)
            return store.update(product_id, {"outputs": outputs},
                                only_if_status=("successful",))
        if record["status"] in FINAL_JOB_STATES or time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


# -- rows ----------------------------------------------------------------------------------------
def _layer_row(product: Product, settings: Settings, *, series: str | None,
               engine: str, state: str) -> dict[str, Any]:
    """The row of ``product``'s layer: its job's owner and ``public`` input."""
    job_id = job_of(product.id)
    record = job_store(settings).get(job_id) or {}
    inputs = record["inputs"] if isinstance(record.get("inputs"), dict) else {}
    now = _now()
    previous = job_store(settings).layer(product.id) or {}
    return {
        "product_id": product.id, "job_id": job_id, "name": layer_name(product.id),
        "owner": record.get("owner"), "public": inputs.get("public") is True,
        "series": series,
        "datetime": utc_time(product.datetime.isoformat()) if product.datetime else None,
        "facts": product_facts(product, results_store(settings)),
        "product": describe(product), "engine": engine, "state": state,
        "geoserver": previous.get("geoserver"), "attempts": previous.get("attempts") or 0,
        "last_error": None, "retrier_pid": None,
        "published": previous.get("published") or now, "updated": now,
    }


# -- the retry process ---------------------------------------------------------------------------
def retrier_alive(pid: int | None, product_id: str) -> bool:
    """Whether ``pid`` is the retry process of ``product_id`` and still runs."""
    cmdline = command_line(pid) if pid else None
    return cmdline is not None and RETRY_MODULE.encode() in cmdline \
        and product_id.encode() in cmdline


def _stop_retrier(row: dict[str, Any] | None) -> None:
    if row is None:
        return
    pid = row.get("retrier_pid")
    if pid and pid != os.getpid() and retrier_alive(pid, row["product_id"]):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while retrier_alive(pid, row["product_id"]) and time.monotonic() < deadline:
            time.sleep(0.05)


def spawn_retrier(product_id: str, settings: Settings) -> int | None:
    """Start the background retry of ``product_id`` unless one runs already; its pid."""
    row = job_store(settings).layer(product_id) or {}
    if retrier_alive(row.get("retrier_pid"), product_id):
        return row["retrier_pid"]
    process = subprocess.Popen(
        [sys.executable, "-m", RETRY_MODULE, "retry", product_id],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    job_store(settings).update_layer(product_id, {"retrier_pid": process.pid})
    return process.pid


def retry(product_id: str, settings: Settings,
          sleep: Callable[[float], None] = time.sleep) -> str:
    """The background retry: the pending action of ``product_id`` after each delay, until one
    succeeds or the delays are spent. Returns the final state."""
    store = job_store(settings)
    for delay in settings.geoserver.retry_delays_s:
        sleep(delay)
        row = store.layer(product_id)
        if row is None or row["state"] not in (PENDING, UNPUBLISH_PENDING):
            return public_state(row)  # unpublished or done meanwhile
        if row["state"] == UNPUBLISH_PENDING:
            if _try_unpublish_geoserver(row, settings):
                return NONE
            continue
        result = _attempt(row, settings, wait_for_job_s=settings.server.timeout)
        if result != PENDING:
            return result
    row = store.layer(product_id)
    if row is None:
        return NONE
    if row["state"] == UNPUBLISH_PENDING:
        store.update_layer(product_id, {"retrier_pid": None})
        LOGGER.error("%s: GeoServer still has its layer after %d attempts; run "
                     "`aquamask unpublish %s` when GeoServer is back", product_id,
                     row["attempts"], job_of(product_id))
        return UNPUBLISH_PENDING
    if not store.update_layer(product_id, {"state": PUBLISHED, "retrier_pid": None,
                                           "updated": _now()}, only_if_state=(PENDING,)):
        return public_state(store.layer(product_id))
    LOGGER.error("%s: GeoServer publishing failed %d times (%s); the layer stays on the "
                 "embedded engine; `aquamask publish %s` tries again", product_id,
                 row["attempts"], row["last_error"], job_of(product_id))
    embedded = load_publisher(settings)
    update_job_layer(product_id, layer_output(embedded.layer(row), row["last_error"]),
                     settings)
    return EMBEDDED


def _attempt(row: dict[str, Any], settings: Settings, wait_for_job_s: float = 0.0) -> str:
    """One GeoServer attempt for a pending layer; switches the layer on success."""
    store = job_store(settings)
    product_id = row["product_id"]
    try:
        product = product_from_results(product_id, settings)
        geoserver = GeoServerPublisher.from_settings(settings)
    except (FileNotFoundError, ValueError) as err:
        LOGGER.error("%s: cannot publish to GeoServer: %s", product_id, err)
        store.update_layer(product_id, {"state": PUBLISHED, "last_error": str(err),
                                        "retrier_pid": None}, only_if_state=(PENDING,))
        return EMBEDDED
    try:
        layer = geoserver.publish(product, row)
    except GeoServerError as err:
        store.update_layer(product_id, {"attempts": row["attempts"] + 1,
                                        "last_error": str(err)}, only_if_state=(PENDING,))
        LOGGER.warning("%s: GeoServer retry failed: %s", product_id, err)
        return PENDING
    if not store.update_layer(product_id, {
            "engine": GEOSERVER, "state": PUBLISHED, "attempts": row["attempts"] + 1,
            "last_error": None, "retrier_pid": None, "updated": _now()},
            only_if_state=(PENDING,)):
        # unpublished (dismissed) while this attempt ran: take it off GeoServer again
        _undo(geoserver, store.layer(product_id) or row)
        return public_state(store.layer(product_id))
    load_publisher(settings).unpublish(row)
    if not update_job_layer(product_id, layer_output(layer), settings, wait_s=wait_for_job_s):
        record = store.get(job_of(product_id))
        if record is None or record["status"] in ("failed", "dismissed"):
            LOGGER.info("%s: the job is gone or failed; removing its GeoServer layer",
                        product_id)
            _undo(geoserver, store.layer(product_id) or row)
            store.delete_layer(product_id)
            return NONE
    LOGGER.info("%s: now published on GeoServer", product_id)
    return GEOSERVER


def _undo(geoserver: GeoServerPublisher, row: dict[str, Any]) -> None:
    try:
        geoserver.unpublish(row)
    except GeoServerError as err:
        LOGGER.error("%s: could not remove the GeoServer layer of a dismissed job: %s",
                     row["product_id"], err)


def _try_unpublish_geoserver(row: dict[str, Any], settings: Settings) -> bool:
    store = job_store(settings)
    try:
        GeoServerPublisher.from_settings(settings).unpublish(row)
    except GeoServerError as err:
        store.update_layer(row["product_id"], {"attempts": row["attempts"] + 1,
                                               "last_error": str(err)})
        LOGGER.warning("%s: GeoServer unpublish retry failed: %s", row["product_id"], err)
        return False
    store.delete_layer(row["product_id"])
    return True


# -- the entry points ----------------------------------------------------------------------------
def publish(product: Product, settings: Settings, *, series: str | None = None,
            background: bool = True) -> Layer:
    """Publish ``product``: GeoServer when configured, else (or meanwhile) the embedded engine.

    ``series``: the product is one date of its job's time series (``series_name(job)``).
    ``background``: start the retry process when GeoServer fails (the pipeline); without it
    (``aquamask publish``) a failure leaves the layer embedded and is reported in the row.
    The returned ``Layer``'s ``publisher`` is ``geoserver``, ``embedded`` or ``pending``.
    """
    validate_product_id(product.id)
    store = job_store(settings)
    embedded = load_publisher(settings)

    def serve_here(state: str, error: str | None, attempts: int = 0) -> Layer:
        row = dict(_layer_row(product, settings, series=series, engine=EMBEDDED, state=state),
                   last_error=error)
        row["attempts"] += attempts
        layer = embedded.publish(product, row)  # its files before the row that shows it
        store.put_layer(row)
        embedded.refresh(row)
        return layer

    if not GeoServerPublisher.configured(settings):
        return serve_here(PUBLISHED, None)
    _stop_retrier(store.layer(product.id))
    try:
        geoserver = GeoServerPublisher.from_settings(settings)
    except ValueError as err:  # misconfigured: retrying will not help
        LOGGER.error("GeoServer is misconfigured (%s); %s stays on the embedded engine",
                     err, product.id)
        return serve_here(PUBLISHED, f"misconfigured: {err}")
    # the row first (not served here): an unpublish after a publish that stopped half-way
    # (killed, timed out) finds what GeoServer may have been given
    row = _layer_row(product, settings, series=series, engine=GEOSERVER, state=PENDING)
    store.put_layer(row)
    try:
        layer = geoserver.publish(product, row)
    except ValueError as err:
        # what GeoServer cannot take will not change by retrying (e.g. a COG outside the
        # shared results folder): served by the embedded engine, which raises in turn when the
        # product itself is bad
        LOGGER.error("%s: not published to GeoServer: %s", product.id, err)
        return serve_here(PUBLISHED, str(err))
    except GeoServerError as err:
        retrying = background and bool(settings.geoserver.retry_delays_s)
        LOGGER.warning("%s: GeoServer publishing failed (%s); serving it from the embedded "
                       "engine%s", product.id, err, " and retrying" if retrying else "")
        layer = serve_here(PENDING if retrying else PUBLISHED, str(err), attempts=1)
        if retrying:
            spawn_retrier(product.id, settings)
            return dataclasses.replace(layer, publisher=PENDING)
        return layer
    store.update_layer(product.id, {"state": PUBLISHED, "attempts": row["attempts"] + 1,
                                    "updated": _now()})
    embedded.unpublish(row)  # an earlier fallback copy, if any
    return layer


def publish_embedded(product: Product, settings: Settings) -> Layer:
    """Publish ``product`` on the embedded engine alone (styles only it draws: water change
    and frequency)."""
    validate_product_id(product.id)
    row = _layer_row(product, settings, series=None, engine=EMBEDDED, state=PUBLISHED)
    layer = load_publisher(settings).publish(product, row)
    job_store(settings).put_layer(row)
    return layer


def publish_views(product: Product, settings: Settings) -> list[str]:
    """What a viewer shows with a water mask: its input scene (``scene_cog``) in each of
    ``SCENE_VIEWS``, and its water probability (``probability_cog``), as layers on the
    embedded engine alone (GeoServer is given masks only). Rows of the product's job, so they
    have its owner and visibility and are unpublished with it. The names of the layers."""
    facts = {view: scene_facts(product, view, results_store(settings))
             for view in SCENE_VIEWS if product.scene_cog is not None}
    if product.probability_cog is not None:
        facts[PROBABILITY_VIEW] = probability_facts(product, results_store(settings))
    if not facts:
        return []
    embedded = load_publisher(settings)
    mask_row = _layer_row(product, settings, series=None, engine=EMBEDDED, state=PUBLISHED)
    names = []
    for view, view_facts in facts.items():
        view_id = derived_id(product.id, view)
        row = dict(mask_row, product_id=view_id, name=layer_name(view_id), facts=view_facts,
                   geoserver=None, attempts=0)
        embedded.publish(product, row)  # its files before the row that shows it
        job_store(settings).put_layer(row)
        names.append(row["name"])
    return names


def engine(publisher: str, settings: Settings) -> Publisher:
    """The engine a layer's ``publisher`` names: GeoServer, else the embedded one (which serves
    a ``pending`` layer meanwhile)."""
    if publisher == GEOSERVER:
        return GeoServerPublisher.from_settings(settings)
    return load_publisher(settings)


def layer_of(row: dict[str, Any], settings: Settings) -> Layer:
    """The service URLs of a layer row, on the engine that serves it."""
    return engine(row["engine"], settings).layer(row)


def series_output(job_id: str, published: list[tuple[Product, Layer]], settings: Settings
                  ) -> dict[str, Any] | None:
    """The time-enabled WMS layer of a job's dates as a job output, with a GetMap per date;
    None when no date was published."""
    if not published:
        return None
    first, layer = published[0]
    times = [utc_time(p.datetime.isoformat()) for p, _ in published]  # type: ignore[union-attr]
    name = series_name(job_id)
    urls = engine(layer.publisher, settings).series_urls(name, list(first.bbox_wgs84), times)
    return {"name": name, "published": layer.publisher, "wms": layer.wms_url,
            "getcapabilities": layer.get_capabilities_url, "dimension": "time",
            "times": times, "getmap": urls[times[-1]], "getmap_by_time": urls}


def collect(settings: Settings) -> int:
    """What unpublished layers left on the embedded engine, removed once no request reads it."""
    return load_publisher(settings).collect()


def rebuild(settings: Settings) -> int:
    """The embedded engine's files derived again from the job store (at start)."""
    return load_publisher(settings).rebuild()


def unpublish(job_id: str, settings: Settings, *, background: bool = True) -> str:
    """Remove every layer of ``job_id`` (its own and its derived products') from both engines.

    Returns ``none`` when they are gone everywhere, ``unpublish-pending`` when GeoServer could
    not be reached (then retried in the background when ``background``)."""
    rows = job_store(settings).layers(job_id=job_of(job_id))
    if job_id != job_of(job_id):
        rows = [r for r in rows if r["product_id"] == job_id]
    results = [_unpublish_row(row, settings, background) for row in rows]
    return UNPUBLISH_PENDING if UNPUBLISH_PENDING in results else NONE


def _unpublish_row(row: dict[str, Any], settings: Settings, background: bool) -> str:
    store = job_store(settings)
    _stop_retrier(row)
    embedded = load_publisher(settings)
    if row["engine"] == EMBEDDED:
        store.delete_layer(row["product_id"])
        embedded.unpublish(row)
        if not row.get("geoserver"):
            return NONE
    if not GeoServerPublisher.configured(settings):
        store.delete_layer(row["product_id"])
        return NONE
    try:
        GeoServerPublisher.from_settings(settings).unpublish(row)
    except ValueError as err:
        LOGGER.error("%s: GeoServer is misconfigured (%s); not unpublished there",
                     row["product_id"], err)
    except GeoServerError as err:
        LOGGER.warning("%s: GeoServer unpublish failed (%s)%s", row["product_id"], err,
                       "; retrying in the background" if background else "")
        row = dict(row, engine=GEOSERVER, state=UNPUBLISH_PENDING, last_error=str(err),
                   attempts=0, retrier_pid=None, updated=_now())
        store.put_layer(row)
        if background and settings.geoserver.retry_delays_s:
            spawn_retrier(row["product_id"], settings)
        return UNPUBLISH_PENDING
    store.delete_layer(row["product_id"])
    return NONE


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "retry":
        print("usage: python -m aquamask.processes.publishing retry PRODUCT_ID",
              file=sys.stderr)
        return 2
    settings = Settings.load()
    logging.basicConfig(level=settings.logging.level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    result = retry(argv[1], settings)
    LOGGER.info("%s: publishing retry ended: %s", argv[1], result)
    return 0

