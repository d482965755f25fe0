"""Loading the water U-Net and running it on arrays of any size.

``WaterModel.predict`` takes float32 (6, H, W) reflectance x 10000 in the band order of
``WaterModel.bands`` with NaN for no data, and returns float32 (H, W) water probability in
[0, 1] with NaN where any band is NaN. Large inputs are cut into overlapping tiles whose
predictions are blended with a cosine window, so seams do not show (a 1024 px pipeline block
with its halo fits one tile). Optionally (``scale`` 2) the network runs at half resolution
and its logits are upsampled bilinearly; bfloat16 autocast is used where the CPU has native
bf16. See the model card for the size/accuracy/speed table.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aquamask.model.features import N_BANDS, network_input
from aquamask.model.network import UNet, pad_to_multiple
from aquamask.model.refine import guide_bands, guided_upsample, masked_mean_pool

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_NAME = "unet-s2-water"
SUPPORTED_FORMATS = (1,)
PRECISIONS = ("fp32", "bf16")
ENGINES = ("eager", "torchscript")
# pixels (at network resolution) per forward pass: bounds the activation memory on CPU
MAX_BATCH_PIXELS = 4 * 512 * 512
# largest tile (at network resolution): a 1024 px pipeline block plus its 32 px halo runs in
# one pass (a tile of up to 1152 x 1152 px). Older weights stored 512: the tile is
# an inference setting (memory, speed), not part of the model, so the larger one is used.
MIN_TILE = 1152
BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11", "B12")


def select_device(preferred: str | None = None) -> torch.device:
    """CUDA when available, else CPU. ``"cpu"`` is honoured as is; ``"cuda"`` (or
    ``"cuda:N"``) is honoured when CUDA is available and otherwise falls back to CPU with a
    warning; ``None`` or ``"auto"`` picks for you."""
    pref = (preferred or "auto").strip().lower()
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref.startswith("cuda"):
        if torch.cuda.is_available():
            return torch.device(pref)
        log.warning("device %r requested but CUDA is not available: using the CPU", preferred)
        return torch.device("cpu")
    raise ValueError(f"unknown device {preferred!r}; expected 'auto', 'cpu' or 'cuda[:N]'")


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX): only then is
    ``torch.autocast("cpu", torch.bfloat16)`` faster than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))
    except Exception:                                   # private API: absent in some builds
        return False


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision of ``precision="bf16"`` on ``device``: bfloat16 on the CPU,
    float16 on CUDA (tensor cores; the logits are cast back to float32)."""
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def _version_key(path: Path) -> tuple[int, ...]:
    m = re.search(r"-(\d+)\.(\d+)\.(\d+)\.pt$", path.name)
    return tuple(int(g) for g in m.groups()) if m else (-1,)


def default_weights(name: str = DEFAULT_NAME, folder: Path = WEIGHTS_DIR) -> Path:
    """The newest weights file of ``name`` in ``folder`` (its highest semantic version)."""
    found = sorted(folder.glob(f"{name}-*.pt"), key=_version_key)
    found = [p for p in found if re.fullmatch(rf"{re.escape(name)}-\d+\.\d+\.\d+\.pt", p.name)]
    if not found:
        raise FileNotFoundError(f"no {name}-X.Y.Z.pt weights in {folder}")
    return found[-1]


def shipped_models(folder: Path = WEIGHTS_DIR) -> list[str]:
    """Names of the models in ``folder`` (default: the shipped ones; each loadable by name)."""
    names = {m.group(1) for p in folder.glob("*.pt")
             if (m := re.fullmatch(r"(.+)-\d+\.\d+\.\d+\.pt", p.name))}
    return sorted(names)


# a model's name or name-version: a file name in an allow-listed folder, never a path
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def find_model(name: str | None, extra: Path | str | None = None) -> Path:
    """The weights file of a model named (never a path): ``name-X.Y.Z`` exactly, or the
    newest version of ``name``; looked up in the shipped ``WEIGHTS_DIR``, then in ``extra``
    (an operator's folder). None: the newest default model. LookupError if none matches."""
    name = name or DEFAULT_NAME
    if not MODEL_NAME.fullmatch(name):
        raise LookupError(f"{name!r} is not a model name (name or name-X.Y.Z, not a path)")
    folders = [WEIGHTS_DIR, *([Path(extra)] if extra else [])]
    for folder in folders:
        if (folder / f"{name}.pt").is_file():
            return folder / f"{name}.pt"
        try:
            return default_weights(name, folder)
        except FileNotFoundError:
            pass
    known = sorted({n for f in folders if f.is_dir() for n in shipped_models(f)})
    raise LookupError(f"no model {name!r} in {', '.join(map(str, folders))} "
                      f"(models there: {', '.join(known)})")


