"""Compose degradations on a clean pair, with the task rules of MMAIF section 3.1.

One call of :func:`degrade_pair`:

1. crops the pair **and the ground truth** with the same random aspect-ratio window (16:9, 4:3 or 1:1,
   landscape or portrait) and optionally resizes all three to a target long side -- the GT is only ever
   cropped / resized, never degraded;
2. draws n ∈ {1, 2, 3} distinct degradation types from the task's set (:mod:`latentfuse.model.data.tasks`);
3. applies them in a physical order (scene → optics → sensor → codec, :data:`APPLY_ORDER`) and routes
   each to the image(s) the paper's rules say it affects (:func:`targets`): for VIF, weather (rain, snow,
   haze) goes on the visible image while the infrared image gets a mild blur; low exposure on the
   visible image; low contrast and IR dark strips on the infrared image. MEF and MFF pairs are two shots
   of one scene, so every degradation hits both;
4. draws a prompt for the chosen list (:mod:`latentfuse.model.data.prompts`).

Parameters are drawn once per degradation (the two shots share a camera); random content (noise, rain
streaks) is drawn independently per image. Everything comes from the ``numpy.random.Generator`` given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from latentfuse.model.data import degradations as D
from latentfuse.model.data.depth import DepthEstimator, estimate_depth
from latentfuse.model.data.prompts import sample_prompt
from latentfuse.model.data.tasks import WEATHER, check_task, task_degradations
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import to_rgb

ASPECT_RATIOS: dict[str, tuple[int, int]] = {"16:9": (16, 9), "4:3": (4, 3), "1:1": (1, 1)}
N_CHOICES: tuple[int, ...] = (1, 2, 3)
MIN_CROP_SCALE = 0.6  # the crop's long side covers 60-100 % of the largest window of that ratio

APPLY_ORDER: tuple[str, ...] = (
    "haze", "rain", "snow",                             # scene / atmosphere
    "low_exposure", "high_exposure", "low_contrast",    # exposure and tone
    "gaussian_blur", "motion_blur", "downsample",       # optics
    "noise", "ir_strips",                               # sensor
    "jpeg",                                             # codec
)

# Pairs that contradict each other in one capture.
EXCLUSIVE: tuple[frozenset[str], ...] = (frozenset({"low_exposure", "high_exposure"}),)


@dataclass
class DegradedSample:
    """A degraded pair with its clean counterpart, the untouched GT (cropped alongside) and a prompt."""

    a: np.ndarray
    b: np.ndarray
    clean_a: np.ndarray
    clean_b: np.ndarray
    gt: np.ndarray | None
    task: str
    degradations: list[str]
    prompt: str
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    crop: dict[str, Any] = field(default_factory=dict)


def targets(task: str, name: str) -> tuple[str, ...]:
    """Which images of the pair (``'a'``, ``'b'``) degradation ``name`` affects for ``task``.

    VIF: ``a`` is visible, ``b`` infrared. Weather and low exposure hit the visible image, low contrast
    and dark strips the infrared image (thermal sensors: low contrast, stripe noise), and the rest both.
    """
    if check_task(task) == "vif":
        if name in WEATHER or name == "low_exposure":
            return ("a",)
        if name in ("low_contrast", "ir_strips"):
            return ("b",)
    return ("a", "b")


def choose_degradations(task: str, rng: np.random.Generator, n: int | Sequence[int] = N_CHOICES) -> list[str]:
    """Draw n distinct degradations for ``task`` (n uniform over ``n`` if a sequence), in apply order."""
    pool = list(task_degradations(task))
    counts = [int(n)] if np.isscalar(n) else [int(k) for k in n]
    if not counts or min(counts) < 0 or max(counts) > 3:
        raise LatentfuseError(f"number of degradations must be in 0..3, got {n}")
    k = counts[int(rng.integers(len(counts)))]
    for _ in range(100):
        chosen = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
        if not any(pair <= set(chosen) for pair in EXCLUSIVE):
            return sorted(chosen, key=APPLY_ORDER.index)
    raise LatentfuseError(f"cannot draw {k} compatible degradations for task {task}")  # pragma: no cover


def random_crop_box(shape: tuple[int, int], rng: np.random.Generator,
                    ratios: Sequence[str] = tuple(ASPECT_RATIOS)) -> dict[str, Any]:
    """A random window with a random aspect ratio (either orientation) inside an HxW image."""
    h, w = shape
    name = ratios[int(rng.integers(len(ratios)))]
    rw, rh = ASPECT_RATIOS[name]
    if rng.random() < 0.5:
        rw, rh = rh, rw  # portrait
    unit = min(w / rw, h / rh)  # largest window of this ratio
    unit *= rng.uniform(MIN_CROP_SCALE, 1.0)
    cw, ch = max(1, int(round(unit * rw))), max(1, int(round(unit * rh)))
    cw, ch = min(cw, w), min(ch, h)
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return {"ratio": f"{rw}:{rh}", "top": top, "left": left, "height": ch, "width": cw}


def _crop_resize(image: np.ndarray, box: dict[str, Any], out_hw: tuple[int, int] | None) -> np.ndarray:
    t, l, h, w = box["top"], box["left"], box["height"], box["width"]
    crop = np.asarray(image, np.float32)[t:t + h, l:l + w]
    if out_hw is None or out_hw == crop.shape[:2]:
        return np.ascontiguousarray(crop)
    from skimage.transform import resize

    shape = tuple(out_hw) + crop.shape[2:]
    return resize(crop, shape, order=1, anti_aliasing=True, mode="reflect").astype(np.float32)


def output_size(box: dict[str, Any], long_side: int | None, multiple: int = 16) -> tuple[int, int] | None:
    """Target HxW with the crop's aspect ratio, long side ``long_side``, both a multiple of ``multiple``."""
    if long_side is None:
        return None
    h, w = box["height"], box["width"]
    scale = long_side / max(h, w)
    return (max(multiple, int(round(h * scale / multiple)) * multiple),
            max(multiple, int(round(w * scale / multiple)) * multiple))


