"""The detection methods, one registry (as titiler's ``algorithm`` registry and torchgeo's model
API): each method's name, description, per-block predictor, halo and default threshold. The
predictor, the process descriptions (the ``method`` enum the viewer reads), the CLI's choices
and the metric labels all come from here, so a method is added by one ``register`` call.

A method that needs the water model gets it loaded once per process (``load_model``), checked
against the bands the sources read (``DETECTION_BANDS``): weights trained on other bands are a
configuration error, not a silent mix-up.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from aquamask.model.indices import (
    INDEX_BINS,
    index_histogram,
    mndwi,
    ndwi,
    otsu_threshold_from_histogram,
    threshold_probability,
)
from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import ConfigError

if TYPE_CHECKING:
    from aquamask.model.inference import WaterModel
    from aquamask.processes.settings import Settings

Predict = Callable[[np.ndarray], np.ndarray]
"""Bands (len(DETECTION_BANDS), h, w) of reflectance x 10000 -> water probability (h, w)."""
_BAND = {name: i for i, name in enumerate(DETECTION_BANDS)}


@dataclass(frozen=True)
class Method:
    """``build(model)`` gives the per-block predictor (``model`` is None unless
    ``needs_model``); ``halo``: context pixels each block is read with, None for the model's
    own (``WaterModel.halo``). A scene-level method has ``fit`` instead: a first pass over
    the scene's blocks (no halo) gives its predictor."""

    name: str
    description: str
    build: Callable[["WaterModel | None"], Predict] | None = None
    needs_model: bool = False
    halo: int | None = 0
    default_threshold: float = 0.5
    fit: Callable[[Iterable[np.ndarray]], Predict] | None = None

    def predictor(self, model: "WaterModel | None") -> tuple[Predict, int]:
        """The per-block function and the halo it needs."""
        if self.build is None:
            raise ValueError(f"the {self.name} method is fitted to a whole scene (fit)")
        if self.needs_model and model is None:
            raise ValueError(f"the {self.name} method needs a loaded WaterModel")
        halo = self.halo if self.halo is not None else int(model.halo)  # type: ignore[union-attr]
        return self.build(model), halo


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}") from None


def names() -> tuple[str, ...]:
    return tuple(METHODS)


def described() -> str:
    """The methods in words, for process descriptions and the CLI's help."""
    return ", ".join(f"{m.name} ({m.description})" for m in METHODS.values())


def index_probability(index: np.ndarray) -> np.ndarray:
    """Map a normalised difference index in [-1, 1] onto [0, 1], so that the ``threshold``
    input means the same for every method: 0.5 is the customary index > 0 rule."""
    return np.clip((index + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def _index(index: Callable[[np.ndarray, np.ndarray], np.ndarray], a: str, b: str
           ) -> Callable[["WaterModel | None"], Predict]:
    return lambda _model: (lambda bands: index_probability(index(bands[_BAND[a]],
                                                                 bands[_BAND[b]])))


def _unet(model: "WaterModel | None") -> Predict:
    """The model's probability with its calibrated cut (``model.threshold``, fitted on
    out-of-fold logits) moved to 0.5 by a logit shift, so that the pipeline's threshold 0.5
    is the cut the model was evaluated at."""
    assert model is not None
    shift = float(np.log(model.threshold / (1.0 - model.threshold)))
    if shift == 0.0:
        return model.predict

    def predict(bands: np.ndarray) -> np.ndarray:
        p = np.clip(model.predict(bands), 1e-7, 1.0 - 1e-7)
        return (1.0 / (1.0 + (1.0 - p) / p * np.exp(shift))).astype(np.float32)
    return predict


register(Method("unet", "the trained model", build=_unet, needs_model=True, halo=None))
register(Method("ndwi", "spectral index > 0", build=_index(ndwi, "B03", "B08")))
register(Method("mndwi", "spectral index > 0", build=_index(mndwi, "B03", "B11")))


def _scene_mndwi(bands: np.ndarray) -> np.ndarray:
    return mndwi(bands[_BAND["B03"]], bands[_BAND["B11"]])


def _fit_otsu_mndwi(blocks: Iterable[np.ndarray]) -> Predict:
    """MNDWI above Otsu's threshold of the whole scene's histogram (block histograms add up,
    so memory stays bounded); a scene without valid pixels falls back to 0."""
    counts = np.zeros(INDEX_BINS, np.int64)
    for bands in blocks:
        counts += index_histogram(_scene_mndwi(bands))
    t = otsu_threshold_from_histogram(counts)
    t = t if np.isfinite(t) else 0.0
    return lambda bands: threshold_probability(_scene_mndwi(bands), t)


register(Method("otsu-mndwi", "spectral index > the scene's own Otsu threshold",
                fit=_fit_otsu_mndwi))


def _checked(model: "WaterModel", key: str) -> "WaterModel":
    if tuple(model.bands) != DETECTION_BANDS:
        raise ConfigError(f"{key}: the model reads the bands {model.bands}, the sources give "
                          f"{DETECTION_BANDS}")
    return model


def _device(device: str | None) -> str | None:
    return None if device in (None, "auto") else device


@lru_cache(maxsize=2)
def load_model(model: str | None, device: str | None, weights_dir: str | None = None
               ) -> "WaterModel":
    """The U-Net ``model`` names (shipped, or in ``weights_dir``; by name, never a path),
    loaded once per process (job workers run many blocks, the CLI one scene)."""
    from aquamask.model.inference import WaterModel, find_model  # torch only when needed

    try:
        path = find_model(model, weights_dir)
    except LookupError as err:
        raise ConfigError(f"detection.model: {err}") from None
    return _checked(WaterModel.load(path, device=_device(device)), "detection.model")


def load_weights_file(weights: str, device: str | None) -> "WaterModel":
    """Any weights file the CLI's user names (``aquamask train`` writes them), or a shipped
    model's name; a file that is not aquamask weights is the user's error, told in one line."""
    from aquamask.model.inference import WaterModel

    try:
        model = WaterModel.load(weights, device=_device(device))
    # torch.load's failures on a foreign file: unpickling, zip, missing keys, shapes
    except (OSError, RuntimeError, ValueError, KeyError, TypeError,
            pickle.UnpicklingError) as err:
        raise ConfigError(f"--weights {weights}: cannot be loaded as aquamask weights "
                          f"({err})") from None
    return _checked(model, f"--weights {weights}")


def model_for(method: str, settings: "Settings") -> "WaterModel | None":
    """The loaded model ``method`` needs (``detection.model`` on ``detection.device``)."""
    if not get(method).needs_model:
        return None
    d = settings.detection
    return load_model(d.model, d.device, d.weights_dir)


def threshold_for(method: str, settings: "Settings") -> float:
    """The threshold a request that gives none uses: ``detection.threshold``, else the
    method's own."""
    configured = settings.detection.threshold
    return get(method).default_threshold if configured is None else configured
