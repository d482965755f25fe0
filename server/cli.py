"""The ``aquamask`` command: serve, detect, train, evaluate, demo."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

import click
import requests
from tqdm import tqdm

from aquamask import __version__
from aquamask.processes.errors import AquamaskError, ConfigError
from aquamask.processes.pipeline import methods
from aquamask.processes.settings import Settings, format_bind, split_bind
from aquamask.server.cli_publish import publish_command, reconcile_command, unpublish_command
from aquamask.server.cli_search import search


@contextmanager
def progress_bar(description: str):
    """A tqdm bar fed by the pipeline's (percent, message) progress callbacks. It appears with
    the first progress (an input refused before that prints no bar), advances by each step so
    its rate and ETA are right, and draws each update once."""
    bar: tqdm | None = None

    def update(percent: float, message: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=100, desc=description, unit="%", bar_format=(
                "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}"))
        bar.set_postfix_str(message[:60], refresh=False)
        bar.update(max(round(percent, 1) - bar.n, 0))
    try:
        yield update
        update(100, "done")
    finally:
        if bar is not None:
            bar.close()


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="aquamask")
def main() -> None:
    """aquamask: find water in satellite imagery, serve it through OGC APIs."""


def gunicorn_command(settings: Settings, host: str | None, port: int | None,
                     workers: int | None) -> list[str]:
    bind_host, bind_port = split_bind(settings.server.bind)
    bind = format_bind(host or bind_host, port or bind_port)
    config = files("aquamask.server") / "gunicorn.conf.py"
    return [sys.executable, "-m", "gunicorn", "--config", str(config), "--bind", bind,
            "--workers", str(workers or settings.server.workers),
            "--timeout", str(settings.server.timeout)]


def check_port_free(host: str, port: int) -> None:
    """Refuse, with the cause and the way out, a port another program listens on: gunicorn
    would only say so in its log, and the other program would answer the demo."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            cause = "another program listens on it" if err.errno == errno.EADDRINUSE \
                else err.strerror
            fail(f"cannot listen on {host}:{port}: {cause}; stop it or choose another port "
                 f"with --port")


def _serve_environment(host: str | None, port: int | None) -> dict[str, str]:
    """The server's environment: ``--host``/``--port`` become its bind address, from which
    its URL follows unless ``server.url`` is set (Settings.url)."""
    env = dict(os.environ)
    if host or port:
        bind_host, bind_port = split_bind(Settings.load().server.bind)
        # quoted: environment values are YAML, where [::]:5000 would be a list
        env["AQUAMASK__SERVER__BIND"] = json.dumps(format_bind(host or bind_host,
                                                               port or bind_port))
    return env


@main.command()
@click.option("--host", help="address to listen on (default from config: 127.0.0.1)")
@click.option("--port", type=int, help="port to listen on (default from config: 5000)")
@click.option("--workers", type=int, help="gunicorn worker processes")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Start the server (gunicorn serving pygeoapi, /ows, results)."""
    try:
        env = _serve_environment(host, port)
        settings = Settings.load(environ=env)
    except ConfigError as err:  # refused before anything starts, naming the key
        fail(f"bad configuration: {err}")
    command = gunicorn_command(settings, host, port, workers)
    bind_host, _, bind_port = command[command.index("--bind") + 1].rpartition(":")
    check_port_free(bind_host.strip("[]"), int(bind_port))
    os.execve(sys.executable, command, env)


@main.command()
@click.argument("image")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="the mask COG to write (the probability goes beside it)")
@click.option("--method", type=click.Choice(methods.names()), default="unet",
              show_default=True, help=methods.described())
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--bands", help='band indexes as JSON, e.g. \'{"B02": 1, ...}\'')
@click.option("--probability/--no-probability", default=True, show_default=True,
              help="also write the water probability COG beside the mask")
@click.option("--weights", help="the unet model: a weights file (e.g. one `aquamask train` "
              "wrote) or a shipped model's name [default: detection.model]")
def detect(image: str, out: Path, method: str, threshold: float, bands: str | None,
           probability: bool, weights: str | None) -> None:
    """Detect water in IMAGE without a server; write the mask COG, the probability COG and
    a STAC item (statistics, provenance) beside it."""
    from aquamask.processes.pipeline.flow import detect_to_file, item_path

    try:
        mapping = json.loads(bands) if bands else None
    except json.JSONDecodeError as err:
        fail(f"--bands is not valid JSON: {err}")
    if weights is not None and not methods.get(method).needs_model:
        fail(f"--weights is for the unet method, not {method}")
    settings = Settings.load()
    try:
        # before the scene is read: a bad weights file fails at once
        model = (methods.load_weights_file(weights, settings.detection.device)
                 if weights is not None else None)
        with progress_bar(f"detecting water ({method})") as update:
            mask = detect_to_file(image, out, settings, method, threshold, mapping,
                                  progress=update, with_probability=probability, model=model)
    except AquamaskError as err:
        fail(err.message)
    except ConfigError as err:
        fail(str(err))
    stats = mask.stats
    written = ", ".join([str(out)] + ([str(out.with_suffix(".probability.tif"))]
                                      if probability else []) + [str(item_path(out))])
    click.echo(f"wrote {written}\n"
               f"water: {stats.water_area_km2:.4f} km² ({stats.water_fraction:.1%} of valid "
               f"pixels); valid: {stats.valid_fraction:.1%} of the image")


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["chips128", "sen1floods11"]), default="chips128",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="folder for the weights and metrics (default: the package's weights/)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
def train(data_dir: Path, layout: str, out_dir: Path | None, seed: int,
          epochs: int | None) -> None:
    """Train the water U-Net on DATA_DIR (seeded, reproducible)."""
    from aquamask.model.train import train as train_model

    kwargs: dict[str, Any] = {"seed": seed}
    if out_dir:
        kwargs["out_dir"] = out_dir
    if epochs:
        kwargs["epochs"] = epochs
    with progress_bar("training") as update:
        metrics = train_model(data_dir, layout, progress=update, **kwargs)
    click.echo(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)},
                          indent=2, default=str))


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["chips128", "sen1floods11"]), required=True)
@click.option("--method", "methods", multiple=True,
              type=click.Choice(["unet", "ndwi", "mndwi", "otsu-mndwi"]),
              help="methods to compare (repeatable; default: all)")
@click.option("--split", type=click.Choice(["val", "all"]), default="val", show_default=True,
              help="chips128: the validation split the model never saw, or every chip")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scale", type=int, help="network scale (default: by the layout's resolution)")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]),
              help="default: bf16 where the CPU has it, else fp32")
@click.option("--per-chip", is_flag=True, help="add the per-chip IoU table")
@click.option("--worst-png", type=click.Path(dir_okay=False, path_type=Path),
              help="write a PNG of the worst chips (image / label / prediction)")
@click.option("--json", "as_json", is_flag=True, help="print the full report as JSON")
def evaluate(data_dir: Path, layout: str, methods: tuple[str, ...], split: str,
             weights: Path | None, scale: int | None, precision: str | None, per_chip: bool,
             worst_png: Path | None, as_json: bool) -> None:
    """Water IoU, precision, recall and F1 of the model and the index baselines."""
    from aquamask.model import evaluate as ev

    kwargs: dict[str, Any] = {"split": split, "weights": weights, "scale": scale,
                              "precision": precision}
    if methods:
        kwargs["methods"] = methods
    with progress_bar("evaluating") as update:
        report = ev.evaluate(data_dir, layout, progress=update, **kwargs)
    if worst_png:
        ev.write_worst_chips_png(report, worst_png)
        click.echo(f"wrote {worst_png}", err=True)
    click.echo(json.dumps(report, indent=2, default=float) if as_json
               else ev.format_table(report, per_chip=per_chip))


def _demo_library(settings: Settings) -> None:
    """Dated demo scenes for "Sentinel-2 by place and date", when the default source is a
    local folder that holds none yet."""
    from aquamask.processes.demo import make_demo_library

    config = settings.sources.entries.get(settings.sources.default) or {}
    if config.get("kind") != "local":
        return
    folder = settings.path(config.get("path") or "scenes")
    if make_demo_library(folder):
        click.echo(f"dated demo scenes for place and date searches: {folder}")


def wait_for(url: str, server: subprocess.Popen, log_path: Path,
             timeout: float = 120.0) -> None:
    """Wait until the server just started answers ``url``; fail with its log's last lines
    if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            fail(f"the server stopped at start (exit {server.returncode}); the end of "
                 f"{log_path}:\n" + "\n".join(tail))
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the server did not answer at {url} within {timeout:.0f} s")


