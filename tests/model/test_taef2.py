"""TAEF2 written from its published layout: parameter counts, key layout, shapes, and the real weights."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.taef2 import (DECODER_PARAMETERS, ENCODER_PARAMETERS, TAEF2, build_decoder, build_encoder,
                                    count_parameters)

WEIGHTS = Path(os.environ.get("LATENTFUSE_TAEF2", Path(__file__).resolve().parents[3] / "shared" / "pretrained" / "taef2"))


def test_parameter_counts_and_key_layout():
    enc, dec = build_encoder(), build_decoder()
    assert count_parameters(enc) == ENCODER_PARAMETERS == 1_338_528
    assert count_parameters(dec) == DECODER_PARAMETERS == 1_338_499
    ek, dk = set(enc.state_dict()), set(dec.state_dict())
    # global-context branches on the three lowest-resolution blocks of each side, as published
    assert {k.split(".")[0] for k in ek if ".pool." in k} == {"11", "12", "13"}
    assert {k.split(".")[0] for k in dk if ".pool." in k} == {"3", "4", "5"}
    assert "14.weight" in ek and "19.weight" in dk and "1.weight" in dk and "2.bias" not in ek


def test_shapes_and_bad_input():
    torch.manual_seed(0)
    model = TAEF2().eval()
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        y = model.decode(z)
    assert z.shape == (1, 32, 4, 6) and y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    with pytest.raises(LatentfuseError, match="multiples of 8, got 30x48"):
        model.encode(torch.zeros(1, 3, 30, 48))
    with pytest.raises(LatentfuseError, match=r"expected \[-1, 1\]"):
        model.encode(torch.full((1, 3, 32, 32), 3.0))
    with pytest.raises(LatentfuseError, match="latents shaped"):
        model.decode(torch.zeros(1, 16, 4, 4))


def test_missing_or_foreign_weights(tmp_path):
    with pytest.raises(LatentfuseError, match="TAEF2 folder not found"):
        TAEF2.from_pretrained(tmp_path / "nope")
    with pytest.raises(LatentfuseError, match="taef2_encoder.safetensors"):
        TAEF2.from_pretrained(tmp_path)
    from safetensors.torch import save_file

    save_file({"0.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "taef2_encoder.safetensors"))
    with pytest.raises(LatentfuseError, match="keys do not match the TAEF2 layout"):
        TAEF2.from_pretrained(tmp_path)


@pytest.mark.skipif(not (WEIGHTS / "taef2_encoder.safetensors").is_file(),
                    reason=f"TAEF2 weights not present at {WEIGHTS} (../shared/pretrained/taef2 is not on this machine)")
def test_real_weights_reconstruct_a_photograph():
    from skimage import data

    model = TAEF2.from_pretrained(WEIGHTS)
    img = data.astronaut()[64:192, 160:288].astype(np.float32) / 255.0  # 128 x 128 RGB photograph
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    with torch.no_grad():
        raw = model.encode01(x)
        y = model.decode01(raw)
        same = model.decode(model.encode(x * 2 - 1))
    mse = float(((y - x) ** 2).mean())
    psnr = 10 * np.log10(1.0 / mse)
    assert psnr > 27.0, psnr
    assert raw.abs().max() < 12 and torch.allclose((same + 1) / 2, y, atol=1e-5)
