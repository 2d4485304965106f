"""The ``vifb`` convention against the VIFB benchmark's stored MATLAB values (shared/conformance/vifb).

Tolerance: |ours - stored| <= 1e-4 * |stored|. The stored values are written with 5 significant
digits, so they carry a rounding error of at most 5e-5 relative (0.5 unit in the 5th digit of a
number >= 1.0000 x 10^k); 1e-4 relative therefore admits the rounding plus at most another 5e-5 of
genuine difference (e.g. a JPEG decoder differing from MATLAB's), and still fails on any real
deviation. (At the time of writing every value also matches exactly after rounding to 5 digits.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latentfuse.model.metrics import compute
from latentfuse.model.metrics._matlab import rgb2gray
from latentfuse.model.metrics.cli import load_255
from latentfuse.model.metrics.visual_information import vif

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
ROOT = SHARED / "conformance" / "vifb"
STORED = ROOT / "metrics" / "vifb_stored_values.json"

pytestmark = pytest.mark.skipif(
    not STORED.is_file(), reason=f"VIFB conformance data not found at {ROOT} (needs <repo>/../shared)"
)

# VIFB's metric names -> ours.
VIFB_NAMES = {
    "Avg_gradient": "ag",
    "Cross_entropy": "ce",
    "Edge_intensity": "ei",
    "Entropy": "en",
    "Mutinf": "mi",
    "Psnr": "psnr",
    "Qabf": "qabf",
    "Qcb": "qcb",
    "Qcv": "qcv",
    "Rmse": "rmse",
    "Spatial_frequency": "sf",
    "Ssim": "ssim",
    "Variance": "sd",
}
REL_TOL = 1e-4
# Han et al. VIFF from MEFB's MATLAB code (GNU Octave 7.3) on rgb2gray-rounded carLight / ADF.
VIFF_CARLIGHT_ADF = 0.401256


def _stored() -> dict[str, dict[str, float]]:
    return json.loads(STORED.read_text())["values"] if STORED.is_file() else {}


def _triplet(key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pair = key.split("_", 1)[0]
    return (
        load_255(ROOT / "input" / "VI" / f"{pair}.jpg"),
        load_255(ROOT / "input" / "IR" / f"{pair}.jpg"),
        load_255(ROOT / "fused" / f"{key}.jpg"),
    )


@pytest.mark.parametrize("key", sorted(_stored()) or ["missing"])
def test_vifb_stored_values(key: str) -> None:
    stored = _stored()[key]
    assert set(stored) == set(VIFB_NAMES), "the stored file lists other metrics than expected"
    ours = compute(*_triplet(key), names=[VIFB_NAMES[n] for n in stored], convention="vifb")
    errors = {n: abs(ours[VIFB_NAMES[n]] - v) / abs(v) for n, v in stored.items()}
    bad = {n: (stored[n], ours[VIFB_NAMES[n]], f"{e:.2e}") for n, e in errors.items() if not e <= REL_TOL}
    assert not bad, f"{key}: metric (stored, ours, rel. error) beyond {REL_TOL}: {bad}"


def test_stored_file_has_nine_fused_images() -> None:
    assert len(_stored()) == 9


def test_viff_reference_value() -> None:
    a, b, f = (rgb2gray(x, uint8=True) for x in _triplet("carLight_ADF"))
    for convention in ("vifb", "corrected"):  # gray inputs: the conventions agree
        assert vif(a, b, f, convention=convention) == pytest.approx(VIFF_CARLIGHT_ADF, rel=REL_TOL)
