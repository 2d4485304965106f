import numpy as np
import pytest
import torch

from latentfuse.model.errors import LatentfuseError

from latentfuse.model.training.vae_trainer import (VAETrainConfig, calibrate_scaling, random_patches, reconstruction_metrics,
                                                   train_vae)


def _images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    return [np.stack([yy, xx, 0.5 + 0.3 * np.sin(6 * xx + k)], -1).astype(np.float32) + 0.02 * rng.random((48, 48, 3)).astype(np.float32)
            for k in range(3)]


def test_vae_training_lowers_reconstruction_loss_and_calibrates(tmp_path):
    from latentfuse.model.vae import LatentVAE

    vae = LatentVAE.from_preset("tiny", seed=0)
    images = [np.clip(im, 0, 1) for im in _images()]
    held_out = random_patches(images, 4, 16, np.random.default_rng(5))
    before = reconstruction_metrics(vae, held_out)
    cfg = VAETrainConfig(patch=16, batch_size=4, steps=25, lr=2e-3, warmup_steps=2, progress=False)
    history = train_vae(vae, images, cfg, log_path=tmp_path / "vae_log.csv")
    assert np.mean([r["l1"] for r in history[-5:]]) < np.mean([r["l1"] for r in history[:5]])
    after = reconstruction_metrics(vae, held_out)
    assert after["psnr"] > before["psnr"]
    scale, shift = calibrate_scaling(vae, images, n=8, size=16)
    z = vae.encode(random_patches(images, 8, 16, np.random.default_rng(1)))
    assert abs(float(z.std()) - 1.0) < 0.05 and abs(float(z.mean())) < 0.05
    assert (tmp_path / "vae_log.csv").is_file()
    assert not any(p.requires_grad for p in vae.parameters())


def test_random_patches_shape_and_range():
    x = random_patches(_images(), 5, 32, np.random.default_rng(0))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 0.1


def test_decoder_only_fine_tuning_keeps_the_latent_space():
    from latentfuse.model.vae import LatentVAE

    vae = LatentVAE.from_preset("tiny", seed=0)
    images = [np.clip(im, 0, 1) for im in _images()]
    x = random_patches(images, 4, 16, np.random.default_rng(5))
    with torch.no_grad():
        z_before = vae.encode(x)
    enc_before = {k: v.clone() for k, v in vae.vae.encoder.state_dict().items()}
    dec_before = {k: v.clone() for k, v in vae.vae.decoder.state_dict().items()}
    cfg = VAETrainConfig(patch=16, batch_size=4, steps=15, lr=2e-3, warmup_steps=2, progress=False, trainable="decoder")
    history = train_vae(vae, images, cfg)
    assert np.mean([r["l1"] for r in history[-4:]]) < np.mean([r["l1"] for r in history[:4]])
    # encoder frozen: its weights bit-identical, so the latent space (and every DiT on it) is kept
    assert all(torch.equal(v, enc_before[k]) for k, v in vae.vae.encoder.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(x), z_before, rtol=0, atol=1e-6)
    assert any(not torch.equal(v, dec_before[k]) for k, v in vae.vae.decoder.state_dict().items())
    with pytest.raises(LatentfuseError, match="trainable"):
        VAETrainConfig(trainable="encoder")