def _check_pair(a: np.ndarray, b: np.ndarray, gt: np.ndarray | None) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise LatentfuseError(f"pair images differ in size: {a.shape[:2]} vs {b.shape[:2]}")
    if gt is not None and gt.shape[:2] != a.shape[:2]:
        raise LatentfuseError(f"ground truth size {gt.shape[:2]} differs from the pair's {a.shape[:2]}")


def degrade_pair(a: np.ndarray, b: np.ndarray, gt: np.ndarray | None, task: str, rng: np.random.Generator,
                 n: int | Sequence[int] = N_CHOICES, degradations: Sequence[str] | None = None,
                 long_side: int | None = None, crop: bool = True,
                 depth_estimator: DepthEstimator | None = None) -> DegradedSample:
    """Crop (and resize) the pair and GT together, then degrade the pair; see the module docstring.

    ``degradations`` fixes the list instead of drawing it (validated against the task); ``long_side``
    resizes the crop so its long side has that many pixels (dims multiples of 16).
    """
    task = check_task(task)
    _check_pair(a, b, gt)
    h, w = a.shape[:2]
    box = random_crop_box((h, w), rng) if crop else {"ratio": "full", "top": 0, "left": 0, "height": h, "width": w}
    hw = output_size(box, long_side)
    clean_a, clean_b = _crop_resize(a, box, hw), _crop_resize(b, box, hw)
    gt_out = None if gt is None else _crop_resize(gt, box, hw)

    if degradations is None:
        chosen = choose_degradations(task, rng, n)
    else:
        allowed = task_degradations(task)
        bad = [d for d in degradations if d not in allowed]
        if bad:
            raise LatentfuseError(f"degradation(s) {bad} are not used for task {task}: choose from {allowed}")
        chosen = sorted(dict.fromkeys(degradations), key=APPLY_ORDER.index)

    out = {"a": clean_a.copy(), "b": clean_b.copy()}
    params: dict[str, dict[str, Any]] = {}
    depth = None
    for name in chosen:
        p = D.sample_params(name, rng)
        where = targets(task, name)
        if name == "haze" and depth is None:
            # Depth of the clean scene: the visible image for VIF, the pair's mean otherwise.
            scene = clean_a if task == "vif" else 0.5 * (to_rgb(clean_a, None) + to_rgb(clean_b, None))
            depth = estimate_depth(scene, depth_estimator)
        for key in where:
            out[key] = D.apply(name, out[key], p, rng, depth=depth)
        params[name] = {**p, "targets": list(where)}
        if task == "vif" and name in WEATHER:
            ir = D.sample_params("gaussian_blur", rng, D.IR_WEATHER_BLUR)
            out["b"] = D.gaussian_blur(out["b"], **ir)
            params[name]["ir_blur_sigma"] = ir["sigma"]

    prompt = sample_prompt(chosen, rng, task=task)
    return DegradedSample(a=out["a"], b=out["b"], clean_a=clean_a, clean_b=clean_b, gt=gt_out, task=task,
                          degradations=list(chosen), prompt=prompt, params=params,
                          crop={**box, "out_height": clean_a.shape[0], "out_width": clean_a.shape[1]})
