"""pytest-benchmark cases for the core stages: ``pytest bench/ --benchmark-only``.

Each case times one stage in isolation (fixtures in ``bench/conftest.py``): the DiT forward of each
head on each backend, VAE encode / decode, the sampler's own host-side work per step (with a
zero-cost velocity), one Q^AB/F evaluation, and the two pixel-space competitor networks. The end-to-end
comparison is ``latentfuse bench`` (bench/sweep.py); these are for tracking one stage across changes
(``--benchmark-autosave`` / ``--benchmark-compare``).
"""

from __future__ import annotations

import numpy as np
import pytest

ROUNDS = dict(rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("head", ["flow", "regression"])
def test_dit_forward(benchmark, backend, latent_inputs, head):
    if head not in backend.heads:
        pytest.skip(f"the {backend.name} backend has no {head} DiT")
    _, latents, embeds, mask = latent_inputs
    z_a, z_b = latents[:1], latents[1:2]
    if head == "flow":
        t = np.full((1,), 0.5, np.float32)
        out = benchmark.pedantic(backend.velocity, args=(z_a, t, z_a, z_b, embeds, mask), **ROUNDS)
    else:
        out = benchmark.pedantic(backend.regress, args=(z_a, z_b, embeds, mask), **ROUNDS)
    benchmark.extra_info.update(backend=backend.name, head=head, latent_shape=list(z_a.shape))
    assert out.shape == z_a.shape


def test_vae_encode(benchmark, backend, latent_inputs):
    images, *_ = latent_inputs
    out = benchmark.pedantic(backend.encode_images, args=(images,), **ROUNDS)
    benchmark.extra_info.update(backend=backend.name, image_shape=list(images.shape))
    assert out.shape[2] * 8 == images.shape[2]


def test_vae_decode(benchmark, backend, latent_inputs):
    images, latents, *_ = latent_inputs
    out = benchmark.pedantic(backend.decode, args=(latents[:1],), **ROUNDS)
    benchmark.extra_info.update(backend=backend.name, latent_shape=list(latents[:1].shape))
    assert out.shape[2:] == images.shape[2:]


@pytest.mark.parametrize("sampler", ["euler", "midpoint_reuse_sde"])
def test_sampler_overhead_per_step(benchmark, bench_size, sampler):
    """Host-side sampler arithmetic and noise for 5 steps with a free velocity: what the runtime adds
    to the DiT calls. ``extra_info["per_step_s"]`` is the overhead of one step."""
    from latentfuse.runtime import samplers

    steps = 5
    z0 = np.random.default_rng(0).standard_normal((1, 16, bench_size // 8, bench_size // 8)).astype(np.float32)
    v = np.zeros_like(z0)
    result = benchmark.pedantic(samplers.sample, args=(sampler, lambda z, t: v, z0), kwargs={"steps": steps},
                                **ROUNDS)
    benchmark.extra_info.update(sampler=sampler, steps=steps,
                                per_step_s=benchmark.stats.stats.median / steps if benchmark.stats else None)
    assert result.nfe == steps


def test_qabf(benchmark, bench_size):
    try:
        from latentfuse.model.metrics import qabf
    except ImportError as err:
        pytest.skip(f"model.metrics.qabf is not available: {err}")
    rng = np.random.default_rng(0)
    a, b = (rng.random((bench_size, bench_size), dtype=np.float32) for _ in range(2))
    f = 0.5 * (a + b)
    value = benchmark.pedantic(qabf, args=(a, b, f), **ROUNDS)
    assert 0.0 <= value <= 1.0


@pytest.mark.parametrize("network", ["nafnet-width32", "densefuse"])
def test_pixel_competitor(benchmark, device, bench_size, network):
    import torch

    from latentfuse.bench.densefuse import DenseFuse
    from latentfuse.bench.nafnet import NAFNet

    with torch.inference_mode():
        if network == "densefuse":
            net = DenseFuse().eval().to(device)
            x = torch.rand(1, 1, bench_size, bench_size, device=device)
            args = (x, x)
        else:
            net = NAFNet.from_preset("width32").eval().to(device)
            args = (torch.rand(2, 3, bench_size, bench_size, device=device),)

        def run():
            out = net(*args)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return out

        out = benchmark.pedantic(run, **ROUNDS)
    assert out.shape[-2:] == (bench_size, bench_size)
