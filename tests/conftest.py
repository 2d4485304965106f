"""Suite-wide settings."""

import os


def pytest_configure(config):
    # Every pytest-xdist worker is a process of its own: one intra-op thread each keeps the workers
    # from oversubscribing the 2-core CI machine, where thread barriers on tiny tensors cost more
    # than the maths (10x+ slower small-model calls).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path_factory, monkeypatch):
    """Bundles exported on demand (export.bundle_cache) go to a per-session folder, never ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))


def perturb_fidelity(components, seed: int = 7, scale: float = 0.05):
    """Give ``components`` (FusionComponents) a fidelity decoder (``model.fidelity``) whose zero-initialised head
    and FiLM (an untrained decoder is the identity) and every other weight are perturbed, so it changes the
    image and a test of it can fail; returns ``components``."""
    import torch

    from latentfuse.model.fidelity import FidelityConfig, FidelityDecoder

    if components.fidelity is None:
        components.fidelity = FidelityDecoder(FidelityConfig(text_dim=int(components.text_encoder.hidden_size)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in components.fidelity.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    components.fidelity.eval()
    return components


@pytest.fixture(scope="session")
def fidelity_perturbed():
    """:func:`perturb_fidelity`, for tests in any folder."""
    return perturb_fidelity
