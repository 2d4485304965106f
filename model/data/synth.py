"""Synthetic clean fusion pairs from natural images that ship with scikit-image (no download).

Real VIF / MEF / MFF datasets cannot be fetched here, so ``latentfuse data synth`` renders pairs from the
photographs bundled in the scikit-image wheel (:data:`NATURAL_IMAGES`; all load offline, without pooch):

* **MEF** -- the photo is inverse-tone-mapped to a scene radiance (inverse Reinhard), then photographed
  twice through a camera response curve (gamma + soft highlight shoulder) at -s1 and +s2 EV: an under-exposed
  shot that keeps the highlights and an over-exposed one that opens the shadows.
* **MFF** -- a depth map (:func:`latentfuse.model.data.depth.estimate_depth`) drives a spatially varying defocus
  (thin-lens circle of confusion ∝ |d - d_focus|) rendered from a stack of Gaussian blurs; image A
  focuses near (depth quantile 0.2), image B far (0.8).
* **VIF** -- ``a`` is the photo; ``b`` a pseudo-thermal rendering: SLIC superpixels scored for
  "objectness" (near, saturated, central) and split by Otsu's threshold become warm objects, the background a cool temperature field
  that is warmer near the ground and cold in the sky, plus a faint low-pass trace of the scene
  structure; smooth, gray and low in texture like LWIR imagery.

Ground truth: by default (``gt="teachers"``) the FusionFM path -- teacher candidates, task-aware selection,
Fusion Refiner -- labels the clean pair, exactly as for a real dataset. ``gt="source"`` stores the
photo itself instead: for MEF/MFF it is a natural "ideal fusion", but for VIF it carries none of the
thermal content, so teacher labels are the default for every task, keeping supervision consistent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from latentfuse.model.data.depth import DepthEstimator, estimate_depth
from latentfuse.model.data.tasks import check_task
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import luma, to_rgb
from latentfuse.model.image_processing.filters import gaussian

# scikit-image sample photographs stored inside the wheel (checked to load without network).
NATURAL_IMAGES: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "immunohistochemistry",
    "hubble_deep_field", "camera", "coins", "clock", "moon", "grass", "gravel", "brick",
)
COLOUR_IMAGES: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")


def load_natural_image(name: str) -> np.ndarray:
    """One bundled scikit-image photograph as float32 [0, 1] (HxW or HxWx3)."""
    import skimage.data

    if name not in NATURAL_IMAGES:
        raise LatentfuseError(f"unknown natural image {name!r}: choose from {', '.join(NATURAL_IMAGES)}")
    try:
        img = getattr(skimage.data, name)()
    except Exception as err:
        raise LatentfuseError(f"scikit-image sample {name!r} is not available offline: {err}") from None
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    return (img.astype(np.float32) / 255.0) if img.dtype == np.uint8 else img.astype(np.float32)


def random_view(image: np.ndarray, rng: np.random.Generator, long_side: int) -> np.ndarray:
    """A random crop (50-100 % of each side), random horizontal flip, resized to ``long_side``."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = image[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scale = long_side / max(ch, cw)
    shape = (max(16, int(round(ch * scale / 16)) * 16), max(16, int(round(cw * scale / 16)) * 16))
    return resize(crop, shape + crop.shape[2:], order=1, anti_aliasing=True).astype(np.float32)


# --- MEF ------------------------------------------------------------------------------------------

def camera_response(radiance: np.ndarray, gamma: float, knee: float) -> np.ndarray:
    """Gamma encoding with a soft highlight shoulder: identity below ``knee``, tanh roll-off to white."""
    y = np.power(np.clip(radiance, 0, None), 1.0 / gamma)
    top = 1.0 - knee
    return np.where(y < knee, y, knee + top * np.tanh((y - knee) / top)).clip(0.0, 1.0)


