"""``latentfuse train --recipe FILE``: build the bundled default model from its recipe, every stage resumable.

    latentfuse train --recipe configs/recipes/default.toml                   # model/weights/default, from nothing
    latentfuse train --recipe configs/recipes/default.toml --init-from DIR   # DIR's VAE + prompt encoder kept
    latentfuse train --recipe configs/recipes/default.toml --reg-steps 8000  # a recipe key overridden for a run

The recipe file (``model.training.recipe``) says *what* is built; the flags here say *where and how*
(``--work``: the stage cache, ``--out``: the model directory, threads). The stages are in
``model.training.default_model``, the card in ``model.training.model_card``; this module, the command line
(the application layer), runs them and the evaluation (``latentfuse.bench.quality``).

Sized for a 2-core CPU in about two and a half hours (VAE stages on two threads, 36 min; the two DiTs
side by side on one thread each, 66 min; the flow's second stage, 26 min; the evaluation, 9 min), plus the
fidelity decoder. Run it in the background:

    nohup latentfuse train --recipe configs/recipes/default.toml > runs/train_default.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import time
from pathlib import Path

#: The run's own flags (not recipe keys): name -> (default, type, help). Defaults are filled in by
#: :func:`run_defaults`, so ``latentfuse train --config`` can tell that none was given.
RUN_FLAGS: dict[str, tuple] = {
    "work": (Path("runs") / "default_training", Path, "stage cache (resumable; default runs/default_training)"),
    "out": (None, Path, "the model directory written (default: the package's model/weights/default)"),
    "threads": (2, int, "torch threads of the data, VAE, fidelity and evaluation stages (default 2)"),
    "dit_workers": (2, int, "2: train the two DiTs side by side in forked processes of one thread each; 1: in turn"),
    "real_data": (Path("..") / "shared" / "datasets", Path,
                  "folder with vif/, mef/, mff/ in the layouts `latentfuse data build` reads (default ../shared/datasets)"),
    "init_from": (None, Path, "a model directory: keep its VAE and prompt encoder, start both DiTs from its DiTs "
                              "(no VAE stages)"),
    "eval_limit": (0, int, "held-out pairs per task to score (0: all)"),
    "eval_seeds": (3, int, "degraded samples per held-out pair (default 3)"),
}
SWITCHES = {"only_vae": "stop after the VAE stages (their results are kept in --work)",
            "rewrite_card": "only re-render MODEL_CARD.md from --out/training_report.json"}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a recipe run and one ``--KEY`` per recipe key (``model.training.recipe``)."""
    from latentfuse.model.training.recipe import add_recipe_overrides

    group = parser.add_argument_group("recipe runs (--recipe)")
    for name, (_, kind, help_text) in RUN_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=help_text,
                           **({"choices": (1, 2)} if name == "dit_workers" else {}))
    for name, help_text in SWITCHES.items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", help=help_text)
    add_recipe_overrides(parser)


def given_run_flags(args: argparse.Namespace) -> list[str]:
    """The recipe-run flags and recipe keys set in ``args`` (what ``train --config`` must not get)."""
    from latentfuse.model.training.recipe import RECIPE_KEYS

    names = [*RUN_FLAGS, *RECIPE_KEYS]
    return (["--" + n.replace("_", "-") for n in names if getattr(args, n, None) is not None]
            + ["--" + n.replace("_", "-") for n in SWITCHES if getattr(args, n, False)])


