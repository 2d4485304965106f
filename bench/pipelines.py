"""What the sweep times: one *bench pipeline* per method, all with the same small interface, and the
latent pipelines of latentfuse itself (the pixel-space competitors are in :mod:`latentfuse.bench.competitors`).

    setup(a, b)        take the input pair (HxWx3 float32 [0, 1] numpy) for the next runs
    run()              one full fuse call -> {stage: seconds, ..., "total": seconds}
    analytic(h, w)     FLOPs per stage (DiT × NFE included) and the estimated peak bytes, no run
    params()           parameter counts per component

Latent pipelines go through :class:`latentfuse.runtime.pipeline.Pipeline` (so the timed call is exactly the
deployed one: padding, VAE-Enc, T5, the sampler's DiT calls, VAE-Dec, crop) and report its per-stage
timings (:mod:`latentfuse.runtime.latency`). A method that cannot run in a setting is an :class:`Unavailable`
record with the reason, so it shows up in the report instead of vanishing.
"""

from __future__ import annotations

import abc
import copy
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from latentfuse.bench.flops import Cost, dense_moe, forward_cost, module_bytes
from latentfuse.runtime.latency import STAGES

PROMPT_TASK = "vif"
#: Not one of the canonical task prompts that bundles ship pre-encoded: every pipeline on every
#: backend pays for the text encoder, as it would for a user's own prompt.
BENCH_PROMPT = "remove the rain and the noise, then fuse the visible and infrared images"
LATENT_STAGES = STAGES
#: The detail path's parameter set the bench runs: what a user's own (non-weather) prompt gets; the
#: rain prompt above would switch the stage off and leave its cost out of the table.
BENCH_DETAIL = "safe"



def latent_variants(flow_steps: int = 5, euler_steps: int = 25) -> dict[str, dict]:
    """The three latent configurations of MMAIF Table 5 / Table 6: regression (1 NFE), flow with the
    velocity-reuse midpoint sampler (5 steps, the default), and Euler (25 steps, ablation h), both from the prior
    as in the paper (start 0, whatever start the model declares). Names carry the step counts."""
    return {
        "latent-reg": {"mode": "regression", "sampler": None, "steps": 1},
        f"latent-flow-reuse{flow_steps}": {"mode": "flow", "sampler": "midpoint_reuse_sde", "steps": int(flow_steps),
                                           "start": 0.0},
        f"latent-euler{euler_steps}": {"mode": "flow", "sampler": "euler", "steps": int(euler_steps), "start": 0.0},
    }


@dataclass
class Analytic:
    """Cost of one fuse call at a size, computed without running it."""

    flops: dict[str, int]
    peak_bytes: int                 # weights + the largest stage's live activations
    weight_bytes: int = 0           # the resident part of peak_bytes
    method: str = "FlopCounterMode (meta tensors): matmul/conv/attention, 2 FLOPs per MAC"

    @property
    def total_flops(self) -> int:
        return int(sum(self.flops.values()))


@dataclass
class Unavailable:
    """A pipeline that cannot run in a setting (missing bundle, fp16 on CPU, ...), and why."""

    name: str
    space: str
    reason: str
    params: dict[str, int] = field(default_factory=dict)


class BenchPipeline(abc.ABC):
    name: str = "?"
    space: str = "?"            # "latent" or "pixel"
    stages: tuple[str, ...] = ()
    nfe: int = 1

    def __init__(self, backend: str, precision: str, device: torch.device):
        self.backend = backend
        self.precision = precision
        self.device = torch.device(device)
        self._analytic: dict[tuple[int, int], Analytic] = {}

    @abc.abstractmethod
    def setup(self, a: np.ndarray, b: np.ndarray) -> None: ...

    @abc.abstractmethod
    def run(self) -> dict[str, float]: ...

    @abc.abstractmethod
    def params(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def _analytic_uncached(self, height: int, width: int) -> Analytic: ...

    def analytic(self, height: int, width: int) -> Analytic:
        key = (int(height), int(width))
        if key not in self._analytic:
            self._analytic[key] = self._analytic_uncached(*key)
        return self._analytic[key]

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == "fp16" else torch.float32


def pad16(n: int) -> int:
    return n + (-n) % 16


# Analytic costs per module, shared by the pipelines that run the same module at the same shape (the
# three latent variants share the VAE, T5 and the flow DiT): the meta passes of a paper-size model take
# seconds each, and the sweep's clock is running while they are counted.
_COSTS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, Cost]]" = weakref.WeakKeyDictionary()


def cached_cost(module: torch.nn.Module, key: tuple, compute) -> Cost:
    """``compute()`` once per (module, key); the module's parameters must not change shape meanwhile."""
    table = _COSTS.setdefault(module, {})
    if key not in table:
        table[key] = compute()
    return table[key]


def prompt_cost(text_encoder, prompt: str) -> Cost:
    """T5 cost for one prompt: counted on the real module (its mask handling reads tensor values)."""
    def compute():
        ids, mask = text_encoder.tokenize([prompt])
        dev = next(text_encoder.parameters()).device
        return forward_cost(text_encoder, ids.to(dev), mask.to(dev), on_meta=False)

    return cached_cost(text_encoder, ("prompt", prompt), compute)


