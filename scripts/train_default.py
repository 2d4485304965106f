#!/usr/bin/env python
"""Build the bundled default model (``model/weights/default``) from nothing, reproducibly (seeded).

1. data     the recipe's ``data = "real"``: the training scenes of ``--real-data`` (``model/data/split.py``
            holds about 20 % of the scenes out) x degraded variants, labelled by the teachers (selection +
            refiner); ``--data synthetic``: pairs made by ``latentfuse data synth`` from the scikit-image
            photos, a second, differently seeded set held out
2. VAE      the tiny KL-VAE (f=8, z=16) trained on photo patches + the training images
            (``model.training.vae_trainer``) in three stages (:func:`vae_stages`: from scratch, decoder
            only, encoder + decoder), latent normalisation re-estimated, PSNR/SSIM measured
3. text     the tiny T5 prompt encoder (random weights, frozen: prompts only need to be told apart)
4. DiTs     the tiny regression DiT (Eq. 8 + aux Eq. 9-10) and the tiny flow DiT (Eq. 11 + aux), both
            with the pixel-space label term (``losses.label_loss``), joint over the three tasks,
            cautious AdamW + cosine warmup, EMA; at the recipe's working scale (``model.work_scale``;
            1 for the shipped default); then a second flow stage from the first one's weights at a lower
            learning rate (:func:`flow_finetune_config`)
5. save     ``FusionComponents`` in fp16 safetensors, ``MODEL_CARD.md``, ``training_report.json``
6. eval     ``latentfuse evaluate`` (``latentfuse.bench.quality``) on the held-out pairs, clean and degraded,
            the model's rows next to the no-network controls

Sized for a 2-core CPU in about two and a half hours (VAE stages on two threads, 36 min; the two DiTs
side by side on one thread each, 66 min; the flow's second stage, 26 min; the evaluation, 9 min). What it
builds is the recipe file ``configs/recipes/default.toml`` (``model.training.recipe``; every key is also a
flag that overrides it for one run); every stage is kept in ``--work`` and reused. Run it in the background:

    nohup .venv/bin/python scripts/train_default.py > runs/train_default.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

from latentfuse.model.atomic import atomic_file  # noqa: E402
from latentfuse.model.components import DEFAULT_MODEL_DIR, FusionComponents  # noqa: E402
from latentfuse.model.errors import LatentfuseError  # noqa: E402
from latentfuse.model.flow import describe_prior  # noqa: E402
from latentfuse.model.training.recipe import add_recipe_overrides, resolve_recipe  # noqa: E402
from latentfuse.runtime.manifest import sha256_file  # noqa: E402
from latentfuse.model.data.tasks import TASKS  # noqa: E402

DEFAULT_RECIPE = REPO / "configs" / "recipes" / "default.toml"
PAPER_VAE = {"name": "Cosmos VAE (MMAIF Table 1)", "psnr": 34.02, "ssim": 0.9367}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_data(work: Path, split: str, pairs: int, per_pair: int, size: int, seed: int) -> Path:
    from latentfuse.model.data.build import build_dataset
    from latentfuse.model.data.synth import make_synthetic

    root = work / "build" / split
    for i, task in enumerate(TASKS):
        src = work / "synth" / split / task
        wanted = {"n": pairs, "seed": seed + 101 * i, "long_side": size}
        meta = json.loads((src / "synth.json").read_text()) if (src / "synth.json").is_file() else {}
        if {k: meta.get(k) for k in wanted} != wanted:  # e.g. --test-pairs changed: a seeded set, so the
            make_synthetic(task, src, overwrite=True, **wanted)  # old pairs come back as a prefix
            shutil.rmtree(root / task, ignore_errors=True)  # built from the old pairs
        build_dataset(src, root / task, task, seed=seed + 101 * i, per_pair=per_pair, long_side=size,
                      progress=False)
        log(f"  {split} {task}: {pairs} pairs x {per_pair} degraded variants")
    return root


def make_real_data(work: Path, root: Path, split: str, per_pair: int, size: int, seed: int,
                   n_degradations: tuple[int, ...], crop: bool) -> Path:
    """Degraded tuples with teacher labels from the real pairs under ``root`` (``<root>/<task>``, the
    layouts of ``latentfuse data build``), only the scenes of ``split`` (``model.data.split``), one folder
    per task. The folder name carries the settings, so a run with other settings builds beside it and a
    run with the same ones resumes (``build_dataset`` keeps finished samples)."""
    from latentfuse.model.data.build import build_dataset

    tag = f"real_{split}_{size}px_x{per_pair}_n{''.join(map(str, n_degradations))}{'_crop' if crop else ''}_s{seed}"
    out = work / "build" / tag
    for i, task in enumerate(TASKS):
        built = build_dataset(root / task, out / task, task, n_degradations=n_degradations, seed=seed + 101 * i,
                              per_pair=per_pair, long_side=size, crop=crop, progress=False, split=split)
        log(f"  {split} {task}: {built.total} tuples ({built.built} new) from the real pairs of {root / task}")
    return out


def count_tuples(root: Path) -> int:
    from latentfuse.model.training.data import find_manifests, read_manifest

    return sum(len(read_manifest(m)) for m in find_manifests(root))


def _reload_stage(folder: Path, key: dict, load):
    """(model, its stage report) kept in ``folder`` by a run with the same ``key``, else None."""
    stage_file = folder / "stage.json"
    if not stage_file.is_file():
        return None
    saved = json.loads(stage_file.read_text())
    if saved.get("key") != json.loads(json.dumps(key, default=str)):  # as it was written
        return None
    log(f"  reusing {folder} (made with the same settings)")
    return load(folder), saved["report"]


def _keep_stage(folder: Path, key: dict, model, stage_report: dict) -> None:
    """Keep a trained stage in ``folder`` for :func:`_reload_stage` (weights and stage.json atomically)."""
    model.save_pretrained(folder, overwrite=True)
    with atomic_file(folder / "stage.json") as tmp:
        tmp.write_text(json.dumps({"key": key, "report": stage_report}, indent=1, default=str))


def _cached_stage(folder: Path, key: dict, run, measure):
    """(VAE, stage report): reloaded from ``folder`` if it was made with ``key``, else ``run()`` and kept.
    A reloaded stage is measured again (``measure(vae)``): the held-out set is not part of the key."""
    from latentfuse.model.vae import LatentVAE

    kept = _reload_stage(folder, key, LatentVAE.from_pretrained)
    if kept is not None:
        vae, saved = kept
        return vae, {**saved, "held_out": measure(vae), "reused": True}
    vae, stage_report = run()
    _keep_stage(folder, key, vae, stage_report)
    return vae, stage_report


def vae_stages(args) -> list[tuple[str, "VAETrainConfig"]]:
    """The VAE recipe, in order; a stage with 0 steps is skipped.

    scratch  the KL-autoencoder objective (L1 + L2 + edge + KL) from random weights
    decoder  decoder only, stronger edge term: encoder, latent space and scaling frozen (the
             sd-vae-ft-mse recipe); sharper decoded edges are what Q^AB/F measures
    joint    encoder and decoder together with the same edge term: the encoder learns latents that the
             sharpened decoder renders better (measured: optimising a latent against the label raised
             Q^AB/F of the round trip far above E(label), i.e. the encoder, not the decoder, was the limit)
    """
    from latentfuse.model.training.vae_trainer import VAETrainConfig

    def finetune(steps: int, trainable: str, seed: int) -> VAETrainConfig:
        return VAETrainConfig(patch=args.vae_ft_patch, batch_size=args.vae_batch, steps=steps, lr=args.vae_ft_lr,
                              warmup_steps=min(50, steps // 10), edge_weight=args.vae_ft_edge,
                              trainable=trainable, seed=seed)

    return [(name, cfg) for name, cfg in (
        ("scratch", VAETrainConfig(patch=args.vae_patch, batch_size=args.vae_batch, steps=args.vae_steps,
                                   lr=args.vae_lr, warmup_steps=min(100, args.vae_steps // 10), seed=args.seed)),
        ("decoder", finetune(args.vae_decoder_steps, "decoder", args.seed + 1)),
        ("joint", finetune(args.vae_joint_steps, "all", args.seed + 2)),
    ) if cfg.steps > 0]


def train_stage_vae(args, train_root: Path, test_root: Path, report: dict):
    """Train the VAE stages of :func:`vae_stages`. Each stage's result is kept in ``--work`` with the
    settings of every stage up to it, so a re-run with the same settings (e.g. to try DiT recipes)
    reuses it instead of training it again."""
    from latentfuse.model.training.data import find_manifests, read_manifest, read_training_manifest
    from latentfuse.model.training.vae_trainer import (calibrate_scaling, load_images, random_patches, reconstruction_metrics,
                                                       train_vae)
    from latentfuse.model.vae import LatentVAE

    def clean_files(root, training=True):
        out = []
        for m in find_manifests(root):
            for rec in (read_training_manifest(m) if training else read_manifest(m)):
                out += [m.parent / rec["files"][k] for k in ("clean_a", "clean_b", "gt")]
        return out

    train_images = load_images(clean_files(train_root), natural=True)
    test_images = load_images(clean_files(test_root, training=False), natural=False)
    held_out = random_patches(test_images, args.vae_eval_patches, 64, np.random.default_rng(args.seed + 7))

    def run_stage(vae, name, cfg):
        def run():
            model = vae if vae is not None else LatentVAE.from_preset("tiny", seed=args.seed)
            start = time.perf_counter()
            history = train_vae(model, train_images, cfg, log_path=args.work / f"vae_{name}_log.csv")
            seconds = time.perf_counter() - start
            if cfg.trainable == "all":  # the encoder moved: re-estimate the latent normalisation
                calibrate_scaling(model, train_images, n=64, size=64, seed=args.seed + 1)
            return model, {"stage": name, "trainable": cfg.trainable, "steps": cfg.steps, "patch": cfg.patch,
                           "batch": cfg.batch_size, "lr": cfg.lr, "edge_weight": cfg.edge_weight,
                           "seconds": round(seconds, 1), "final_loss": history[-1]["loss"],
                           "held_out": reconstruction_metrics(model, held_out),
                           "samples_per_s": float(np.median([r["samples_per_s"] for r in history]))}
        return run

    key: dict = {"seed": args.seed, "train_pairs": args.pairs, "size": args.size}
    vae, stages = None, []
    for name, cfg in vae_stages(args):
        key = {**key, name: {k: getattr(cfg, k) for k in ("trainable", "patch", "batch_size", "steps", "lr",
                                                           "edge_weight", "seed")}}
        vae, stage = _cached_stage(args.work / f"vae_{name}", key, run_stage(vae, name, cfg),
                                   lambda model: reconstruction_metrics(model, held_out))
        stages.append(stage)
        m = stage["held_out"]
        log(f"  VAE {name}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} on {m['patches']} held-out 64 px patches "
            f"({stage['seconds']:.0f} s)")
    report["vae"] = {"stages": stages, "held_out": stages[-1]["held_out"], "paper_reference": PAPER_VAE, "cache_key": key,
                     "scaling_factor": vae.scaling_factor, "shift_factor": vae.shift_factor,
                     "seconds": round(sum(st["seconds"] for st in stages), 1)}
    return vae


def reuse_components(args, report: dict):
    """(VAE, prompt encoder) of the model directory ``--init-from``, kept as they are; the VAE's section
    of that model's training report is carried over (with where it came from) so the card can cite it."""
    from latentfuse.export.bundle_cache import model_key
    from latentfuse.model.components import read_index
    from latentfuse.model.text_encoder import PromptEncoder
    from latentfuse.model.vae import LatentVAE

    index = read_index(args.init_from)
    vae = LatentVAE.from_pretrained(args.init_from / index["vae"]).float()
    text_encoder = PromptEncoder.from_pretrained(args.init_from / index["text_encoder"]).float()
    previous = args.init_from / "training_report.json"
    section = json.loads(previous.read_text()).get("vae", {}) if previous.is_file() else {}
    report["vae"] = {**section, "reused_from": str(args.init_from), "seconds": 0.0,
                     "stages": [{**st, "reused": True} for st in section.get("stages", [])],
                     "cache_key": {"init_from": str(args.init_from), "vae_sha256": model_key(args.init_from / index["vae"])[:16]},
                     "scaling_factor": vae.scaling_factor, "shift_factor": vae.shift_factor}
    report["text_encoder_from"] = str(args.init_from)
    return vae, text_encoder


