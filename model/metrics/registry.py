"""All fusion metrics in one call (paper Sec. 4.3): ``compute(a, b, fused) -> {name: value}``.

The images are validated once; each metric then runs on the same float64 arrays. See
``model/metrics/README.md`` for the two conventions and what ``corrected`` changes.
"""

from __future__ import annotations

from typing import Callable, Iterable

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.metrics._common import check_convention, prepare
from latentfuse.model.metrics.chen_blum import qcb
from latentfuse.model.metrics.chen_varshney import qcv
from latentfuse.model.metrics.entropy import ce, en
from latentfuse.model.metrics.error import psnr, rmse
from latentfuse.model.metrics.mutual_info import mi
from latentfuse.model.metrics.sharpness import ag, ei, sf
from latentfuse.model.metrics.statistics import sd
from latentfuse.model.metrics.structural_similarity import ssim
from latentfuse.model.metrics.visual_information import vif, vif_sb
from latentfuse.model.metrics.xydeas_petrovic import qabf

MetricFn = Callable[..., float]

# The paper's metrics (Sec. 4.3) plus the rest of VIFB's set, in report order.
METRICS: dict[str, MetricFn] = {
    "vif": vif,
    "qabf": qabf,
    "qcv": qcv,
    "qcb": qcb,
    "en": en,
    "sd": sd,
    "sf": sf,
    "ag": ag,
    "ei": ei,
    "ce": ce,
    "mi": mi,
    "ssim": ssim,
    "psnr": psnr,
    "rmse": rmse,
}
DEFAULT_NAMES: tuple[str, ...] = tuple(METRICS)
# Available by name but not computed by default.
EXTRA_METRICS: dict[str, MetricFn] = {"vif_sb": vif_sb}
ALL_METRICS: dict[str, MetricFn] = {**METRICS, **EXTRA_METRICS}

# Direction of "better", for callers that rank fused images (teacher selection).
LOWER_IS_BETTER = frozenset({"qcv", "ce", "rmse"})


def resolve_names(names: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validate metric names (a list, or a comma-separated string); ``None`` means the default set."""
    if names is None:
        return DEFAULT_NAMES
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out = tuple(n.strip().lower() for n in names if n.strip())
    unknown = [n for n in out if n not in ALL_METRICS]
    if unknown:
        raise LatentfuseError(f"unknown metric name(s) {unknown}; choose from {sorted(ALL_METRICS)}")
    if not out:
        raise LatentfuseError("no metric names given")
    return out


def compute(
    a, b, fused, names: Iterable[str] | str | None = None, convention: str = "corrected"
) -> dict[str, float]:
    """Fusion metrics of ``fused`` from sources ``a`` and ``b``.

    Images are float arrays on the [0, 255] scale, HxW or HxWx3, all the same size. Returns lower-case
    keys ``vif, qabf, qcv, qcb, en, sd, sf, ag, ei, ce, mi, ssim, psnr, rmse`` (or ``names``), in that
    order. ``convention`` is ``"corrected"`` or ``"vifb"`` (VIFB's MATLAB values, quirks included).
    """
    check_convention(convention)
    selected = resolve_names(names)
    a, b, fused = prepare(a, b, fused)
    return {name: float(ALL_METRICS[name](a, b, fused, convention=convention)) for name in selected}

