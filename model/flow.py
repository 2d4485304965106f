"""Flow-matching maths shared by training and sampling (MMAIF paper section 2 Eq. 1-2, section 3.4).

Convention (docs/design.md "Samplers"): t=0 is the prior p0, t=1 is the data.

    Z_t = (1 - t)·Z0 + t·Z1                        linear interpolant
    v   = Z1 - Z0                                  regression target of the flow loss (Eq. 2 / Eq. 11)
    Z̃1 = Z_t + (1 - t)·v                          predicted data, for the auxiliary fusion loss (Eq. 9-10)

The paper's Eq. 2 writes Z_t = t·Z0 + (1-t)·Z1; its Algorithm 1 integrates from t=0 (noise) to t=1
(data), which only works with the convention above.

Priors p0 (paper Tab. 6 j-l, FusionFM's "direct transport from source modalities"). Every prior is
an isotropic Gaussian N(μ0, σ0²·I), drawn as Z0 = μ0 + σ0·ε with ε ~ N(0, I):

    gaussian      μ0 = 0                 σ0 = 1          (default, Algorithm 1 line 4)
    source_a      μ0 = Z_a               σ0 = σ_p
    source_b      μ0 = Z_b               σ0 = σ_p
    source_mean   μ0 = (Z_a + Z_b) / 2   σ0 = σ_p

The paper found that deterministic source priors (σ_p = 0) give artefacts "due to a lack of
stochasticity" (section 4.6.3). Adding σ_p·ε keeps a stochastic path: the interpolant then has a
non-degenerate density at every t < 1, so the score below exists and the SDE samplers can inject and
correct noise exactly as with the Gaussian prior. σ_p (``DEFAULT_SOURCE_SIGMA`` = 0.5, configurable)
trades how much of the source layout survives in Z0 against how much the sampler may correct; it is a
training hyper-parameter and must be the same at sampling time (the bundle manifest records it).

Score of the interpolant. For a Gaussian prior N(μ0, σ0²) independent of Z1 (given the conditioning),
E[Z0 | Z_t=z] = z - t·v(z, t), hence

    ∇log p_t(z) = -(E[Z0 | z] - μ0) / ((1 - t)·σ0²) = (t·v + μ0 - z) / ((1 - t)·σ0²).

With μ0=0, σ0=1 this is s = (t·v - z)/(1 - t), docs/design.md "Samplers" (the paper's printed
Algorithm 1 line 12 drops z and writes (1-t)² + t(1-t), which equals 1-t).

Everything here is plain arithmetic: it works unchanged on numpy arrays (runtime hosts) and torch
tensors (training). torch is imported only where a torch generator is passed.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError

# numpy.ndarray or torch.Tensor; kept as Any so the runtime never needs torch to import this module.
Array = Any

DEFAULT_SOURCE_SIGMA = 0.5

# The sampler a flow DiT runs with when none is asked for (runtime.samplers implements them; the bundle
# writer records these in manifest "sampler"). Its diffusion norm g for the SDE samplers: the paper does not
# report one, so this is a moderate starting point to be tuned on validation data.
DEFAULT_SAMPLER = "midpoint_reuse_sde"
DEFAULT_STEPS = 5
DEFAULT_G = 0.3
# Where the flow starts (MMAIF: 0, the prior). A start t0 > 0 first runs the regression DiT and samples from
# Z_t0 = (1 - t0)·Z0 + t0·Ẑ, its estimate noised to t0 (as DiffBIR starts from its regression stage's output and
# SDEdit from a guide), then integrates t0 -> 1: the steps go to the refinement, and the flow keeps regression's
# fidelity. A model declares its own in model_index.json "sampler" (model.components.read_index).
DEFAULT_START = 0.0
MODEL_SAMPLER_KEYS = ("start", "steps")  # what model_index.json "sampler" may set
TIMESTEP_SCHEMES: tuple[str, ...] = ("uniform", "logit_normal")


def check_start(start: Any, what: str = "--start") -> float:
    """A flow start t0 in [0, 1) as a float; a LatentfuseError naming ``what`` otherwise."""
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start) \
            or not 0.0 <= start < 1.0:
        raise LatentfuseError(f"{what} must be a number in [0, 1) (0: from the prior), got {start!r}")
    return float(start)


def check_model_sampler(section: Any, heads: Sequence[str], where: str) -> dict:
    """A model's own sampler defaults (model_index.json "sampler": ``start``, ``steps``), checked: a start > 0
    needs the regression DiT beside the flow DiT."""
    if not isinstance(section, dict):
        raise LatentfuseError(f"{where} must be an object with keys {', '.join(MODEL_SAMPLER_KEYS)}, got {section!r}")
    unknown = sorted(set(section) - set(MODEL_SAMPLER_KEYS))
    if unknown:
        raise LatentfuseError(f"{where}: unknown key(s) {', '.join(unknown)} (valid: {', '.join(MODEL_SAMPLER_KEYS)})")
    out = {}
    if "start" in section:
        out["start"] = check_start(section["start"], f"{where} start")
        if out["start"] > 0 and not {"flow", "regression"} <= set(heads):
            raise LatentfuseError(f"{where} start {out['start']:g} starts the flow from the regression DiT's estimate: "
                                  "the model needs both DiTs (dit_flow and dit_regression)")
    if "steps" in section:
        steps = section["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise LatentfuseError(f"{where} steps must be an integer >= 1, got {steps!r}")
        out["steps"] = steps
    return out


def is_torch(x: Any) -> bool:
    """True for a torch tensor (or any torch object), without importing torch."""
    return type(x).__module__.split(".")[0] == "torch"


def _time_like(t: float | Array, like: Array) -> float | Array:
    """Return ``t`` as a scalar or an array broadcastable against ``like`` ([B] -> [B,1,...,1])."""
    if isinstance(t, (int, float, np.floating, np.integer)):
        return float(t)
    if is_torch(like):
        import torch

        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    elif is_torch(t):
        raise LatentfuseError("timesteps are a torch tensor but the latents are a numpy array; use one framework")
    else:
        t = np.asarray(t, dtype=like.dtype)
    if t.ndim == 0 or t.ndim == like.ndim:
        return t
    if t.ndim == 1 and like.ndim >= 1 and t.shape[0] == like.shape[0]:
        return t.reshape((-1,) + (1,) * (like.ndim - 1))
    raise LatentfuseError(
        f"timesteps of shape {tuple(t.shape)} do not match latents of shape {tuple(like.shape)}: "
        "give a scalar, one value per batch item, or a full-shape array"
    )


def interpolate(z0: Array, z1: Array, t: float | Array) -> Array:
    """Z_t = (1 - t)·Z0 + t·Z1; ``t`` is a scalar or one value per batch item."""
    t = _time_like(t, z0)
    return (1 - t) * z0 + t * z1


def target_velocity(z0: Array, z1: Array) -> Array:
    """The flow-matching regression target v = Z1 - Z0 (paper Eq. 2 / Eq. 11)."""
    return z1 - z0


def predicted_data(z_t: Array, v: Array, t: float | Array) -> Array:
    """Z̃1 = Z_t + (1 - t)·v: the data point a predicted velocity points at (paper 3.4.1, aux loss)."""
    t = _time_like(t, z_t)
    return z_t + (1 - t) * v


def score_from_velocity(
    z_t: Array, v: Array, t: float, prior_mean: Array | None = None, prior_std: float = 1.0
) -> Array:
    """Score ∇log p_t(z) = (t·v + μ0 - z) / ((1 - t)·σ0²) of the linear interpolant from N(μ0, σ0²).

    Undefined at t = 1 (the data end has no Gaussian component); the samplers only evaluate it at
    t < 1 (Euler at t_k ≤ 1 - 1/N, midpoint at t_mid ≤ 1 - 1/(2N)).
    """
    t = float(t)
    if not 0.0 <= t < 1.0:
        raise LatentfuseError(f"the interpolant score needs 0 <= t < 1, got t={t}")
    numerator = t * v - z_t if prior_mean is None else t * v + prior_mean - z_t
    return numerator * (1.0 / ((1.0 - t) * float(prior_std) ** 2))


# ----------------------------------------------------------------------------------------- priors


class Prior(str, enum.Enum):
    """Prior p0 of the flow (t = 0)."""

    GAUSSIAN = "gaussian"
    SOURCE_A = "source_a"
    SOURCE_B = "source_b"
    SOURCE_MEAN = "source_mean"

    @classmethod
    def parse(cls, name: "str | Prior") -> "Prior":
        """Parse a prior name (case-insensitive, '-' and '_' alike) or pass a ``Prior`` through."""
        if isinstance(name, Prior):
            return name
        key = str(name).strip().lower().replace("-", "_")
        for member in cls:
            if member.value == key:
                return member
        valid = ", ".join(m.value for m in cls)
        raise LatentfuseError(f"unknown prior {name!r}: choose one of {valid}")

    @property
    def uses_sources(self) -> bool:
        return self is not Prior.GAUSSIAN


@dataclass(frozen=True)
class PriorParams:
    """The prior N(mean, std²·I) for one batch; ``mean`` None means zero."""

    mean: Array | None
    std: float


def _check_sigma(prior: Prior, sigma: float) -> float:
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise LatentfuseError(
            f"source prior {prior.value!r} needs a noise level sigma > 0 (got {sigma}); sigma = 0 is "
            "the deterministic path the paper found to give artefacts (section 4.6.3)"
        )
    return sigma


def check_prior(prior: str | Prior, sigma: float = DEFAULT_SOURCE_SIGMA) -> tuple[str, float]:
    """(name, σ_p) of a valid prior; a source prior needs σ_p > 0 (σ_p is unused by the Gaussian)."""
    parsed = Prior.parse(prior)
    return parsed.value, (float(sigma) if parsed is Prior.GAUSSIAN else _check_sigma(parsed, sigma))


def describe_prior(prior: str | Prior = "gaussian", sigma: float = DEFAULT_SOURCE_SIGMA) -> str:
    """Words for a model card or report: "Gaussian prior", "source_mean prior (σ_p = 0.5)"."""
    parsed = Prior.parse(prior)
    return "Gaussian prior" if parsed is Prior.GAUSSIAN else f"{parsed.value} prior (σ_p = {float(sigma):g})"


def prior_params(
    prior: str | Prior,
    z_a: Array | None = None,
    z_b: Array | None = None,
    sigma: float = DEFAULT_SOURCE_SIGMA,
) -> PriorParams:
    """Mean and standard deviation of the prior (see the module docstring for the table)."""
    prior = Prior.parse(prior)
    if prior is Prior.GAUSSIAN:
        return PriorParams(mean=None, std=1.0)
    sigma = _check_sigma(prior, sigma)
    needed = {Prior.SOURCE_A: ("z_a",), Prior.SOURCE_B: ("z_b",), Prior.SOURCE_MEAN: ("z_a", "z_b")}[prior]
    given = {"z_a": z_a, "z_b": z_b}
    missing = [name for name in needed if given[name] is None]
    if missing:
        raise LatentfuseError(f"prior {prior.value!r} needs the source latent(s) {', '.join(missing)}")
    if prior is Prior.SOURCE_A:
        mean = z_a
    elif prior is Prior.SOURCE_B:
        mean = z_b
    else:
        if tuple(z_a.shape) != tuple(z_b.shape):
            raise LatentfuseError(
                f"source latents differ in shape: z_a {tuple(z_a.shape)} vs z_b {tuple(z_b.shape)}"
            )
        mean = 0.5 * (z_a + z_b)
    return PriorParams(mean=mean, std=sigma)


def draw_prior(
    prior: str | Prior,
    eps: Array,
    z_a: Array | None = None,
    z_b: Array | None = None,
    sigma: float = DEFAULT_SOURCE_SIGMA,
) -> Array:
    """Z0 = μ0 + σ0·ε for standard-normal ``eps`` (torch.randn in training, runtime.noise at inference)."""
    params = prior_params(prior, z_a, z_b, sigma)
    if params.mean is None:
        return eps
    if tuple(params.mean.shape) != tuple(eps.shape):
        raise LatentfuseError(
            f"prior noise of shape {tuple(eps.shape)} does not match the source latent shape "
            f"{tuple(params.mean.shape)}"
        )
    return params.mean + params.std * eps


# ------------------------------------------------------------------------------------- timesteps


def sample_timesteps(
    n: int,
    scheme: str = "uniform",
    *,
    generator: Any,
    loc: float = 0.0,
    scale: float = 1.0,
) -> Array:
    """Draw ``n`` training timesteps in [0, 1] (float32).

    ``uniform``: t ~ U[0, 1) (paper Eq. 2). ``logit_normal``: t = sigmoid(loc + scale·n), n ~ N(0, 1),
    which concentrates training on mid-range t (Esser et al. 2024, "Scaling Rectified Flow
    Transformers", Eq. 19). ``generator`` is a ``torch.Generator`` (returns a torch tensor on its
    device) or a ``numpy.random.Generator`` (returns a numpy array); passing one is what makes the
    draw reproducible.
    """
    if scheme not in TIMESTEP_SCHEMES:
        raise LatentfuseError(f"unknown timestep scheme {scheme!r}: choose one of {', '.join(TIMESTEP_SCHEMES)}")
    n = int(n)
    if n < 0:
        raise LatentfuseError(f"number of timesteps must be >= 0, got {n}")
    if not (math.isfinite(scale) and scale > 0):
        raise LatentfuseError(f"logit-normal scale must be > 0, got {scale}")
    if is_torch(generator):
        import torch

        if scheme == "uniform":
            return torch.rand(n, generator=generator, device=generator.device)
        normal = torch.randn(n, generator=generator, device=generator.device)
        return torch.sigmoid(loc + scale * normal)
    if isinstance(generator, np.random.Generator):
        if scheme == "uniform":
            return generator.random(n, dtype=np.float32)
        normal = generator.standard_normal(n)
        return (1.0 / (1.0 + np.exp(-(loc + scale * normal)))).astype(np.float32)
    raise LatentfuseError(
        f"generator must be a torch.Generator or numpy.random.Generator, got {type(generator).__name__}"
    )
