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
