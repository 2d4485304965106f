"""Flow-matching maths (model/flow.py) on numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from latentfuse.model import flow
from latentfuse.model.errors import LatentfuseError

BACKENDS = ["numpy", "torch"]


def _to(backend, x):
    x = np.asarray(x, dtype=np.float32)
    return torch.from_numpy(x.copy()) if backend == "torch" else x


def _np(x):
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 4, 6, 8)), rng.standard_normal((3, 4, 6, 8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_interpolant_endpoints_target_and_predicted_data(backend, pair):
    z0, z1 = (_to(backend, a) for a in pair)
    np.testing.assert_allclose(_np(flow.interpolate(z0, z1, 0.0)), _np(z0))
    np.testing.assert_allclose(_np(flow.interpolate(z0, z1, 1.0)), _np(z1))
    v = flow.target_velocity(z0, z1)
    np.testing.assert_allclose(_np(v), pair[1] - pair[0], rtol=1e-6, atol=1e-6)
    # With the exact target, Z̃1 = Z_t + (1-t)·v recovers the data for every t (per-sample t).
    t = _to(backend, [0.0, 0.3, 0.9])
    z_t = flow.interpolate(z0, z1, t)
    np.testing.assert_allclose(_np(flow.predicted_data(z_t, v, t)), pair[1], atol=1e-5)
    # Per-sample t means row b is interpolated with t[b].
    np.testing.assert_allclose(_np(z_t)[1], 0.7 * pair[0][1] + 0.3 * pair[1][1], atol=1e-6)
    assert z_t.dtype == z0.dtype


def test_numpy_and_torch_agree(pair):
    t = np.array([0.1, 0.5, 0.8], dtype=np.float32)
    out_np = flow.predicted_data(flow.interpolate(*(_to("numpy", a) for a in pair), t), _to("numpy", pair[1]), t)
    z0, z1 = (_to("torch", a) for a in pair)
    out_t = flow.predicted_data(flow.interpolate(z0, z1, torch.from_numpy(t)), z1, torch.from_numpy(t))
    np.testing.assert_allclose(out_t.numpy(), out_np, rtol=1e-6, atol=1e-6)


def test_bad_timestep_shape_is_reported(pair):
    with pytest.raises(LatentfuseError, match="timesteps of shape"):
        flow.interpolate(pair[0], pair[1], np.zeros(5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_score_matches_the_gaussian_to_gaussian_closed_form(backend):
    # Z0 ~ N(mu0, s0²), Z1 ~ N(mu1, s1²): Z_t ~ N(m_t, s_t²) with score -(z - m_t)/s_t², and the exact
    # velocity v = (mu1 - mu0) + (t s1² - (1-t) s0²)/s_t² · (z - m_t).
    mu0, s0, mu1, s1 = 0.4, 0.5, -1.0, 1.7
    z = _to(backend, np.linspace(-3, 3, 13))
    for t in (0.0, 0.25, 0.6, 0.99):
        m_t, var_t = (1 - t) * mu0 + t * mu1, (1 - t) ** 2 * s0**2 + t**2 * s1**2
        v = (mu1 - mu0) + (t * s1**2 - (1 - t) * s0**2) / var_t * (z - m_t)
        mean = _to(backend, np.full(13, mu0))
        score = flow.score_from_velocity(z, v, t, prior_mean=mean, prior_std=s0)
        np.testing.assert_allclose(_np(score), -(_np(z) - m_t) / var_t, rtol=2e-4, atol=1e-4)
    with pytest.raises(LatentfuseError, match="0 <= t < 1"):
        flow.score_from_velocity(z, z, 1.0)


def test_standard_gaussian_score_is_the_design_formula():
    rng = np.random.default_rng(1)
    z, v = rng.standard_normal(10), rng.standard_normal(10)
    np.testing.assert_allclose(flow.score_from_velocity(z, v, 0.3), (0.3 * v - z) / 0.7)


@pytest.mark.parametrize("name", ["gaussian", "Source-A", "source_b", "SOURCE_MEAN", flow.Prior.SOURCE_A])
def test_prior_parse(name):
    assert isinstance(flow.Prior.parse(name), flow.Prior)


def test_unknown_prior_lists_the_valid_names():
    with pytest.raises(LatentfuseError, match="gaussian, source_a, source_b, source_mean"):
        flow.Prior.parse("laplace")


@pytest.mark.parametrize("backend", BACKENDS)
def test_priors_are_centred_with_the_right_spread(backend):
    rng = np.random.default_rng(2)
    shape = (2, 4, 64, 64)
    z_a, z_b = _to(backend, rng.standard_normal(shape) + 3.0), _to(backend, rng.standard_normal(shape) - 1.0)
    eps = _to(backend, rng.standard_normal(shape))
    assert flow.draw_prior("gaussian", eps) is eps  # N(0, I): the noise itself
    sigma = 0.3
    for prior, centre in [("source_a", z_a), ("source_b", z_b), ("source_mean", 0.5 * (z_a + z_b))]:
        z0 = _np(flow.draw_prior(prior, eps, z_a, z_b, sigma=sigma))
        residual = (z0 - _np(centre)) / sigma
        np.testing.assert_allclose(residual, _np(eps), atol=1e-4)  # exactly centre + sigma·eps
        assert abs(residual.mean()) < 0.01 and abs(residual.std() - 1.0) < 0.01
        params = flow.prior_params(prior, z_a, z_b, sigma)
        assert params.std == sigma
        np.testing.assert_allclose(_np(params.mean), _np(centre), atol=1e-6)
    assert flow.prior_params("gaussian") == flow.PriorParams(mean=None, std=1.0)


def test_prior_errors():
    z = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(LatentfuseError, match="needs the source latent"):
        flow.draw_prior("source_mean", z, z_a=z)
    with pytest.raises(LatentfuseError, match="sigma > 0"):
        flow.draw_prior("source_a", z, z_a=z, sigma=0.0)
    with pytest.raises(LatentfuseError, match="does not match the source latent shape"):
        flow.draw_prior("source_a", np.zeros((1, 4, 8, 16), np.float32), z_a=z)
    with pytest.raises(LatentfuseError, match="differ in shape"):
        flow.prior_params("source_mean", z, np.zeros((1, 4, 8, 16), np.float32))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_timestep_sampling_is_seeded_and_distributed(kind):
    def gen(seed):
        return torch.Generator().manual_seed(seed) if kind == "torch" else np.random.default_rng(seed)

    n = 20000
    uni = _np(flow.sample_timesteps(n, "uniform", generator=gen(0)))
    np.testing.assert_array_equal(uni, _np(flow.sample_timesteps(n, "uniform", generator=gen(0))))
    assert not np.array_equal(uni, _np(flow.sample_timesteps(n, "uniform", generator=gen(1))))
    assert uni.dtype == np.float32 and uni.shape == (n,) and uni.min() >= 0 and uni.max() < 1
    assert stats.kstest(uni, "uniform").pvalue > 1e-3
    ln = _np(flow.sample_timesteps(n, "logit_normal", generator=gen(0), loc=0.5, scale=0.8))
    assert ln.dtype == np.float32 and 0 < ln.min() and ln.max() < 1
    logits = np.log(ln.astype(np.float64) / (1 - ln.astype(np.float64)))
    assert stats.kstest(logits, "norm", args=(0.5, 0.8)).pvalue > 1e-3


def test_timestep_errors():
    with pytest.raises(LatentfuseError, match="unknown timestep scheme"):
        flow.sample_timesteps(4, "cosine", generator=np.random.default_rng(0))
    with pytest.raises(LatentfuseError, match="generator must be"):
        flow.sample_timesteps(4, generator=0)
