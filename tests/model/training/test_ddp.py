"""DistributedDataParallel (gloo, CPU): 2 processes with batch B/2 each equal 1 process with batch B."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from training_helpers import DDP_DIT, DDP_SECTIONS, ddp_worker, synthetic_latents, tiny_config, tiny_dit

from latentfuse.model.training.trainer import Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_gloo_matches_single_process(tmp_path):
    # one intra-op thread, as in each DDP worker: thread count changes float reduction order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(tiny_config(tmp_path / "single", head="flow", **DDP_SECTIONS),
                         tiny_dit("flow", **DDP_DIT), synthetic_latents())
        single.fit()
    finally:
        torch.set_num_threads(threads)
    expected = single.raw.state_dict()

    result = tmp_path / "ddp_weights.pt"
    mp.spawn(ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(result)), nprocs=2, join=True)
    got = torch.load(result, weights_only=True)

    assert got.keys() == expected.keys()
    worst = max(float((got[k] - expected[k]).abs().max()) for k in expected)
    # float32 reduction order differs (two half-batch means all-reduced vs one batch mean): a few ulp,
    # amplified by Adam's normalisation over 6 steps; a wrong average would be off by ~lr = 3e-3
    assert worst < 1e-5, f"DDP weights differ from the single-process run by {worst:.3g}"
    moved = max(float((expected[k] - tiny_dit("flow", **DDP_DIT).state_dict()[k]).abs().max()) for k in expected)
    assert moved > 1e-3  # the run did train