def detail_settings(args):
    """The model's detail path (``model.detail``), or None when the recipe has ``detail = false``."""
    from latentfuse.model.detail import DetailConfig, DetailSettings

    if not args.detail:
        return None
    return DetailSettings.for_configs(DetailConfig(**args.detail_clean), DetailConfig(**args.detail_safe))


def dit_overrides(args) -> dict:
    """DiTConfig fields changed from the tiny preset by --dit-width / --dit-depth (experts stay 2x wide)."""
    from latentfuse.model.config import DiTConfig

    tiny = DiTConfig.from_preset("tiny")
    overrides = {}
    if args.dit_width != tiny.hidden_size:
        overrides.update(hidden_size=args.dit_width, expert_hidden=2 * args.dit_width)
    if args.dit_depth != tiny.depth:
        overrides["depth"] = args.dit_depth
    return overrides


def dit_train_config(args, head: str, steps: int):
    """The TrainConfig of one default DiT."""
    from latentfuse.model.training.config import TrainConfig

    sections = {
        "run": {"output_dir": str(args.work / f"dit_{head}"), "seed": args.seed, "device": "cpu",
                "precision": "fp32", "checkpoint_every": 0, "keep_checkpoints": 1, "plot": True},
        "model": {"preset": "tiny", "head": head, "gradient_checkpointing": False, "overrides": dit_overrides(args),
                  **({"init_from": str(args.init_from / f"dit_{head}")} if args.init_from else {})},
        "data": {"crop": args.crop, "work_scale": args.work_scale},
        "optim": {"lr": args.lr, "warmup_steps": min(100, steps // 10), "batch_size": args.batch, "grad_accum": 1,
                  "steps": steps, "min_lr_ratio": 0.05},
        "loss": {"aux_weight": args.aux_weight, "aux_samples": args.aux_samples, "load_balance_weight": 0.01,
                 "label_weight": args.label_weight,
                 "aux_min_t": 0.5 if head == "flow" else 0.0},
        "ema": {"decay": args.ema},
    }
    if head == "flow":
        sections["flow"] = {"prior": args.flow_prior, "prior_sigma": args.prior_sigma, "timesteps": "logit_normal"}
    return TrainConfig.from_dict(sections)


def flow_finetune_config(args):
    """The flow DiT's second stage: from its first stage's weights, ``--flow-finetune-steps`` more at
    ``--flow-finetune-lr`` (a fresh warmup + cosine), on new data order (seed + 7)."""
    from latentfuse.model.training.config import TrainConfig

    sections = dit_train_config(args, "flow", args.flow_finetune_steps).to_dict()
    sections["run"].update(output_dir=str(args.work / "dit_flow_finetune"), seed=args.seed + 7)
    sections["model"]["init_from"] = str(_dit_folder(args, "flow"))
    sections["optim"]["lr"] = args.flow_finetune_lr
    return TrainConfig.from_dict(sections)


def train_stage_dit(args, head: str, steps: int, dataset, vae, report: dict, cfg=None):
    from latentfuse.model.training.run import build_dit
    from latentfuse.model.training.trainer import Trainer

    cfg = cfg or dit_train_config(args, head, steps)
    dit = build_dit(cfg, dataset.prompt_embeds.shape[-1], vae.latent_channels)
    trainer = Trainer(cfg, dit, dataset, vae=vae)
    start = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - start
    final = trainer.ema.copy_to(trainer.raw) if trainer.ema is not None else trainer.raw
    tail = history[-max(1, len(history) // 20):]
    report[f"dit_{head}"] = {
        "steps": steps, "batch": args.batch, "crop_px": args.crop, "seconds": round(seconds, 1),
        "params": trainer.raw.param_counts(), "config": cfg.to_dict(),
        "first_main_loss": float(np.mean([r["main"] for r in history[:10]])),
        "final_main_loss": float(np.mean([r["main"] for r in tail])),
        "final_aux_loss": float(np.mean([r["aux"] for r in tail])),
        "samples_per_s": float(np.median([r["samples_per_s"] for r in history])),
    }
    log(f"  {head} DiT: main loss {report[f'dit_{head}']['first_main_loss']:.4f} -> "
        f"{report[f'dit_{head}']['final_main_loss']:.4f} in {seconds:.0f} s")
    return final.eval().float()


def _dit_worker(queue, args, head: str, steps: int, dataset, vae) -> None:
    """One DiT in a forked process (which inherits the latent cache instead of pickling it)."""
    import traceback

    torch.set_num_threads(1)
    try:
        report: dict = {}
        dit = train_stage_dit(args, head, steps, dataset, vae, report)
        # plain pickle bytes: torch's queue pickler would share the weights through a file descriptor
        # that dies with this process
        queue.put((head, pickle.dumps(dit), report[f"dit_{head}"], None))
    except BaseException:  # noqa: BLE001 - handed to the parent, which raises it
        queue.put((head, None, None, traceback.format_exc()))


def _collect(queue, workers: dict, poll_seconds: float = 2.0) -> list:
    """One result per worker from ``queue``; a worker that dies without reporting (killed outright, e.g.
    by the out-of-memory killer: no traceback to hand over) fails the run instead of leaving it waiting."""
    import queue as queue_module

    results: list = []
    while len(results) < len(workers):
        try:
            results.append(queue.get(timeout=poll_seconds))
            continue
        except queue_module.Empty:
            pass
        reported = {head for head, *_ in results}
        dead = [f"{head} DiT: worker exited with code {w.exitcode}"
                + (" (killed by a signal, e.g. the out-of-memory killer; --dit-workers 1 needs less memory)"
                   if w.exitcode < 0 else "")
                for head, w in workers.items() if head not in reported and w.exitcode not in (None, 0)]
        if dead:
            for worker in workers.values():
                worker.kill()
            raise LatentfuseError("DiT training failed in a worker process:\n" + "\n".join(dead))
    return results


def train_dits(args, dataset, vae, report: dict) -> dict:
    """The regression and flow DiTs: one after the other, or with ``--dit-workers 2`` side by side in two
    forked processes of one torch thread each (a tiny DiT's matmuls barely use a second thread, so two
    single-threaded runs finish in about half the wall time of two sequential two-threaded ones).
    Like the VAE stages, each is kept in ``--work`` and reused by a run with the same settings."""
    log("4/6 regression and flow DiTs")
    dits = {}
    jobs = []
    for head, steps in (("regression", args.reg_steps), ("flow", args.flow_steps)):
        cached = _cached_dit(args, head, steps, report)
        if cached is not None:
            dits[head] = cached
        else:
            jobs.append((head, steps))
    trained = _train_dits(args, jobs, dataset, vae, report)
    for head, dit in trained.items():
        stage = report[f"dit_{head}"]
        _keep_stage(_dit_folder(args, head), _dit_stage_key(args, head, stage["steps"], report), dit, stage)
    dits.update(trained)
    if args.flow_finetune_steps > 0:
        dits["flow"] = _finetune_flow(args, dataset, vae, report)
    return dits


def _finetune_flow(args, dataset, vae, report: dict):
    """:func:`flow_finetune_config` on the first stage kept in ``--work``; kept and reused the same way.
    Its stage report goes under ``report["dit_flow"]["finetune"]``."""
    from latentfuse.model.dit import MoEDiT

    cfg = flow_finetune_config(args)
    config = cfg.to_dict()
    config["run"] = {"seed": config["run"]["seed"]}
    key = {"first_stage": _dit_stage_key(args, "flow", args.flow_steps, report), "config": config}
    folder = args.work / "dit_flow_finetune" / "final"
    kept = _reload_stage(folder, key, lambda f: MoEDiT.from_pretrained(f).eval().float())
    if kept is not None:
        dit, stage = kept
        stage = {**stage, "reused": True}
    else:
        log(f"  fine-tuning the flow DiT: {args.flow_finetune_steps} steps at lr {args.flow_finetune_lr:g}")
        stage_report: dict = {}
        dit = train_stage_dit(args, "flow", args.flow_finetune_steps, dataset, vae, stage_report, cfg=cfg)
        stage = {**stage_report["dit_flow"], "lr": args.flow_finetune_lr}
        _keep_stage(folder, key, dit, stage)
    report["dit_flow"] = {**report["dit_flow"], "finetune": stage}
    return dit


def _dit_stage_key(args, head: str, steps: int, report: dict) -> dict:
    """Everything a DiT stage depends on: its TrainConfig (less where it writes), data and VAE."""
    config = dit_train_config(args, head, steps).to_dict()
    config["run"] = {"seed": config["run"]["seed"]}
    return {"config": config, "data": {k: report["data"].get(k) for k in ("train_pairs", "per_pair", "size", "crops_per_tuple")},
            "vae": report["vae"]["cache_key"]}


def _cached_dit(args, head: str, steps: int, report: dict):
    """The DiT of an earlier run with the same :func:`_dit_stage_key`, or None."""
    from latentfuse.model.dit import MoEDiT

    kept = _reload_stage(_dit_folder(args, head), _dit_stage_key(args, head, steps, report),
                         lambda folder: MoEDiT.from_pretrained(folder).eval().float())
    if kept is None:
        return None
    dit, saved = kept
    report[f"dit_{head}"] = {**saved, "reused": True}
    return dit


def _dit_folder(args, head: str) -> Path:
    return args.work / f"dit_{head}" / "final"


def _train_dits(args, jobs: list, dataset, vae, report: dict) -> dict:
    if not jobs:
        return {}
    if args.dit_workers < 2 or len(jobs) < 2:
        dits = {}
        for head, steps in jobs:
            log(f"  training the {head} DiT")
            dits[head] = train_stage_dit(args, head, steps, dataset, vae, report)
        return dits
    import multiprocessing

    log(f"  training {len(jobs)} DiTs in {len(jobs)} processes")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = {head: context.Process(target=_dit_worker, args=(queue, args, head, steps, dataset, vae), daemon=True)
               for head, steps in jobs}
    for worker in workers.values():
        worker.start()
    results = _collect(queue, workers)  # before join(): a worker exits only once its result is read
    for worker in workers.values():
        worker.join()
    failed = [f"{head} DiT:\n{error}" for head, _, _, error in results if error is not None]
    if failed:
        raise LatentfuseError("DiT training failed in a worker process:\n" + "\n".join(failed))
    report.update({f"dit_{head}": stage for head, _, stage, _ in results})
    return {head: pickle.loads(dit) for head, dit, _, _ in results}


def save_fp16(components: FusionComponents, out: Path) -> int:
    """Save with every weight cast to fp16 (the loaders cast back to fp32); returns the bytes on disk."""
    import copy

    half = FusionComponents(copy.deepcopy(components.vae).half(), copy.deepcopy(components.text_encoder).half(),
                            {h: copy.deepcopy(d).half() for h, d in components.dits.items()}, components.work_scale,
                            components.window, components.detail)
    half.save_pretrained(out, overwrite=True)
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def _shortfalls(evaluation: dict) -> list[str]:
    """'task method' for every model row whose clean Q^AB/F does not beat the control ``average_detail`` (the
    plain average through the model's detail stage: no network at all)."""
    out = []
    for task, protocols in evaluation["tasks"].items():
        methods = protocols.get("clean", {}).get("methods", {})
        control = methods.get("average_detail", {}).get("qabf", {}).get("mean")
        out += [f"{task.upper()} {name}" for name in ("regression", "flow")
                if name in methods and control is not None and methods[name]["qabf"]["mean"] <= control]
    return out


def _dit_architecture(stage: dict) -> str:
    """'tiny (d=128, 4 layers, experts 256 wide, 4+1 top-2)' from a DiT stage of the report (preset + overrides)."""
    from latentfuse.model.config import DiTConfig

    model = stage["config"]["model"]
    c = DiTConfig.from_preset(model["preset"], **model.get("overrides", {}))
    name = f"{model['preset']}, resized" if model.get("overrides") else model["preset"]
    return (f"{name} (d={c.hidden_size}, {c.depth} layers, experts {c.expert_hidden} wide, "
            f"{c.num_experts}+{c.num_shared_experts} top-{c.top_k})")


def evaluation_tables(evaluation: dict) -> str:
    """The card's quality tables: ``latentfuse evaluate``'s, per task and protocol."""
    from latentfuse.bench.quality_report import task_tables

    return "\n".join(task_tables(evaluation, heading="###"))


def evaluate_saved(args, model_dir: Path) -> dict:
    """``latentfuse evaluate`` of a saved model on the held-out pairs, clean and degraded (its report; the
    per-pair results are kept in ``--work/eval/<model hash>``, so an interrupted run resumes)."""
    from latentfuse.bench.quality import PROTOCOLS, EvalSettings, evaluate, model_identity
    from latentfuse.runtime.pipeline import Pipeline

    real = args.data == "real"
    model = model_identity(argparse.Namespace(bundle=None, checkpoint=str(model_dir)))
    settings = EvalSettings(tasks=TASKS, data=args.real_data if real else args.work / "synth" / "test",
                            out=args.work / "eval" / model["sha256"][:12], split="heldout" if real else "all",
                            protocols=PROTOCOLS, n=args.eval_limit or None, max_side=args.test_size if real else None,
                            seeds=args.eval_seeds, figures=0)
    return evaluate(Pipeline.from_checkpoint(model_dir), settings, model=model, progress=False)


def _recipe_line(report: dict) -> str:
    """`` on the recipe FILE (sha256 ...)`` for the card, when the report has one (reports before the recipe
    file do not)."""
    recipe = report.get("recipe")
    if not recipe:
        return ""
    path = Path(recipe["path"])
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return f" on the recipe `{shown}` (sha256 {recipe['sha256'][:12]})"


def write_model_card(out: Path, report: dict, table_md: str) -> None:
    v, r, f, d = report["vae"], report["dit_regression"], report["dit_flow"], report["data"]
    final_vae = v.get("held_out")
    vae_training = "; then ".join(
        f"{st['stage']} ({'encoder frozen' if st['trainable'] == 'decoder' else 'encoder + decoder'}): {st['steps']} "
        f"steps, batch {st['batch']}, {st['patch']} px, edge weight {st['edge_weight']:g}, "
        f"{st['held_out']['psnr']:.2f} dB ({st['seconds']:.0f} s)" for st in v["stages"])
    loss = r["config"]["loss"]
    flow_prior = f["config"].get("flow", {})
    pipeline = report.get("pipeline", {"work_scale": 1, "window": 0})  # reports before it: scale 1, whole images
    k, window = pipeline["work_scale"], pipeline["window"]
    scale_line = (f"Working scale {k} (`model/work_scale.py`): the pipeline enlarges every pair {k}× (bicubic) before the\n"
                  f"VAE and shrinks the fused image back ({k}×{k} means), so a latent cell covers {8 / k:.3g}×{8 / k:.3g} input pixels,\n"
                  f"not 8×8, at {k * k}× the latent tokens; training crops are {r['crop_px']} px of the enlarged images."
                  if k > 1 else "Working scale 1: the pair goes to the VAE at its own size.")
    if window:
        scale_line += (f"\nWindow {window} px: the networks run on at most {window}×{window} enlarged pixels, a larger pair in "
                       "overlapping windows\n(`runtime.backends.tiled`): the DiT does not carry what it learnt on its "
                       "training crops to much larger latent grids.")
    short = _shortfalls(report["evaluation"])
    verdict = ("every model row beats it on Q^AB/F" if not short else
               "the rows that do not beat it on Q^AB/F: " + ", ".join(short))
    side_by_side = report.get("dit_workers", 1) > 1
    dit_runs = "the two DiTs side by side, one thread each" if side_by_side else "the two DiTs one after the other"
    ft = f.get("finetune")  # the flow's second stage runs alone, after the first two
    dit_minutes = ((max if side_by_side else sum)((r["seconds"], f["seconds"])) + (ft["seconds"] if ft else 0)) / 60
    reused = [f"VAE {st['stage']}" for st in v["stages"] if st.get("reused")] + \
        [f"{head} DiT" for head, st in (("regression", r), ("flow", f)) if st.get("reused")] + \
        (["flow fine-tune"] if ft and ft.get("reused") else [])
    flow_ft = (f"; then {ft['steps']} steps from those weights at lr {ft['lr']:g} (cosine, fresh warmup; "
               f"{ft['seconds']:.0f} s)" if ft else "")
    reuse = f" (reusing the stages {', '.join(reused)} kept in --work by an earlier run with the same settings)" if reused else ""

    scale_why = (f"; working at scale {k} divides that cell by {k} on each side, at {k * k}× the latent tokens (more "
                 "where windows overlap) and as much more VAE and DiT time per pair" if k > 1 else "")
    real = d.get("source") == "real"

    def start_from(stage: dict) -> str:
        init = stage["config"]["model"].get("init_from")
        return f"from `{Path(init).parent.name}/{Path(init).name}` of `{v.get('reused_from', '')}`, " if init and v.get("reused_from") else ""

    if v.get("reused_from"):
        vae_training = f"kept from `{v['reused_from']}` (with its prompt encoder); it was trained: " + vae_training
    if real:
        data_section = (
            f"Real registered pairs of `{d['root']}` (VIF: RoadScene, TNO; MEF: MEFB; MFF: MFIFB; sources and licences in that\n"
            "folder's README; the images are not shipped). Every scene is in the training or the held-out split by a hash of its\n"
            "name (`model/data/split.py`, about 20 % held out); no training step reads a held-out scene. Training: the\n"
            f"training scenes x {d['per_pair']} variants (random aspect crops, long side {d['size']} px), each with "
            f"{'/'.join(map(str, d['n_degradations']))} composed\n"
            "degradations drawn (0: the clean pair with the task's canonical prompt, so clean input stays clean), labelled by\n"
            "the teacher ensemble with task-aware selection and the Fusion Refiner (`latentfuse data build`): "
            f"{d['train_samples']} tuples,\neach cut into up to {d['crops_per_tuple']} {r['crop_px']} px crops spread over it "
            f"({d['train_crops']} crops). Held out: every held-out scene whole, long side\n"
            f"{d['test_size']} px: clean with the canonical prompt, and degraded (`latentfuse evaluate`'s protocols, below).")
    else:
        data_section = (
            "Synthetic clean pairs rendered from the photographs bundled with scikit-image (`latentfuse data synth`:\n"
            "pseudo-thermal VIF, camera-response MEF, depth-defocus MFF), degraded with 1-3 composed degradations and\n"
            "labelled by the teacher ensemble with task-aware selection and the Fusion Refiner (`latentfuse data build`).\n"
            f"Training: {d['train_pairs']} pairs per task x {d['per_pair']} degraded variants, long side {d['size']} px\n"
            f"({d['train_samples']} tuples). Held out: {d['test_pairs']} pairs per task from a different seed\n"
            f"and long side {d['test_size']} px ({d['test_samples']} tuples), used only below.")
    detail = pipeline.get("detail")
    def detail_set(c: dict) -> str:
        return (f"{c['sigma']:g}, {c['radius']}, {'yes' if c['fused_candidate'] else 'no'}, {c.get('noise_k', 3.0):g}, "
                f"{c.get('channels', 'luma')}")

    detail_line = ("" if not detail else
                   "\nDetail path (`model/detail.py`, a host-side stage after decoding that every runtime and the C++ host run):\n"
                   "the sources' detail finer than sigma px put back where it is above their noise level; parameters\n"
                   f"sigma, radius, fused candidate, noise gate k, channels: clean {detail_set(detail['clean'])} for the task "
                   f"prompts (any of their phrasings), safe {detail_set(detail['safe'])}"
                   " for other prompts, off for rain / snow / stripe prompts\n(chosen on training scenes only, "
                   "`docs/real-data-ceilings.md`). `regression_no_detail` below is the regression DiT with the stage off.\n")
    # changes made to the saved model after its build (weights untouched), newest last
    detail_line += "".join(f"\nRevised {rev['date']}: {rev['change']}.\n" for rev in report.get("revisions", []))
    if final_vae:
        stages = ", ".join(f"{st['stage']} {st['held_out']['psnr']:.2f} dB / {st['held_out']['ssim']:.4f}" for st in v["stages"])
        vae_section = (
            f"## VAE reconstruction (held-out 64 px patches{', measured when it was trained' if v.get('reused_from') else ''})\n"
            f"PSNR **{final_vae['psnr']:.2f} dB**, SSIM **{final_vae['ssim']:.4f}** on {final_vae['patches']} patches (after each\n"
            f"stage: {stages}).\n"
            f"The paper's Cosmos VAE reaches {PAPER_VAE['psnr']} dB / {PAPER_VAE['ssim']} (Table 1) on real photographs at full\n"
            "resolution; these 64 px patches of synthetic images are another test set, so the numbers are not comparable\n"
            f"one to one. Latent scaling {v['scaling_factor']:.4f}, shift {v['shift_factor']:.4f}.\n")
    else:
        vae_section = f"## VAE\nKept from `{v.get('reused_from')}`; latent scaling {v['scaling_factor']:.4f}, shift {v['shift_factor']:.4f}.\n"
    card = f"""# latentfuse default model (tiny)

A small, CPU-trained instance of the MMAIF pipeline (latent MoE-DiT, regression and flow heads) shipped
so that `latentfuse fuse` works out of the box. {"Its DiTs are trained on real registered pairs (VIF, MEF, MFF) on a CPU" if real else "It is a **demonstration model** trained on a CPU on synthetic data"}:
it shows the whole method end to end at a size a 2-core CPU trains in hours, not the paper's quality.

Built by `scripts/train_default.py` (seed {report['seed']}) on {report['machine']} ({report['threads']} torch
thread(s); {dit_runs}): training took {v['seconds'] / 60:.1f} min for the VAE stages and {dit_minutes:.1f} min for the DiTs;
this run's wall time was {report['wall_seconds'] / 60:.1f} min{reuse}. Weights are fp16 safetensors, {report['size_bytes'] / 1e6:.1f} MB in all.
Command: `{report.get('command', 'python scripts/train_default.py')}`{_recipe_line(report)}; every number below is in `training_report.json`.
{('Note: ' + report['note'] + '.') if report.get('note') else ''}

## Components
| component | architecture | parameters | training |
|---|---|---|---|
| `vae/` | diffusers AutoencoderKL, tiny preset (f=8, z=16) | {report['params']['vae'] / 1e6:.2f} M | {vae_training} |
| `text_encoder/` | T5 encoder, tiny preset (2 layers, d=128) + shipped sentencepiece | {report['params']['text_encoder'] / 1e6:.2f} M | none: random, frozen (prompts only need distinct embeddings) |
| `dit_regression/` | MoE-DiT {_dit_architecture(r)} | {r['params']['total'] / 1e6:.2f} M ({r['params']['active'] / 1e6:.2f} M active) | {start_from(r)}{r['steps']} steps, batch {r['batch']}, {r['crop_px']} px crops, Eq. 8 + λ·Eq. 9 + label term ({r['seconds']:.0f} s) |
| `dit_flow/` | MoE-DiT {_dit_architecture(f)}, flow head | {f['params']['total'] / 1e6:.2f} M ({f['params']['active'] / 1e6:.2f} M active) | {start_from(f)}{f['steps']} steps, batch {f['batch']}, {f['crop_px']} px crops, Eq. 11 + λ·Eq. 9 + label term ({f['seconds']:.0f} s){flow_ft} |

DiT recipe: cautious AdamW (lr {r['config']['optim']['lr']}, cosine with warmup), load-balance weight {loss['load_balance_weight']},
λ_aux = {loss['aux_weight']} (Eq. 9-10) and a pixel-space label term (L1 + gradient L1 of the decoded
prediction to the label, `model.training.losses.label_loss`, not in the paper) of weight {loss['label_weight']},
both on {loss['aux_samples'] or 'all'} decoded item(s) per batch; EMA {r['config']['ema']['decay']};
flow: {describe_prior(flow_prior.get('prior', 'gaussian'), flow_prior.get('prior_sigma', 0.5))}, logit-normal timesteps, pixel-space terms only for t ≥ 0.5.
{scale_line}
Main loss: regression {r['first_main_loss']:.4f} → {r['final_main_loss']:.4f}; flow {f['first_main_loss']:.4f} → {f['final_main_loss']:.4f}{f" → {ft['final_main_loss']:.4f} (second stage)" if ft else ""}.

{detail_line}
## Data
{data_section}

{vae_section}
## Evaluation on held-out pairs
`latentfuse evaluate` (`latentfuse.bench.quality`) on the held-out scenes, reloaded from the saved fp16 weights
on the runtime pipeline: Q^AB/F (VIFB convention) against the clean sources, SSIM / PSNR to the reference (the clean
pair's teacher label), means with bootstrap 95 % intervals; `average_detail` is the control: the plain average
through the model's own detail stage, no network at all.

{table_md}

Against the control (`average_detail`, clean protocol): {verdict}.
## Limitations
The tiny VAE bounds every latent model: a 1.9 M-parameter VAE at f = 8 smooths sub-8-pixel structure (star
fields, gravel, grass){scale_why}; its round trip of the teacher labels loses a good part of their Q^AB/F
(`docs/real-data-ceilings.md`). `regression_no_detail` above shows what the DiT itself gives without the
hand-tuned detail stage. The plain average keeps every source edge, and Q^AB/F barely penalises the snow or
rain streaks it keeps with them, so it stays a strong baseline on texture-rich scenes. Real use needs the
`paper` presets trained with `configs/paper_*.toml` on real data and a pre-trained VAE. The text encoder
is untrained (random T5), so prompts act as task/degradation identifiers, not as language.
"""
    with atomic_file(out / "MODEL_CARD.md") as tmp:
        tmp.write_text(card)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                   help="the training recipe (default: configs/recipes/default.toml; keys: model/training/recipe.py)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "default_training", help="stage cache (resumable)")
    p.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="the model directory written")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the data, VAE and evaluation stages")
    p.add_argument("--dit-workers", type=int, default=2, choices=(1, 2),
                   help="2: train the two DiTs side by side in forked processes of one thread each; 1: in turn")
    p.add_argument("--real-data", type=Path, default=REPO.parent / "shared" / "datasets",
                   help="folder with vif/, mef/, mff/ in the layouts `latentfuse data build` reads")
    p.add_argument("--init-from", type=Path, default=None,
                   help="a model directory: keep its VAE and prompt encoder, start both DiTs from its DiTs "
                        "(no VAE stages)")
    p.add_argument("--eval-limit", type=int, default=0, help="held-out pairs per task to score (0: all)")
    p.add_argument("--eval-seeds", type=int, default=3, help="degraded samples per held-out pair (default 3)")
    p.add_argument("--only-vae", action="store_true", help="stop after the VAE stages (their results are kept in --work)")
    p.add_argument("--rewrite-card", action="store_true",
                   help="only re-render MODEL_CARD.md from --out/training_report.json")
    add_recipe_overrides(p)
    args = p.parse_args(argv)
    overrides = resolve_recipe(args, args.recipe)
    if args.rewrite_card:
        report = json.loads((args.out / "training_report.json").read_text())
        write_model_card(args.out, report, evaluation_tables(report["evaluation"]))
        return 0

    from latentfuse.model.config import DiTConfig

    from latentfuse.model.work_scale import check_window, check_work_scale

    # a bad --dit-width / --dit-depth / --work-scale / --window / flow setting fails now, not after the VAE
    DiTConfig.from_preset("tiny", **dit_overrides(args))
    dit_train_config(args, "flow", args.flow_steps)
    if args.flow_finetune_steps > 0:
        flow_finetune_config(args)
    check_work_scale(args.work_scale, "--work-scale")
    check_window(args.window, "--window")
    detail_settings(args)
    if args.data == "real":
        missing = [task for task in TASKS if not (args.real_data / task).is_dir()]
        if missing:
            raise LatentfuseError(f"--real-data {args.real_data}: no {'/, '.join(missing)}/ folder (expected the "
                                  "layout of ../shared/datasets: vif/, mef/, mff/)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    report: dict = {"recipe": {"path": str(args.recipe), "sha256": sha256_file(args.recipe), "overrides": overrides},
                    "seed": args.seed, "threads": args.threads, "dit_workers": args.dit_workers, "args": {k: str(v) for k, v in vars(args).items()},
                    "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
                    "command": "python scripts/train_default.py " + " ".join(sys.argv[1:] if argv is None else argv)}

    t = time.perf_counter()
    if args.data == "real":
        log(f"1/6 degraded tuples with teacher labels from the real pairs of {args.real_data} (training scenes)")
        n_train = tuple(args.real_degradations)
        train_root = make_real_data(args.work, args.real_data, "train", args.per_pair, args.size, args.seed,
                                    n_train, crop=True)
        # held out: every held-out scene whole and clean (the VAE stages' test set; the DiTs are scored by
        # `latentfuse evaluate` on the same scenes, clean and degraded, step 6)
        test_root = make_real_data(args.work, args.real_data, "heldout", 1, args.test_size, args.seed + 5000,
                                   (0,), crop=False)
        report["data"] = {"source": "real", "root": str(args.real_data), "crops_per_tuple": args.crops_per_tuple,
                          "train_pairs": count_tuples(train_root) // args.per_pair,
                          "per_pair": args.per_pair, "size": args.size, "n_degradations": list(n_train),
                          "test_size": args.test_size, "train_samples": count_tuples(train_root),
                          "test_samples": count_tuples(test_root),
                          "seconds": round(time.perf_counter() - t, 1)}
    else:
        log("1/6 synthetic pairs + degraded tuples with teacher labels")
        train_root = make_data(args.work, "train", args.pairs, args.per_pair, args.size, args.seed)
        # held-out images >= 160 px on the long side: VIF needs >= 81 px on both sides (16:9 crops)
        test_root = make_data(args.work, "test", args.test_pairs, 1, max(args.size, 160), args.seed + 5000)
        report["data"] = {"source": "synthetic", "crops_per_tuple": args.crops_per_tuple, "train_pairs": args.pairs,
                          "per_pair": args.per_pair,
                          "test_pairs": args.test_pairs, "size": args.size, "test_size": max(args.size, 160),
                          "train_samples": 3 * args.pairs * args.per_pair, "test_samples": 3 * args.test_pairs,
                          "seconds": round(time.perf_counter() - t, 1)}

    from latentfuse.model.text_encoder import PromptEncoder

    if args.init_from:
        log(f"2/6 VAE and prompt encoder of {args.init_from} (kept as they are); its DiTs start the DiT stages")
        vae, text_encoder = reuse_components(args, report)
    else:
        log("2/6 tiny VAE")
        vae = train_stage_vae(args, train_root, test_root, report)
        text_encoder = PromptEncoder.from_preset("tiny", seed=args.seed)
    if args.only_vae:
        return 0

    log("3/6 prompt encoder + latent cache")
    from latentfuse.model.training.data import build_latent_cache

    text_encoder = text_encoder.eval().requires_grad_(False)
    dataset = build_latent_cache(train_root, vae, text_encoder, args.crop, TASKS, aux_sources="clean",
                                 work_scale=args.work_scale, crops_per_tuple=args.crops_per_tuple)
    report["data"]["train_crops"] = len(dataset)
    log(f"  {len(dataset)} crops, {len(dataset.prompts)} distinct prompts, latents {tuple(dataset.z_a.shape[1:])}")

    dits = train_dits(args, dataset, vae, report)

    log("5/6 save fp16 model directory")
    components = FusionComponents(vae.eval(), text_encoder, {"flow": dits["flow"], "regression": dits["regression"]},
                                  work_scale=args.work_scale, window=args.window, detail=detail_settings(args))
    report["pipeline"] = {"work_scale": components.work_scale, "window": components.window,
                          "detail": None if components.detail is None else components.detail.to_dict()}
    report["size_bytes"] = save_fp16(components, args.out)
    report["params"] = {"vae": sum(p.numel() for p in vae.parameters()),
                        "text_encoder": sum(p.numel() for p in text_encoder.parameters())}
    log(f"  {args.out}: {report['size_bytes'] / 1e6:.1f} MB")

    log("6/6 latentfuse evaluate on held-out pairs, clean and degraded (reloaded from the saved fp16 weights)")
    report["evaluation"] = evaluate_saved(args, args.out)
    report["wall_seconds"] = round(time.perf_counter() - wall, 1)
    table_md = evaluation_tables(report["evaluation"])
    print(table_md, flush=True)
    write_model_card(args.out, report, table_md)
    with atomic_file(args.out / "training_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    log(f"done in {report['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LatentfuseError as err:
        print(f"train_default: error: {err}", file=sys.stderr)
        sys.exit(2)
