"""Properties every implementation must have: self-fusion, constant images, source symmetry, colour
handling, agreement with scikit-image, input errors, and one Qabf at 640x480."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

import latentfuse.model.metrics as M
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.metrics.xydeas_petrovic import DA, DG, KA, KG, TA, TG

sys.path.insert(0, str(Path(__file__).parent))
from _metrics_synthetic import synthetic, to_rgb  # noqa: E402

CONVENTIONS = ("vifb", "corrected")


def test_names_and_order() -> None:
    a, b, f = synthetic(48, 56)
    names = M.DEFAULT_NAMES
    assert names == ("vif", "qabf", "qcv", "qcb", "en", "sd", "sf", "ag", "ei", "ce", "mi", "ssim", "psnr", "rmse")
    a, b, f = synthetic(96, 96)
    out = M.compute(a, b, f)
    assert list(out) == list(names) and all(isinstance(v, float) and np.isfinite(v) for v in out.values())
    assert list(M.compute(a, b, f, names="SSIM, qabf")) == ["ssim", "qabf"]


def test_self_fusion() -> None:
    a, _, _ = synthetic()
    c = M.compute(a, a, a, names=list(M.ALL_METRICS), convention="corrected")
    v = M.compute(a, a, a, names=list(M.ALL_METRICS), convention="vifb")
    assert c["ssim"] == pytest.approx(1.0, abs=1e-12) and v["ssim"] == pytest.approx(2.0, abs=1e-12)
    # Qabf: G = 1, A = 1 everywhere -> the product of the two sigmoids' values at 1.
    q_max = TG / (1 + np.exp(KG * (1 - DG))) * TA / (1 + np.exp(KA * (1 - DA)))
    assert c["qabf"] == pytest.approx(q_max, rel=1e-12)
    assert 0.97 < v["qabf"] <= TG * TA / (1 + np.exp(KA * (1 - DA))) + 1e-12  # VIFB: G = 255 gF, Qg ≈ Tg
    assert c["mi"] == pytest.approx(2 * c["en"], rel=1e-12)
    assert c["qcb"] == pytest.approx(1.0, abs=1e-12)
    assert c["qcv"] == pytest.approx(0.0, abs=1e-9) and v["qcv"] == pytest.approx(0.0, abs=1e-9)
    assert c["ce"] == 0.0 and c["rmse"] == 0.0 and c["psnr"] == float("inf")
    assert c["vif"] == pytest.approx(1.0, abs=1e-6)
    assert c["vif_sb"] == pytest.approx(2.0, abs=1e-6)


def test_self_fusion_is_the_best_ssim_and_qabf() -> None:
    a, b, f = synthetic()
    for name in ("ssim", "qabf", "qcb"):
        fn = M.ALL_METRICS[name]
        assert fn(a, a, a) > fn(a, b, f), name


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_constant_fused_image(convention: str) -> None:
    a, b, _ = synthetic(48, 56)
    f = np.full_like(a, 117.0)
    for name in ("en", "sd", "sf", "ag", "ei"):
        assert M.ALL_METRICS[name](a, b, f, convention=convention) == 0.0, name


def test_corrected_handles_constant_everything() -> None:
    k = np.full((96, 96), 50.0)
    out = M.compute(k, k, k, names=["qcb", "qcv", "qabf", "mi", "en", "ssim"])
    assert out["qcb"] == 1.0 and out["en"] == 0.0 and out["mi"] == 0.0 and out["ssim"] == 1.0
    assert out["qabf"] > 0.97  # zero padding gives the borders a (shared) gradient
    assert np.isnan(out["qcv"])  # stretched to 0: no gradient in either source, Q_CV undefined


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_swapping_sources(convention: str) -> None:
    a, b, f = synthetic()
    names = list(M.ALL_METRICS)
    ab = M.compute(a, b, f, names=names, convention=convention)
    ba = M.compute(b, a, f, names=names, convention=convention)
    for name in names:
        assert ab[name] == pytest.approx(ba[name], rel=1e-9), name


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_rgb_with_equal_channels_matches_gray(convention: str) -> None:
    a, b, f = synthetic()
    rgb = lambda x: np.repeat(x[..., None], 3, axis=-1)  # noqa: E731
    gray = M.compute(a, b, f, names=list(M.ALL_METRICS), convention=convention)
    colour = M.compute(rgb(a), b, rgb(f), names=list(M.ALL_METRICS), convention=convention)
    for name, value in gray.items():
        if convention == "vifb" and name == "sf":
            continue  # VIFB joins the channels side by side: checked below
        assert colour[name] == pytest.approx(value, rel=1e-12), name


def test_vifb_sf_joins_channels_side_by_side() -> None:
    a, b, f = synthetic()
    rgb = to_rgb(f)
    wide = np.concatenate([rgb[..., k] for k in range(3)], axis=1)
    assert M.sf(a, b, rgb, convention="vifb") == pytest.approx(M.sf(wide, wide, wide, convention="vifb"), rel=1e-12)
    per_channel = np.mean([M.sf(a, b, rgb[..., k]) for k in range(3)])
    assert M.sf(a, b, rgb) == pytest.approx(per_channel, rel=1e-12)


def test_rgb_is_scored_per_channel() -> None:
    a, b, f = synthetic()
    ar, fr = to_rgb(a), to_rgb(f, (0.95, 1.0, 0.7))
    for name in ("qabf", "ssim", "mi", "qcb"):
        fn = M.ALL_METRICS[name]
        expected = np.mean([fn(ar[..., k], b, fr[..., k]) for k in range(3)])
        assert fn(ar, b, fr) == pytest.approx(expected, rel=1e-12), name


def test_viff_colour_quirk() -> None:
    a, b, f = synthetic()
    fr = to_rgb(f)
    assert M.vif(a, b, fr, convention="vifb") == pytest.approx(M.vif(a, b, fr[..., 0]), rel=1e-12)
    gray_f = fr @ np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
    assert M.vif(a, b, fr) == pytest.approx(M.vif(a, b, gray_f), rel=1e-12)


def test_agrees_with_scikit_image() -> None:
    from skimage.measure import shannon_entropy
    from skimage.metrics import structural_similarity

    a, b, f = synthetic()
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    expected = (structural_similarity(a, f, **kw) + structural_similarity(b, f, **kw)) / 2
    assert M.ssim(a, b, f) == pytest.approx(expected, rel=1e-9)
    assert M.en(a, b, f) == pytest.approx(shannon_entropy(f.astype(np.uint8), base=2), rel=1e-12)


def test_bad_inputs_raise_latentfuse_error() -> None:
    a, b, f = synthetic(96, 96)
    with pytest.raises(LatentfuseError, match="convention"):
        M.compute(a, b, f, convention="matlab")
    with pytest.raises(LatentfuseError, match="differ in size"):
        M.qabf(a, b, f[:-1])
    with pytest.raises(LatentfuseError, match="NaN"):
        M.en(a, b, np.where(f > 100, np.nan, f))
    with pytest.raises(LatentfuseError, match="shape"):
        M.sd(a, b, np.zeros((96, 96, 2)))
    with pytest.raises(LatentfuseError, match=r"\[0, 255\]"):
        M.sd(a, b, f * 255)
    with pytest.raises(LatentfuseError, match="unknown metric"):
        M.compute(a, b, f, names=["qabf", "nope"])
    with pytest.raises(LatentfuseError, match="at least 81"):
        M.vif(a[:40], b[:40], f[:40])
    with pytest.raises(LatentfuseError, match="CSF"):
        M.qcv(a, b, f, convention="vifb", csf="daly")


def test_qcv_csf_choices() -> None:
    a, b, f = synthetic()
    values = {csf: M.qcv(a, b, f, csf=csf) for csf in ("mannos_sakrison", "daly", "ahumada")}
    assert all(np.isfinite(v) and v > 0 for v in values.values())
    assert len(set(values.values())) == 3


def test_qabf_at_640x480() -> None:
    y, x = np.mgrid[0:480, 0:640].astype(np.float64)
    a = np.round(127.5 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0))
    b = np.round(np.clip(255 * np.exp(-((x - 400) ** 2 + (y - 200) ** 2) / 9000.0) + 0.2 * x, 0, 255))
    f = np.round(0.5 * a + 0.5 * b)
    start = time.perf_counter()
    value = M.qabf(a, b, f)
    print(f"\nqabf 640x480 gray: {1000 * (time.perf_counter() - start):.0f} ms")  # speed goals live in bench/
    assert 0.0 < value < 1.0
