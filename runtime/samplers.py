"""Flow-matching samplers (MMAIF paper section 3.4.2, Algorithm 1), as plain functions of a velocity.

``velocity(z, t) -> v`` is any callable (an ONNX Runtime / TensorRT session wrapper, a torch module
closure, a test field); ``z`` is a numpy array or a torch tensor and ``t`` a Python float. Every
sampler returns a :class:`SampleResult` with the final latent, the exact number of velocity calls
(NFE, counted by wrapping the callable) and the time grid.

Time grid (Algorithm 1 line 1, "arange(0, 1, T)"): N steps on t_k = k / N, k = 0..N, computed in
float64 as an exact division, so t_0 = 0 and t_N = 1 exactly. With a start t0 > 0 (``start``, from the
regression DiT's estimate: :func:`start_latent`) the N steps cover [t0, 1]: t_k = t0 + (1 - t0)·k / N. Step k goes from t1 = t_k to t2 = t_{k+1};
h = t2 - t1, Δ = h / 2, t_mid = (t1 + t2) / 2. All scalar coefficients are float64, the latent keeps
its own dtype.

Deterministic part of one step:

    euler            Z ← Z + h·v(Z, t1)                                           1 NFE, order 1
    midpoint         Z_mid = Z + Δ·v(Z, t1);  Z ← Z + h·v(Z_mid, t_mid)           2 NFE, order 2
    midpoint_reuse   v_mid := v(Z, t1) (velocity reuse);  Z ← Z + h·v_mid         1 NFE, order 1

``midpoint`` is the classical explicit midpoint rule, which is second order. The paper's Eq. 12 writes
Z ← Z_mid + Δ·v(Z_mid, t_mid) instead, which is Euler on the half-step grid (first order, 2N NFE for
what 2N Euler steps already give); with velocity reuse both forms coincide (Z_mid + Δ·v1 = Z + h·v1)
and ``midpoint_reuse`` is Algorithm 1 exactly. At g = 0 ``midpoint_reuse`` equals ``euler``.

SDE variants (Algorithm 1 lines 10-12, "stochastic flow sampling" [30]): the marginal-preserving SDE
dZ = (v + κ·σ0²·s) dt + σ0·sqrt(2κ) dW with the score s of the linear interpolant
(``model.flow.score_from_velocity``: s = (t·v + μ0 - Z) / ((1 - t)·σ0²)) and κ = g·sin²(π·t):

    midpoint*_sde    Z ← [deterministic step] + κ·σ0²·s(Z_mid, v_mid, t_mid)·Δ + σ0·sqrt(2κΔ)·ε,
                     κ = g·sin²(π·t_mid)   (Algorithm 1: Z ← Z_mid + (v_mid + κ·s)·Δ + sqrt(2κΔ)·ε)
    euler_sde        Z ← Z + h·v + κ·σ0²·s(Z, v, t1)·h + σ0·sqrt(2κh)·ε,  κ = g·sin²(π·t1)
                     (Euler–Maruyama over the whole step)

so the midpoint family applies its Langevin correction over the second half-step only (as the paper
does) while Euler–Maruyama applies it over the full step: for equal g, ``euler_sde`` injects twice the
noise variance per unit time. For the Gaussian prior (μ0 = 0, σ0 = 1) this is Algorithm 1's formula
(docs/design.md "Samplers"); σ0² preconditions the Langevin term for source priors so g keeps its
meaning in prior units (any constant preconditioner preserves the marginals). The score is only
evaluated at t < 1 (t1 ≤ 1 - 1/N, t_mid ≤ 1 - 1/(2N)), and sin²(π·t) → 0 as t → 1 tames its
1/(1 - t). When κ = 0 (g = 0, or t1 = 0 for Euler) the step is the ODE step exactly and draws no
noise.

Noise (``runtime.noise``): the initial latent of the Gaussian or source prior uses stream 0
(:func:`initial_latent`), the SDE noise ε of step k (0-based) uses stream k + 1, both with the same
seed. ``regression`` makes one call ``model(z0, None)`` (the regression DiT has no time input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from latentfuse.model import flow
from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime import noise

Array = Any
Velocity = Callable[[Array, Any], Array]

# The defaults live with the model (model.flow), where the bundle writer reads them too.
DEFAULT_SAMPLER = flow.DEFAULT_SAMPLER
DEFAULT_STEPS = flow.DEFAULT_STEPS
DEFAULT_G = flow.DEFAULT_G


@dataclass(frozen=True)
class SampleResult:
    """Output of a sampler: final latent, exact number of function evaluations, time grid used."""

    latent: Array
    nfe: int
    timesteps: np.ndarray = field(repr=False)
    sampler: str = ""


class _CountedVelocity:
    """Wraps the velocity callable and counts its calls (the NFE)."""

    def __init__(self, fn: Velocity):
        self.fn = fn
        self.calls = 0

    def __call__(self, z: Array, t: Any) -> Array:
        self.calls += 1
        return self.fn(z, t)


def time_grid(steps: int, start: float = 0.0) -> np.ndarray:
    """t_k = start + (1 - start)·k / steps for k = 0..steps (float64; t_0 = start and t_N = 1 exactly)."""
    grid = np.arange(steps + 1, dtype=np.float64) / steps
    if start:
        grid = start + (1.0 - start) * grid
        grid[-1] = 1.0
    return grid


def _noise_like(seed: int, z: Array, stream: int) -> Array:
    if flow.is_torch(z):
        return noise.gaussian_like(seed, z, stream)
    return noise.gaussian(seed, z.shape, stream).astype(z.dtype, copy=False)


def initial_latent(
    prior: str | flow.Prior,
    like: Array,
    seed: int,
    z_a: Array | None = None,
    z_b: Array | None = None,
    sigma: float = flow.DEFAULT_SOURCE_SIGMA,
) -> tuple[Array, flow.PriorParams]:
    """Draw Z0 = μ0 + σ0·ε with ε from noise stream 0, shaped (and typed) like ``like``.

    Returns Z0 and the prior parameters the SDE samplers need for the score.
    """
    params = flow.prior_params(prior, z_a, z_b, sigma)
    eps = _noise_like(seed, like, stream=0)
    return flow.draw_prior(prior, eps, z_a, z_b, sigma), params


def _check_common(z0: Array, steps: int, g: float, seed: int) -> tuple[int, float, int]:
    if not hasattr(z0, "shape") or not hasattr(z0, "dtype"):
        raise LatentfuseError(f"the initial latent must be a numpy array or torch tensor, got {type(z0).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise LatentfuseError(f"sampling steps must be an integer >= 1, got {steps!r}")
    g = float(g)
    if not (math.isfinite(g) and g >= 0):
        raise LatentfuseError(f"diffusion norm g must be finite and >= 0, got {g}")
    seed = noise._check_u64(seed, "seed")
    return int(steps), g, seed


def _integrate(
    velocity: Velocity,
    z0: Array,
    steps: int,
    *,
    method: str,
    g: float,
    seed: int,
    prior: flow.PriorParams | None,
    name: str,
    start: float = 0.0,
) -> SampleResult:
    """The shared step loop from t = ``start`` to 1; ``method`` is 'euler', 'midpoint' or 'midpoint_reuse'."""
    steps, g, seed = _check_common(z0, steps, g, seed)
    prior = prior or flow.PriorParams(mean=None, std=1.0)
    var = float(prior.std) ** 2
    v_fn = _CountedVelocity(velocity)
    grid = time_grid(steps, flow.check_start(start, "the sampler's start"))
    z = z0
    for k in range(steps):
        t1, t2 = float(grid[k]), float(grid[k + 1])
        h = t2 - t1
        v1 = v_fn(z, t1)
        if method == "euler":
            kappa = g * math.sin(math.pi * t1) ** 2
            z_next = z + v1 * h
            if kappa > 0.0:
                s = flow.score_from_velocity(z, v1, t1, prior.mean, prior.std)
                eps = _noise_like(seed, z, stream=k + 1)
                z_next = z_next + s * (kappa * var * h) + eps * (prior.std * math.sqrt(2.0 * kappa * h))
        else:
            half = 0.5 * h
            t_mid = 0.5 * (t1 + t2)
            z_mid = z + v1 * half
            v_mid = v1 if method == "midpoint_reuse" else v_fn(z_mid, t_mid)
            kappa = g * math.sin(math.pi * t_mid) ** 2
            z_next = z + v_mid * h
            if kappa > 0.0:
                s = flow.score_from_velocity(z_mid, v_mid, t_mid, prior.mean, prior.std)
                eps = _noise_like(seed, z, stream=k + 1)
                z_next = z_next + s * (kappa * var * half) + eps * (prior.std * math.sqrt(2.0 * kappa * half))
        z = z_next
    return SampleResult(latent=z, nfe=v_fn.calls, timesteps=grid, sampler=name)


# ------------------------------------------------------------------------------- public samplers


def euler(velocity: Velocity, z0: Array, steps: int) -> SampleResult:
    """Euler ODE: N steps, N NFE."""
    return _integrate(velocity, z0, steps, method="euler", g=0.0, seed=0, prior=None, name="euler")


def midpoint(velocity: Velocity, z0: Array, steps: int) -> SampleResult:
    """Explicit midpoint ODE: N steps, 2N NFE, second order."""
    return _integrate(velocity, z0, steps, method="midpoint", g=0.0, seed=0, prior=None, name="midpoint")


def midpoint_reuse(velocity: Velocity, z0: Array, steps: int) -> SampleResult:
    """Midpoint with velocity reuse (Algorithm 1, g = 0): N steps, N NFE."""
    return _integrate(
        velocity, z0, steps, method="midpoint_reuse", g=0.0, seed=0, prior=None, name="midpoint_reuse"
    )


def euler_sde(
    velocity: Velocity, z0: Array, steps: int, g: float = DEFAULT_G, seed: int = 0,
    prior: flow.PriorParams | None = None,
) -> SampleResult:
    """Euler–Maruyama on the marginal-preserving SDE: N steps, N NFE."""
    return _integrate(velocity, z0, steps, method="euler", g=g, seed=seed, prior=prior, name="euler_sde")


def midpoint_sde(
    velocity: Velocity, z0: Array, steps: int, g: float = DEFAULT_G, seed: int = 0,
    prior: flow.PriorParams | None = None,
) -> SampleResult:
    """Midpoint drift with the Algorithm 1 Langevin half-step: N steps, 2N NFE."""
    return _integrate(velocity, z0, steps, method="midpoint", g=g, seed=seed, prior=prior, name="midpoint_sde")


def midpoint_reuse_sde(
    velocity: Velocity, z0: Array, steps: int, g: float = DEFAULT_G, seed: int = 0,
    prior: flow.PriorParams | None = None,
) -> SampleResult:
    """Algorithm 1 with velocity reuse (the paper's default): N steps, N NFE."""
    return _integrate(
        velocity, z0, steps, method="midpoint_reuse", g=g, seed=seed, prior=prior, name="midpoint_reuse_sde"
    )


def regression(model: Velocity, z0: Array) -> SampleResult:
    """One call ``model(z0, None)`` of the regression model f_θ (paper Eq. 8): 1 NFE, no time grid."""
    counted = _CountedVelocity(model)
    latent = counted(z0, None)
    return SampleResult(latent=latent, nfe=counted.calls, timesteps=np.zeros(0), sampler="regression")


# -------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: whether it uses g and the seed, and its NFE per step (None: fixed 1)."""

    name: str
    fn: Callable[..., SampleResult]
    stochastic: bool
    nfe_per_step: int | None

    def nfe(self, steps: int) -> int:
        """Number of velocity calls for ``steps`` steps."""
        return 1 if self.nfe_per_step is None else self.nfe_per_step * int(steps)


def _ode(method: str, name: str) -> Callable[..., SampleResult]:
    def run(velocity, z0, steps, g, seed, prior, start=0.0):
        return _integrate(velocity, z0, steps, method=method, g=0.0, seed=seed, prior=prior, name=name, start=start)
    return run


def _sde(method: str, name: str) -> Callable[..., SampleResult]:
    def run(velocity, z0, steps, g, seed, prior, start=0.0):
        return _integrate(velocity, z0, steps, method=method, g=g, seed=seed, prior=prior, name=name, start=start)
    return run


SAMPLERS: Mapping[str, SamplerSpec] = {
    "euler": SamplerSpec("euler", _ode("euler", "euler"), False, 1),
    "midpoint": SamplerSpec("midpoint", _ode("midpoint", "midpoint"), False, 2),
    "midpoint_reuse": SamplerSpec("midpoint_reuse", _ode("midpoint_reuse", "midpoint_reuse"), False, 1),
    "euler_sde": SamplerSpec("euler_sde", _sde("euler", "euler_sde"), True, 1),
    "midpoint_sde": SamplerSpec("midpoint_sde", _sde("midpoint", "midpoint_sde"), True, 2),
    "midpoint_reuse_sde": SamplerSpec(
        "midpoint_reuse_sde", _sde("midpoint_reuse", "midpoint_reuse_sde"), True, 1
    ),
    "regression": SamplerSpec("regression", lambda velocity, z0, steps, g, seed, prior, start=0.0:
                              regression(velocity, z0), False, None),
}


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler called ``name``; a LatentfuseError lists the valid names otherwise."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise LatentfuseError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}") from None


