"""The calibration set spans tasks, sizes, aspect ratios, prompts and flow times, reproducibly."""

import numpy as np
import pytest

from latentfuse.calibration.dataset import calibration_prompts, calibration_samples, describe, to_graph_image
from latentfuse.model.errors import LatentfuseError


def test_calibration_set_spans_what_deployment_sees():
    samples = calibration_samples(9, seed=3, long_sides=(64, 96, 128))
    assert {s.task for s in samples} == {"vif", "mef", "mff"}
    for s in samples:
        assert s.image_a.shape == s.image_b.shape and s.image_a.shape[0] == 3
        assert all(d % 16 == 0 for d in s.image_a.shape[1:]) and max(s.image_a.shape[1:]) in (64, 96, 128)
        assert -1.0 <= s.image_a.min() and s.image_a.max() <= 1.0 and s.prompt
    # stratified t: one value in each of the n equal bins of [0, 1]
    bins = sorted(int(s.t * 9) for s in samples)
    assert bins == list(range(9))
    again = calibration_samples(9, seed=3, long_sides=(64, 96, 128))
    assert all(np.array_equal(a.image_a, b.image_a) and a.prompt == b.prompt for a, b in zip(samples, again))
    prompts = calibration_prompts(samples)
    from latentfuse.model.data.prompts import canonical_prompts

    assert set(canonical_prompts().values()) <= set(prompts) and {s.prompt for s in samples} <= set(prompts)
    info = describe(samples, prompts)
    assert info["samples"] == 9 and info["tasks"] == {"mef": 3, "mff": 3, "vif": 3} and len(info["sizes"]) >= 3


def test_graph_image_layout_and_errors():
    gray = np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(30, 20)
    x = to_graph_image(gray)
    assert x.shape == (3, 32, 32) and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_allclose(x[:, :30, :20], np.broadcast_to(gray * 2 - 1, (3, 30, 20)), atol=1e-6)
    with pytest.raises(LatentfuseError, match="at least 1"):
        calibration_samples(0)
