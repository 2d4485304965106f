"""The pixel-space competitors have their published sizes; the pixel DiT matches the latent DiT."""

import pytest
import torch

from latentfuse.bench.densefuse import DenseFuse
from latentfuse.bench.nafnet import NAFNet
from latentfuse.bench.pixel_dit import dit_param_count, pixel_dit_config
from latentfuse.model.config import DiTConfig


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("preset, published", [("width32", 17.11e6), ("width64", 67.89e6)])
def test_nafnet_matches_published_size(preset, published):
    # NAFNet paper / official model zoo: GoPro width32 17.11 M, width64 67.89 M parameters
    assert abs(n_params(NAFNet.from_preset(preset)) - published) / published < 0.001


def test_densefuse_has_74k_parameters():
    # Li & Wu 2019: C1 (160) + dense block (2320 + 4624 + 6928) + decoder (36928 + 18464 + 4624 + 145)
    assert n_params(DenseFuse()) == 74_193


def test_nafnet_keeps_any_size_and_is_identity_at_init():
    net = NAFNet(width=8, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1)).eval()
    x = torch.rand(1, 3, 21, 34)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert not torch.allclose(y, x)  # the intro/ending convs are random, only the blocks start as identity


def test_densefuse_rgb_round_trip_of_chroma():
    fuse = DenseFuse().eval()
    a = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        out = fuse.fuse_rgb(a, a)
    assert out.shape == a.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("preset, head, patch", [("tiny", "flow", 8), ("tiny", "regression", 16),
                                                 ("paper", "flow", 8), ("paper", "regression", 16)])
def test_pixel_dit_matches_latent_dit_parameter_count(preset, head, patch):
    latent = DiTConfig.from_preset(preset, head=head)
    pixel = pixel_dit_config(latent, patch)
    assert pixel.latent_channels == 3 and pixel.patch_size == patch
    target, got = dit_param_count(latent), dit_param_count(pixel)
    assert abs(got - target) / target < 0.01
    # without re-balancing the bigger patch embedding would change the size
    unmatched = dit_param_count(pixel_dit_config(latent, patch, match_params=False))
    assert abs(got - target) < abs(unmatched - target)
