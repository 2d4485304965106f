"""Suite-wide settings."""

import os


def pytest_configure(config):
    # Every pytest-xdist worker is a process of its own: one intra-op thread each keeps the workers
    # from oversubscribing the 2-core CI machine, where thread barriers on tiny tensors cost more
    # than the maths (10x+ slower small-model calls).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
