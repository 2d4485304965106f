import numpy as np
import torch

from model.training.vae_trainer import (VAETrainConfig, calibrate_scaling, random_patches, reconstruction_metrics,
                                        train_vae)


def _images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    return [np.stack([yy, xx, 0.5 + 0.3 * np.sin(6 * xx + k)], -1).astype(np.float32) + 0.02 * rng.random((48, 48, 3)).astype(np.float32)
            for k in range(3)]


def test_vae_training_lowers_reconstruction_loss_and_calibrates(tmp_path):
    from model.vae import LatentVAE

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
