"""Suite-wide settings."""

import os


def pytest_configure(config):
    # Under pytest-xdist every worker is a process of its own: one intra-op thread each keeps the
    # workers from oversubscribing the (2-core) CI machine, which slows small-tensor torch ops 10x+.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
