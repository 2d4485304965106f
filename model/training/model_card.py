"""``MODEL_CARD.md`` of the bundled default model, rendered from its training report.

The text is the template ``templates/model_card.md`` (package data; ``string.Template`` fields, ``$name``);
:func:`card_fields` computes every field from the report of ``latentfuse train --recipe``
(``model.training.recipe_cli``) and the evaluation's tables.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template

from latentfuse.model.atomic import atomic_file
from latentfuse.model.flow import DEFAULT_STEPS, describe_prior
from latentfuse.model.training.default_model import PAPER_VAE

TEMPLATE = "model_card.md"


def template() -> Template:
    """The card's template, read from the installed package (``latentfuse.model.training.templates``)."""
    return Template(resources.files("latentfuse.model.training.templates").joinpath(TEMPLATE).read_text("utf-8"))


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


def _recipe_line(report: dict) -> str:
    """`` on the recipe `FILE` (sha256 ...)`` for the card, when the report has one (reports before the recipe
    file do not); FILE relative to the working folder when it is under it."""
    recipe = report.get("recipe")
    if not recipe:
        return ""
    path = Path(recipe["path"])
    cwd = Path.cwd()
    shown = path.relative_to(cwd) if path.is_absolute() and path.is_relative_to(cwd) else path
    return f" on the recipe `{shown}` (sha256 {recipe['sha256'][:12]})"


def _millions(n) -> str:
    return "" if not n else f"{n / 1e6:.2f} M"


def _fidelity_parts(report: dict) -> tuple[str, str, str]:
    """(components-table row, section, minutes clause) of the fidelity decoder; empty without one."""
    fid = report.get("fidelity")
    if not fid:
        return "", "", ""
    cfg, data = fid["config"], fid.get("data", {})
    weight = cfg.get("source_grad_weight", 0)
    where = {"all": "every tuple, towards the stronger clean source's",
             "corruptions": "clean tuples and those only rained, snowed, striped, JPEG'd or noised, towards the "
                            "stronger clean source's"}.get(cfg.get("edge_sources"), "clean tuples, towards the stronger "
                                                                                 "source's")
    edges = f", edge term x{weight:g} on {where} Sobel magnitude" if weight else ""
    if cfg.get("model", {}).get("select_coarse"):
        edges += "; the coarse band's luma and colour chosen among the sources and the VAE image too"
    row = (f"| `fidelity/` | fidelity decoder (`model.fidelity`): a pixel-space U-Net on the decoded image and both "
           f"sources, prompt by FiLM | {_millions(report.get('params', {}).get('fidelity'))} | {fid['steps']} steps, batch {cfg['batch_size']}, {cfg['crop']} px crops, L1 + "
           f"gradient L1 to the label{edges} ({fid['seconds']:.0f} s) |\n")
    rows = "\n".join(f"| {task.upper()} | {v['n']} | {v['psnr_input']:.2f} | {v['psnr_output']:.2f} |"
                      for task, v in fid.get("validation", {}).items())
    table = ("| task | tuples | PSNR to label, VAE image (dB) | PSNR to label, fidelity decoder (dB) |\n"
             "|---|---:|---:|---:|\n" + rows + "\n") if rows else "No validation scene among the training scenes.\n"
    section = (
        "\n## Fidelity decoder\n"
        "Trained after the DiTs (`model.training.fidelity`) on what this model's DiTs and VAE make of degraded tuples "
        f"of the\ntraining scenes of `{data.get('root', '')}` ({data.get('per_pair', '')} per pair, long side "
        f"{data.get('size', '')} px, seed {data.get('seed', '')}): {fid['tuples']} tuples, {fid['prompts']} prompts; "
        f"lr {cfg['lr']:g}" + ("" if fid["final_loss"] is None else f", final loss {fid['final_loss']:.4f}") + ".\n"
        f"Validation on {data.get('validation_tuples', 0)} tuples of held-aside training scenes (regression head, "
        "whole tuples):\n\n" + table)
    return row, section, f" and {fid['seconds'] / 60:.1f} min for the fidelity decoder"


def write_model_card(out: Path, report: dict, table_md: str) -> None:
    """Render :func:`card_fields` into ``out/MODEL_CARD.md`` (atomically)."""
    text = template().substitute(card_fields(report, table_md))
    with atomic_file(out / "MODEL_CARD.md") as tmp:
        tmp.write_text(text)


