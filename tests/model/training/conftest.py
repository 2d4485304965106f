"""Fixtures for the training tests; helpers live in training_helpers.py (importable by spawned workers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI / dev machines have 2 shared cores: OpenMP oversubscription makes tiny ops ~10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
