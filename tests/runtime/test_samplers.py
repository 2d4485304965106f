"""Flow-matching samplers (runtime/samplers.py) on velocity fields with known solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from latentfuse.model import flow
from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime import noise, samplers

ODE = ["euler", "midpoint", "midpoint_reuse"]
SDE = ["euler_sde", "midpoint_sde", "midpoint_reuse_sde"]
STEPS = [4, 8, 16, 32, 64]


class GaussianFlow:
    """Exact marginal velocity of the linear interpolant from N(mu0, s0²) to N(mu1, s1²) (independent).

    Z_t ~ N(m_t, s_t²), m_t = (1-t)mu0 + t mu1, s_t² = (1-t)² s0² + t² s1², and since everything is
    jointly Gaussian E[Z1 - Z0 | Z_t = z] is affine in z:
        v(z, t) = (mu1 - mu0) + (t s1² - (1-t) s0²) / s_t² · (z - m_t).
    Its flow keeps the standardised coordinate: Z_t = m_t + (s_t / s0)(Z0 - mu0), so Z1 = mu1 + (s1/s0)(Z0 - mu0).
    Works elementwise on numpy arrays and torch tensors.
    """

    def __init__(self, mu0=0.0, s0=1.0, mu1=1.5, s1=0.4):
        self.mu0, self.s0, self.mu1, self.s1 = mu0, s0, mu1, s1

    def __call__(self, z, t):
        var_t = (1 - t) ** 2 * self.s0**2 + t**2 * self.s1**2
        gain = (t * self.s1**2 - (1 - t) * self.s0**2) / var_t
        return (self.mu1 - self.mu0) + gain * (z - ((1 - t) * self.mu0 + t * self.mu1))

    def exact(self, z0):
        return self.mu1 + (self.s1 / self.s0) * (z0 - self.mu0)


class RotatingLinearFlow:
    """dz/dt = cos(2t)·A(z - c): A(t) commutes with itself at all times, so Z1 = c + expm(A·sin(2)/2)(Z0 - c)."""

    A = np.array([[-1.0, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, 0.7]])
    c = np.array([0.5, -1.0, 2.0])

    def __call__(self, z, t):
        return math.cos(2 * t) * ((z - self.c) @ self.A.T)

    def exact(self, z0):
        return self.c + (z0 - self.c) @ expm(self.A * math.sin(2.0) / 2).T


def _slope(name, field, z0):
    errors = [np.abs(samplers.sample(name, field, z0, n).latent - field.exact(z0)).max() for n in STEPS]
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]


def test_convergence_orders():
    field = RotatingLinearFlow()
    z0 = np.random.default_rng(0).standard_normal((5, 3))
    slopes = {name: _slope(name, field, z0) for name in ODE}
    assert 0.9 < slopes["euler"] < 1.1, slopes
    assert 1.8 < slopes["midpoint"] < 2.2, slopes
    assert 0.9 < slopes["midpoint_reuse"] < 1.1, slopes


def test_convergence_on_the_gaussian_flow():
    field = GaussianFlow(mu0=0.3, s0=0.5, mu1=1.5, s1=2.0)
    z0 = np.random.default_rng(1).standard_normal(64)
    assert 0.85 < _slope("euler", field, z0) < 1.1
    # Midpoint is at least second order; on this field its h² error term cancels (measured slope ≈ 2.9).
    assert _slope("midpoint", field, z0) > 1.8


class Recorder:
    def __init__(self, field):
        self.field, self.times = field, []

    def __call__(self, z, t):
        self.times.append(t)
        return self.field(z, t)


@pytest.mark.parametrize("name", ODE + SDE + ["regression"])
@pytest.mark.parametrize("steps", [1, 3, 5])
def test_nfe_is_counted_exactly(name, steps):
    rec = Recorder(lambda z, t: -z)
    z0 = np.ones(4, np.float32)
    result = samplers.sample(name, rec, z0, steps, seed=3)
    assert result.nfe == len(rec.times) == samplers.SAMPLERS[name].nfe(steps)
    per_step = {"midpoint": 2, "midpoint_sde": 2, "regression": None}.get(name, 1)
    assert result.nfe == (1 if per_step is None else per_step * steps)
    assert result.sampler == name


def test_time_grid_and_evaluation_times():
    grid = samplers.time_grid(5)
    np.testing.assert_array_equal(grid, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert grid[-1] == 1.0
    z0 = np.zeros(2)
    rec = Recorder(lambda z, t: z)
    samplers.euler(rec, z0, 4)
    assert rec.times == [0.0, 0.25, 0.5, 0.75] and all(type(t) is float for t in rec.times)
    rec = Recorder(lambda z, t: z)
    samplers.midpoint(rec, z0, 2)
    assert rec.times == [0.0, 0.25, 0.5, 0.75]
    rec = Recorder(lambda z, t: z)
    samplers.regression(rec, z0)
    assert rec.times == [None]


def test_velocity_reuse_without_noise_is_euler():
    field, z0 = GaussianFlow(), np.random.default_rng(2).standard_normal(100).astype(np.float32)
    np.testing.assert_array_equal(samplers.midpoint_reuse(field, z0, 7).latent, samplers.euler(field, z0, 7).latent)


@pytest.mark.parametrize("ode,sde", list(zip(ODE, SDE)))
def test_sde_with_zero_g_is_the_ode_exactly(ode, sde):
    field, z0 = GaussianFlow(), np.random.default_rng(3).standard_normal(100).astype(np.float32)
    ode_out = samplers.sample(ode, field, z0, 6).latent
    np.testing.assert_array_equal(samplers.sample(sde, field, z0, 6, g=0.0, seed=5).latent, ode_out)


@pytest.mark.parametrize("name", SDE)
def test_sde_is_seeded(name):
    field, z0 = GaussianFlow(), np.random.default_rng(4).standard_normal(100).astype(np.float32)
    a = samplers.sample(name, field, z0, 5, g=0.5, seed=11).latent
    np.testing.assert_array_equal(a, samplers.sample(name, field, z0, 5, g=0.5, seed=11).latent)
    assert np.abs(a - samplers.sample(name, field, z0, 5, g=0.5, seed=12).latent).max() > 1e-3
    assert np.abs(a - samplers.sample(name, field, z0, 5, g=0.0).latent).max() > 1e-3


def test_sde_step_formula_and_noise_streams():
    # v ≡ 0 isolates the stochastic terms. One midpoint step from z0: t_mid = 0.5, Δ = 0.5, κ = g,
    # s = -z0 / 0.5, noise from stream 1:  z = z0 + κ·s·Δ + sqrt(2κΔ)·ε.
    g, seed = 0.3, 21
    z0 = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    zero = lambda z, t: 0.0 * z  # noqa: E731
    eps1 = noise.gaussian(seed, z0.shape, stream=1)
    want = z0 + g * (-z0 / 0.5) * 0.5 + math.sqrt(2 * g * 0.5) * eps1
    for name in ("midpoint_sde", "midpoint_reuse_sde"):
        np.testing.assert_allclose(samplers.sample(name, zero, z0, 1, g=g, seed=seed).latent, want, rtol=1e-6)
    # Euler–Maruyama, 2 steps: step 0 at t=0 has κ=0 (no noise); step 1 at t=0.5 uses stream 2 over h=0.5.
    eps2 = noise.gaussian(seed, z0.shape, stream=2)
    want = z0 + g * (-z0 / 0.5) * 0.5 + math.sqrt(2 * g * 0.5) * eps2
    np.testing.assert_allclose(samplers.sample("euler_sde", zero, z0, 2, g=g, seed=seed).latent, want, rtol=1e-6)


PRIORS = {
    "gaussian": dict(mu0=0.0, s0=1.0),
    "source": dict(mu0=0.7, s0=0.5),  # a source prior N(source, σ_p²) with σ_p = 0.5
}


def _sde_moments(name, prior_name, n=50_000, steps=50, g=1.0):
    p = PRIORS[prior_name]
    field = GaussianFlow(mu0=p["mu0"], s0=p["s0"], mu1=1.5, s1=0.4)
    source = np.full(n, p["mu0"], np.float32)
    kind = "gaussian" if prior_name == "gaussian" else "source_a"
    z0, params = samplers.initial_latent(kind, source, seed=1, z_a=source, sigma=p["s0"])
    out = samplers.sample(name, field, z0, steps, g=g, seed=2, prior=params).latent.astype(np.float64)
    exact = field.exact(z0.astype(np.float64))  # the ODE pushforward of the same Z0
    return out.mean() - exact.mean(), out.std() / exact.std()


@pytest.mark.parametrize("prior_name", PRIORS)
@pytest.mark.parametrize("name", SDE)
def test_sde_reaches_the_data_distribution(name, prior_name):
    # With the exact field, the SDE keeps the marginals only if the score is right; final mean and
    # spread must match N(mu1, s1²) up to discretisation (measured within 2.5% at 50 steps).
    mean_err, std_ratio = _sde_moments(name, prior_name)
    assert abs(mean_err) < 0.01, mean_err
    assert abs(std_ratio - 1.0) < 0.04, std_ratio


@pytest.mark.parametrize("wrong_score", ["drops_z", "drops_prior_mean"])
def test_a_wrong_score_is_detected(monkeypatch, wrong_score):
    # Negative control for the test above: the printed Algorithm 1 line without Z, or a source prior
    # scored as if it were centred at 0, pushes the samples off the data distribution.
    def bad(z, v, t, prior_mean=None, prior_std=1.0):
        if wrong_score == "drops_z":
            return t * v / ((1 - t) * prior_std**2)
        return (t * v - z) / ((1 - t) * prior_std**2)

    monkeypatch.setattr(flow, "score_from_velocity", bad)
    prior = "gaussian" if wrong_score == "drops_z" else "source"
    mean_err, std_ratio = _sde_moments("midpoint_reuse_sde", prior, n=20_000)
    assert abs(mean_err) > 0.1 or abs(std_ratio - 1.0) > 0.2


@pytest.mark.parametrize("name", ODE + SDE + ["regression"])
def test_numpy_and_torch_give_the_same_result(name):
    field = GaussianFlow(mu0=0.0, s0=1.0, mu1=-0.5, s1=0.7)
    if name == "regression":  # the regression model takes no time
        field = lambda z, t: 0.5 * z + 1.0  # noqa: E731
    z0 = noise.gaussian(9, (2, 4, 8, 8))
    g = 0.5 if name in SDE else None
    out_np = samplers.sample(name, field, z0, 5, g=g, seed=4).latent
    out_t = samplers.sample(name, field, torch.from_numpy(z0.copy()), 5, g=g, seed=4).latent
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    assert out_np.dtype == np.float32
    np.testing.assert_allclose(out_t.numpy(), out_np, rtol=1e-5, atol=1e-5)


def test_batch_item_zero_does_not_depend_on_batch_size():
    field = GaussianFlow()
    z_batch = noise.gaussian(5, (3, 4, 8, 8))
    full = samplers.sample("midpoint_reuse_sde", field, z_batch, 5, g=0.5, seed=6).latent
    one = samplers.sample("midpoint_reuse_sde", field, z_batch[:1], 5, g=0.5, seed=6).latent
    np.testing.assert_array_equal(full[:1], one)


def test_initial_latent_uses_stream_zero():
    like = np.zeros((1, 4, 8, 8), np.float32)
    z0, params = samplers.initial_latent("gaussian", like, seed=8)
    np.testing.assert_array_equal(z0, noise.gaussian(8, like.shape, stream=0))
    assert params.mean is None and params.std == 1.0
    z_a, z_b = np.full_like(like, 2.0), np.full_like(like, -1.0)
    z0, params = samplers.initial_latent("source_mean", like, seed=8, z_a=z_a, z_b=z_b, sigma=0.25)
    np.testing.assert_allclose(z0, 0.5 + 0.25 * noise.gaussian(8, like.shape, stream=0), rtol=1e-6)
    assert params.std == 0.25
    z0_t, _ = samplers.initial_latent("gaussian", torch.from_numpy(like), seed=8)
    assert isinstance(z0_t, torch.Tensor)
    np.testing.assert_array_equal(z0_t.numpy(), noise.gaussian(8, like.shape, stream=0))


def test_regression_is_one_call_of_the_model():
    target = np.arange(6, dtype=np.float32)
    result = samplers.sample("regression", lambda z, t: target, np.zeros(6, np.float32))
    assert result.latent is target and result.nfe == 1 and result.timesteps.size == 0


def test_registry_and_dispatcher_errors():
    assert set(samplers.SAMPLERS) == set(ODE + SDE + ["regression"])
    assert samplers.DEFAULT_SAMPLER in samplers.SAMPLERS
    z0 = np.zeros(4, np.float32)
    field = GaussianFlow()
    with pytest.raises(LatentfuseError, match="unknown sampler 'heun'.*euler, midpoint, midpoint_reuse"):
        samplers.sample("heun", field, z0)
    with pytest.raises(LatentfuseError, match="deterministic.*midpoint_reuse_sde"):
        samplers.sample("midpoint", field, z0, 5, g=0.5)
    for steps in (0, 2.5, True):
        with pytest.raises(LatentfuseError, match="steps"):
            samplers.sample("euler", field, z0, steps)
    with pytest.raises(LatentfuseError, match="diffusion norm"):
        samplers.sample("euler_sde", field, z0, 5, g=-1.0)
    with pytest.raises(LatentfuseError, match="seed"):
        samplers.sample("euler_sde", field, z0, 5, seed=-3)
    with pytest.raises(LatentfuseError, match="numpy array or torch tensor"):
        samplers.sample("euler", field, [0.0, 1.0], 5)
    # g=None means DEFAULT_G for SDE samplers (not a silent ODE).
    default = samplers.sample("midpoint_reuse_sde", field, z0 + 1, 5, seed=1).latent
    np.testing.assert_array_equal(
        default, samplers.sample("midpoint_reuse_sde", field, z0 + 1, 5, g=samplers.DEFAULT_G, seed=1).latent
    )


def test_a_start_integrates_the_rest_of_the_path():
    """From t0 the steps cover [t0, 1]: started on the exact path at t0, the samplers reach the exact end,
    closer with more steps (order 2 for midpoint); start 0 is the plain sampler, bit for bit."""
    field, t0 = GaussianFlow(), 0.4
    z0 = np.random.default_rng(5).standard_normal(200)
    s_t = math.sqrt((1 - t0) ** 2 * field.s0 ** 2 + t0 ** 2 * field.s1 ** 2)
    z_t0 = (1 - t0) * field.mu0 + t0 * field.mu1 + (s_t / field.s0) * (z0 - field.mu0)
    errors = [np.abs(samplers.sample("midpoint", field, z_t0, n, start=t0).latent - field.exact(z0)).max()
              for n in STEPS]
    assert -np.polyfit(np.log(STEPS), np.log(errors), 1)[0] > 1.8 and errors[-1] < 1e-4
    rec = Recorder(lambda z, t: z)
    result = samplers.sample("euler", rec, z_t0, 4, start=0.5)
    assert rec.times == [0.5, 0.625, 0.75, 0.875] and result.nfe == 4
    np.testing.assert_array_equal(samplers.time_grid(4, 0.5), [0.5, 0.625, 0.75, 0.875, 1.0])
    np.testing.assert_array_equal(samplers.time_grid(3, 0.3)[-1], 1.0)
    np.testing.assert_array_equal(samplers.sample("midpoint_reuse_sde", field, z0, 5, seed=2, start=0.0).latent,
                                  samplers.sample("midpoint_reuse_sde", field, z0, 5, seed=2).latent)


def test_start_latent_and_start_errors():
    z0, estimate = np.full(4, 2.0, np.float32), np.full(4, -1.0, np.float32)
    np.testing.assert_allclose(samplers.start_latent(z0, estimate, 0.25), np.full(4, 1.25))
    np.testing.assert_array_equal(samplers.start_latent(z0, estimate, 0.0), z0)
    for bad in (1.0, -0.1, float("nan"), True, "0.3"):
        with pytest.raises(LatentfuseError, match=r"start must be a number in \[0, 1\)"):
            samplers.sample("euler", GaussianFlow(), z0, 3, start=bad)
        with pytest.raises(LatentfuseError, match="start"):
            samplers.start_latent(z0, estimate, bad)
    with pytest.raises(LatentfuseError, match="regression sampler.*no start"):
        samplers.sample("regression", lambda z, t: z, z0, start=0.5)