def exposure_pair(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """(under, over) shots of the scene radiance behind ``image`` at -s1 / +s2 EV (s ~ U(1.5, 3))."""
    linear = np.power(np.clip(image, 0, 1), 2.2)
    radiance = linear / (1.05 - 0.95 * linear)  # inverse Reinhard: restore highlight range
    radiance *= 0.18 / max(float(np.median(radiance)), 1e-4)  # middle gray at 0.18
    gamma, knee = rng.uniform(1.8, 2.4), rng.uniform(0.75, 0.9)
    s_under, s_over = rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0)
    under = camera_response(radiance * 2.0 ** (-s_under), gamma, knee)
    over = camera_response(radiance * 2.0 ** s_over, gamma, knee)
    info = {"gamma": gamma, "knee": knee, "ev_under": -s_under, "ev_over": s_over}
    return under.astype(np.float32), over.astype(np.float32), info


# --- MFF ------------------------------------------------------------------------------------------

def defocus(image: np.ndarray, sigma_map: np.ndarray, levels: int = 9) -> np.ndarray:
    """Spatially varying Gaussian defocus: interpolate a stack of blurs at per-pixel ``sigma_map``."""
    s_max = float(sigma_map.max())
    if s_max <= 1e-6:
        return image.astype(np.float32)
    sigmas = np.linspace(0.0, s_max, levels)
    stack = np.stack([gaussian(image, s) for s in sigmas])
    pos = np.clip(sigma_map / s_max * (levels - 1), 0, levels - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, levels - 1)
    frac = pos - lo
    rows, cols = np.indices(sigma_map.shape)
    if image.ndim == 3:
        frac = frac[..., None]
    out = (1 - frac) * stack[lo, rows, cols] + frac * stack[hi, rows, cols]
    return out.astype(np.float32)