@main.command()
@click.option("--image", help="a GeoTIFF to use instead of the generated demo scene")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--exit", "exit_after", is_flag=True, help="stop the server after the demo")
def demo(image: str | None, port: int, exit_after: bool) -> None:
    """Start the server, detect water in a demo scene through the API, print where to look."""
    from aquamask.processes.demo import make_demo_scene

    env = _serve_environment("127.0.0.1", port)
    settings = Settings.load(environ=env)
    settings.ensure_dirs()
    if image:
        href = str(Path(image).resolve())
        env["AQUAMASK__PATHS__DATA_ROOT"] = str(Path(href).parent)
    else:
        href = "demo/demo-scene.tif"
        make_demo_scene(settings.data_root / href)
    check_port_free("127.0.0.1", port)
    _demo_library(settings)
    log_path = settings.home / "server.log"
    log = open(log_path, "ab")  # the terminal keeps the demo's own lines and progress bar
    server = subprocess.Popen(gunicorn_command(Settings.load(environ=env), "127.0.0.1", port,
                                               None), env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", server, log_path)
        click.echo(f"server up at {base} (log: {log_path}); "
                   f"executing water-detection on {href}")
        response = requests.post(f"{base}/processes/water-detection/execution",
                                 json={"inputs": {"image": {"href": href}, "public": True}},
                                 headers={"Prefer": "respond-async"}, timeout=30)
        if response.status_code != 201:
            fail(f"execution refused ({response.status_code}): {response.text}")
        job_url = response.headers["Location"]
        with progress_bar("water-detection job") as update:
            while True:
                status = requests.get(job_url, timeout=10).json()
                update(float(status.get("progress") or 0), status.get("message") or "")
                if status["status"] not in ("accepted", "running"):
                    break
                time.sleep(0.5)
        if status["status"] != "successful":
            fail(f"the job {status['status']}: {status.get('message')}")
        outputs = requests.get(f"{job_url}/results?f=json", timeout=10).json()
        click.echo("\n".join([
            f"job:          {job_url}",
            f"results:      {job_url}/results?f=json",
            f"mask (COG):   {outputs['mask']['href']}",
            f"STAC item:    {outputs['stac_item']['href']}",
            f"water area:   {outputs['water_area_km2']:.3f} km² "
            f"({outputs['water_fraction']:.1%} of valid pixels)",
            f"WMS GetMap:   {outputs['layer']['value']['getmap']}",
            f"WMS:          {outputs['layer']['value']['getcapabilities']}",
            f"processes:    {base}/processes",
            f"viewer:       {base}/viewer",
        ]))
        if not exit_after:
            click.echo("serving; Ctrl-C to stop")
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)


for command in (search, publish_command, unpublish_command, reconcile_command):
    main.add_command(command)

if __name__ == "__main__":
    main()
