"""Analytic FLOPs / memory and the exponent fit."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from latentfuse.bench.densefuse import DenseFuse
from latentfuse.bench.flops import dense_moe, fit_exponent, forward_cost, matmul_peak_flops
from latentfuse.bench.nafnet import NAFNet
from latentfuse.model.config import DiTConfig
from latentfuse.model.dit import MoEDiT


def test_densefuse_flops_match_hand_count_and_scale_with_pixels():
    # MACs per pixel: two encoders (C1 + dense block) and one decoder, 3x3 kernels
    enc = 9 * (1 * 16 + 16 * 16 + 32 * 16 + 48 * 16)
    dec = 9 * (64 * 64 + 64 * 32 + 32 * 16 + 16 * 1)
    per_pixel = 2 * (2 * enc + dec)
    for h, w in [(32, 48), (64, 96), (128, 128)]:
        cost = forward_cost(DenseFuse(), torch.empty(1, 1, h, w), torch.empty(1, 1, h, w))
        assert cost.flops == per_pixel * h * w


def test_nafnet_flops_are_affine_in_pixels():
    # every conv is per pixel except the 1x1 convs of the pooled channel attention (a constant):
    # FLOPs = a·pixels + b exactly, with b small
    net = NAFNet(width=16, enc_blk_nums=(1, 1, 1, 4))  # the width32 layout, smaller (faster to count)
    f1, f2, f3 = (forward_cost(net, torch.empty(1, 3, 64, 64 * k)).flops for k in (1, 2, 3))
    assert f3 - f2 == f2 - f1
    constant = f1 - (f2 - f1)
    assert 0 < constant < 0.01 * f1


def test_live_bytes_estimate_of_a_single_conv():
    conv = nn.Conv2d(3, 64, 3, padding=1)
    cost = forward_cost(conv, torch.empty(2, 3, 40, 50))
    assert cost.activation_bytes == 2 * 64 * 40 * 50 * 4
    assert cost.weight_bytes == (64 * 3 * 9 + 64) * 4
    half = forward_cost(conv, torch.empty(2, 3, 40, 50), dtype=torch.float16)
    assert half.activation_bytes == cost.activation_bytes // 2 and half.flops == cost.flops


def test_moe_flops_count_top_k_of_the_routed_experts():
    cfg = DiTConfig.from_preset("tiny", head="regression")
    dit = MoEDiT(cfg)
    z = torch.empty(1, cfg.latent_channels, 8, 8)
    args = (z, z, torch.empty(1, 5, cfg.text_dim))
    with dense_moe(dit):
        dense = forward_cost(dit, *args)
        sparse = forward_cost(dit, *args, moe=(cfg.top_k, cfg.num_experts))
    tokens = (8 // cfg.patch_size) ** 2
    expert = 2 * 3 * cfg.hidden_size * cfg.expert_hidden * tokens  # gate, up, down
    routed = cfg.depth * cfg.num_experts * expert
    assert dense.flops - sparse.flops == round(routed * (1 - cfg.top_k / cfg.num_experts))
    assert [b.moe.dispatch for b in dit.blocks] == ["sparse"] * cfg.depth  # restored


def test_dit_flops_grow_faster_than_pixels():
    cfg = DiTConfig.from_preset("tiny", head="regression")
    dit = MoEDiT(cfg)

    def flops(s):
        z = torch.empty(1, cfg.latent_channels, s, s)
        with dense_moe(dit):
            return forward_cost(dit, z, z, torch.empty(1, 5, cfg.text_dim), moe=(2, 4)).flops

    assert flops(64) / flops(32) > 4.0  # attention is quadratic in tokens


def test_fit_exponent_recovers_known_exponent():
    rng = np.random.default_rng(0)
    pixels = np.array([256, 512, 768, 1024], float) ** 2
    for k in (0.5, 1.0, 1.5):
        secs = 3e-8 * pixels ** k * np.exp(rng.normal(0, 0.02, pixels.size))
        fit = fit_exponent(pixels, secs)
        assert fit.k == pytest.approx(k, abs=0.05)
        assert fit.r2 > 0.99 and fit.points == 4
        assert fit.predict(pixels[1]) == pytest.approx(secs[1], rel=0.1)


def test_fit_exponent_needs_two_sizes():
    assert fit_exponent([100.0, 100.0], [1.0, 1.1]) is None
    with pytest.raises(ValueError):
        fit_exponent([1.0, 2.0], [1.0])


def test_matmul_peak_is_a_rate():
    peak = matmul_peak_flops("cpu", n=128, repeats=2)
    assert math.isfinite(peak) and peak > 1e6