def card_fields(report: dict, table_md: str) -> dict:
    """Every ``$field`` of the template, from the training report and the evaluation's tables."""
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
    sampler = pipeline.get("sampler") or {}
    sampling_line = (f"Sampling (model_index.json `sampler`): `--mode flow` starts from the regression DiT's estimate "
                     f"noised to t0 = {sampler['start']:g}\nand takes {sampler.get('steps', DEFAULT_STEPS)} steps "
                     f"({sampler.get('steps', DEFAULT_STEPS) + 1} NFE with the regression call; `--start 0`: from the "
                     "prior, as the paper samples)." if sampler.get("start") else
                     f"Sampling: `--mode flow` from the prior, {sampler.get('steps', DEFAULT_STEPS)} steps.")
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
                   "\nDetail path (`model/image_processing/detail.py`, a host-side stage after decoding that every runtime "
                   "and the C++ host run):\n"
                   "the sources' detail finer than sigma px put back where it is above their noise level; parameters\n"
                   f"sigma, radius, fused candidate, noise gate k, channels: clean {detail_set(detail['clean'])} for the task "
                   f"prompts (any of their phrasings), safe {detail_set(detail['safe'])}"
                   " for other prompts, off for rain / snow / stripe prompts\n(chosen on training scenes only, "
                   "`docs/real-data-ceilings.md`). " + ("A model with a fidelity decoder runs no detail stage by default."
                                                      if report.get("fidelity") else
                                                      "`regression_no_detail` below is the regression DiT with the stage off.")
                   + "\n")
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
    fidelity_row, fidelity_section, fidelity_minutes = _fidelity_parts(report)
    return {
        "trained_on": ("Its DiTs are trained on real registered pairs (VIF, MEF, MFF) on a CPU" if real else
                       "It is a **demonstration model** trained on a CPU on synthetic data"),
        "seed": report["seed"], "machine": report["machine"], "threads": report["threads"], "dit_runs": dit_runs,
        "vae_minutes": f"{v['seconds'] / 60:.1f}", "dit_minutes": f"{dit_minutes:.1f}",
        "fidelity_minutes": fidelity_minutes, "wall_minutes": f"{report['wall_seconds'] / 60:.1f}", "reuse": reuse,
        "size_mb": f"{report['size_bytes'] / 1e6:.1f}",
        "command": report.get("command", "latentfuse train --recipe configs/recipes/default.toml"),
        "recipe_line": _recipe_line(report),
        "note": ("Note: " + report["note"] + ".") if report.get("note") else "",
        "vae_params": f"{report['params']['vae'] / 1e6:.2f}", "vae_training": vae_training,
        "text_params": f"{report['params']['text_encoder'] / 1e6:.2f}",
        "reg_architecture": _dit_architecture(r), "flow_architecture": _dit_architecture(f),
        "reg_params": f"{r['params']['total'] / 1e6:.2f} M ({r['params']['active'] / 1e6:.2f} M active)",
        "flow_params": f"{f['params']['total'] / 1e6:.2f} M ({f['params']['active'] / 1e6:.2f} M active)",
        "reg_training": (f"{start_from(r)}{r['steps']} steps, batch {r['batch']}, {r['crop_px']} px crops, "
                         f"Eq. 8 + λ·Eq. 9 + label term ({r['seconds']:.0f} s)"),
        "flow_training": (f"{start_from(f)}{f['steps']} steps, batch {f['batch']}, {f['crop_px']} px crops, "
                          f"Eq. 11 + λ·Eq. 9 + label term ({f['seconds']:.0f} s){flow_ft}"),
        "fidelity_row": fidelity_row,
        "lr": r["config"]["optim"]["lr"], "load_balance_weight": loss["load_balance_weight"],
        "aux_weight": loss["aux_weight"], "label_weight": loss["label_weight"],
        "aux_samples": loss["aux_samples"] or "all", "ema": r["config"]["ema"]["decay"],
        "flow_prior": describe_prior(flow_prior.get("prior", "gaussian"), flow_prior.get("prior_sigma", 0.5)),
        "scale_line": scale_line, "sampling_line": sampling_line,
        "main_loss": (f"regression {r['first_main_loss']:.4f} → {r['final_main_loss']:.4f}; flow "
                      f"{f['first_main_loss']:.4f} → {f['final_main_loss']:.4f}"
                      + (f" → {ft['final_main_loss']:.4f} (second stage)" if ft else "")),
        "detail_line": detail_line, "data_section": data_section, "vae_section": vae_section,
        "fidelity_section": fidelity_section,
        "ablation": ("`regression_no_fidelity` above shows what the DiTs and the VAE give without the fidelity\ndecoder."
                     if report.get("fidelity") else
                     "`regression_no_detail` above shows what the DiT itself gives without the\nhand-tuned detail stage."), "tables": table_md, "verdict": verdict, "scale_why": scale_why,
    }
