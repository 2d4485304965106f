"""Pixel-space competitors of the latent pipeline (MMAIF 4.6.4, Table 5), as bench pipelines.

``nafnet+densefuse``
    restoration then fusion, the structure of Table 5's "NAFNet+PSLPT": NAFNet-width32 (GoPro
    deblurring config, 17.11 M parameters, :mod:`latentfuse.bench.nafnet`) restores both sources (one batch of
    two), then DenseFuse (74,193 parameters, :mod:`latentfuse.bench.densefuse`) fuses them on luma. PSLPT itself
    is a tiny fusion stage (0.013 s of 0.358 s in Table 5); DenseFuse plays that role here.
``pixel-dit-reg`` / ``pixel-dit-flow-reuse5``
    the MoE-DiT run directly on RGB pixels (:mod:`latentfuse.bench.pixel_dit`) with the latent DiT's parameter
    count: no VAE, the prompt through the same T5, the same samplers. It isolates what the latent
    space buys.

All weights are random (latency and cost only; say so next to any number). Inputs are the same
HxWx3 [0, 1] numpy pair the latent pipelines get; conversion to device tensors and back counts in
the total, as the latent pipeline's padding and cropping do.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from latentfuse.bench.densefuse import DenseFuse
from latentfuse.bench.flops import forward_cost, module_bytes
from latentfuse.bench.nafnet import NAFNet
from latentfuse.bench.pipelines import BENCH_PROMPT, Analytic, BenchPipeline, dit_cost, prompt_cost
from latentfuse.bench.pixel_dit import DEFAULT_PATCH, pixel_dit_config


def _to_tensor(imgs, device, dtype) -> torch.Tensor:
    batch = np.stack([np.transpose(i, (2, 0, 1)) for i in imgs]).astype(np.float32)
    return torch.from_numpy(batch).to(device=device, dtype=dtype)


def _to_image(t: torch.Tensor) -> np.ndarray:
    return np.transpose(t[0].float().clamp(0, 1).cpu().numpy(), (1, 2, 0))


class _Timer:
    """Stage clock with device synchronisation at each edge (as runtime.latency.StageTimer)."""

    def __init__(self, pipe: BenchPipeline):
        self.pipe = pipe
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()

    def stage(self, name: str, fn, *args):
        self.pipe.synchronize()
        t0 = time.perf_counter()
        out = fn(*args)
        self.pipe.synchronize()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
        return out

    def finish(self) -> dict[str, float]:
        self.pipe.synchronize()
        return {**self.times, "total": time.perf_counter() - self.start}


class RestoreFusePipeline(BenchPipeline):
    """NAFNet restoration of both sources, then DenseFuse fusion; all in pixel space."""

    space = "pixel"
    stages = ("Restore", "Fuse")

    def __init__(self, precision: str, device, nafnet: str = "width32", name: str = "nafnet+densefuse"):
        super().__init__("torch", precision, device)
        self.name = name
        self.restorer = NAFNet.from_preset(nafnet).eval().to(self.device, self.dtype)
        self.fuser = DenseFuse().eval().to(self.device, self.dtype)
        self._pair = None

    def setup(self, a, b) -> None:
        self._pair = (a, b)

    def run(self) -> dict[str, float]:
        timer = _Timer(self)
        with torch.inference_mode():
            x = _to_tensor(self._pair, self.device, self.dtype)
            restored = timer.stage("Restore", self.restorer, x)
            fused = timer.stage("Fuse", self.fuser.fuse_rgb, restored[:1], restored[1:2])
            _to_image(fused)
        return timer.finish()

    def params(self) -> dict[str, int]:
        return {"NAFNet": sum(p.numel() for p in self.restorer.parameters()),
                "DenseFuse": sum(p.numel() for p in self.fuser.parameters())}

    def _analytic_uncached(self, height: int, width: int) -> Analytic:
        restore = forward_cost(self.restorer, torch.empty(2, 3, height, width), dtype=self.dtype)
        fuse = forward_cost(self.fuser, torch.empty(1, 1, height, width), torch.empty(1, 1, height, width),
                            dtype=self.dtype)
        weights = module_bytes(self.restorer) + module_bytes(self.fuser)
        return Analytic(flops={"Restore": restore.flops, "Fuse": fuse.flops},
                        peak_bytes=int(weights + max(restore.activation_bytes, fuse.activation_bytes)),
                        weight_bytes=int(weights))


class PixelDiTPipeline(BenchPipeline):
    """The MoE-DiT on RGB pixels (patch ``patch_size``), regression (1 NFE) or flow (sampler, steps)."""

    space = "pixel"
    stages = ("T5", "DiT")

    def __init__(self, name: str, latent_dit, text_encoder, precision: str, device, sampler: str | None = None,
                 steps: int = 1, patch_size: int = DEFAULT_PATCH):
        super().__init__("torch", precision, device)
        from latentfuse.model.dit import MoEDiT
        from latentfuse.runtime.samplers import get_sampler

        self.name = name
        self.config = pixel_dit_config(latent_dit.config, patch_size)
        torch.manual_seed(0)
        self.dit = MoEDiT(self.config).eval().to(self.device, self.dtype)
        self.text_encoder = text_encoder.to(self.device).eval()
        self.prompt = BENCH_PROMPT
        self.sampler, self.steps = sampler, int(steps)
        self.nfe = 1 if sampler is None else get_sampler(sampler).nfe(self.steps)
        self.latent_params = sum(p.numel() for p in latent_dit.parameters())
        self._pair = None

    def setup(self, a, b) -> None:
        self._pair = (a, b)

    def _network(self, x, embeds, mask):
        from latentfuse.runtime import samplers

        p = self.config.patch_size
        h, w = x.shape[-2:]
        # reflect-pad to the patch grid, as the latent pipeline pads to its 16-pixel grid
        x = F.pad(x, (0, (-w) % p, 0, (-h) % p), mode="reflect") if (h % p or w % p) else x
        z_a, z_b = x[:1], x[1:2]
        embeds = embeds.to(self.dtype)
        if self.sampler is None:
            return self.dit(z_a, z_b, embeds, mask)
        z0, params = samplers.initial_latent("gaussian", z_a, 0)
        t_batch = torch.empty(1, device=self.device, dtype=self.dtype)

        def velocity(z, t):
            return self.dit(z_a, z_b, embeds, mask, z_t=z, t=t_batch.fill_(t))

        return samplers.sample(self.sampler, velocity, z0, steps=self.steps, seed=0, prior=params).latent

    def run(self) -> dict[str, float]:
        timer = _Timer(self)
        with torch.inference_mode():
            x = _to_tensor(self._pair, self.device, self.dtype) * 2.0 - 1.0
            embeds, mask = timer.stage("T5", self.text_encoder.encode, [self.prompt])
            out = timer.stage("DiT", self._network, x, embeds, mask)
            _to_image((out[..., : x.shape[-2], : x.shape[-1]] + 1.0) * 0.5)
        return timer.finish()

    def params(self) -> dict[str, int]:
        return {"T5": sum(p.numel() for p in self.text_encoder.parameters()),
                "DiT": sum(p.numel() for p in self.dit.parameters())}

    def _analytic_uncached(self, height: int, width: int) -> Analytic:
        p = self.config.patch_size
        h, w = height + (-height) % p, width + (-width) % p
        t5 = prompt_cost(self.text_encoder, self.prompt)
        prompt_len = len(self.text_encoder.tokenize([self.prompt])[0][0])
        dit = dit_cost(self.dit, h, w, prompt_len, self.dtype)
        weights = module_bytes(self.text_encoder) + module_bytes(self.dit)
        return Analytic(flops={"T5": t5.flops, "DiT": dit.flops * self.nfe},
                        peak_bytes=int(weights + max(t5.activation_bytes, dit.activation_bytes)),
                        weight_bytes=int(weights))


def pixel_pipelines(components, precision: str, device, patch_size: int = DEFAULT_PATCH,
                    flow_steps: int = 5, names: tuple[str, ...] | None = None) -> list[BenchPipeline]:
    """The pixel-space competitors for one precision / device (torch only)."""
    makers = {
        "nafnet+densefuse": lambda: RestoreFusePipeline(precision, device),
        "pixel-dit-reg": lambda: PixelDiTPipeline("pixel-dit-reg", components.dit("regression"),
                                                  components.text_encoder, precision, device,
                                                  patch_size=patch_size),
        f"pixel-dit-flow-reuse{flow_steps}": lambda: PixelDiTPipeline(
            f"pixel-dit-flow-reuse{flow_steps}", components.dit("flow"), components.text_encoder, precision,
            device, sampler="midpoint_reuse_sde", steps=flow_steps, patch_size=patch_size),
    }
    return [make() for n, make in makers.items() if names is None or n in names]