def _flag_text(value) -> str:
    """A value as its ``--KEY`` takes it (``model.training.config.parse_flag``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):  # a detail table
        return ",".join(str(int(v) if isinstance(v, bool) else v) for v in value.values())
    return str(value)


def _command(args: argparse.Namespace, overrides: dict) -> str:
    """The command line of this run, as given (the recipe, the run flags set, the overrides)."""
    words = ["latentfuse", "train", "--recipe", str(args.recipe)]
    for name in RUN_FLAGS:
        if args.given.get(name) is not None:
            words += ["--" + name.replace("_", "-"), str(args.given[name])]
    words += ["--" + n.replace("_", "-") for n in SWITCHES if getattr(args, n)]
    for name, value in overrides.items():
        words += ["--" + name.replace("_", "-"), _flag_text(value)]
    return shlex.join(words)


def check_settings(args: argparse.Namespace) -> None:
    """Fail now, not after hours of training, on a bad DiT size, working scale, window, flow or detail
    setting, a missing data folder, or a fidelity decoder that cannot be trained."""
    from latentfuse.model.config import DiTConfig
    from latentfuse.model.data.tasks import TASKS
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.model.training import default_model as dm
    from latentfuse.model.work_scale import check_window, check_work_scale

    DiTConfig.from_preset("tiny", **dm.dit_overrides(args))
    dm.dit_train_config(args, "flow", args.flow_steps)
    if args.flow_finetune_steps > 0:
        dm.flow_finetune_config(args)
    check_work_scale(args.work_scale, "--work-scale")
    check_window(args.window, "--window")
    dm.detail_settings(args)
    if args.data == "real":
        missing = [task for task in TASKS if not (args.real_data / task).is_dir()]
        if missing:
            raise LatentfuseError(f"--real-data {args.real_data}: no {'/, '.join(missing)}/ folder (expected the "
                                  "layout of ../shared/datasets: vif/, mef/, mff/)")
    if args.fidelity:
        bad = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in
               ("fidelity_steps", "fidelity_batch", "fidelity_crop", "fidelity_per_pair", "fidelity_size")
               if getattr(args, name) < 1] + ([f"--fidelity-lr {args.fidelity_lr}"] if args.fidelity_lr <= 0 else []) + (
                   [f"--fidelity-source-grad {args.fidelity_source_grad}"] if args.fidelity_source_grad < 0 else [])
        if bad:
            raise LatentfuseError(f"fidelity decoder: {', '.join(bad)}: must be positive (the edge term's weight: "
                                  "not negative)")


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


def evaluation_tables(evaluation: dict) -> str:
    """The card's quality tables: ``latentfuse evaluate``'s, per task and protocol."""
    from latentfuse.bench.quality_report import task_tables

    return "\n".join(task_tables(evaluation, heading="###"))


def evaluate_saved(args, model_dir: Path) -> dict:
    """``latentfuse evaluate`` of a saved model on the held-out pairs, clean and degraded (its report; the
    per-pair results are kept in ``--work/eval/<model hash>``, so an interrupted run resumes)."""
    from latentfuse.bench.quality import PROTOCOLS, EvalSettings, evaluate, model_identity
    from latentfuse.model.data.tasks import TASKS
    from latentfuse.runtime.pipeline import Pipeline

    real = args.data == "real"
    model = model_identity(argparse.Namespace(bundle=None, checkpoint=str(model_dir)))
    settings = EvalSettings(tasks=TASKS, data=args.real_data if real else args.work / "synth" / "test",
                            out=args.work / "eval" / model["sha256"][:12], split="heldout" if real else "all",
                            protocols=PROTOCOLS, n=args.eval_limit or None, max_side=args.test_size if real else None,
                            seeds=args.eval_seeds, figures=0)
    return evaluate(Pipeline.from_pretrained(model_dir), settings, model=model, progress=False)


def run_recipe(args: argparse.Namespace) -> int:
    """``latentfuse train --recipe``: the recipe read (overrides kept), settings checked, then the stages."""
    import torch

    from latentfuse.export.bundle_cache import model_key
    from latentfuse.model.components import DEFAULT_MODEL_DIR, FusionComponents
    from latentfuse.model.data.tasks import TASKS
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.model.training import default_model as dm
    from latentfuse.model.training.model_card import write_model_card
    from latentfuse.model.training.recipe import resolve_recipe
    from latentfuse.runtime.manifest import sha256_file

    args.recipe = Path(args.recipe)
    args.given = {name: getattr(args, name, None) for name in RUN_FLAGS}
    for name, (default, _, _) in RUN_FLAGS.items():
        if getattr(args, name, None) is None:  # a default folder is taken from where the command runs
            setattr(args, name, Path(os.path.abspath(default)) if isinstance(default, Path) else default)
    args.out = args.out or DEFAULT_MODEL_DIR
    overrides = resolve_recipe(args, args.recipe)
    if args.rewrite_card:
        report_file = args.out / "training_report.json"
        if not report_file.is_file():
            raise LatentfuseError(f"--rewrite-card: {report_file} not found")
        report = json.loads(report_file.read_text())
        write_model_card(args.out, report, evaluation_tables(report["evaluation"]))
        return 0
    check_settings(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    steps = 7 if args.fidelity else 6
    report: dict = {"recipe": {"path": str(args.recipe), "sha256": sha256_file(args.recipe), "overrides": overrides},
                    "seed": args.seed, "threads": args.threads, "dit_workers": args.dit_workers,
                    "args": {k: str(v) for k, v in vars(args).items() if k not in ("func", "given")},
                    "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
                    "command": _command(args, overrides)}

    t = time.perf_counter()
    if args.data == "real":
        dm.log(f"1/{steps} degraded tuples with teacher labels from the real pairs of {args.real_data} (training scenes)")
        n_train = tuple(args.real_degradations)
        train_root = dm.make_real_data(args.work, args.real_data, "train", args.per_pair, args.size, args.seed,
                                       n_train, crop=True)
        # held out: every held-out scene whole and clean (the VAE stages' test set; the DiTs are scored by
        # `latentfuse evaluate` on the same scenes, clean and degraded, last step)
        test_root = dm.make_real_data(args.work, args.real_data, "heldout", 1, args.test_size, args.seed + 5000,
                                      (0,), crop=False)
        report["data"] = {"source": "real", "root": str(args.real_data), "crops_per_tuple": args.crops_per_tuple,
                          "train_pairs": dm.count_tuples(train_root) // args.per_pair,
                          "per_pair": args.per_pair, "size": args.size, "n_degradations": list(n_train),
                          "test_size": args.test_size, "train_samples": dm.count_tuples(train_root),
                          "test_samples": dm.count_tuples(test_root),
                          "seconds": round(time.perf_counter() - t, 1)}
    else:
        dm.log(f"1/{steps} synthetic pairs + degraded tuples with teacher labels")
        train_root = dm.make_data(args.work, "train", args.pairs, args.per_pair, args.size, args.seed)
        # held-out images >= 160 px on the long side: VIF needs >= 81 px on both sides (16:9 crops)
        test_root = dm.make_data(args.work, "test", args.test_pairs, 1, max(args.size, 160), args.seed + 5000)
        report["data"] = {"source": "synthetic", "crops_per_tuple": args.crops_per_tuple, "train_pairs": args.pairs,
                          "per_pair": args.per_pair,
                          "test_pairs": args.test_pairs, "size": args.size, "test_size": max(args.size, 160),
                          "train_samples": 3 * args.pairs * args.per_pair, "test_samples": 3 * args.test_pairs,
                          "seconds": round(time.perf_counter() - t, 1)}

    from latentfuse.model.text_encoder import PromptEncoder

    if args.init_from:
        dm.log(f"2/{steps} VAE and prompt encoder of {args.init_from} (kept as they are); its DiTs start the DiT stages")
        vae, text_encoder = reuse_components(args, report)
    else:
        dm.log(f"2/{steps} tiny VAE")
        vae = dm.train_stage_vae(args, train_root, test_root, report)
        text_encoder = PromptEncoder.from_preset("tiny", seed=args.seed)
    if args.only_vae:
        return 0

    dm.log(f"3/{steps} prompt encoder + latent cache")
    from latentfuse.model.training.data import build_latent_cache

    text_encoder = text_encoder.eval().requires_grad_(False)
    dataset = build_latent_cache(train_root, vae, text_encoder, args.crop, TASKS, aux_sources="clean",
                                 work_scale=args.work_scale, crops_per_tuple=args.crops_per_tuple)
    report["data"]["train_crops"] = len(dataset)
    dm.log(f"  {len(dataset)} crops, {len(dataset.prompts)} distinct prompts, latents {tuple(dataset.z_a.shape[1:])}")

    dm.log(f"4/{steps} regression and flow DiTs")
    dits = dm.train_dits(args, dataset, vae, report)

    dm.log(f"5/{steps} save fp16 model directory")
    components = FusionComponents(vae.eval(), text_encoder, {"flow": dits["flow"], "regression": dits["regression"]},
                                  work_scale=args.work_scale, window=args.window, detail=dm.detail_settings(args),
                                  sampler={"start": args.flow_start, "steps": args.flow_sample_steps})
    report["pipeline"] = {"work_scale": components.work_scale, "window": components.window,
                          "detail": None if components.detail is None else components.detail.to_dict(),
                          "sampler": dict(components.sampler)}
    report["size_bytes"] = dm.save_fp16(components, args.out)
    report["params"] = {"vae": sum(p.numel() for p in vae.parameters()),
                        "text_encoder": sum(p.numel() for p in text_encoder.parameters())}
    dm.log(f"  {args.out}: {report['size_bytes'] / 1e6:.1f} MB")

    if args.fidelity:
        dm.log(f"6/{steps} fidelity decoder on what the saved model makes of the training scenes")
        from latentfuse.runtime.pipeline import Pipeline

        pipeline = Pipeline.from_pretrained(args.out, threads=args.threads)
        report["fidelity"] = dm.fidelity_stage(args, args.out, model_key(args.out), pipeline)
        decoder = FusionComponents.from_pretrained(args.out).fidelity
        report["params"]["fidelity"] = sum(p.numel() for p in decoder.parameters())
        report["size_bytes"] = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())

    dm.log(f"{steps}/{steps} latentfuse evaluate on held-out pairs, clean and degraded (reloaded from the saved fp16 weights)")
    report["evaluation"] = evaluate_saved(args, args.out)
    report["wall_seconds"] = round(time.perf_counter() - wall, 1)
    table_md = evaluation_tables(report["evaluation"])
    print(table_md, flush=True)
    write_model_card(args.out, report, table_md)
    dm.write_json(args.out / "training_report.json", report)
    dm.log(f"done in {report['wall_seconds'] / 60:.1f} min")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """``latentfuse train --recipe``'s arguments on their own (``main``, ``scripts/``)."""
    p = argparse.ArgumentParser(prog="latentfuse train", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", type=Path, required=True,
                   help="the training recipe (configs/recipes/default.toml; keys: model/training/recipe.py)")
    add_run_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``latentfuse train --recipe ...`` from a list of arguments; a LatentfuseError propagates."""
    return run_recipe(build_parser().parse_args(argv))
