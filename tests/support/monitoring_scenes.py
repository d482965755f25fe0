"""A local source of dated scenes for the monitoring tests, built from the real Sen1Floods11
chip in ../shared/data, with what each date should give computed here independently of the code
under test (NDWI water is green >= NIR; valid is SCL clear and no band at 0).

Eight dates, one 7-band GeoTIFF stack each (B02, B03, B04, B08, B11, B12 and SCL, described as
such; the acquisition time in the file name; cloud cover in a CLOUDY_PIXEL_PERCENTAGE tag) in
EPSG:32630 on a 10 m grid that the place's own grid is aligned with:

- d1 2023-01-10: the chip as it is
- d2 2023-02-09: a planted change: a block of land turned to water (``gain``) and the wettest
  block of the chip dried out (``loss``)
- d3 2023-03-11: SCL clouds over most of the place (valid fraction about 0.3)
- d4 2023-04-10: 80 % cloud cover in its metadata (above the tests' max_cloud_cover 50)
- d5 2023-05-10: a second planted lake (``gain2``)
- d6 2023-06-09: a truncated file: opens, but its pixels cannot be read (a failed date)
- d7 2023-07-09: the ``loss`` block dried out
- d8 2023-08-08: both planted lakes
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from pyproj import Transformer

from tests.support.standins import spain_chip
from tests.support.water_scenes import pixels_in_box

CRS = "EPSG:32630"
WEST, NORTH = 700_000.0, 4_220_000.0
SIZE = 512
MARGIN = 64
BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
GAIN = (slice(80, 160), slice(300, 420))
GAIN2 = (slice(330, 430), slice(80, 200))
CLOUD = (slice(0, 330), slice(0, 512))  # rows 0-330: most of the place
DATES = {
    "d1": ("2023-01-10T10:56:19", 5.0), "d2": ("2023-02-09T10:56:21", 4.0),
    "d3": ("2023-03-11T10:56:19", 20.0), "d4": ("2023-04-10T10:56:19", 80.0),
    "d5": ("2023-05-10T10:56:19", 6.0), "d6": ("2023-06-09T10:56:19", 3.0),
    "d7": ("2023-07-09T10:56:19", 2.0), "d8": ("2023-08-08T10:56:19", 1.0),
}
USABLE = ("d1", "d2", "d5", "d7", "d8")


@dataclass
class DateScene:
    key: str
    when: dt.datetime
    cloud: float
    bands: dict[str, np.ndarray]
    scl: np.ndarray
    path: Path
    corrupt: bool = False

    @property
    def day(self) -> str:
        return self.when.date().isoformat()

    @property
    def time(self) -> str:
        return self.when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Scenes:
    folder: Path
    bbox: list[float]
    window: tuple[int, int, int, int]  # row0, col0, height, width of the place's grid
    inside: np.ndarray  # the grid's pixels whose centre lies in the lon/lat box: the place
    dates: dict[str, DateScene] = field(default_factory=dict)
    loss: tuple[slice, slice] = (slice(0), slice(0))

    def _crop(self, array: np.ndarray) -> np.ndarray:
        row0, col0, height, width = self.window
        return array[row0:row0 + height, col0:col0 + width]

    def valid(self, key: str) -> np.ndarray:
        scene = self.dates[key]
        ok = np.isin(scene.scl, (4, 5, 6)) & np.all([scene.bands[b] != 0 for b in BANDS],
                                                     axis=0)
        return self._crop(ok) & self.inside

    def water(self, key: str) -> np.ndarray:
        scene = self.dates[key]
        wet = scene.bands["B03"].astype(np.float64) >= scene.bands["B08"].astype(np.float64)
        return self._crop(wet) & self.valid(key)

    def pixels(self) -> int:
        return int(self.inside.sum())


def _spectra(bands: dict[str, np.ndarray], label_water: np.ndarray) -> tuple[dict, dict]:
    green, nir = bands["B03"].astype(float), bands["B08"].astype(float)
    wet = label_water & (green > nir * 1.3)
    dry = ~label_water & (nir > green * 1.3)
    return ({b: int(np.median(bands[b][wet])) for b in BANDS},
            {b: int(np.median(bands[b][dry])) for b in BANDS})


def _paint(bands: dict[str, np.ndarray], scl: np.ndarray, block, spectrum: dict, scl_class: int):
    for b in BANDS:
        bands[b][block] = spectrum[b]
    scl[block] = scl_class


def _write(path: Path, bands: dict[str, np.ndarray], scl: np.ndarray, cloud: float) -> None:
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=7, dtype="uint16", crs=CRS,
                   transform=Affine(10, 0, WEST, 0, -10, NORTH), nodata=0, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        for i, band in enumerate(BANDS, start=1):
            dst.write(bands[band].astype("uint16"), i)
            dst.set_band_description(i, band)
        dst.write(scl.astype("uint16"), 7)
        dst.set_band_description(7, "SCL")
        dst.update_tags(CLOUDY_PIXEL_PERCENTAGE=str(cloud))


def place_bbox() -> list[float]:
    """A lon/lat box inside the tile's inner square (MARGIN px in from each edge)."""
    to_lonlat = Transformer.from_crs(CRS, "OGC:CRS84", always_xy=True)
    x0, x1 = WEST + MARGIN * 10, WEST + (SIZE - MARGIN) * 10
    y0, y1 = NORTH - (SIZE - MARGIN) * 10, NORTH - MARGIN * 10
    (w1, s1), (w2, n1), (e1, s2), (e2, n2) = (to_lonlat.transform(x, y) for x, y in
                                              ((x0, y0), (x0, y1), (x1, y0), (x1, y1)))
    return [round(max(w1, w2), 6), round(max(s1, s2), 6), round(min(e1, e2), 6),
            round(min(n1, n2), 6)]


