"""LatentVAE: shapes, latent normalisation arithmetic, storage, input errors, ONNX parity."""

import json

import numpy as np
import pytest
import torch

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.vae import LatentVAE, from_vae_output, to_vae_input


@pytest.fixture(scope="module")
def vae():
    return LatentVAE.from_preset("tiny", seed=0).eval()


def _images(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def test_tiny_preset_is_small_and_f8_z16(vae):
    assert vae.downsample_factor == 8 and vae.latent_channels == 16
    n = sum(p.numel() for p in vae.parameters())
    assert 1_000_000 < n < 2_500_000, n
    assert vae.vae.encoder.mid_block.attentions[0] is not None  # diffusers' default mid-block attention


@pytest.mark.parametrize("h,w", [(32, 32), (72, 128), (48, 32)])  # square, 16:9, portrait
def test_encode_decode_shapes(vae, h, w):
    x = _images(1, h, w)
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z)
    assert z.shape == (1, 16, h // 8, w // 8)
    assert y.shape == (1, 3, h, w)
    assert y.min() >= -1 and y.max() <= 1


def test_encode_applies_shift_and_scale_to_posterior_mean(vae):
    assert vae.scaling_factor != 1.0 and vae.shift_factor != 0.0  # otherwise the test proves nothing
    x = _images(2, 32, 48, seed=1)
    with torch.no_grad():
        mean = vae.vae.encode(x).latent_dist.mean  # diffusers' own posterior
        z = vae.encode(x)
        torch.testing.assert_close(z, (mean - vae.shift_factor) * vae.scaling_factor, rtol=0, atol=1e-6)
        # decode undoes the normalisation before diffusers' decoder
        ref = vae.vae.decode(z / vae.scaling_factor + vae.shift_factor).sample.clamp(-1, 1)
        torch.testing.assert_close(vae.decode(z), ref, rtol=0, atol=1e-6)


def test_sampled_encoding_is_seeded_and_differs_from_mean(vae):
    x = _images(1, 32, 32, seed=2)
    with torch.no_grad():
        a = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
        b = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
        m = vae.encode(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - m).abs().max() > 1e-4


def test_set_and_estimate_scaling(vae, tmp_path):
    v = LatentVAE.from_preset("tiny", seed=0).eval()
    x = _images(2, 32, 32, seed=3)
    scale, shift = v.estimate_scaling(x)
    v.set_scaling(scale, shift)
    with torch.no_grad():
        z = v.encode(x)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3
    v.save_pretrained(tmp_path / "vae")
    again = LatentVAE.from_pretrained(tmp_path / "vae")
    assert again.scaling_factor == pytest.approx(scale) and again.shift_factor == pytest.approx(shift)
    with pytest.raises(LatentfuseError, match="positive"):
        v.set_scaling(0.0, 0.0)


def test_save_load_round_trip(vae, tmp_path):
    out = vae.save_pretrained(tmp_path / "vae")
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    loaded = LatentVAE.from_pretrained(out).eval()
    x = _images(1, 32, 40, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), vae.encode(x), rtol=0, atol=0)
        z = vae.encode(x)
        torch.testing.assert_close(loaded.decode(z), vae.decode(z), rtol=0, atol=0)
    # a pipeline folder with a vae/ subfolder is accepted too
    assert LatentVAE.from_pretrained(tmp_path).scaling_factor == vae.scaling_factor
    with pytest.raises(LatentfuseError, match="already exists"):
        vae.save_pretrained(out)
    vae.save_pretrained(out, overwrite=True)
    # a reloaded model saved again does not carry the local folder it was loaded from
    loaded.save_pretrained(tmp_path / "again")
    assert "_name_or_path" not in json.loads((tmp_path / "again" / "config.json").read_text())
    assert LatentVAE.from_pretrained(tmp_path / "again").scaling_factor == vae.scaling_factor


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(LatentfuseError, match="no config.json"):
        LatentVAE.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LatentfuseError, match="safetensors"):
        LatentVAE.from_pretrained(tmp_path)
    with pytest.raises(LatentfuseError, match="unknown VAE preset"):
        LatentVAE.from_preset("huge")


@pytest.mark.parametrize("images,match", [
    (torch.zeros(1, 3, 36, 32), "multiples of 8"),
    (torch.zeros(1, 3, 32, 30), "multiples of 8"),
    (torch.zeros(1, 1, 32, 32), "3-channel"),
    (torch.zeros(1, 4, 32, 32), "3-channel"),
    (torch.zeros(3, 32, 32), "shaped"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "dtype"),
    (torch.full((1, 3, 32, 32), 255.0), r"\[-1, 1\]"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
])
def test_bad_images_are_clear_errors(vae, images, match):
    with pytest.raises(LatentfuseError, match=match):
        vae.encode(images)


def test_bad_latents_are_clear_errors(vae):
    with pytest.raises(LatentfuseError, match="16 latent channels"):
        vae.decode(torch.zeros(1, 4, 4, 4))
    with pytest.raises(LatentfuseError, match="float"):
        vae.decode(torch.zeros(1, 16, 4, 4, dtype=torch.int64))


def test_input_helpers():
    gray = torch.rand(2, 1, 8, 16)
    x = to_vae_input(gray)
    assert x.shape == (2, 3, 8, 16)
    torch.testing.assert_close(x[:, 2], gray[:, 0] * 2 - 1)
    torch.testing.assert_close(from_vae_output(x), gray.expand(-1, 3, -1, -1))
    with pytest.raises(LatentfuseError, match="1 or 3"):
        to_vae_input(torch.rand(1, 2, 8, 8))


@pytest.mark.slow
def test_graphs_export_to_onnx_with_dynamic_hw(vae, tmp_path):
    """encode_graph / decode_graph trace under dynamo with symbolic batch, H, W; ONNX Runtime matches
    PyTorch at sizes and aspect ratios other than the export example."""
    ort = pytest.importorskip("onnxruntime")
    cases = [
        ("vae_encoder", vae.encoder_graph(), _images(2, 32, 48), {0: "batch", 2: "height", 3: "width"},
         [_images(1, 64, 96, seed=5), _images(1, 128, 64, seed=6)]),
        ("vae_decoder", vae.decoder_graph(), torch.randn(2, 16, 4, 6), {0: "batch", 2: "latent_height", 3: "latent_width"},
         [torch.randn(1, 16, 8, 12), torch.randn(1, 16, 16, 8)]),
    ]
    for name, module, example, dims, checks in cases:
        program = torch.onnx.export(module, (example,), input_names=["x"], output_names=["y"],
                                    dynamic_shapes=(dims,), dynamo=True, verbose=False)
        path = tmp_path / f"{name}.onnx"
        program.save(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shape = session.get_inputs()[0].shape
        assert all(isinstance(shape[i], str) for i in dims), shape  # symbolic, not specialised
        for x in checks:
            with torch.no_grad():
                ref = module(x).numpy()
            out = session.run(None, {"x": x.numpy()})[0]
            assert out.shape == ref.shape
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
