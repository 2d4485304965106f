"""Relative depth for depth-aware haze (MMAIF 3.1) and depth-layered defocus (synthetic MFF pairs).

MMAIF estimates depth with DepthAnything and then applies atmospheric scattering. No depth network can
be downloaded here, so the default is a documented monocular *prior*, and a real model plugs in from a
local directory (:class:`TransformersDepth`, any ``transformers`` depth-estimation checkpoint such as
Depth-Anything saved with ``save_pretrained``).

Every estimator is a callable ``image (HxW or HxWx3 float [0,1]) -> HxW float`` whose output
:func:`estimate_depth` normalises to [0, 1] with **1 = far**.

The prior (:func:`depth_prior`) mixes three classical monocular cues, each normalised to [0, 1]:

* vertical position -- in ground-level photographs the bottom rows are near and the top rows far
  (the "ground plane" cue used by Hoiem et al. 2005 style layouts);
* haze-like brightness -- bright, low-saturation regions (sky, distant walls) tend to be far; this is
  the luminance-minus-saturation cue behind the colour-attenuation prior (Zhu et al., TIP 2015:
  d ∝ θ0 + θ1·v + θ2·s with θ1 > 0, θ2 < 0);
* defocus -- regions with little local gradient energy are treated as farther (blur-based cue).

weights (0.5, 0.3, 0.2); the result is smoothed with an edge-aware guided filter so depth edges follow
image edges.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from latentfuse.model.errors import LatentfuseError, MissingDependencyError
from latentfuse.model.image_processing.color import luma, to_rgb
from latentfuse.model.image_processing.filters import gaussian, guided_filter

DepthEstimator = Callable[[np.ndarray], np.ndarray]

PRIOR_WEIGHTS = (0.5, 0.3, 0.2)  # vertical position, brightness - saturation, defocus


def _normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi - lo < 1e-12:
        return np.full(x.shape, 0.5, np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def depth_prior(image: np.ndarray) -> np.ndarray:
    """Monocular depth prior (1 = far) from vertical position, brightness/saturation and defocus cues."""
    img = np.asarray(image, np.float64)
    h, w = img.shape[:2]
    if img.ndim == 3:
        value = img.max(axis=-1)
        saturation = (value - img.min(axis=-1)) / np.maximum(value, 1e-6)
        gray = luma(img, "dot")
    else:
        value, saturation, gray = img, np.zeros_like(img), img
    vertical = np.repeat(np.linspace(1.0, 0.0, h)[:, None], w, axis=1)
    scale = max(h, w) / 64.0  # cues are measured at a resolution-independent scale
    brightness = gaussian(value - saturation, 2.0 * scale)
    grad = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
    defocus = -gaussian(grad, 3.0 * scale)
    wv, wb, wd = PRIOR_WEIGHTS
    raw = wv * vertical + wb * _normalise(brightness) + wd * _normalise(defocus)
    radius = max(2, int(round(max(h, w) / 32)))
    return _normalise(guided_filter(gray, raw, radius, 1e-3))


def estimate_depth(image: np.ndarray, estimator: DepthEstimator | None = None) -> np.ndarray:
    """Depth in [0, 1] (1 = far) at the image's resolution, from ``estimator`` or :func:`depth_prior`."""
    if estimator is None:
        return depth_prior(image)
    out = np.asarray(estimator(image), dtype=np.float64)
    if out.ndim == 3 and out.shape[-1] == 1:
        out = out[..., 0]
    if out.ndim != 2:
        raise LatentfuseError(f"depth estimator returned shape {out.shape}, expected an HxW map")
    if not np.isfinite(out).all():
        raise LatentfuseError("depth estimator returned NaN or Inf values")
    h, w = image.shape[:2]
    if out.shape != (h, w):
        from skimage.transform import resize

        out = resize(out, (h, w), order=1, anti_aliasing=False)
    return _normalise(out)


class TransformersDepth:
    """A ``transformers`` depth-estimation pipeline loaded from a local directory (no network).

    Depth-Anything / DPT checkpoints predict relative *inverse* depth (large = near), so by default the
    output is flipped to the 1 = far convention (``disparity=True``).
    """

    def __init__(self, model_dir: str | os.PathLike, disparity: bool = True, device: str | int = "cpu"):
        path = Path(model_dir)
        if not path.is_dir():
            raise LatentfuseError(f"depth model directory not found: {path}")
        if not (path / "config.json").is_file():
            raise LatentfuseError(f"{path} is not a transformers model directory (no config.json)")
        try:
            from transformers import pipeline
        except ImportError as err:  # pragma: no cover - transformers is a core dependency
            raise MissingDependencyError("transformers", purpose="depth estimation") from err
        try:
            self._pipe = pipeline("depth-estimation", model=str(path), device=device, local_files_only=True)
        except TypeError:
            self._pipe = pipeline("depth-estimation", model=str(path), device=device)
        except Exception as err:
            raise LatentfuseError(f"cannot load depth model from {path}: {type(err).__name__}: {err}") from None
        self.disparity = disparity

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        arr = to_rgb(image)
        pil = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
        result = self._pipe(pil)
        pred = result["predicted_depth"]
        pred = pred.detach().float().cpu().numpy() if hasattr(pred, "detach") else np.asarray(pred)
        pred = np.squeeze(pred)
        return -pred if self.disparity else pred


def load_depth_estimator(model_dir: str | os.PathLike | None) -> DepthEstimator | None:
    """``None`` (use the prior) or a :class:`TransformersDepth` from ``model_dir``."""
    return None if model_dir is None else TransformersDepth(model_dir)
