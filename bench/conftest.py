"""Fixtures of the pytest-benchmark suite (``pytest bench/ --benchmark-only``), kept out of the unit
tests (``testpaths = ["tests"]``). Settings come from the environment:

    LATENTFUSE_BENCH_PRESET   model preset of the random-weight components (default tiny)
    LATENTFUSE_BENCH_SIZE     image side in pixels (default 256; a multiple of 16)
    LATENTFUSE_BENCH_BUNDLE   a deployment bundle for the onnxruntime cases; without it they export
                              the benchmarked components once into a temporary bundle
                              (LATENTFUSE_BENCH_BUNDLE=none skips them instead)
    LATENTFUSE_BENCH_DEVICE   torch device (default cuda if available, else cpu)
"""

from __future__ import annotations

import os

import numpy as np
import pytest

BACKENDS = ("torch", "onnxruntime")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default).strip() or default


@pytest.fixture(scope="session")
def bench_size() -> int:
    size = int(_env("LATENTFUSE_BENCH_SIZE", "256"))
    if size % 16:
        pytest.fail(f"LATENTFUSE_BENCH_SIZE must be a multiple of 16, got {size}")
    return size


@pytest.fixture(scope="session")
def components():
    from latentfuse.model.components import FusionComponents

    return FusionComponents.from_preset(_env("LATENTFUSE_BENCH_PRESET", "tiny"))


@pytest.fixture(scope="session")
def device() -> str:
    import torch

    return _env("LATENTFUSE_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def bundle_dir(components, tmp_path_factory):
    path = os.environ.get("LATENTFUSE_BENCH_BUNDLE", "").strip()
    if path.lower() == "none":
        pytest.skip("LATENTFUSE_BENCH_BUNDLE=none: onnxruntime cases disabled")
    if path:
        return path
    try:
        from latentfuse.export.bundle import export_bundle
    except ImportError as err:
        pytest.skip(f"no bundle given and export.bundle is not importable ({err})")
    out = tmp_path_factory.mktemp("bench-bundle") / "bundle"
    return str(export_bundle(out, out, components=components, progress=False))


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request, components, device):
    """A runtime backend (runtime.backends) over the benchmarked model."""
    from latentfuse.runtime.backends import get_backend

    if request.param == "torch":
        return get_backend("torch", components=components, device=device)
    from latentfuse.runtime.pipeline import Pipeline

    return Pipeline.from_pretrained(request.getfixturevalue("bundle_dir"), backend=request.param).backend


@pytest.fixture(scope="session")
def latent_inputs(backend, bench_size):
    """Scaled latents of a random pair, a prompt embedding and its mask, for the DiT cases."""
    rng = np.random.default_rng(0)
    images = (rng.random((2, 3, bench_size, bench_size), dtype=np.float32) * 2 - 1).astype(np.float32)
    latents = backend.encode_images(images)
    embeds, mask = backend.encode_prompts(["remove the rain and the noise, then fuse the visible and infrared images"])
    return images, latents, embeds, mask
