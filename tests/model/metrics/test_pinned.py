"""Values pinned on fixed synthetic inputs: closed forms where one exists, otherwise regression pins
of the implementation that reproduces every VIFB stored value (test_vifb_conformance.py), plus a
literal loop transcription of VIFB's Qabf to check the vectorised version pixel for pixel."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import convolve2d

import latentfuse.model.metrics as M

sys.path.insert(0, str(Path(__file__).parent))
from _metrics_synthetic import synthetic  # noqa: E402

# Regression pins (10 significant digits) for synthetic(); both conventions.
PINNED = {
    "vifb": {
        "vif": 0.3821481349, "qabf": 0.3801292331, "qcv": 358.1568492, "qcb": 0.5062430568,
        "en": 7.175763079, "sd": 42.80237676, "sf": 4.730133502, "ag": 3.104689267,
        "ei": 33.92803446, "ce": 0.429191465, "mi": 3.113647705, "ssim": 1.261110502,
        "psnr": 51.38870804, "rmse": 0.4722908775, "vif_sb": 0.5518739201,
    },
    "corrected": {
        "vif": 0.3821481349, "qabf": 0.3801289839, "qcv": 185.6157668, "qcb": 0.5062430568,
        "en": 7.175763079, "sd": 42.80237676, "sf": 4.730133502, "ag": 3.078459561,
        "ei": 33.92803446, "ce": 0.429191465, "mi": 4.492044104, "ssim": 0.630555251,
        "psnr": 14.33171988, "rmse": 48.97271538, "vif_sb": 0.5518739201,
    },
}


@pytest.mark.parametrize("convention", ["vifb", "corrected"])
def test_pinned_synthetic(convention: str) -> None:
    got = M.compute(*synthetic(), names=list(PINNED[convention]), convention=convention)
    for name, value in PINNED[convention].items():
        assert got[name] == pytest.approx(value, rel=1e-8), name


def _ramp(h: int = 40, w: int = 50) -> np.ndarray:
    return np.tile(np.arange(w, dtype=np.float64), (h, 1))


def test_closed_forms_on_a_ramp() -> None:
    f = _ramp()
    h, w = f.shape
    z = np.zeros_like(f)
    # SF: every horizontal step is 1, no vertical change: RF² = (N-1)/N.
    assert M.sf(z, z, f) == pytest.approx(math.sqrt((w - 1) / w), rel=1e-12)
    # AG: |∇| = 1 everywhere -> sqrt(1/2); VIFB sums M·N pixels over (M-1)(N-1).
    assert M.ag(z, z, f) == pytest.approx(math.sqrt(0.5), rel=1e-12)
    assert M.ag(z, z, f, convention="vifb") == pytest.approx(math.sqrt(0.5) * h * w / ((h - 1) * (w - 1)), rel=1e-12)
    # EI: Sobel response 8 inside, 4 in the replicated border columns.
    assert M.ei(z, z, f) == pytest.approx((8 * (w - 2) + 4 * 2) / w, rel=1e-12)


def test_closed_forms_two_levels() -> None:
    f = np.zeros((32, 32))
    f[:, 16:] = 255.0
    assert M.en(f, f, f) == pytest.approx(1.0, abs=1e-12)  # two equiprobable levels: 1 bit
    assert M.sd(f, f, f) == pytest.approx(127.5, rel=1e-12)
    assert M.mi(f, f, f) == pytest.approx(2.0, abs=1e-12)  # bits, MI(A,F) + MI(B,F)
    assert M.mi(f, f, f, convention="vifb") == pytest.approx(2 * math.log(2), abs=1e-12)  # nats


def test_closed_forms_offsets() -> None:
    f = _ramp() * 4 + 20.0  # stays inside [0, 255] after the ±10 offsets
    a, b = f + 10.0, f - 10.0
    n = f.size
    assert M.rmse(a, b, f) == pytest.approx(10.0, rel=1e-12)
    assert M.psnr(a, b, f) == pytest.approx(10 * math.log10(255.0**2 / 100.0), rel=1e-12)
    # VIFB: sqrt(SSE)/N = 10/sqrt(N) per source.
    assert M.rmse(a, b, f, convention="vifb") == pytest.approx(10.0 / math.sqrt(n), rel=1e-12)
    assert M.psnr(a, b, f, convention="vifb") == pytest.approx(20 * math.log10(255.0 / math.sqrt(10.0 / math.sqrt(n))), rel=1e-12)


def _qabf_matlab_loops(strA, strB, strF) -> float:
    """Literal transcription of VIFB metricsQabf.m (gray inputs, per-pixel loops)."""
    Tg, kg, Dg, Ta, ka, Da = 0.9994, -15, 0.5, 0.9879, -22, 0.8
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def grad(p):
        p = 255 * p  # 255*im2double(double)
        sx, sy = convolve2d(p, h3, mode="same"), convolve2d(p, h1, mode="same")
        g = np.sqrt(sx**2 + sy**2)
        a = np.zeros_like(g)
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                a[i, j] = math.pi / 2 if sx[i, j] == 0 else math.atan(sy[i, j] / sx[i, j])
        return g, a

    (gA, aA), (gB, aB), (gF, aF) = grad(strA), grad(strB), grad(strF)

    def q(gX, aX):
        Q = np.zeros_like(gX)
        for i in range(gX.shape[0]):
            for j in range(gX.shape[1]):
                if gX[i, j] > gF[i, j]:
                    G = gF[i, j] / gX[i, j]
                elif gX[i, j] == gF[i, j]:
                    G = gF[i, j]
                else:
                    G = gX[i, j] / gF[i, j]
                A = 1 - abs(aX[i, j] - aF[i, j]) / (math.pi / 2)
                Q[i, j] = Tg / (1 + math.exp(kg * (G - Dg))) * Ta / (1 + math.exp(ka * (A - Da)))
        return Q

    return float(np.sum(q(gA, aA) * gA + q(gB, aB) * gB) / np.sum(gA + gB))


def test_qabf_vectorised_equals_reference_loops() -> None:
    a, b, f = (x[:20, :24] for x in synthetic())
    f = f.copy()
    f[:10] = a[:10]  # equal gradient strengths there: exercises VIFB's G = gF branch
    assert M.qabf(a, b, f, convention="vifb") == pytest.approx(_qabf_matlab_loops(a, b, f), rel=1e-12)
