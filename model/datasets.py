"""Training/evaluation data: the 128 px chips and the Sen1Floods11 hand-labelled layout.

Both datasets yield ``(bands, label)``: ``bands`` float32 (6, H, W) reflectance x 10000 in the
order B02, B03, B04, B08, B11, B12 with NaN for no data, ``label`` uint8 (H, W) with 1 water,
0 dry and 255 ignore (no data in the label or in any band).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11", "B12")
IGNORE = 255
LAYOUTS = ("chips128", "sen1floods11")

# 1-based band numbers of BANDS in each source layout.
CHIPS128_BANDS = (2, 3, 4, 5, 6, 7)          # coastal, blue, green, red, NIR, SWIR1, SWIR2, ...
S2HAND_BANDS = (2, 3, 4, 8, 12, 13)          # B01..B08, B8A, B09, B10, B11, B12

SPLIT_SEED = 0
VAL_FRACTION = 0.2
SPLIT_FILE = Path(__file__).resolve().parent / "weights" / "chips128-split.json"


def _rasterio():
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    return rasterio


# ----------------------------------------------------------------------------- chips128
def chips128_ids(root: Path | str) -> list[int]:
    """Chip numbers that have both an image and a label, sorted."""
    root = Path(root)
    ids = []
    for p in (root / "images").glob("*.tif"):
        if p.stem.isdigit() and (root / "labels" / f"{p.stem}.png").exists():
            ids.append(int(p.stem))
    return sorted(ids)


def read_chip128(root: Path | str, chip_id: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    rasterio = _rasterio()
    root = Path(root)
    with rasterio.open(root / "images" / f"{chip_id}.tif") as ds:
        bands = ds.read(list(CHIPS128_BANDS)).astype(np.float32)
    label = np.array(Image.open(root / "labels" / f"{chip_id}.png")).astype(np.uint8)
    label = np.where(label > 1, IGNORE, label).astype(np.uint8)
    bad = ~np.isfinite(bands).all(axis=0)
    label[bad] = IGNORE
    return bands, label


class Chips128Dataset:
    """The ``water-chips-128`` layout: ``images/N.tif`` (12 bands, bands 2-7 used) and
    ``labels/N.png``. ``augment`` is accepted for interface symmetry; augmentation happens
    batch-wise in :mod:`aquamask.model.train`, so items are always returned unaugmented."""

    def __init__(self, root: Path | str, chip_ids: Sequence[int] | None = None,
                 augment: bool = False):
        self.root = Path(root)
        self.chip_ids = list(chip_ids) if chip_ids is not None else chips128_ids(self.root)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.chip_ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return read_chip128(self.root, self.chip_ids[i])

    def names(self) -> list[str]:
        return [str(c) for c in self.chip_ids]


# ----------------------------------------------------------------------------- Sen1Floods11
def sen1floods11_pairs(root: Path | str) -> list[tuple[Path, Path]]:
    """(S2Hand image, LabelHand label) pairs under ``root``, searched recursively. The label
    sits beside the image or in a sibling ``LabelHand`` folder (the dataset's own layout:
    ``.../HandLabeled/S2Hand/X_S2Hand.tif`` and ``.../HandLabeled/LabelHand/X_LabelHand.tif``)."""
    root = Path(root)
    pairs = []
    for img in sorted(root.rglob("*_S2Hand.tif")):
        name = img.name.replace("_S2Hand.tif", "_LabelHand.tif")
        for cand in (img.with_name(name), img.parent.parent / "LabelHand" / name):
            if cand.exists():
                pairs.append((img, cand))
                break
    return pairs


def read_s2hand(image: Path | str, label: Path | str | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Bands (6, H, W) float32 with NaN where the source is no data (0 or its nodata value),
    and the label as uint8 with 255 for -1 (no data) or no data in any band."""
    rasterio = _rasterio()
    with rasterio.open(image) as ds:
        bands = ds.read(list(S2HAND_BANDS)).astype(np.float32)
        nodata = ds.nodata if ds.nodata is not None else 0
    bands[bands == nodata] = np.nan
    bad = ~np.isfinite(bands).all(axis=0)
    bands[:, bad] = np.nan
    lab = None
    if label is not None:
        with rasterio.open(label) as ds:
            raw = ds.read(1)
        lab = np.where(raw == 1, 1, np.where(raw == 0, 0, IGNORE)).astype(np.uint8)
        lab[bad] = IGNORE
    return bands, lab


class Sen1Floods11Dataset:
    """The Sen1Floods11 hand-labelled layout (``*_S2Hand.tif`` with ``*_LabelHand.tif``,
    label -1 = no data). ``names`` restricts it to chips whose name (the part before
    ``_S2Hand``) is listed."""

    def __init__(self, root: Path | str, names: Iterable[str] | None = None,
                 augment: bool = False):
        self.root = Path(root)
        pairs = sen1floods11_pairs(self.root)
        if names is not None:
            keep = set(names)
            pairs = [p for p in pairs if p[0].name[: -len("_S2Hand.tif")] in keep]
        self.pairs = pairs
        self.augment = augment

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        bands, label = read_s2hand(*self.pairs[i])
        assert label is not None                # every pair names its label
        return bands, label

    def names(self) -> list[str]:
        return [p[0].name[: -len("_S2Hand.tif")] for p in self.pairs]


# ----------------------------------------------------------------------------- helpers
def validation_split(ids: Sequence, fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
                     ) -> tuple[list, list]:
    """(train, val): a seeded shuffle of the sorted ids, the first ``fraction`` of it being
    the validation part. Deterministic across platforms (numpy's legacy RandomState)."""
    ids = sorted(ids)
    order = np.random.RandomState(seed).permutation(len(ids))
    n_val = max(1, int(round(len(ids) * fraction))) if len(ids) > 1 else 0
    val = sorted(ids[i] for i in order[:n_val])
    val_set = set(val)
    train = [i for i in ids if i not in val_set]
    return train, val


def chips128_split(root: Path | str | None = None) -> tuple[list[int], list[int]]:
    """The documented chips128 split: the ids stored in ``weights/chips128-split.json`` when
    present (the split the shipped weights were trained with), else computed."""
    if SPLIT_FILE.exists():
        data = json.loads(SPLIT_FILE.read_text())
        return list(data["train"]), list(data["val"])
    if root is None:
        raise FileNotFoundError(SPLIT_FILE)
    return validation_split(chips128_ids(root))


def open_dataset(root: Path | str, layout: str, split: str = "all"):
    """The dataset of ``layout`` for ``split`` ("train", "val" or "all"). Sen1Floods11 has no
    split here: the shipped model was never trained on it, so it is used whole."""
    if layout == "chips128":
        if split == "all":
            return Chips128Dataset(root)
        train, val = chips128_split(root)
        available = set(chips128_ids(root))
        ids = [i for i in (val if split == "val" else train) if i in available]
        return Chips128Dataset(root, ids)
    if layout == "sen1floods11":
        return Sen1Floods11Dataset(root)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def read_layout(root: Path | str, layout: str, split: str = "all"
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (bands, label) pair of ``layout`` (and ``split``) read into memory."""
    ds = open_dataset(root, layout, split)
    return [ds[i] for i in range(len(ds))]