def sample(
    name: str,
    velocity: Velocity,
    z0: Array,
    steps: int = DEFAULT_STEPS,
    g: float | None = None,
    seed: int = 0,
    prior: flow.PriorParams | None = None,
    start: float = 0.0,
) -> SampleResult:
    """Run sampler ``name`` from ``z0`` at t = ``start`` (0: the prior; see :func:`start_latent`) to t = 1.

    ``g`` None means ``DEFAULT_G`` for the SDE samplers and 0 for the others; a g > 0 for a
    deterministic sampler is an error rather than silently ignored. ``prior`` (from
    :func:`initial_latent` / ``model.flow.prior_params``) is needed by the SDE score for source
    priors; None is the standard Gaussian.
    """
    spec = get_sampler(name)
    if g is None:
        g = DEFAULT_G if spec.stochastic else 0.0
    elif not spec.stochastic and float(g) != 0.0:
        raise LatentfuseError(
            f"sampler {name!r} is deterministic and takes no diffusion norm (got g={g}); "
            f"use one of {', '.join(n for n, s in SAMPLERS.items() if s.stochastic)}"
        )
    if spec.name == "regression":
        _check_common(z0, 1, 0.0, seed)
        if start:
            raise LatentfuseError("the regression sampler makes one call and has no start")
    return spec.fn(velocity, z0, steps, g, seed, prior, start)


def start_latent(z0: Array, estimate: Array, start: float) -> Array:
    """Z_t0 = (1 - t0)·Z0 + t0·Ẑ: the prior draw ``z0`` and the regression DiT's ``estimate`` on the flow's
    path at t0 = ``start`` (``model.flow.DEFAULT_START``: the flow then refines the estimate, DiffBIR-style)."""
    return flow.interpolate(z0, estimate, flow.check_start(start, "the sampler's start"))
