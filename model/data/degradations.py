"""Degradation operators of the MMAIF real-world degradation pipeline (paper section 3.1, Fig. 2).

Each operator is a small function ``op(image, **params[, rng]) -> image`` on float [0, 1] HxW or HxWx3
arrays; random content (noise, streak positions) comes only from the ``numpy.random.Generator`` passed
in. :data:`RANGES` documents the parameter range each operator is sampled from (uniform; an int pair is
an inclusive integer range, a list is a set of choices), and :func:`sample_params` draws from it, so the
ranges are data that a reader (and the tests) can inspect.
"""

from __future__ import annotations

import io
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import luma
from latentfuse.model.image_processing.filters import gaussian

Params = dict[str, Any]

RANGES: dict[str, dict[str, Any]] = {
    "gaussian_blur": {"sigma": (0.8, 3.0)},
    "motion_blur": {"length": (5, 21), "angle": (0.0, 180.0)},
    "downsample": {"scale": (2.0, 4.0), "order": [1, 3]},
    "noise": {"sigma": (5.0 / 255, 30.0 / 255)},
    "jpeg": {"quality": (10, 40)},
    "rain": {"density": (0.001, 0.005), "length": (10, 35), "angle": (-25.0, 25.0), "opacity": (0.25, 0.6)},
    "snow": {"density": (0.001, 0.005), "flake": (0.6, 1.8), "opacity": (0.6, 0.95), "veil": (0.03, 0.12)},
    "haze": {"beta": (1.0, 2.5), "airlight": (0.75, 1.0)},
    "low_exposure": {"gamma": (1.5, 2.8), "gain": (0.35, 0.7)},
    "high_exposure": {"stops": (1.0, 2.5)},
    "low_contrast": {"factor": (0.3, 0.6)},
    "ir_strips": {"count": (4, 14), "width": (1, 4), "depth": (0.3, 0.65), "axis": ["columns", "rows"]},
}

# Mild blur of the infrared image when the visible one gets weather (paper 3.1).
IR_WEATHER_BLUR = {"sigma": (0.6, 1.5)}

SRGB_GAMMA = 2.2


def _spatial(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image, np.float64)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise LatentfuseError(f"degradations expect HxW or HxWx3 images, got shape {arr.shape}")
    return arr


def _out(arr: np.ndarray) -> np.ndarray:
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _screen(base: np.ndarray, layer: np.ndarray, opacity: float) -> np.ndarray:
    """Screen-blend a [0,1] light layer (HxW) onto the image: only ever brightens."""
    layer = np.clip(layer * opacity, 0.0, 1.0)
    if base.ndim == 3:
        layer = layer[..., None]
    return 1.0 - (1.0 - base) * (1.0 - layer)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur, ``sigma`` in pixels (range ``RANGES['gaussian_blur']``: 0.8-3.0)."""
    return _out(gaussian(_spatial(image), float(sigma)))


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """Normalised anti-aliased line kernel of ``length`` px at ``angle`` degrees (0 = horizontal)."""
    from skimage.draw import line_aa

    length = max(int(length), 1)
    size = length if length % 2 else length + 1
    c = size // 2
    theta = np.deg2rad(angle)
    dx, dy = (length - 1) / 2 * np.cos(theta), (length - 1) / 2 * np.sin(theta)
    kernel = np.zeros((size, size))
    rr, cc, val = line_aa(int(round(c - dy)), int(round(c - dx)), int(round(c + dy)), int(round(c + dx)))
    keep = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
    kernel[rr[keep], cc[keep]] = val[keep]
    kernel[c, c] = max(kernel[c, c], 1.0)
    return kernel / kernel.sum()


def _convolve(arr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    if arr.ndim == 3:
        return np.stack([ndimage.convolve(arr[..., k], kernel, mode="reflect") for k in range(3)], -1)
    return ndimage.convolve(arr, kernel, mode="reflect")


def motion_blur(image: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Linear camera-shake blur: ``length`` 5-21 px, ``angle`` 0-180 degrees (``RANGES['motion_blur']``)."""
    return _out(_convolve(_spatial(image), motion_kernel(length, angle)))


