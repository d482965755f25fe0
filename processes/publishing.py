"""Where a result is published: GeoServer when configured, the embedded engine otherwise or
meanwhile, and the bounded retries that move a layer to GeoServer later.

``publish(product, settings)`` is what the pipeline calls:

* GeoServer not configured (``geoserver.url`` empty): the embedded MapServer publishes it;
  ``published: embedded``.
* GeoServer publishes it: ``published: geoserver``; the layer URLs are GeoServer's.
* GeoServer fails (unreachable, 401/403, 5xx, slower than ``geoserver.timeout_s``): the embedded
  engine publishes it, the job still succeeds with ``published: pending``, and a retry process
  (``python -m aquamask.processes.publishing retry ID``) tries GeoServer again after each of
  ``geoserver.retry_delays_s``. The first success switches the job's ``layer`` output to
  GeoServer's URLs (``published: geoserver``) and removes the embedded copy; when every retry
  failed the layer stays embedded (``published: embedded``, ``publish_error`` says why) and an
  operator can run ``aquamask publish JOB_ID``.

Nothing is lost: the COG stays in the results folder and is served by the embedded engine until
GeoServer has it. Nothing is published twice: the GeoServer publisher checks before it creates,
one product has at most one retry process (its pid is in the state, and the state is changed
under a per-product file lock), and a result dismissed meanwhile is taken off GeoServer again.

The state of each product is a small JSON file in ``geoserver.state_dir`` (default
``publishing`` under ``home``): where it is published, attempts, the last error (never a
secret), the retry process, and the product's description (so a retry or ``aquamask publish``
rebuilds the ``Product`` without the pipeline).

``unpublish(product_id, settings)`` removes the layer from both engines; when GeoServer cannot
be reached it keeps an ``unpublish-pending`` state and retries the deletion in the background.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from aquamask.processes.publishers.geoserver import GeoServerError, GeoServerPublisher
from aquamask.processes.publishers.mapserver import (PRODUCT_ID, MapServerPublisher,
                                                     _atomic_write, validate_product_id)
from aquamask.processes.settings import Settings
from aquamask.processes.types import Layer, MaskStats, Product

LOGGER = logging.getLogger(__name__)

GEOSERVER, EMBEDDED, PENDING, NONE = "geoserver", "embedded", "pending", "none"
UNPUBLISH_PENDING = "unpublish-pending"
DEFAULT_RETRY_DELAYS_S = (10, 30, 90, 270, 810)
LOCK_TIMEOUT_S = 300
RETRY_MODULE = "aquamask.processes.publishing"
FINAL_JOB_STATES = ("successful", "failed", "dismissed")


# -- state ---------------------------------------------------------------------------------------
def state_dir(settings: Settings) -> Path:
    directory = settings.path(settings.get("geoserver", "state_dir") or "publishing")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _state_path(product_id: str, settings: Settings) -> Path:
    return state_dir(settings) / f"{validate_product_id(product_id)}.json"


def _lock(product_id: str, settings: Settings) -> FileLock:
    return FileLock(str(state_dir(settings) / f".{validate_product_id(product_id)}.lock"),
                    timeout=LOCK_TIMEOUT_S)


def read_state(product_id: str, settings: Settings) -> dict[str, Any] | None:
    try:
        with open(_state_path(product_id, settings), encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def _write_state(product_id: str, settings: Settings, **changes: Any) -> dict[str, Any]:
    state = read_state(product_id, settings) or {"id": product_id, "attempts": 0}
    state.update(changes, updated=_now())
    _atomic_write(_state_path(product_id, settings), json.dumps(state, indent=1) + "\n")
    return state


def _drop_state(product_id: str, settings: Settings) -> None:
    try:
        _state_path(product_id, settings).unlink()
    except FileNotFoundError:
        pass


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def retry_delays(settings: Settings) -> list[float]:
    delays = settings.get("geoserver", "retry_delays_s")
    if delays is None:
        delays = DEFAULT_RETRY_DELAYS_S
    if not isinstance(delays, (list, tuple)) or not all(
            isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0 for d in delays):
        raise ValueError(f"geoserver.retry_delays_s must be a list of seconds >= 0 "
                         f"(got {delays!r})")
    return [float(d) for d in delays]


# -- products ------------------------------------------------------------------------------------
def describe(product: Product) -> dict[str, Any]:
    """What a retry needs to rebuild the ``Product`` (paths, bbox, CRS, time, stats)."""
    return {
        "directory": str(product.directory), "mask_cog": str(product.mask_cog),
        "stac_item": str(product.stac_item),
        "probability_cog": str(product.probability_cog) if product.probability_cog else None,
        "bbox_wgs84": [float(v) for v in product.bbox_wgs84], "crs": product.crs,
        "title": product.title,
        "datetime": product.datetime.isoformat() if product.datetime else None,
        "stats": dataclasses.asdict(product.stats),
    }


def product_from_results(product_id: str, settings: Settings) -> Product:
    """The ``Product`` of a finished job: from its publishing state, else from its STAC item
    (whose datetime is then left out: the item cannot tell an acquisition time from the
    processing time, and a wrong time would put the mask at a wrong date of its series)."""
    validate_product_id(product_id)
    store = settings.results_store
    state = read_state(product_id, settings) or {}
    described = state.get("product")
    if described:
        mask = Path(described["mask_cog"])
        if not store.is_file(mask):
            raise FileNotFoundError(f"the mask of {product_id} is gone ({mask})")
        return Product(
            id=product_id, directory=Path(described["directory"]), mask_cog=mask,
            stac_item=Path(described["stac_item"]), stats=MaskStats(**described["stats"]),
            bbox_wgs84=tuple(described["bbox_wgs84"]), crs=described["crs"],
            probability_cog=Path(described["probability_cog"])
            if described.get("probability_cog") else None,
            title=described.get("title") or "",
            datetime=dt.datetime.fromisoformat(described["datetime"])
            if described.get("datetime") else None)
    directory = Path(store.gdal_path(product_id))
    item_path, mask = directory / "item.json", directory / "mask.tif"
    if not (store.is_file(item_path) and store.is_file(mask)):
        raise FileNotFoundError(f"no result for {product_id} in {store.location}")
    item = json.loads(store.read_text(product_id, "item.json"))
    props = item.get("properties") or {}
    crs = props.get("proj:code") or props.get("proj:wkt2")
    if not crs:
        import rasterio
        with store.gdal_env(), rasterio.open(str(mask)) as src:
            crs = src.crs.to_string()
    stats = MaskStats(0, 0, 0, float(props.get("aquamask:water_area_km2") or 0.0),
                      float(props.get("aquamask:valid_area_km2") or 0.0))
    probability = directory / "probability.tif"
    return Product(id=product_id, directory=directory, mask_cog=mask, stac_item=item_path,
                   stats=stats, bbox_wgs84=tuple(item["bbox"]), crs=crs,
                   probability_cog=probability if store.is_file(probability) else None,
                   title=props.get("title") or "")


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
    from aquamask.processes.jobstore import JobStore

    store = JobStore(settings.database_url)
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


# -- the retry process ---------------------------------------------------------------------------
def _retrier_alive(pid: int | None, product_id: str) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return False
    return status != "Z" and RETRY_MODULE.encode() in cmdline and product_id.encode() in cmdline


def _stop_retrier(product_id: str, settings: Settings) -> None:
    pid = (read_state(product_id, settings) or {}).get("retrier_pid")
    if pid and pid != os.getpid() and _retrier_alive(pid, product_id):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while _retrier_alive(pid, product_id) and time.monotonic() < deadline:
            time.sleep(0.05)


def spawn_retrier(product_id: str, settings: Settings) -> int | None:
    """Start the background retry of ``product_id`` unless one runs already; its pid."""
    state = read_state(product_id, settings) or {}
    if _retrier_alive(state.get("retrier_pid"), product_id):
        return state["retrier_pid"]
    process = subprocess.Popen(
        [sys.executable, "-m", RETRY_MODULE, "retry", product_id],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    _write_state(product_id, settings, retrier_pid=process.pid)
    return process.pid


def retry(product_id: str, settings: Settings,
          sleep: Callable[[float], None] = time.sleep) -> str:
    """The background retry: the pending action of ``product_id`` after each delay, until one
    succeeds or the delays are spent. Returns the final state."""
    for delay in retry_delays(settings):
        sleep(delay)
        state = read_state(product_id, settings)
        if state is None or state.get("state") not in (PENDING, UNPUBLISH_PENDING):
            return (state or {}).get("state", NONE)  # unpublished or done meanwhile
        if state["state"] == UNPUBLISH_PENDING:
            if _try_unpublish_geoserver(product_id, settings):
                return NONE
            continue
        result = _attempt(product_id, settings, wait_for_job_s=float(
            settings.get("server", "timeout") or 600))
        if result != PENDING:
            return result
    with _lock(product_id, settings):
        state = read_state(product_id, settings) or {}
        if state.get("state") == UNPUBLISH_PENDING:
            _write_state(product_id, settings, retrier_pid=None)
            LOGGER.error("%s: GeoServer still has its layer after %d attempts; run "
                         "`aquamask unpublish %s` when GeoServer is back", product_id,
                         state.get("attempts", 0), product_id)
            return UNPUBLISH_PENDING
        if state.get("state") != PENDING:
            return state.get("state", NONE)
        state = _write_state(product_id, settings, state=EMBEDDED, retrier_pid=None)
    LOGGER.error("%s: GeoServer publishing failed %d times (%s); the layer stays on the "
                 "embedded engine; `aquamask publish %s` tries again", product_id,
                 state.get("attempts", 0), state.get("last_error"), product_id)
    embedded = MapServerPublisher.from_settings(settings)
    try:
        layer = embedded.layer(product_id)
    except KeyError:
        return EMBEDDED
    update_job_layer(product_id, layer_output(layer, state.get("last_error")), settings)
    return EMBEDDED


def _attempt(product_id: str, settings: Settings, wait_for_job_s: float = 0.0) -> str:
    """One GeoServer attempt for a pending product; switches the layer on success."""
    try:
        product = product_from_results(product_id, settings)
        geoserver = GeoServerPublisher.from_settings(settings)
    except (FileNotFoundError, ValueError) as err:
        LOGGER.error("%s: cannot publish to GeoServer: %s", product_id, err)
        with _lock(product_id, settings):
            _write_state(product_id, settings, state=EMBEDDED, last_error=str(err),
                         retrier_pid=None)
        return EMBEDDED
    try:
        layer = geoserver.publish(product)
    except GeoServerError as err:
        with _lock(product_id, settings):
            state = read_state(product_id, settings) or {}
            _write_state(product_id, settings, attempts=state.get("attempts", 0) + 1,
                         last_error=str(err))
        LOGGER.warning("%s: GeoServer retry failed: %s", product_id, err)
        return PENDING
    with _lock(product_id, settings):
        state = read_state(product_id, settings)
        if state is None or state.get("state") != PENDING:
            # unpublished (dismissed) while this attempt ran: take it off GeoServer again
            _undo(geoserver, product_id)
            return (state or {}).get("state", NONE)
        _write_state(product_id, settings, state=GEOSERVER, attempts=state.get("attempts", 0)
                     + 1, last_error=None, retrier_pid=None, published=_now())
    MapServerPublisher.from_settings(settings).unpublish(product_id)
    if not update_job_layer(product_id, layer_output(layer), settings, wait_s=wait_for_job_s):
        record_gone = _job_gone_or_failed(product_id, settings)
        if record_gone:
            LOGGER.info("%s: the job is gone or failed; removing its GeoServer layer",
                        product_id)
            _undo(geoserver, product_id)
            with _lock(product_id, settings):
                _drop_state(product_id, settings)
            return NONE
    LOGGER.info("%s: now published on GeoServer", product_id)
    return GEOSERVER


def _job_gone_or_failed(product_id: str, settings: Settings) -> bool:
    from aquamask.processes.jobstore import JobStore

    record = JobStore(settings.database_url).get(product_id)
    return record is None or record["status"] in ("failed", "dismissed")


def _undo(geoserver: GeoServerPublisher, product_id: str) -> None:
    try:
        geoserver.unpublish(product_id)
    except GeoServerError as err:
        LOGGER.error("%s: could not remove the GeoServer layer of a dismissed job: %s",
                     product_id, err)


def _try_unpublish_geoserver(product_id: str, settings: Settings) -> bool:
    try:
        GeoServerPublisher.from_settings(settings).unpublish(product_id)
    except GeoServerError as err:
        with _lock(product_id, settings):
            state = read_state(product_id, settings) or {}
            _write_state(product_id, settings, attempts=state.get("attempts", 0) + 1,
                         last_error=str(err))
        LOGGER.warning("%s: GeoServer unpublish retry failed: %s", product_id, err)
        return False
    with _lock(product_id, settings):
        _drop_state(product_id, settings)
    return True


# -- the entry points ----------------------------------------------------------------------------
def publish(product: Product, settings: Settings, *, background: bool = True) -> Layer:
    """Publish ``product``: GeoServer when configured, else (or meanwhile) the embedded engine.

    ``background``: start the retry process when GeoServer fails (the pipeline); without it
    (``aquamask publish``) a failure leaves the layer embedded and is reported in the state.
    The returned ``Layer``'s ``publisher`` is ``geoserver``, ``embedded`` or ``pending``.
    """
    validate_product_id(product.id)
    embedded = MapServerPublisher.from_settings(settings)
    if not GeoServerPublisher.configured(settings):
        layer = embedded.publish(product)
        with _lock(product.id, settings):
            _write_state(product.id, settings, state=EMBEDDED, product=describe(product),
                         last_error=None)
        return layer
    _stop_retrier(product.id, settings)
    try:
        geoserver = GeoServerPublisher.from_settings(settings)
    except ValueError as err:  # misconfigured: retrying will not help
        LOGGER.error("GeoServer is misconfigured (%s); %s stays on the embedded engine",
                     err, product.id)
        layer = embedded.publish(product)
        with _lock(product.id, settings):
            _write_state(product.id, settings, state=EMBEDDED, product=describe(product),
                         last_error=f"misconfigured: {err}", retrier_pid=None)
        return layer
    with _lock(product.id, settings):
        _write_state(product.id, settings, state=PENDING, product=describe(product))
    try:
        layer = geoserver.publish(product)
    except ValueError as err:
        # what GeoServer cannot take will not change by retrying (e.g. a COG outside the
        # shared results folder): served by the embedded engine, which raises in turn when the
        # product itself is bad
        LOGGER.error("%s: not published to GeoServer: %s", product.id, err)
        layer = embedded.publish(product)
        with _lock(product.id, settings):
            _write_state(product.id, settings, state=EMBEDDED, last_error=str(err))
        return layer
    except GeoServerError as err:
        LOGGER.warning("%s: GeoServer publishing failed (%s); serving it from the embedded "
                       "engine%s", product.id, err, " and retrying" if background else "")
        layer = embedded.publish(product)
        with _lock(product.id, settings):
            state = read_state(product.id, settings) or {}
            retrying = background and bool(retry_delays(settings))
            _write_state(product.id, settings, state=PENDING if retrying else EMBEDDED,
                         attempts=state.get("attempts", 0) + 1, last_error=str(err))
        if retrying:
            spawn_retrier(product.id, settings)
            return dataclasses.replace(layer, publisher=PENDING)
        return layer
    with _lock(product.id, settings):
        state = read_state(product.id, settings) or {}
        _write_state(product.id, settings, state=GEOSERVER, last_error=None,
                     attempts=state.get("attempts", 0) + 1, published=_now(),
                     retrier_pid=None)
    embedded.unpublish(product.id)  # an earlier fallback copy, if any
    return layer


DERIVED_SEPARATOR = "--"


def derived_id(job_id: str, suffix: str) -> str:
    """The id of one of several products a job publishes (a time series' dates):
    ``{job_id}--{suffix}``; ``unpublish(job_id)`` removes them with the job's own."""
    return validate_product_id(f"{job_id}{DERIVED_SEPARATOR}{suffix}")


def derived_ids(product_id: str, settings: Settings) -> list[str]:
    """The products published under ``product_id``'s derived ids, wherever a trace of them
    is: a publishing state, or the embedded or GeoServer catalogue (a publish cut short)."""
    prefix = f"{validate_product_id(product_id)}{DERIVED_SEPARATOR}"
    found = {path.stem for path in state_dir(settings).glob(f"{prefix}*.json")}
    found.update(e["id"] for e in MapServerPublisher.from_settings(settings).layers())
    if GeoServerPublisher.configured(settings):
        try:
            found.update(e["id"] for e in GeoServerPublisher.from_settings(settings).layers())
        except ValueError:  # misconfigured: nothing of ours can be there
            pass
    return sorted(i for i in found if i.startswith(prefix) and PRODUCT_ID.fullmatch(i))


def unpublish(product_id: str, settings: Settings, *, background: bool = True) -> str:
    """Remove ``product_id``'s layer, and those of its derived ids (``derived_id``), from both
    engines and drop their state.

    Returns ``none`` when it is gone everywhere, ``unpublish-pending`` when GeoServer could not
    be reached (then retried in the background when ``background``)."""
    results = [_unpublish_one(derived, settings, background)
               for derived in derived_ids(product_id, settings)]
    results.append(_unpublish_one(product_id, settings, background))
    return UNPUBLISH_PENDING if UNPUBLISH_PENDING in results else NONE


def _unpublish_one(product_id: str, settings: Settings, background: bool) -> str:
    validate_product_id(product_id)
    _stop_retrier(product_id, settings)
    MapServerPublisher.from_settings(settings).unpublish(product_id)
    with _lock(product_id, settings):
        state = read_state(product_id, settings) or {}
        if not GeoServerPublisher.configured(settings):
            _drop_state(product_id, settings)
            return NONE
        try:
            GeoServerPublisher.from_settings(settings).unpublish(product_id)
        except ValueError as err:
            LOGGER.error("%s: GeoServer is misconfigured (%s); not unpublished there",
                         product_id, err)
            _drop_state(product_id, settings)
            return NONE
        except GeoServerError as err:
            LOGGER.warning("%s: GeoServer unpublish failed (%s)%s", product_id, err,
                           "; retrying in the background" if background else "")
            _write_state(product_id, settings, state=UNPUBLISH_PENDING, last_error=str(err),
                         attempts=0, retrier_pid=None,
                         product=state.get("product"))
            pending = True
        else:
            _drop_state(product_id, settings)
            pending = False
    if pending:
        if background and retry_delays(settings):
            spawn_retrier(product_id, settings)
        return UNPUBLISH_PENDING
    return NONE


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "retry":
        print("usage: python -m aquamask.processes.publishing retry PRODUCT_ID",
              file=sys.stderr)
        return 2
    settings = Settings.load()
    logging.basicConfig(level=str(settings.get("logging", "level") or "INFO").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    result = retry(argv[1], settings)
    LOGGER.info("%s: publishing retry ended: %s", argv[1], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
