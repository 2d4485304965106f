"""Assemble a training run from a :class:`TrainConfig`: frozen components, latent cache, DiT, trainer.

This is what ``latentfuse train --config FILE [--resume DIR]`` calls, alone or under ``torchrun``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.training.config import TrainConfig
from latentfuse.model.training.data import LatentDataset, build_latent_cache, find_indexes
from latentfuse.model.training.trainer import DistInfo, Trainer, init_distributed, resolve_device


def load_frozen_components(cfg: TrainConfig):
    """(VAE, text encoder) from ``model.components`` or, if empty, random ones of ``model.preset``."""
    from latentfuse.model.text_encoder import PromptEncoder
    from latentfuse.model.vae import LatentVAE

    if cfg.model.components:
        root = Path(cfg.model.components)
        for sub in ("vae", "text_encoder"):
            if not (root / sub).is_dir():
                raise LatentfuseError(f"model.components = {root} has no {sub}/ folder (a latentfuse model directory)")
        _check_work_scale_matches(cfg, root)
        vae = LatentVAE.from_pretrained(root / "vae")
        text_encoder = PromptEncoder.from_pretrained(root / "text_encoder")
    else:
        vae = LatentVAE.from_preset(cfg.model.preset, seed=cfg.run.seed)
        text_encoder = PromptEncoder.from_preset(cfg.model.preset, seed=cfg.run.seed)
    vae.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return vae, text_encoder


def _check_work_scale_matches(cfg: TrainConfig, root: Path) -> None:
    """A DiT trained for a model directory must see latents at that model's working scale."""
    from latentfuse.model.components import INDEX_NAME, read_index

    if not (root / INDEX_NAME).is_file():
        return  # a bare vae/ + text_encoder/ folder: nothing says how its pipeline scales images
    scale = read_index(root)["work_scale"]
    if scale != cfg.data.work_scale:
        raise LatentfuseError(
            f"model.components = {root} works at scale {scale} ({INDEX_NAME}), but data.work_scale = "
            f"{cfg.data.work_scale}: set data.work_scale = {scale} so the DiT trains on latents at the scale "
            "its pipeline will use")


def build_dit(cfg: TrainConfig, text_dim: int, latent_channels: int):
    from latentfuse.model.config import DiTConfig
    from latentfuse.model.dit import MoEDiT

    if cfg.model.init_from:
        dit = MoEDiT.from_pretrained(cfg.model.init_from)
        if dit.config.head != cfg.model.head:
            raise LatentfuseError(f"model.init_from {cfg.model.init_from} is a {dit.config.head!r} DiT, "
                                  f"model.head is {cfg.model.head!r}")
        return dit
    fields = {"head": cfg.model.head, "text_dim": text_dim, "latent_channels": latent_channels,
              "gradient_checkpointing": cfg.model.gradient_checkpointing, **cfg.model.overrides}
    try:
        dit_cfg = DiTConfig.from_preset(cfg.model.preset, **fields)
    except TypeError as err:  # an unknown key in model.overrides
        raise LatentfuseError(f"model.overrides: {err}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        return MoEDiT(dit_cfg)


def module_fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def prepare_dataset(cfg: TrainConfig, vae, text_encoder, info: DistInfo) -> LatentDataset:
    """Load the latent cache, building it first (on rank 0) when missing or stale."""
    import torch.distributed as dist

    if not cfg.data.root:
        raise LatentfuseError("data.root is empty: point it at a `latentfuse data build` folder")
    indexes = find_indexes(cfg.data.root)
    # "manifests": the sample indexes' old name, kept in the key so that caches built before stay valid
    key = {"manifests": [str(m.resolve()) for m in indexes],
           "mtimes": [m.stat().st_mtime_ns for m in indexes], "crop": cfg.data.crop,
           "work_scale": cfg.data.work_scale,
           "tasks": sorted(cfg.data.tasks), "max_samples": cfg.data.max_samples,
           "aux_sources": cfg.data.aux_sources, "vae": module_fingerprint(vae),
           "text_encoder": module_fingerprint(text_encoder)}
    root = Path(cfg.data.root)
    cache = Path(cfg.data.cache) if cfg.data.cache else (root if root.is_dir() else root.parent) / f"latents_{cfg.data.crop}.pt"
    key_path = cache.with_suffix(".key.json")
    fresh = cache.is_file() and key_path.is_file() and json.loads(key_path.read_text()) == key
    if not fresh and info.is_main:
        dataset = build_latent_cache(cfg.data.root, vae, text_encoder, cfg.data.crop, cfg.data.tasks,
                                     cfg.data.max_samples, cfg.data.aux_sources, progress=cfg.run.progress,
                                     work_scale=cfg.data.work_scale)
        dataset.save(cache)
        key_path.write_text(json.dumps(key, indent=2) + "\n")
    if info.world_size > 1:
        dist.barrier()
    return LatentDataset.load(cache)


def run_training(cfg: TrainConfig, resume: str | None = None, stop_at: int | None = None) -> Trainer:
    info = init_distributed()
    device = resolve_device(cfg.run.device, info)
    vae, text_encoder = load_frozen_components(cfg)
    dataset = prepare_dataset(cfg, vae, text_encoder, info)
    missing = [t for t in (cfg.continual.sequence or cfg.data.tasks) if t not in dataset.tasks]
    if missing:
        raise LatentfuseError(f"the training data has no samples of task(s) {', '.join(missing)}")
    dit = build_dit(cfg, text_encoder.hidden_size, vae.latent_channels)
    trainer = Trainer(cfg, dit, dataset, vae=vae if cfg.loss.aux_weight > 0 else None, device=device, dist_info=info)
    if resume:
        trainer.load_checkpoint(resume)
    trainer.fit(stop_at=stop_at)
    if info.is_main and trainer.step >= cfg.optim.steps:
        final = Path(cfg.run.output_dir) / "final"
        trainer.raw.save_pretrained(final / f"dit_{cfg.model.head}")
        if trainer.ema is not None:
            trainer.ema.copy_to(trainer.raw).save_pretrained(final / f"dit_{cfg.model.head}_ema")
    return trainer