def resolve_weights(weights: str | Path | None) -> Path:
    """The weights file ``weights`` names: None -> the newest default model; a shipped
    model's name (``unet-s2-water-fast``) -> its newest version; a shipped file's name
    (``unet-s2-water-1.2.0``, with or without ``.pt``) -> that file; else a path."""
    if weights is None:
        return default_weights()
    text = str(weights)
    if not any(sep in text for sep in ("/", "\\")) and not Path(text).exists():
        try:
            return find_model(text[:-3] if text.endswith(".pt") else text)
        except LookupError:
            pass
    return Path(weights)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _axis_tiles(n: int, max_tile: int, overlap: int, multiple: int) -> tuple[int, list[int]]:
    """Tile length and start offsets covering ``n`` pixels with at least ``overlap`` pixels
    of overlap, using the fewest tiles of at most ``max_tile`` and making them as small as
    that allows (a multiple of ``multiple``, or ``n`` itself when one tile is enough)."""
    if n <= max_tile:
        return n, [0]
    count = math.ceil((n - overlap) / (max_tile - overlap))
    tile = math.ceil((n + (count - 1) * overlap) / count)
    tile = min(max_tile, -(-tile // multiple) * multiple)
    starts = [round(i * (n - tile) / (count - 1)) for i in range(count)]
    return tile, starts


def _window(length: int, ramp: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D blending weights: a raised-cosine ramp over ``ramp`` pixels at each tile edge that
    is inside the image (edges on the image border keep full weight)."""
    w = np.ones(length, dtype=np.float32)
    r = min(ramp, length // 2)
    if r > 0:
        ramp_up = (0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r)).astype(np.float32)
        if not at_start:
            w[:r] = np.maximum(ramp_up, 1e-3)
        if not at_end:
            w[length - r:] = np.maximum(ramp_up[::-1], 1e-3)
    return w


class WaterModel:
    """A trained water U-Net with its normalisation, calibration and provenance.

    Speed settings (attributes, changeable after ``load``):

    - ``scale``: the network runs on the input averaged over ``scale`` x ``scale`` pixels and
      its logits are upsampled bilinearly (the weights' ``scale``, 1 for old weights). 2 means
      a 10 m Sentinel-2 scene is seen at 20 m, close to the ~30 m of the training chips, with
      a quarter of the network work. ``predict(bands, scale=1)`` overrides it per call (e.g.
      for inputs that are already coarse, like the 30 m training chips).
    - ``precision``: "bf16" (``torch.autocast`` bfloat16, the CPU default where the CPU has
      native bf16, and float16 autocast on CUDA) or "fp32". $AQUAMASK_MODEL_PRECISION
      overrides the default.
    - ``engine``: "eager" or "torchscript" (traced and frozen network, ``export_torchscript``).
      Default: TorchScript for float32 on the CPU (~1.4x faster than eager there), eager
      otherwise (bf16 autocast eager is faster still; CUDA runs eager).
    """

    def __init__(self, net: UNet, meta: dict, *, path: Path | None = None,
                 sha256: str = "", device: torch.device | None = None,
                 precision: str | None = None, engine: str | None = None):
        self.device = device or torch.device("cpu")
        self.net = net.to(self.device).eval()
        if self.device.type == "cpu":                 # ~1.6x faster convolutions on CPU
            # torch's stub of Module.to lacks memory_format
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.meta = meta
        self.path = path
        self.name: str = str(meta.get("name", DEFAULT_NAME))
        self.version: str = str(meta.get("version", "0.0.0"))
        self.weights_sha256: str = sha256
        self.bands: tuple[str, ...] = tuple(meta.get("bands", BANDS))
        self.temperature: float = float(meta.get("temperature", 1.0))
        self.threshold: float = float(meta.get("threshold", 0.5))
        self.halo: int = int(meta.get("halo", 32))
        self.tile: int = max(int(meta.get("tile", 512)), MIN_TILE)
        self.overlap: int = int(meta.get("overlap", 64))
        self.scale: int = int(meta.get("scale", 1))
        # guided refinement at full resolution when scale > 1 (None: bilinear upsampling)
        self.refine: dict | None = meta.get("refine")
        self.batch_size: int = max(1, MAX_BATCH_PIXELS // (self.tile * self.tile))
        norm = meta["normalisation"]
        self._mean = torch.tensor(norm["mean"], dtype=torch.float32)
        self._std = torch.tensor(norm["std"], dtype=torch.float32)
        if precision is None:
            precision = os.environ.get("AQUAMASK_MODEL_PRECISION") or (
                "bf16" if self.device.type == "cuda" or cpu_bf16_supported() else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
        if engine is None:
            engine = "torchscript" if (self.device.type == "cpu" and precision == "fp32") \
                else "eager"
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {ENGINES}")
        self.precision: str = precision
        self.engine: str = engine
        self._scripted = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, weights: str | Path | None = None, device: str | None = None, *,
             precision: str | None = None, engine: str | None = None) -> "WaterModel":
        """Load weights onto ``device`` (None: auto): a file, a shipped model's name (its
        newest version) or None (the newest default model); see :func:`resolve_weights`."""
        path = resolve_weights(weights)
        blob = torch.load(path, map_location="cpu", weights_only=True)
        fmt = blob.get("format")
        if fmt not in SUPPORTED_FORMATS:
            raise ValueError(f"{path}: weights format {fmt!r} not supported "
                             f"(this aquamask reads {SUPPORTED_FORMATS})")
        net = UNet(**blob["architecture"])
        net.load_state_dict(blob["state_dict"])
        meta = {k: v for k, v in blob.items() if k != "state_dict"}
        return cls(net, meta, path=path, sha256=sha256_file(path),
                   device=select_device(device), precision=precision, engine=engine)

    def info(self) -> dict:
        """Provenance for product metadata."""
        return {"name": self.name, "version": self.version, "sha256": self.weights_sha256,
                "bands": list(self.bands), "threshold": self.threshold,
                "temperature": self.temperature, "device": str(self.device),
                "scale": self.scale, "refine": self.refine, "precision": self.precision,
                "engine": self.engine}

    # ------------------------------------------------------------------ export
    def export_torchscript(self, path: str | Path | None = None, tile: int = 256):
        """The network traced and frozen with TorchScript (saved to ``path`` when given).
        Input: standardised features (N, 8, H, W); output: logits (N, 1, H, W)."""
        example = torch.zeros(1, self.net.in_channels, tile, tile, device=self.device)
        if self.device.type == "cpu":
            example = example.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")            # tracer and deprecation notices
            traced = torch.jit.freeze(torch.jit.trace(self.net.eval(), example,
                                                      check_trace=False))
        if path is not None:
            traced.save(str(path))
        return traced

    # ------------------------------------------------------------------ inference
    def _network(self):
        if self.engine == "torchscript":
            if self._scripted is None:
                self._scripted = self.export_torchscript()
            return self._scripted
        return self.net

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Network logits (N, H, W) float32 for standardised features (N, 8, H, W)."""
        h, w = x.shape[-2:]
        # padded here, not in the network, so that a traced network never meets a shape
        # its trace did not cover
        x = pad_to_multiple(x.to(self.device), self.net.multiple)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        # a frozen float32 trace does not take autocast: bf16 always runs eager
        net = self.net if self.precision == "bf16" else self._network()
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=autocast_dtype(self.device)):
                z = net(x)
        else:
            z = net(x)
        return z[:, 0, :h, :w].float()

    def _tiled_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits (h, w) of standardised features (1, 8, h, w): one pass when the array fits
        a tile, else overlapping tiles blended with a raised-cosine window."""
        h, w = feats.shape[-2:]
        if h <= self.tile and w <= self.tile:
            return self.logits(feats)[0].cpu()
        multiple = self.net.multiple
        th, rows = _axis_tiles(h, self.tile, self.overlap, multiple)
        tw, cols = _axis_tiles(w, self.tile, self.overlap, multiple)
        ramp = self.overlap // 2
        wins_r = {r: torch.from_numpy(_window(th, ramp, r == 0, r + th >= h)) for r in rows}
        wins_c = {c: torch.from_numpy(_window(tw, ramp, c == 0, c + tw >= w)) for c in cols}
        out = torch.zeros((h, w))
        weight = torch.zeros((h, w))
        boxes = [(r, c) for r in rows for c in cols]
        batch = max(1, MAX_BATCH_PIXELS // (th * tw))
        for i in range(0, len(boxes), batch):
            part = boxes[i:i + batch]
            z = self.logits(torch.cat([feats[:, :, r:r + th, c:c + tw] for r, c in part]))
            for (r, c), zi in zip(part, z.cpu()):
                win = wins_r[r][:, None] * wins_c[c][None, :]
                out[r:r + th, c:c + tw] += zi * win
                weight[r:r + th, c:c + tw] += win
        return out / weight

    def _check(self, bands: np.ndarray) -> None:
        if bands.ndim != 3 or bands.shape[0] != N_BANDS:
            raise ValueError(f"expected ({N_BANDS}, H, W) bands {self.bands}, "
                             f"got shape {bands.shape}")

    def _inputs(self, bands: np.ndarray, scale: int | None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
        """(bands as a tensor, the no-data mask or None when there is no NaN, standardised
        network features (1, 8, h, w), the scale used): the input averaged over scale x scale
        cells (no-data aware: a cell is no data only where all of it is) when it is at least
        two cells across."""
        s = max(1, int(self.scale if scale is None else scale))
        x = torch.from_numpy(np.ascontiguousarray(bands, dtype=np.float32))
        nodata = None
        if bool(torch.isnan(x.sum())):                     # one cheap pass when all is valid
            nodata = torch.isnan(x).any(dim=0)
            x = torch.where(nodata, torch.nan, x)          # no data in one band: in all
        if s > 1 and min(x.shape[1:]) >= 2 * s:
            coarse, _ = masked_mean_pool(x, s, has_nan=nodata is not None)
        else:
            s, coarse = 1, x
        return x, nodata, network_input(coarse, self._mean, self._std), s

    def network_features(self, bands: np.ndarray, scale: int | None = None) -> torch.Tensor:
        """The standardised features (1, 8, h, w) the network sees for (6, H, W) bands: the
        input of the forward pass inside :meth:`predict` (for benchmarks)."""
        self._check(bands)
        with torch.inference_mode():
            return self._inputs(bands, scale)[2]

    def predict(self, bands: np.ndarray, *, scale: int | None = None,
                refine: bool | None = None) -> np.ndarray:
        """Water probability (H, W) float32 in [0, 1] for (6, H, W) reflectance x 10000,
        NaN where any band is NaN. ``scale`` overrides the model's network resolution factor
        for this call (1: run at the input's own resolution, e.g. for 30 m input);
        ``refine`` overrides whether the guided refinement draws the edges at full
        resolution when ``scale`` > 1 (default: the weights' ``refine``)."""
        self._check(bands)
        _, h, w = bands.shape
        if h == 0 or w == 0:
            return np.zeros((h, w), dtype=np.float32)
        use_refine = self.refine if refine is None or refine else None
        with torch.inference_mode():
            x, nodata, feats, s = self._inputs(bands, scale)
            if nodata is not None and bool(nodata.all()):
                return np.full((h, w), np.nan, dtype=np.float32)
            z = self._tiled_logits(feats)
            inv_t = 1.0 / self.temperature
            if s == 1:
                prob = torch.sigmoid(z * inv_t)
            elif use_refine:
                guide = guide_bands(x, use_refine["guides"])
                guide_coarse, _ = masked_mean_pool(guide, s, has_nan=nodata is not None)
                prob = guided_upsample(torch.sigmoid(z * inv_t), guide_coarse, guide, s,
                                       int(use_refine["radius"]), float(use_refine["eps"]))
            else:
                z = F.interpolate(z[None, None], scale_factor=s, mode="bilinear",
                                  align_corners=False)[0, 0, :h, :w]
                prob = torch.sigmoid(z * inv_t)
            if nodata is not None:
                prob = torch.where(nodata, torch.nan, prob)
            return prob.numpy().astype(np.float32, copy=False)
