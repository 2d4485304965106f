"""Analytic cost of a forward pass, the machine's matmul peak, and the fitted cost exponent.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on *meta* tensors: the
module runs with its weights swapped for meta tensors (``torch.func.functional_call``), so no
arithmetic happens and a 1024² paper-size forward costs milliseconds. The counter covers matmul,
convolution and attention (SDPA) ops at 2 FLOPs per multiply-accumulate; element-wise ops
(normalisation, activations, gating) are not counted, as in the FLOP tables of papers.

The same meta pass tracks the bytes of live intermediate tensors (allocated by an op, freed when
the last Python reference dies): its maximum, plus the weights, estimates the eager peak memory of
the forward before it is run, which is how the sweep rejects a size that would not fit its budget.
Allocator caching / workspaces are not modelled, so real peaks run somewhat higher.

Mixture-of-experts: on meta the routing has no data, so the DiT is counted with the dense dispatch
(every routed expert on every token) and the routed-expert FLOPs are then scaled by top_k / E: the
FLOPs of the sparse (deployed) model, "active" parameters doing work.
"""

from __future__ import annotations

import contextlib
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from latentfuse.model.errors import LatentfuseError

_ROUTED_EXPERT = re.compile(r"\.moe\.experts\.\d+$")


@dataclass
class Cost:
    """Analytic cost of one forward: FLOPs and the estimated peak bytes (weights + live activations)."""

    flops: int
    weight_bytes: int
    activation_bytes: int
    by_module: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def peak_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes


class _LiveBytes(TorchDispatchMode):
    """Tracks bytes held by tensors that ops allocate (views and in-place results excluded)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in inputs and not t._is_view():
                nbytes = t.numel() * t.element_size()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, nbytes)
        return out


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def forward_cost(module: torch.nn.Module, *args, method: str | None = None, dtype: torch.dtype | None = None,
                 moe: tuple[int, int] | None = None, on_meta: bool = True, **kwargs) -> Cost:
    """FLOPs and estimated peak bytes of ``module(*args, **kwargs)`` (or ``module.<method>``), run on meta.

    ``args`` may be real or meta tensors (only shapes / dtypes matter); ``dtype`` recasts floating
    weights and inputs (fp16 cost); ``moe=(top_k, num_experts)`` scales routed-expert FLOPs.
    ``on_meta=False`` runs the real module on the given (real) inputs instead: for small graphs whose
    control flow reads tensor values (the T5 encoder's mask handling), at the price of the arithmetic.
    """
    from torch.func import functional_call

    def meta(t: torch.Tensor) -> torch.Tensor:
        want = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
        return torch.empty(t.shape, dtype=want, device="meta")

    named = list(module.named_parameters()) + list(module.named_buffers())
    if on_meta:
        state = {k: meta(v) for k, v in named}
        args = tuple(meta(a) if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: meta(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    else:
        state = {k: v for k, v in named}
    weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
    counter = FlopCounterMode(display=False)
    live = _LiveBytes()
    fn = module if method is None else _Bound(module, method)
    with torch.inference_mode(), counter, live:
        functional_call(fn, {(("m." + k) if method else k): v for k, v in state.items()}, args, kwargs)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = counter.get_total_flops()
    if moe is not None:
        top_k, experts = moe
        routed = sum(v for k, v in by_module.items() if _ROUTED_EXPERT.search(k))
        total -= round(routed * (1.0 - top_k / experts))
    return Cost(flops=int(total), weight_bytes=int(weight_bytes), activation_bytes=int(live.peak), by_module=by_module)


class _Bound(torch.nn.Module):
    """Wraps ``module.method`` as a module forward (so functional_call can swap its weights)."""

    def __init__(self, module: torch.nn.Module, method: str):
        super().__init__()
        self.m = module
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.m, self.method)(*args, **kwargs)


@contextlib.contextmanager
def dense_moe(dit: torch.nn.Module):
    """Temporarily switch a MoEDiT to dense dispatch (data-free routing for meta tensors)."""
    blocks = getattr(dit, "blocks", [])
    saved = [b.moe.dispatch for b in blocks]
    for b in blocks:
        b.moe.dispatch = "dense"
    try:
        yield
    finally:
        for b, d in zip(blocks, saved):
            b.moe.dispatch = d


# -------------------------------------------------------------------------- machine peak


def matmul_peak_flops(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048,
                      repeats: int = 3) -> float:
    """Best achieved FLOP/s of an n×n×n matmul (2n³ FLOPs), best of ``repeats`` after one warm-up:
    the practical compute ceiling the pipelines are compared with."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    best = float("inf")
    with torch.inference_mode():
        torch.mm(a, b)
        sync()
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best


# -------------------------------------------------------------------------- exponent


@dataclass(frozen=True)
class ExponentFit:
    """latency ≈ c · pixels^k, least squares in log-log; ``r2`` of the fit in log space."""

    k: float
    c: float
    r2: float
    points: int

    def predict(self, pixels: float) -> float:
        return self.c * pixels ** self.k


def fit_exponent(pixels: Sequence[float], seconds: Sequence[float]) -> ExponentFit | None:
    """Fit latency ∝ pixels^k over the measured sizes; None with fewer than two distinct sizes."""
    p = np.asarray(pixels, dtype=np.float64)
    s = np.asarray(seconds, dtype=np.float64)
    if p.shape != s.shape:
        raise LatentfuseError(f"fit_exponent needs as many pixel counts as timings, got {p.shape} / {s.shape}")
    ok = np.isfinite(p) & np.isfinite(s) & (p > 0) & (s > 0)
    p, s = p[ok], s[ok]
    if len(np.unique(p)) < 2:
        return None
    x, y = np.log(p), np.log(s)
    k, logc = np.polyfit(x, y, 1)
    resid = y - (k * x + logc)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else 1.0
    return ExponentFit(k=float(k), c=float(np.exp(logc)), r2=r2, points=int(len(p)))