def downsample(image: np.ndarray, scale: float, order: int = 3) -> np.ndarray:
    """Anti-aliased downscale by ``scale`` (2-4x) then back up with spline ``order`` (1 or 3)."""
    from skimage.transform import resize

    arr = _spatial(image)
    h, w = arr.shape[:2]
    small_shape = (max(1, int(round(h / scale))), max(1, int(round(w / scale)))) + arr.shape[2:]
    small = resize(arr, small_shape, order=1, anti_aliasing=True, mode="reflect")
    return _out(resize(small, arr.shape, order=int(order), anti_aliasing=False, mode="reflect"))


def noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, ``sigma`` 5/255-30/255 (independent per channel)."""
    arr = _spatial(image)
    return _out(arr + rng.normal(0.0, float(sigma), arr.shape))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip through Pillow at ``quality`` 10-40 (8x8 DCT blocking and ringing)."""
    from PIL import Image

    arr = _spatial(image)
    pil = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as dec:
        out = np.asarray(dec.convert(pil.mode), np.float64) / 255.0
    return _out(out)


def rain(image: np.ndarray, rng: np.random.Generator, density: float, length: int, angle: float,
         opacity: float) -> np.ndarray:
    """Bright rain streaks: seeds at ``density`` (0.1-0.5 % of pixels) smeared into ``length`` 10-35 px
    lines at ``angle`` ±25 degrees from vertical, screen-blended at ``opacity`` 0.25-0.6."""
    arr = _spatial(image)
    h, w = arr.shape[:2]
    seeds = (rng.random((h, w)) < density) * rng.uniform(0.5, 1.0, (h, w))
    streaks = ndimage.convolve(seeds, motion_kernel(length, 90.0 + angle), mode="wrap") * length
    streaks = gaussian(np.clip(streaks, 0, 1), 0.5)
    return _out(_screen(arr, streaks, opacity))


def snow(image: np.ndarray, rng: np.random.Generator, density: float, flake: float, opacity: float,
         veil: float) -> np.ndarray:
    """Snow: two layers of soft white flakes (small dense far flakes, large sparse near ones) of size
    ``flake`` 0.6-1.8 px sigma at ``density`` 0.1-0.5 %, screen-blended at ``opacity`` 0.6-0.95, over a
    whitish ``veil`` 0.03-0.12 (falling snow scatters light)."""
    arr = _spatial(image)
    h, w = arr.shape[:2]
    layer = np.zeros((h, w))
    for scale, frac in ((1.0, 1.0), (2.2, 0.25)):  # far flakes, then fewer and larger near flakes
        sigma = flake * scale
        seeds = (rng.random((h, w)) < density * frac).astype(np.float64)
        blob = gaussian(seeds, sigma) * (2 * np.pi * sigma**2)  # unit peak per flake
        layer = np.maximum(layer, np.clip(blob, 0, 1))
    veiled = arr * (1 - veil) + veil
    return _out(_screen(veiled, layer, opacity))


def haze(image: np.ndarray, depth: np.ndarray, beta: float, airlight: float) -> np.ndarray:
    """Atmospheric scattering (Koschmieder; MMAIF ref. [52]): I = J·t + A·(1 - t), t = exp(-β·d).

    ``depth`` is HxW in [0, 1] (1 = far, e.g. :func:`latentfuse.model.data.depth.estimate_depth`); ``beta`` 1.0-2.5
    is the scattering coefficient for that unit depth range, ``airlight`` A 0.75-1.0.
    """
    arr = _spatial(image)
    d = np.asarray(depth, np.float64)
    if d.shape != arr.shape[:2]:
        raise LatentfuseError(f"haze depth map shape {d.shape} does not match image {arr.shape[:2]}")
    t = np.exp(-float(beta) * d)
    if arr.ndim == 3:
        t = t[..., None]
    return _out(arr * t + airlight * (1.0 - t))