def dit_cost(dit, height: int, width: int, prompt_len: int, dtype: torch.dtype) -> Cost:
    """One MoE-DiT call on [1, z, height, width] inputs (latent or pixel grid), sparse-MoE FLOPs."""
    cfg = dit.config
    z = torch.empty(1, cfg.latent_channels, height, width)
    kwargs = dict(z_a=z, z_b=z, prompt_embeds=torch.empty(1, prompt_len, cfg.text_dim),
                  prompt_mask=torch.ones(1, prompt_len, dtype=torch.long))
    if cfg.head == "flow":
        kwargs.update(z_t=z, t=torch.empty(1))
    def compute():
        with dense_moe(dit):
            return forward_cost(dit, dtype=dtype, moe=(cfg.top_k, cfg.num_experts), **kwargs)

    return cached_cost(dit, ("dit", height, width, prompt_len, dtype), compute)


class LatentPipeline(BenchPipeline):
    """latentfuse's own pipeline (regression, flow-reuse-5 or Euler-25) on one backend."""

    space = "latent"
    stages = LATENT_STAGES

    def __init__(self, name: str, variant: dict, pipeline, components, backend: str, precision: str, device):
        super().__init__(backend, precision, device)
        from latentfuse.runtime.samplers import get_sampler

        self.name = name
        self.variant = dict(variant)
        self.pipe = pipeline
        self.pipe.memoize_prompts = False  # T5 runs every call, as for a fresh prompt in deployment
        self.components = components      # the torch modules: parameter counts and analytic cost
        self.prompt = BENCH_PROMPT
        sampler = self.variant["sampler"]
        self.nfe = 1 if sampler is None else get_sampler(sampler).nfe(self.variant["steps"])
        self._pair = None

    @property
    def head(self) -> str:
        return self.variant["mode"]

    def setup(self, a, b) -> None:
        self._pair = (a, b)

    def run(self) -> dict[str, float]:
        v = self.variant
        res = self.pipe(*self._pair, task=PROMPT_TASK, prompt=self.prompt, mode=v["mode"],
                        sampler=v["sampler"], steps=v["steps"], start=v.get("start"), seed=0, detail=BENCH_DETAIL)
        return {**res.timings.stages, "total": res.timings.total}

    def params(self) -> dict[str, int]:
        c = self.components
        return {"VAE": sum(p.numel() for p in c.vae.parameters()),
                "T5": sum(p.numel() for p in c.text_encoder.parameters()),
                "DiT": sum(p.numel() for p in c.dit(self.head).parameters())}

    def _analytic_uncached(self, height: int, width: int) -> Analytic:
        c = self.components
        k = c.work_scale  # the pipeline enlarges the pair before the VAE
        h, w = pad16(k * height), pad16(k * width)
        enc = cached_cost(c.vae, ("encode", h, w), lambda: forward_cost(c.vae, torch.empty(2, 3, h, w),
                                                                         method="encode_graph"))
        dec = cached_cost(c.vae, ("decode", h, w), lambda: forward_cost(
            c.vae, torch.empty(1, c.vae.latent_channels, h // 8, w // 8), method="decode_graph"))
        t5 = prompt_cost(c.text_encoder, self.prompt)
        prompt_len = len(c.text_encoder.tokenize([self.prompt])[0][0])
        dit = dit_cost(c.dit(self.head), h // 8, w // 8, prompt_len, self.dtype)
        flops = {"VAE-Enc": enc.flops, "T5": t5.flops, "DiT": dit.flops * self.nfe, "VAE-Dec": dec.flops}
        # every component stays resident (the backend loads them all); activations peak in one stage
        weights = module_bytes(c.vae) + module_bytes(c.text_encoder) + sum(module_bytes(d) for d in c.dits.values())
        peak = weights + max(enc.activation_bytes, t5.activation_bytes, dit.activation_bytes, dec.activation_bytes)
        return Analytic(flops=flops, peak_bytes=int(peak), weight_bytes=int(weights))


def torch_latent_pipelines(components, precision: str, device, variants: dict | None = None) -> list[LatentPipeline]:
    """The latent variants (default :func:`latent_variants`) on the torch backend, sharing one set of modules."""
    from latentfuse.runtime.pipeline import Pipeline

    variants = latent_variants() if variants is None else variants
    dtype = {"fp32": "float32", "fp16": "float16"}[precision]
    if precision != "fp32":
        # the torch backend casts the DiTs in place: an fp16 pipeline gets its own copy, so an fp32
        # pipeline over the same components keeps fp32 weights
        components = copy.deepcopy(components)
    pipe = Pipeline.from_components(components, device=str(device), dtype=dtype)
    return [LatentPipeline(n, v, pipe, components, "torch", precision, device) for n, v in variants.items()]


def bundle_latent_pipelines(bundle: str, backend: str, components, precision: str, device,
                            variants: dict | None = None, threads: int | None = None) -> list[Any]:
    """The latent variants over a deployment bundle (onnxruntime / tensorrt); the torch ``components``
    of the same architecture give the analytic cost. A bundle without a head yields Unavailable rows.
    ``threads``: ONNX Runtime's intra-op threads (the sweep's ``--threads``, as torch gets)."""
    from latentfuse.runtime.pipeline import Pipeline

    variants = latent_variants() if variants is None else variants
    options = {"threads": int(threads)} if threads and backend == "onnxruntime" else {}
    pipe = Pipeline.from_pretrained(bundle, backend=backend, **options)
    out: list[Any] = []
    for n, v in variants.items():
        if v["mode"] not in pipe.backend.heads:
            out.append(Unavailable(n, "latent", f"the bundle {bundle} has no {v['mode']} DiT"))
        else:
            out.append(LatentPipeline(n, v, pipe, components, backend, precision, device))
    return out
