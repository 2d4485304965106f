"""Image fusion metrics (paper Sec. 4.3), numpy/scipy, with VIFB-exact and corrected conventions.

``compute(a, b, fused, names=None, convention="corrected") -> dict[str, float]`` computes the set
``vif, qabf, qcv, qcb, en, sd, sf, ag, ei, ce, mi, ssim, psnr, rmse``; each metric is also a function
``metric(a, b, f, convention=...)`` (plus ``vif_sb``, the Sheikh–Bovik pixel VIF summed over the
sources). Inputs are float arrays on the [0, 255] scale, HxW or HxWx3. Each module's docstring names
the reference and code it follows; ``README.md`` lists VIFB's quirks and what ``corrected`` changes.

Names are resolved lazily (PEP 562) so that importing ``model.metrics.cli`` for ``latentfuse --help``
does not pull in scipy.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "compute": "latentfuse.model.metrics.registry",
    "resolve_names": "latentfuse.model.metrics.registry",
    "METRICS": "latentfuse.model.metrics.registry",
    "ALL_METRICS": "latentfuse.model.metrics.registry",
    "DEFAULT_NAMES": "latentfuse.model.metrics.registry",
    "LOWER_IS_BETTER": "latentfuse.model.metrics.registry",
    "CONVENTIONS": "latentfuse.model.metrics._common",
    "vif": "latentfuse.model.metrics.visual_information",
    "vif_sb": "latentfuse.model.metrics.visual_information",
    "qabf": "latentfuse.model.metrics.xydeas_petrovic",
    "qcv": "latentfuse.model.metrics.chen_varshney",
    "qcb": "latentfuse.model.metrics.chen_blum",
    "en": "latentfuse.model.metrics.entropy",
    "ce": "latentfuse.model.metrics.entropy",
    "sd": "latentfuse.model.metrics.statistics",
    "sf": "latentfuse.model.metrics.sharpness",
    "ag": "latentfuse.model.metrics.sharpness",
    "ei": "latentfuse.model.metrics.sharpness",
    "mi": "latentfuse.model.metrics.mutual_info",
    "ssim": "latentfuse.model.metrics.structural_similarity",
    "psnr": "latentfuse.model.metrics.error",
    "rmse": "latentfuse.model.metrics.error",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
