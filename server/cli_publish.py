"""Operators' commands: ``aquamask publish JOB_ID``, ``aquamask unpublish JOB_ID`` and
``aquamask reconcile [--import]``.

``publish`` (re)publishes a finished job's mask now: on GeoServer when it is configured (the
embedded engine keeps serving it when GeoServer fails), and writes the layer into the job's
outputs, its URLs those of the server the job was made on. ``unpublish`` takes the layers off
both engines and keeps the job and its files. ``publish`` prints the layer output as JSON,
``unpublish`` the layers it removed; both exit 1 when GeoServer could not be reached.
"""
from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

import click

from aquamask.processes.ogc.outputs import served_url
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import job_store


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _settings_for(job_id: str) -> Settings:
    """The settings, once ``job_id`` is known to be a valid id (else exit 2)."""
    from aquamask.processes.publishing.names import validate_product_id

    try:
        validate_product_id(job_id)
    except ValueError as err:
        _fail(str(err))
    return Settings.load()


@click.command("publish")
@click.argument("job_id")
def publish_command(job_id: str) -> None:
    """Publish (again) the mask of finished job JOB_ID: GeoServer when configured."""
    from aquamask.processes.publishing import service as publishing

    settings = _settings_for(job_id)
    record = job_store(settings).get(job_id)
    if record is None:
        _fail(f"no job {job_id}")
    served_at = served_url(record)
    if served_at and "AQUAMASK__SERVER__URL" not in os.environ:
        # the layer URLs keep the server (its port) the job was made on, not the default's
        settings = Settings.load(environ={**os.environ, "AQUAMASK__SERVER__URL": served_at})
    if record["status"] != "successful":
        _fail(f"job {job_id} is {record['status']}: only a successful job has a mask to publish")
    try:
        product = publishing.product_from_results(job_id, settings)
    except FileNotFoundError as err:
        _fail(str(err))
    layer = publishing.publish(product, settings, background=False)
    error = (job_store(settings).layer(job_id) or {}).get("last_error")
    output = publishing.layer_output(layer, error)
    publishing.update_job_layer(job_id, output, settings)
    click.echo(json.dumps(output, indent=2))
    if error and layer.publisher != publishing.GEOSERVER:
        _fail(f"GeoServer publishing failed ({error}); the layer is served by the embedded "
              "engine", 1)


@click.command("unpublish")
@click.argument("job_id")
def unpublish_command(job_id: str) -> None:
    """Take the layers of JOB_ID off GeoServer and the embedded engine (files and job stay);
    print the layers removed."""
    from aquamask.processes.publishing import service as publishing
    from aquamask.processes.publishing.names import layer_name

    settings = _settings_for(job_id)
    names = [row["name"] for row in job_store(settings).layers(job_id=job_id)]
    result = publishing.unpublish(job_id, settings, background=False)
    output = {"name": layer_name(job_id), "published": publishing.NONE}
    publishing.update_job_layer(job_id, output, settings)
    pending = result != publishing.NONE
    click.echo(json.dumps({"job": job_id, "removed": names,
                           **({"still_on_geoserver": names} if pending else {})}, indent=2))
    if pending:
        _fail("GeoServer could not be reached; its layer is still there: run this again "
              "when it is back", 1)
    if not names:
        click.echo(f"job {job_id} had no published layer", err=True)


@click.command("reconcile")
@click.option("--import", "do_import", is_flag=True,
              help="make each result without a job record a job again (owned by no user: "
                   "managers see it), its mask published privately")
def reconcile_command(do_import: bool) -> None:
    """List the results that have no job record (never served); with --import, import them."""
    from aquamask.processes.jobs import reconcile

    settings = Settings.load()
    found = reconcile.orphans(settings)
    if not found:
        click.echo("every result has its job record")
        return
    for job_id in found:
        if not do_import:
            click.echo(f"{job_id}: a result without a job record")
            continue
        try:
            reconcile.import_result(job_id, settings)
            click.echo(f"{job_id}: imported")
        except (ValueError, FileNotFoundError) as err:
            click.echo(f"{job_id}: not imported: {err}", err=True)
    if not do_import:
        click.echo(f"{len(found)} result(s) without a record; `aquamask reconcile --import` "
                   "makes them jobs again")
