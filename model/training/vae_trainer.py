"""Train the tiny KL-VAE (f=8, z=16; MMAIF 3.2) on natural-image patches, and measure its reconstruction.

The paper uses pre-trained VAEs (Flux KL-VAE, asymmetric KL-VAE, Cosmos; Table 1 reports Cosmos at
34.02 dB PSNR / 0.9367 SSIM). None can be downloaded here, so the bundled default trains the ``tiny``
preset from scratch on random crops of the photographs shipped with scikit-image plus the images of
the synthetic training pairs, with the usual KL-autoencoder objective (Rombach et al. 2022, LDM),
minus the adversarial and perceptual terms that need extra networks:

    L = w1·||X̂ - X||₁ + w2·||X̂ - X||²₂ + w_e·||∇X̂ - ∇X||₁ + w_kl·KL(q(z|X) || N(0, I))

then re-estimates the latent normalisation (scaling / shift, the SD3 / Flux recipe) on training
patches. :func:`reconstruction_metrics` reports PSNR / SSIM on held-out patches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.training.losses import image_gradients
from latentfuse.model.training.optim import build_optimizer, build_scheduler


@dataclass
class VAETrainConfig:
    patch: int = 64
    batch_size: int = 8
    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    edge_weight: float = 0.5
    kl_weight: float = 1e-6
    # "all": the KL-autoencoder objective end to end; "decoder": the encoder (and so the latent space,
    # and every DiT trained on it) stays frozen and only the decoder is fine-tuned, the recipe of
    # Stability's sd-vae-ft-mse decoders; the KL term is then a constant and is left out
    trainable: str = "all"
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.trainable not in ("all", "decoder"):
            raise LatentfuseError(f"VAETrainConfig.trainable must be 'all' or 'decoder', got {self.trainable!r}")


def load_images(paths=(), natural: bool = True, limit: int = 0) -> list[np.ndarray]:
    """float32 [0, 1] RGB images: the scikit-image photographs and/or image files."""
    from latentfuse.model.image_io import read_image

    images = []
    if natural:
        from latentfuse.model.data.synth import NATURAL_IMAGES, load_natural_image

        for name in NATURAL_IMAGES:
            images.append(_rgb(load_natural_image(name)))
    for p in paths:
        images.append(_rgb(read_image(p)))  # float [0, 1]
        if limit and len(images) >= limit:
            break
    if not images:
        raise LatentfuseError("no images to train the VAE on")
    return images


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.clip(img[..., :3], 0.0, 1.0)


def random_patches(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """[n, 3, size, size] in [-1, 1]: random crops (images picked by area) with random flips."""
    usable = [im for im in images if min(im.shape[:2]) >= size]
    if not usable:
        raise LatentfuseError(f"no training image is at least {size}x{size} pixels")
    area = np.array([im.shape[0] * im.shape[1] for im in usable], dtype=np.float64)
    picks = rng.choice(len(usable), size=n, p=area / area.sum())
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i, k in enumerate(picks):
        im = usable[k]
        y = rng.integers(0, im.shape[0] - size + 1)
        x = rng.integers(0, im.shape[1] - size + 1)
        crop = im[y:y + size, x:x + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0


def vae_loss(vae, x: torch.Tensor, cfg: VAETrainConfig, generator: torch.Generator | None = None) -> dict:
    inner = vae.vae
    with torch.set_grad_enabled(cfg.trainable == "all" and torch.is_grad_enabled()):
        posterior = inner.encode(x).latent_dist
    z = posterior.sample(generator=generator)
    recon = inner.decode(z).sample
    gx, gy = image_gradients(recon)
    tx, ty = image_gradients(x)
    terms = {
        "l1": (recon - x).abs().mean(),
        "l2": ((recon - x) ** 2).mean(),
        "edge": (gx - tx).abs().mean() + (gy - ty).abs().mean(),
        "kl": posterior.kl().mean() / x[0].numel(),  # per pixel, so w_kl does not depend on the patch size
    }
    terms["loss"] = cfg.l1_weight * terms["l1"] + cfg.l2_weight * terms["l2"] + cfg.edge_weight * terms["edge"]
    if cfg.trainable == "all":
        terms["loss"] = terms["loss"] + cfg.kl_weight * terms["kl"]
    return terms


def train_vae(vae, images: list[np.ndarray], cfg: VAETrainConfig, log_path: str | Path | None = None) -> list[dict]:
    """Train ``vae`` (a LatentVAE) in place; returns the per-step log."""
    from tqdm import tqdm

    from latentfuse.model.training.config import OptimSection

    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    vae.train().requires_grad_(True)
    if cfg.trainable == "decoder":
        inner = vae.vae
        for frozen in (inner.encoder, inner.quant_conv):
            if frozen is not None:
                frozen.eval().requires_grad_(False)
    optim_cfg = OptimSection(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                             steps=cfg.steps, cautious=True)
    optimizer = build_optimizer([p for p in vae.parameters() if p.requires_grad], optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg)
    history = []
    bar = tqdm(range(cfg.steps), desc="train VAE", unit="step", disable=not cfg.progress, dynamic_ncols=True)
    for step in bar:
        start = time.perf_counter()
        x = random_patches(images, cfg.batch_size, cfg.patch, rng)
        terms = vae_loss(vae, x, cfg, gen)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in vae.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        row = {"step": step + 1, **{k: float(v.detach()) for k, v in terms.items()},
               "samples_per_s": cfg.batch_size / (time.perf_counter() - start)}
        if not math.isfinite(row["loss"]):
            raise LatentfuseError(f"VAE training diverged at step {step + 1}: {row}")
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
    vae.eval().requires_grad_(False)
    if log_path is not None:
        _write_csv(history, Path(log_path))
    return history


def _write_csv(rows: list[dict], path: Path) -> None:
    import csv

    from latentfuse.model.atomic import atomic_file

    with atomic_file(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@torch.no_grad()
def calibrate_scaling(vae, images: list[np.ndarray], n: int = 64, size: int = 64, seed: int = 1) -> tuple[float, float]:
    """Set the latent scaling / shift so training latents have zero mean and unit variance."""
    x = random_patches(images, n, size, np.random.default_rng(seed))
    scale, shift = vae.estimate_scaling(x)
    vae.set_scaling(scale, shift)
    return scale, shift


@torch.no_grad()
def reconstruction_metrics(vae, patches: torch.Tensor, batch: int = 16) -> dict:
    """Mean PSNR (dB) and SSIM of ``decode(encode(x))`` on [-1, 1] patches, measured on [0, 1] RGB."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr, ssim = [], []
    for start in range(0, patches.shape[0], batch):
        x = patches[start:start + batch]
        y = vae.decode(vae.encode(x))
        for a, b in zip(((x + 1) / 2).clamp(0, 1), ((y + 1) / 2).clamp(0, 1)):
            a = a.permute(1, 2, 0).numpy().astype(np.float64)
            b = b.permute(1, 2, 0).numpy().astype(np.float64)
            psnr.append(peak_signal_noise_ratio(a, b, data_range=1.0))
            ssim.append(structural_similarity(a, b, data_range=1.0, channel_axis=-1))
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "patches": int(patches.shape[0])}