def build_scenes(folder: Path) -> Scenes:
    from aquamask.processes.pipeline.sources.grid import grid_for
    from aquamask.processes.pipeline.sources.query import parse_bbox

    base, _ = spain_chip()
    import tests.support.standins as standins

    with rasterio.open(standins.SPAIN_LABEL) as src:
        label_water = src.read(1) == 1
    base = {b: base[b].astype(np.int32) for b in BANDS}
    base_scl = np.where(label_water, 6, 4).astype(np.uint8)
    water_spectrum, dry_spectrum = _spectra(base, label_water)
    # the wettest 100 x 100 block inside the place clear of the planted lakes: dried out on
    # d2 and d7
    wet = (base["B03"] >= base["B08"]).astype(np.int32)
    best, loss = -1, None

    def overlaps(row: int, col: int, block) -> bool:
        rows, cols = block
        return row < rows.stop and rows.start < row + 100 and col < cols.stop \
            and cols.start < col + 100

    for row in range(MARGIN, SIZE - MARGIN - 100, 20):
        for col in range(MARGIN, SIZE - MARGIN - 100, 20):
            if overlaps(row, col, GAIN) or overlaps(row, col, GAIN2):
                continue
            count = wet[row:row + 100, col:col + 100].sum()
            if count > best:
                best, loss = count, (slice(row, row + 100), slice(col, col + 100))
    bbox = place_bbox()
    grid = grid_for(parse_bbox(bbox))
    col0 = round((grid.transform.c - WEST) / 10)
    row0 = round((NORTH - grid.transform.f) / 10)
    assert str(grid.crs) == CRS and 0 < row0 and 0 < col0
    assert row0 + grid.height < SIZE and col0 + grid.width < SIZE
    scenes = Scenes(folder=folder, bbox=bbox, window=(row0, col0, grid.height, grid.width),
                    inside=pixels_in_box(bbox, grid), loss=loss)
    folder.mkdir(parents=True, exist_ok=True)
    for key, (when, cloud) in DATES.items():
        bands = {b: a.copy() for b, a in base.items()}
        scl = base_scl.copy()
        if key in ("d2", "d8"):
            _paint(bands, scl, GAIN, water_spectrum, 6)
        if key in ("d5", "d8"):
            _paint(bands, scl, GAIN2, water_spectrum, 6)
        if key in ("d2", "d7"):
            _paint(bands, scl, loss, dry_spectrum, 4)
        if key == "d3":
            scl[CLOUD] = 9
        stamp = when.replace("-", "").replace(":", "")
        path = folder / f"S2B_MSIL2A_{stamp}_T30SXH.tif"
        _write(path, bands, scl, cloud)
        corrupt = key == "d6"
        if corrupt:  # a COG (headers first) cut short: it opens, its pixels do not read
            cog = path.with_suffix(".cog.tif")
            rasterio.shutil.copy(path, cog, driver="COG", COMPRESS="DEFLATE")
            data = cog.read_bytes()
            cog.unlink()
            path.write_bytes(data[:len(data) * 2 // 5])
        scenes.dates[key] = DateScene(key=key, when=dt.datetime.fromisoformat(when).replace(
            tzinfo=dt.timezone.utc), cloud=cloud, bands=bands, scl=scl, path=path,
            corrupt=corrupt)
    return scenes


def field_csv(scenes: Scenes, areas: dict[str, float]) -> tuple[str, float]:
    """A gauge CSV over the usable dates whose values rise with the water area except for one
    swapped pair, plus rows that match nothing: (the CSV, its Spearman rho with the areas)."""
    order = sorted(USABLE, key=lambda k: areas[k])
    levels = {key: 10.0 + 2.0 * rank for rank, key in enumerate(order)}
    levels[order[1]], levels[order[2]] = levels[order[2]], levels[order[1]]  # one swap
    lines = ["Date,Value,Unit,Comment"]
    for key in USABLE:
        when = scenes.dates[key].when
        if key == "d5":  # a day after the acquisition: within the 1-day tolerance
            when = when + dt.timedelta(days=1)
        lines.append(f"{when.date().isoformat()},{levels[key]:.2f},m,gauge read")
    lines.append("2023-03-20,99.0,m,no acquisition within a day")
    lines.append("2023-09-30,98.5,m,after the series")
    n = len(USABLE)
    rho = 1 - 6 * 2 / (n * (n * n - 1))  # one swap of neighbours: sum of d^2 = 2
    return "\n".join(lines) + "\n", rho
