"""DistributedDataParallel (gloo, CPU): 2 processes with batch B/2 each equal 1 process with batch B."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from training_helpers import DDP_SECTIONS, ddp_worker, synthetic_latents, tiny_config, tiny_dit

from model.training.trainer import Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_gloo_matches_single_process(tmp_path):
    single = Trainer(tiny_config(tmp_path / "single", head="flow", **DDP_SECTIONS), tiny_dit("flow"),
                     synthetic_latents())
    single.fit()
    expected = single.raw.state_dict()

    result = tmp_path / "ddp_weights.pt"
    mp.spawn(ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(result)), nprocs=2, join=True)
    got = torch.load(result, weights_only=True)

    assert got.keys() == expected.keys()
    worst = max(float((got[k] - expected[k]).abs().max()) for k in expected)
    assert worst < 1e-6, f"DDP weights differ from the single-process run by {worst:.3g}"
    moved = max(float((expected[k] - tiny_dit("flow").state_dict()[k]).abs().max()) for k in expected)
    assert moved > 1e-3  # the run did train