def low_exposure(image: np.ndarray, gamma: float, gain: float) -> np.ndarray:
    """Under-exposure / low light: I = gain·J^gamma with ``gamma`` 1.5-2.8, ``gain`` 0.35-0.7 (shadows
    crushed more than highlights, as in low-light synthesis)."""
    return _out(float(gain) * np.power(_spatial(image), float(gamma)))


def high_exposure(image: np.ndarray, stops: float) -> np.ndarray:
    """Over-exposure by ``stops`` 1.0-2.5 EV in linear light, clipped at the sensor white point."""
    linear = np.power(_spatial(image), SRGB_GAMMA) * (2.0 ** float(stops))
    return _out(np.power(np.clip(linear, 0, 1), 1.0 / SRGB_GAMMA))


def low_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Contrast compression towards the mean luminance: I = m + ``factor``·(J - m), factor 0.3-0.6."""
    arr = _spatial(image)
    m = float(luma(arr, "dot").mean())
    return _out(m + float(factor) * (arr - m))


def ir_strips(image: np.ndarray, rng: np.random.Generator, count: int, width: int, depth: float,
              axis: str) -> np.ndarray:
    """Infrared fixed-pattern dark strips: ``count`` 4-14 lines of ``width`` 1-4 px along ``axis``
    ('columns' or 'rows') multiplied by (1 - ``depth``·u), depth 0.3-0.65, u ~ U(0.6, 1)."""
    arr = _spatial(image)
    h, w = arr.shape[:2]
    n = w if axis == "columns" else h
    profile = np.ones(n)
    for start in rng.choice(n, size=min(int(count), n), replace=False):
        profile[start:start + int(width)] *= 1.0 - float(depth) * rng.uniform(0.6, 1.0)
    gain = profile[None, :] if axis == "columns" else profile[:, None]
    if arr.ndim == 3:
        gain = gain[..., None]
    return _out(arr * gain)


OPS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "downsample": downsample,
    "noise": noise,
    "jpeg": jpeg,
    "rain": rain,
    "snow": snow,
    "haze": haze,
    "low_exposure": low_exposure,
    "high_exposure": high_exposure,
    "low_contrast": low_contrast,
    "ir_strips": ir_strips,
}

NEEDS_RNG = frozenset({"noise", "rain", "snow", "ir_strips"})


def _draw(spec: Any, rng: np.random.Generator) -> Any:
    if isinstance(spec, list):
        return spec[int(rng.integers(len(spec)))]
    lo, hi = spec
    if isinstance(lo, int) and isinstance(hi, int):
        return int(rng.integers(lo, hi + 1))
    return float(rng.uniform(lo, hi))


def sample_params(name: str, rng: np.random.Generator, ranges: dict[str, Any] | None = None) -> Params:
    """Draw the parameters of degradation ``name`` from :data:`RANGES` (or ``ranges``)."""
    if name not in RANGES:
        raise LatentfuseError(f"unknown degradation {name!r}: expected one of {', '.join(RANGES)}")
    return {key: _draw(spec, rng) for key, spec in (ranges or RANGES[name]).items()}


def apply(name: str, image: np.ndarray, params: Params, rng: np.random.Generator,
          depth: np.ndarray | None = None) -> np.ndarray:
    """Apply degradation ``name`` with ``params``; ``rng`` feeds random content, ``depth`` feeds haze."""
    if name not in OPS:
        raise LatentfuseError(f"unknown degradation {name!r}: expected one of {', '.join(OPS)}")
    kwargs = dict(params)
    if name in NEEDS_RNG:
        kwargs["rng"] = rng
    if name == "haze":
        if depth is None:
            from latentfuse.model.data.depth import depth_prior

            depth = depth_prior(image)
        kwargs["depth"] = depth
    return OPS[name](image, **kwargs)
