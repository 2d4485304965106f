"""Standard deviation (SD) of the fused image, the contrast measure of the fusion literature.

Reference: Y.-J. Rao, "In-fibre Bragg grating sensors", Meas. Sci. Technol. 8(4), 1997 (as cited by
VIFB); code followed: VIFB ``metrics/metricsVariance.m`` (named "Variance" there, but it returns the
population standard deviation sqrt(mean((F - mean F)²))). RGB: per-channel mean. Both conventions
agree.
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.metrics._common import check_convention, fused_channels, prepare


def sd(a, b, f, convention: str = "corrected") -> float:
    """Population standard deviation of fused ``f``; ``a``, ``b`` are only validated."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    return float(np.mean([np.sqrt(np.mean((c - c.mean()) ** 2)) for c in fused_channels(f)]))
