"""Rasters worked through block by block (bounded memory for any size): the windows, and the
tiled GeoTIFF a block-wise step writes into (uncompressed: the COG writer reads it once more,
and compresses)."""
from __future__ import annotations

from typing import Any, Iterator

from rasterio.windows import Window

BLOCK = 1024  # pixels per side of the blocks read, predicted and written at a time


def windows(width: int, height: int, block: int = BLOCK) -> Iterator[Window]:
    """The blocks of a ``width`` x ``height`` raster, row by row."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def gtiff_profile(profile: dict[str, Any], dtype: str, nodata: Any, count: int = 1
                  ) -> dict[str, Any]:
    """The profile of a tiled GeoTIFF on the grid of ``profile``."""
    out = {k: profile[k] for k in ("width", "height", "crs", "transform")}
    out.update(driver="GTiff", count=count, dtype=dtype, nodata=nodata, tiled=True,
               blockxsize=256, blockysize=256, BIGTIFF="IF_SAFER")
    return out
