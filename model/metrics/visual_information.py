"""Visual information fidelity for fusion: Han et al.'s VIFF ("VIF" of the fusion literature) and the
Sheikh–Bovik pixel VIF summed over the sources (``vif_sb``).

VIFF reference: Y. Han, Y. Cai, Y. Cao, X. Xu, "A new image fusion performance metric based on visual
information fidelity", Information Fusion 14(2), 2013; code followed: MEFB ``metrics/metricsVIF.m``
(the authors' code, Zhang, Information Fusion 2021). Per scale s = 1..4 (Gaussian window of size
N = 2^(5-s) + 1, σ = N/5, 'valid' filtering, 2x decimation between scales) and per source X, the
Gaussian scale mixture model of Sheikh–Bovik gives a gain map g_X, the information the fused image
carries about X (VID_X = log10(1 + g² σ_X² / (σ_v² + σ_n²))) and the information of X itself
(VIND_X = log10(1 + σ_X² / σ_n²)), with visual noise σ_n² = 0.005 · 255². At each pixel the source
with the smaller gain g is kept (``L = G1 < G2`` in the reference; ties go to B);
F_s = Σ (VID + C) / Σ (VIND + C), C = 1e-7, and VIFF = Σ_s p_s F_s with p = (1, 0, 0.15, 1) / 2.15.

``vif_sb``: H. R. Sheikh, A. C. Bovik, "Image information and visual quality", IEEE TIP 15(2), 2006,
pixel-domain multi-scale version (``vifp_mscale.m``, σ_n² = 2): VIF(A, F) + VIF(B, F), as some
fusion repositories report "VIF". Not comparable with VIFF.

Conventions (VIFF): ``vifb`` keeps MEFB's colour quirk (gray sources with an RGB fused image score
only the fused red channel); ``corrected`` converts the fused image with ``rgb2gray`` instead. RGB
sources with an RGB fused image are scored per channel in both (VIFB colour handling); RGB sources
with a gray fused image are converted with ``rgb2gray`` rounded to 8 bits.
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.metrics._common import check_convention, gray, per_channel, prepare, require_size
from latentfuse.model.metrics._matlab import filter2_gaussian

VIFF_NOISE = 0.005 * 255.0 * 255.0
VIFF_C = 1e-7
VIFF_WEIGHTS = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
SB_NOISE = 2.0
# Smallest side for which the 4th scale's 5x5 'valid' window still fits (33, 17, 9, 5 windows).
MIN_SIZE = 81


def _windows() -> list[tuple[int, float]]:
    """(size, sigma) of the Gaussian window at scales 1..4: N = 2^(5-s) + 1, sigma = N / 5."""
    return [(2 ** (4 - s + 1) + 1, (2 ** (4 - s + 1) + 1) / 5.0) for s in range(1, 5)]


def _pyramid(x: np.ndarray) -> list[np.ndarray]:
    """The image at each scale: scale s > 1 is the 'valid'-filtered scale s-1 image, decimated by 2."""
    levels = [x]
    for n, sigma in _windows()[1:]:
        levels.append(filter2_gaussian(levels[-1], n, sigma, "valid")[::2, ::2])
    return levels


def _moments(levels: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Local mean and (biased) variance at each scale, variance clamped at 0 as in the reference."""
    out = []
    for x, (n, sigma) in zip(levels, _windows()):
        mu = filter2_gaussian(x, n, sigma, "valid")
        var = filter2_gaussian(x * x, n, sigma, "valid") - mu * mu
        out.append((mu, np.maximum(var, 0.0)))
    return out


def vif_maps(ref: np.ndarray, dist: np.ndarray, sigma_nsq: float, dist_stats=None) -> list[tuple[np.ndarray, ...]]:
    """Per scale (num, den, g): Sheikh–Bovik information maps of ``dist`` about ``ref``.

    Follows ``ComVidVindG`` (MEFB) / ``vifp_mscale`` (Sheikh), including their clamping rules.
    ``dist_stats`` (``(_pyramid(dist), _moments(...))``) may be passed to share it between sources.
    """
    ref_levels = _pyramid(ref)
    dist_levels, dist_moments = dist_stats if dist_stats is not None else _stats(dist)
    out = []
    for r, d, (mu1, s1), (mu2, s2), (n, sigma) in zip(
        ref_levels, dist_levels, _moments(ref_levels), dist_moments, _windows()
    ):
        s12 = filter2_gaussian(r * d, n, sigma, "valid") - mu1 * mu2
        s1, s2 = s1.copy(), s2.copy()

        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        flat1 = s1 < 1e-10
        g[flat1] = 0.0
        sv[flat1] = s2[flat1]
        s1[flat1] = 0.0
        flat2 = s2 < 1e-10
        g[flat2] = 0.0
        sv[flat2] = 0.0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0.0
        sv[sv <= 1e-10] = 1e-10

        num = np.log10(1.0 + g * g * s1 / (sv + sigma_nsq))
        den = np.log10(1.0 + s1 / sigma_nsq)
        out.append((num, den, g))
    return out


def _stats(x: np.ndarray):
    levels = _pyramid(x)
    return levels, _moments(levels)


def _viff_gray(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    f_stats = _stats(f)  # the fused pyramid and moments serve both sources
    maps_a = vif_maps(a, f, VIFF_NOISE, f_stats)
    maps_b = vif_maps(b, f, VIFF_NOISE, f_stats)
    per_scale = []
    for (na, da, ga), (nb, db, gb) in zip(maps_a, maps_b):
        pick_a = ga < gb
        num = np.where(pick_a, na, nb)
        den = np.where(pick_a, da, db)
        per_scale.append(np.sum(num + VIFF_C) / np.sum(den + VIFF_C))
    return float(np.dot(per_scale, VIFF_WEIGHTS))


def vif(a, b, f, convention: str = "corrected") -> float:
    """VIFF (Han et al. 2013) of fused ``f`` from sources ``a``, ``b`` ([0, 255], HxW or HxWx3)."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    require_size(f, MIN_SIZE, "vif")
    if f.ndim == 3 and a.ndim == 2 and b.ndim == 2:
        f = f[..., 0] if convention == "vifb" else gray(f)

    def one(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
        return _viff_gray(gray(x, uint8=True), gray(y, uint8=True), z)

    return per_channel(one, a, b, f)


def vif_pixel(ref: np.ndarray, dist: np.ndarray, dist_stats=None) -> float:
    """Sheikh–Bovik pixel-domain VIF of ``dist`` against ``ref`` (2-D, [0, 255])."""
    num = den = 0.0
    for n_map, d_map, _ in vif_maps(ref, dist, SB_NOISE, dist_stats):
        num += float(n_map.sum())
        den += float(d_map.sum())
    return num / den if den > 0 else float("nan")


def vif_sb(a, b, f, convention: str = "corrected") -> float:
    """VIF(A, F) + VIF(B, F) with Sheikh–Bovik's pixel VIF; the same in both conventions."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    require_size(f, MIN_SIZE, "vif_sb")

    def one(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
        x, y = gray(x, uint8=True), gray(y, uint8=True)
        z_stats = _stats(z)
        return vif_pixel(x, z, z_stats) + vif_pixel(y, z, z_stats)

    return per_channel(one, a, b, f)
