"""The bundled default model's stages (``latentfuse train --recipe``; the run itself: ``model.training.recipe_cli``).

1. data     the recipe's ``data = "real"``: the training scenes of ``--real-data`` (``model/data/split.py``
            holds about 20 % of the scenes out) x degraded variants, labelled by the teachers (selection +
            refiner); ``data = "synthetic"``: pairs made by ``latentfuse data synth`` from the scikit-image
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
5. save     ``FusionComponents`` in fp16 safetensors
6. fidelity the fidelity decoder (``model.fidelity``) on what the saved model's DiTs and VAE make of the
            training scenes (:func:`fidelity_stage`, ``model.training.fidelity``), when the recipe has
            ``fidelity = true``
7. eval     ``latentfuse evaluate`` on the held-out pairs, then ``MODEL_CARD.md`` (``model.training.model_card``)
            and ``training_report.json``

Every stage is kept in ``--work`` with the settings it was made with and reused by a run with the same ones.
``args`` below is the namespace of ``latentfuse train --recipe`` (the recipe's keys and the run's flags).
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from latentfuse.model.atomic import atomic_file
from latentfuse.model.components import FusionComponents
from latentfuse.model.data.tasks import TASKS
from latentfuse.model.errors import LatentfuseError

PAPER_VAE = {"name": "Cosmos VAE (MMAIF Table 1)", "psnr": 34.02, "ssim": 0.9367}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically (``model.atomic``); Paths and the like as strings."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")


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
    from latentfuse.model.training.data import find_indexes, read_index

    return sum(len(read_index(m)) for m in find_indexes(root))


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
    write_json(folder / "stage.json", {"key": key, "report": stage_report})


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
    from latentfuse.model.training.data import find_indexes, read_index, read_training_index
    from latentfuse.model.training.vae_trainer import (calibrate_scaling, load_images, random_patches, reconstruction_metrics,
                                                       train_vae)
    from latentfuse.model.vae import LatentVAE

    def clean_files(root, training=True):
        out = []
        for m in find_indexes(root):
            for rec in (read_training_index(m) if training else read_index(m)):
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


def detail_settings(args):
    """The model's detail path (``model.image_processing.detail``), or None when the recipe has
    ``detail = false``."""
    from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings

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
    """Save with every weight cast to fp16 (the loaders cast back to fp32), the fidelity decoder included;
    returns the bytes on disk."""
    import copy

    half = FusionComponents(copy.deepcopy(components.vae).half(), copy.deepcopy(components.text_encoder).half(),
                            {h: copy.deepcopy(d).half() for h, d in components.dits.items()}, components.work_scale,
                            components.window, components.detail,
                            None if components.fidelity is None else copy.deepcopy(components.fidelity).half(),
                            components.sampler)
    half.save_pretrained(out, overwrite=True)
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def fidelity_data(args) -> Path:
    """The pairs the fidelity decoder's tuples are built from (``<root>/<task>``): the real pairs, or the
    synthetic training pairs of step 1; ``model.training.fidelity`` keeps their training scenes."""
    return args.real_data if args.data == "real" else args.work / "synth" / "train"


def fidelity_config(args):
    """The recipe's ``[fidelity]`` table as a ``FidelityTrainConfig`` (seeded by the recipe's seed)."""
    from latentfuse.model.training.fidelity import FidelityTrainConfig

    return FidelityTrainConfig(steps=args.fidelity_steps, batch_size=args.fidelity_batch, crop=args.fidelity_crop,
                               lr=args.fidelity_lr, source_grad_weight=args.fidelity_source_grad, seed=args.seed)


def fidelity_stage(args, model_dir: Path, model_sha256: str, pipeline) -> dict:
    """Train the fidelity decoder of the saved model in ``model_dir`` (``run_fidelity_training``, its work in
    ``--work/fidelity``) and write ``model_dir`` again with it, every weight fp16 as the rest of the model;
    returns the training's report (its ``history`` left out). The decoded-image cache and the checkpoints in
    ``--work/fidelity`` belong to the model they were made with (``model_sha256``, recorded in
    ``model.json``): another model's are removed first; the tuples (``build/``) do not depend on it and stay.
    ``pipeline``: a runtime Pipeline over ``model_dir`` (built by the command line, above this layer)."""
    from latentfuse.model.training.fidelity import run_fidelity_training

    work = args.work / "fidelity"
    made_with = work / "model.json"
    if made_with.is_file() and json.loads(made_with.read_text()).get("sha256") != model_sha256:
        log(f"  {work}: decoded images and checkpoints of another model; made again")
        for stale in ("cache", "train"):
            shutil.rmtree(work / stale, ignore_errors=True)
    write_json(made_with, {"sha256": model_sha256, "model": str(model_dir)})
    report = run_fidelity_training(model_dir, fidelity_data(args), work, model_dir, fidelity_config(args),
                                   pipeline, per_pair=args.fidelity_per_pair, size=args.fidelity_size,
                                   data_seed=args.fidelity_seed, threads=args.threads, progress=False,
                                   select_coarse=args.fidelity_select_coarse)
    # run_fidelity_training writes the components back in fp32: the shipped model keeps every weight fp16
    save_fp16(FusionComponents.from_pretrained(model_dir), model_dir)
    write_json(model_dir / "fidelity" / "training.json", report)
    for task, row in report["validation"].items():
        log(f"  fidelity {task}: PSNR to the label {row['psnr_input']:.2f} -> {row['psnr_output']:.2f} dB "
            f"({row['n']} held-aside tuples)")
    return {k: v for k, v in report.items() if k != "history"}