def focus_pair(image: np.ndarray, rng: np.random.Generator,
               depth_estimator: DepthEstimator | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(near-focused, far-focused) renderings with circle of confusion σ = σ_max·|d - d_f| / span."""
    depth = estimate_depth(image, depth_estimator)
    near, far = float(np.quantile(depth, 0.2)), float(np.quantile(depth, 0.8))
    s_max = rng.uniform(2.0, 4.0) * max(image.shape[:2]) / 256.0
    span = max(far - near, 1e-3)
    sig_a = s_max * np.clip(np.abs(depth - near) / span, 0, 1.5)
    sig_b = s_max * np.clip(np.abs(depth - far) / span, 0, 1.5)
    info = {"sigma_max": s_max, "focus_near": near, "focus_far": far}
    return defocus(image, sig_a), defocus(image, sig_b), info


# --- VIF ------------------------------------------------------------------------------------------

def thermal_rendering(image: np.ndarray, rng: np.random.Generator,
                      depth_estimator: DepthEstimator | None = None) -> tuple[np.ndarray, dict]:
    """Pseudo-LWIR image: warm objects on a cool, smooth background (see module docstring)."""
    from skimage.segmentation import slic

    img = to_rgb(image, None)
    h, w = img.shape[:2]
    gray = luma(img, "dot")
    depth = estimate_depth(img, depth_estimator)
    sat = img.max(-1) - img.min(-1)
    yy, xx = np.mgrid[0:h, 0:w]
    central = 1.0 - np.hypot((yy - h / 2) / h, (xx - w / 2) / w) * 1.4
    labels = slic(img, n_segments=int(rng.integers(40, 90)), compactness=10.0, start_label=0,
                  channel_axis=-1)
    n = labels.max() + 1
    count = np.bincount(labels.ravel(), minlength=n).astype(np.float64)

    def seg_mean(x: np.ndarray) -> np.ndarray:
        return np.bincount(labels.ravel(), weights=x.ravel(), minlength=n) / np.maximum(count, 1)

    objectness = seg_mean(1 - depth) + seg_mean(sat) + 0.7 * seg_mean(central)
    objectness += rng.normal(0, 0.05, n)  # which objects are warm is partly random, like real scenes
    # Otsu split of the area-weighted segment scores: whole objects, however large, turn warm.
    from skimage.filters import threshold_otsu

    hot = objectness > threshold_otsu(np.repeat(objectness, np.maximum(count.astype(int) // 16, 1)))
    # One body temperature with small per-part variation (LWIR objects look nearly uniform).
    temp = np.where(hot, np.clip(rng.uniform(0.75, 0.95) + rng.normal(0, 0.03, n), 0, 1), 0.0)
    hot_map = temp[labels]
    background = 0.15 + 0.3 * (1 - depth) - 0.1 * gaussian(gray, 4.0)
    structure = gaussian(gray, 1.5) - gaussian(gray, 6.0)  # faint, low-frequency trace of edges
    thermal = np.maximum(background, gaussian(hot_map, 1.5)) + 0.25 * structure
    thermal = gaussian(thermal, 1.0)
    lo, hi = np.quantile(thermal, 0.005), np.quantile(thermal, 0.995)
    thermal = 0.05 + 0.9 * np.clip((thermal - lo) / max(hi - lo, 1e-6), 0, 1)
    return thermal.astype(np.float32), {"segments": int(n), "hot_segments": int(hot.sum())}


# --- pairs and the synth command ------------------------------------------------------------------

@dataclass
class SynthPair:
    a: np.ndarray
    b: np.ndarray
    source: np.ndarray
    info: dict


def synth_pair(image: np.ndarray, task: str, rng: np.random.Generator,
               depth_estimator: DepthEstimator | None = None) -> SynthPair:
    """One clean pair for ``task`` rendered from a natural image (see module docstring)."""
    task = check_task(task)
    if task == "mef":
        a, b, info = exposure_pair(image, rng)
    elif task == "mff":
        a, b, info = focus_pair(image, rng, depth_estimator)
    else:
        rgb = to_rgb(image, None)
        b, info = thermal_rendering(rgb, rng, depth_estimator)
        a = rgb.astype(np.float32)
    return SynthPair(a=a, b=b, source=image.astype(np.float32), info=info)


def make_synthetic(task: str, out: str | os.PathLike, n: int, seed: int = 0, long_side: int = 256,
                   gt: str = "teachers", images: tuple[str, ...] | None = None, overwrite: bool = False,
                   depth_estimator: DepthEstimator | None = None,
                   progress: Callable | None = None) -> Path:
    """Write ``n`` clean pairs as ``a/``, ``b/``, ``gt/``, ``source/`` PNGs plus ``synth.json``.

    Sample ``i`` is seeded by ``(seed, i)`` so any subset regenerates identically. Written atomically.
    """
    from latentfuse.model.atomic import atomic_dir
    from latentfuse.model.data.labels import pseudo_label
    from latentfuse.model.image_io import write_image

    task = check_task(task)
    if gt not in ("teachers", "source"):
        raise LatentfuseError(f"--gt must be 'teachers' or 'source', got {gt!r}")
    if n < 1:
        raise LatentfuseError(f"number of pairs must be >= 1, got {n}")
    names = images or (COLOUR_IMAGES if task == "vif" else NATURAL_IMAGES)
    cache: dict[str, np.ndarray] = {}
    records = []
    out = Path(out)
    iterator = range(n) if progress is None else progress(range(n), desc=f"synth {task}", unit="pair")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i in iterator:
            rng = np.random.default_rng([seed, i])
            src_name = names[i % len(names)]
            if src_name not in cache:
                cache[src_name] = load_natural_image(src_name)
            view = random_view(cache[src_name], rng, long_side)
            pair = synth_pair(view, task, rng, depth_estimator)
            name = f"{task}_{i:05d}"
            label_info: dict = {}
            if gt == "teachers":
                label = pseudo_label(pair.a, pair.b, task, sample=name)
                target = label.image
                label_info = label.summary()
            else:
                target = pair.source
            write_image(tmp / "a" / f"{name}.png", pair.a)
            write_image(tmp / "b" / f"{name}.png", pair.b)
            write_image(tmp / "gt" / f"{name}.png", target)
            write_image(tmp / "source" / f"{name}.png", pair.source)
            records.append({"name": name, "source_image": src_name, "height": view.shape[0],
                            "width": view.shape[1], "render": pair.info, "label": label_info})
        meta = {"kind": "latentfuse-synthetic", "task": task, "n": n, "seed": seed, "long_side": long_side,
                "gt": gt, "pairs": records}
        (tmp / "synth.json").write_text(json.dumps(meta, indent=1, default=float))
    return out
