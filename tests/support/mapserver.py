"""Helpers and fixtures of the embedded-publisher tests (imported explicitly, not a conftest).

A small mask COG with known classes, in a UTM zone or in EPSG:4326, wrapped in a ``Product``:

    rows  64..127, cols  64..127  water (1)
    rows 192..255                 no data (255)
    elsewhere                     dry (0)
"""
from __future__ import annotations

import datetime as dt
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from flask import Flask, g
from PIL import Image
from rasterio.transform import Affine, from_origin
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from aquamask.processes.identity import Identity, current_identity, with_implied_roles
from aquamask.processes.publishing.mapserver import MapServerPublisher
from aquamask.processes.publishing.names import job_of
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import JobStore, job_store
from aquamask.processes.types import Layer, MaskStats, Product

SIZE = 256
WATER = (slice(64, 128), slice(64, 128))
NODATA_ROWS = slice(192, 256)
WATER_PIXEL = (96, 96)     # row, col: centre of the water block
DRY_PIXEL = (32, 32)
NODATA_PIXEL = (224, 128)
BLUE = (0, 112, 255)
BASE_URL = "http://127.0.0.1:5000"

GRIDS = {
    # 10 m pixels in UTM 30N, near Bilbao
    "EPSG:32630": from_origin(500000.0, 4800000.0, 10.0, 10.0),
    # 0.0001 degree pixels
    "EPSG:4326": from_origin(-3.0, 43.0, 0.0001, 0.0001),
}


def mask_array() -> np.ndarray:
    classes = np.zeros((SIZE, SIZE), np.uint8)
    classes[WATER] = 1
    classes[NODATA_ROWS, :] = 255
    return classes


@dataclass
class MaskFile:
    path: Path
    crs: str
    transform: Affine
    classes: np.ndarray

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        with rasterio.open(self.path) as src:
            return tuple(src.bounds)

    @property
    def bbox_wgs84(self) -> tuple[float, float, float, float]:
        return tuple(transform_bounds(self.crs, "EPSG:4326", *self.bounds, densify_pts=21))

    def centre(self, row: int, col: int, crs: str | None = None) -> tuple[float, float]:
        """The centre of a pixel, in the mask's CRS or in ``crs`` (x, y order)."""
        x, y = self.transform * (col + 0.5, row + 0.5)
        if crs and crs != self.crs:
            xs, ys = warp_transform(self.crs, crs, [x], [y])
            x, y = xs[0], ys[0]
        return x, y


def write_mask_cog(path: Path, crs: str = "EPSG:32630") -> MaskFile:
    """A uint8 mask COG like the pipeline writes: nodata 255, a colour table, mode overviews."""
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = mask_array()
    transform = GRIDS[crs]
    raw = path.with_suffix(".raw.tif")
    with rasterio.open(raw, "w", driver="GTiff", width=SIZE, height=SIZE, count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=255) as dst:
        dst.write(classes, 1)
        dst.write_colormap(1, {0: (0, 0, 0, 0), 1: (0, 112, 255, 255), 255: (0, 0, 0, 0)})
    cog_translate(raw, path, cog_profiles.get("deflate"), nodata=255,
                  overview_resampling="mode", quiet=True)
    raw.unlink()
    return MaskFile(path, crs, transform, classes)


def make_product(mask: MaskFile, product_id: str, title: str = "",
                 when: dt.datetime | None = None) -> Product:
    water = int((mask.classes == 1).sum())
    valid = int((mask.classes != 255).sum())
    return Product(id=product_id, directory=mask.path.parent, mask_cog=mask.path,
                   stac_item=mask.path.parent / "item.json",
                   stats=MaskStats(water, valid, mask.classes.size, water * 1e-4, valid * 1e-4),
                   bbox_wgs84=mask.bbox_wgs84, crs=mask.crs, title=title, datetime=when)


MANAGER = Identity("boss", with_implied_roles({"manager"}), issuer="https://idp.example.org")
ALICE = Identity("alice", with_implied_roles({"researcher"}), issuer="https://idp.example.org")
BOB = Identity("bob", with_implied_roles({"viewer"}), issuer="https://idp.example.org")
ANONYMOUS = Identity("anonymous", with_implied_roles({"researcher"}), anonymous=True)


@dataclass
class Catalogue:
    """A server's home for the map engine's tests: its settings, job store and publishing,
    with jobs added as a finished job of ``owner`` (a real job store, real files)."""

    settings: Settings

    @property
    def store(self) -> JobStore:
        return job_store(self.settings)

    @property
    def publisher(self) -> MapServerPublisher:
        return MapServerPublisher.from_settings(self.settings)

    def add_job(self, job_id: str, owner: Identity = ALICE, public: bool = False) -> None:
        if self.store.get(job_id) is None:
            self.store.add({"identifier": job_id, "process_id": "water-detection",
                            "status": "successful", "owner": owner.owner,
                            "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                            "inputs": {"public": public}, "submitted": True})

    def publish(self, mask: MaskFile, product_id: str, *, owner: Identity = ALICE,
                public: bool = False, title: str = "", when: dt.datetime | None = None,
                series: str | None = None) -> Layer:
        from aquamask.processes.publishing import service as publishing

        self.add_job(job_of(product_id), owner, public)
        return publishing.publish(make_product(mask, product_id, title, when), self.settings,
                                  series=series)

    def unpublish(self, job_id: str) -> None:
        from aquamask.processes.publishing import service as publishing

        publishing.unpublish(job_id, self.settings)

    def names(self) -> list[str]:
        return [row["name"] for row in self.store.layers()]


def catalogue_at(home: Path, base_url: str = BASE_URL, **overrides: str) -> Catalogue:
    settings = Settings.load(environ={"AQUAMASK__HOME": str(home),
                                      "AQUAMASK__SERVER__URL": base_url, **overrides})
    settings.ensure_dirs()
    JobStore(settings.database_url)  # the server creates the store when it starts
    return Catalogue(settings)


def ows_app(catalogue: Catalogue, identity: Identity | None = MANAGER) -> Flask:
    """/ows of ``catalogue`` as ``identity`` asks it (the server's auth sets it per request)."""
    from aquamask.server.ows import ows_blueprint

    app = Flask("ows-test")
    app.register_blueprint(ows_blueprint(catalogue.settings))

    @app.before_request
    def who() -> None:
        g.identity_token = current_identity.set(identity)

    @app.teardown_request
    def forget(_exc) -> None:
        current_identity.reset(g.pop("identity_token"))

    return app


def view_text(settings: Settings) -> str:
    """Every layer's mapfile text as MapServer reads it for a manager's capabilities: the
    view with each INCLUDEd block in place."""
    view = MapServerPublisher.from_settings(settings).view_mapfile(None, everyone=True)
    return re.sub(r'^  INCLUDE "([^"]+)"$', lambda m: Path(m.group(1)).read_text(),
                  view.read_text(), flags=re.M)


def png_rgba(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGBA"))


def image_pixel(bbox_xy: tuple[float, float, float, float], width: int, height: int,
                x: float, y: float) -> tuple[int, int]:
    """Row, col of the map image pixel holding (x, y), for a bbox in x/y order."""
    minx, miny, maxx, maxy = bbox_xy
    col = int((x - minx) / (maxx - minx) * width)
    row = int((maxy - y) / (maxy - miny) * height)
    return row, col


def layer_names(capabilities_xml: bytes) -> list[str]:
    return re.findall(r"<Name>((?:water|series)-[^<]+)</Name>", capabilities_xml.decode())


def coverage_ids(capabilities_xml: bytes) -> list[str]:
    return re.findall(r"<wcs:CoverageId>([^<]+)</wcs:CoverageId>", capabilities_xml.decode())


@pytest.fixture(scope="module")
def masks(tmp_path_factory) -> dict[str, MaskFile]:
    root = tmp_path_factory.mktemp("masks")
    return {crs: write_mask_cog(root / crs.replace(":", "-") / "mask.tif", crs) for crs in GRIDS}


@pytest.fixture
def catalogue(tmp_path) -> Catalogue:
    return catalogue_at(tmp_path / "home")


@pytest.fixture
def client(catalogue):
    return ows_app(catalogue).test_client()
