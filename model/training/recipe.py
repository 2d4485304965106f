"""The bundled default's training recipe as a file (``configs/recipes/default.toml``), read and checked here.

``latentfuse train --recipe FILE`` (``model.training.recipe_cli``, stages in ``model.training.default_model``)
builds the default in stages (data, VAE, DiTs, save, fidelity decoder, evaluation); every value that decides
*what* it builds — data sizes, the VAE stages, the DiT's size and schedule, the flow's second stage, the
detail path, the fidelity decoder — is a key of the recipe, grouped in sections (``[data]``, ``[vae]``,
``[dit]``, ``[flow]``, ``[detail]``, ``[fidelity]``). The command's own flags say *where and how* it runs
(folders, threads, resume) and one ``--KEY`` per recipe key overrides the file for a run
(``--reg-steps 8000``). The run records the recipe's path, its sha256 and the overrides in its report and
the model card.

A key the schema does not know, a missing key, or a value of the wrong type is a LatentfuseError naming
the file, the key and what it takes, before any work starts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.training.config import read_config_file

@dataclass(frozen=True)
class RecipeKey:
    """One key: its section, its name (the TOML key, the ``--flag`` with dashes, the ``args`` attribute),
    its kind (``int``, ``float``, ``str``, ``bool``, ``ints``: a list of int, ``detail``: a table
    ``{sigma, radius, fused_candidate}``) and what it means."""

    section: str
    name: str
    kind: str
    help: str
    choices: tuple = ()


# image_processing.detail.DetailConfig's fields, gain 1
DETAIL_FIELDS = ("sigma", "radius", "fused_candidate", "noise_k", "channels")

#: The keys of the default's recipe, in file order.
DEFAULT_RECIPE_KEYS: tuple[RecipeKey, ...] = (
    RecipeKey("data", "seed", "int", "seed of every stage (data, weights, order)"),
    RecipeKey("data", "data", "str", "real: the real registered pairs (training scenes; held-out scenes for the evaluation); "
         "synthetic: pairs rendered from the scikit-image photographs", ("real", "synthetic")),
    RecipeKey("data", "real_degradations", "ints", "degradation counts drawn per real training tuple (0: the clean pair "
         "with the task's canonical prompt, so clean input stays clean)"),
    RecipeKey("data", "size", "int", "long side of the training images"),
    RecipeKey("data", "test_size", "int", "long side of the real held-out pairs"),
    RecipeKey("data", "per_pair", "int", "degraded variants per training pair"),
    RecipeKey("data", "pairs", "int", "synthetic training pairs per task"),
    RecipeKey("data", "test_pairs", "int", "synthetic held-out pairs per task (seeded: a smaller set is a prefix of a larger one)"),
    RecipeKey("data", "crop", "int", "DiT training crop (pixels of the enlarged images)"),
    RecipeKey("data", "crops_per_tuple", "int", "crops of each training tuple, spread evenly over the grid that covers it "
         "(1: the centre one)"),
    RecipeKey("vae", "vae_steps", "int", "steps of the from-scratch VAE stage"),
    RecipeKey("vae", "vae_patch", "int", "patch side of the from-scratch stage"),
    RecipeKey("vae", "vae_batch", "int", "VAE batch size"),
    RecipeKey("vae", "vae_lr", "float", "learning rate of the from-scratch stage"),
    RecipeKey("vae", "vae_eval_patches", "int", "held-out patches the VAE's PSNR / SSIM are measured on"),
    RecipeKey("vae", "vae_decoder_steps", "int", "decoder-only fine-tune steps (0: none)"),
    RecipeKey("vae", "vae_joint_steps", "int", "encoder + decoder fine-tune steps (0: none)"),
    RecipeKey("vae", "vae_ft_patch", "int", "patch side of the fine-tune stages"),
    RecipeKey("vae", "vae_ft_lr", "float", "learning rate of the fine-tune stages"),
    RecipeKey("vae", "vae_ft_edge", "float", "edge-loss weight of the fine-tune stages"),
    RecipeKey("dit", "work_scale", "int", "the model's working scale (model.work_scale): pairs enlarged k times before the VAE"),
    RecipeKey("dit", "window", "int", "the model's window (model.work_scale): larger pairs run in overlapping windows of this "
         "many enlarged pixels; 0: whole images"),
    RecipeKey("dit", "dit_width", "int", "DiT hidden size (tiny preset: 128; experts 2x)"),
    RecipeKey("dit", "dit_depth", "int", "DiT blocks (tiny preset: 4)"),
    RecipeKey("dit", "batch", "int", "DiT batch size"),
    RecipeKey("dit", "lr", "float", "DiT learning rate (cautious AdamW, cosine schedule with warm-up)"),
    RecipeKey("dit", "reg_steps", "int", "regression DiT steps"),
    RecipeKey("dit", "flow_steps", "int", "flow DiT steps (first stage)"),
    RecipeKey("dit", "aux_weight", "float", "weight of the pixel-space auxiliary terms (MMAIF Eq. 9-10)"),
    RecipeKey("dit", "aux_samples", "int", "decoded items per batch for the pixel-space terms (0: all)"),
    RecipeKey("dit", "label_weight", "float", "weight of the pixel-space label term (losses.label_loss)"),
    RecipeKey("dit", "ema", "float", "EMA decay of the weights (0: none)"),
    RecipeKey("flow", "flow_finetune_steps", "int", "a second flow stage from the first one's weights (0: none)"),
    RecipeKey("flow", "flow_finetune_lr", "float", "learning rate of the flow's second stage"),
    RecipeKey("flow", "flow_prior", "str", "the flow DiT's prior p0 (model.flow); the model declares it, so every runtime "
         "samples from it", ("gaussian", "source_a", "source_b", "source_mean")),
    RecipeKey("flow", "prior_sigma", "float", "σ_p of a source prior (model.flow)"),
    RecipeKey("detail", "detail", "bool", "give the model the pixel-space detail path (model.image_processing.detail)"),
    RecipeKey("detail", "detail_clean", "detail", "its parameters for the task's canonical prompt (clean pairs)"),
    RecipeKey("detail", "detail_safe", "detail", "its parameters for other prompts (degraded pairs)"),
    RecipeKey("fidelity", "fidelity", "bool", "train the model's fidelity decoder (model.fidelity) on what its DiTs and "
              "VAE make of the training scenes, after the DiT stages (model.training.fidelity)"),
    RecipeKey("fidelity", "fidelity_steps", "int", "fidelity decoder training steps"),
    RecipeKey("fidelity", "fidelity_batch", "int", "fidelity decoder batch size"),
    RecipeKey("fidelity", "fidelity_crop", "int", "fidelity decoder training crop (pixels)"),
    RecipeKey("fidelity", "fidelity_lr", "float", "fidelity decoder learning rate (AdamW, cosine schedule with warm-up)"),
    RecipeKey("fidelity", "fidelity_source_grad", "float", "weight of the fidelity decoder's edge term on clean tuples "
              "(its Sobel magnitude towards the stronger source's; 0: none)"),
    RecipeKey("fidelity", "fidelity_per_pair", "int", "degraded tuples per training pair of the fidelity decoder's data"),
    RecipeKey("fidelity", "fidelity_size", "int", "long side of the fidelity decoder's training tuples"),
    RecipeKey("fidelity", "fidelity_seed", "int", "seed of the fidelity decoder's tuples"),
)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _detail_from_text(text: str) -> dict:
    """The flag's form only; the values are checked where the model's DetailSettings is built."""
    sigma, radius, fused, noise_k, channels = text.split(",")
    return {"sigma": float(sigma), "radius": int(radius), "fused_candidate": bool(int(fused)), "noise_k": float(noise_k),
            "channels": channels}


@dataclass(frozen=True)
class _Kind:
    """What a kind takes in the file (``in_file``, described by ``file_form``) and on the command line
    (``parse``, described by ``flag_form``)."""

    in_file: Callable[[Any], bool]
    file_form: str
    parse: Callable[[str], Any]
    flag_form: str


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
KINDS: dict[str, _Kind] = {
    "int": _Kind(_int, "an integer", int, "an integer"),
    "float": _Kind(lambda v: _int(v) or isinstance(v, float), "a number", float, "a number"),
    "str": _Kind(lambda v: isinstance(v, str), "a string", str, "a string"),
    "bool": _Kind(lambda v: isinstance(v, bool), "true or false", lambda t: _BOOL_WORDS[t.lower()], "true or false"),
    "ints": _Kind(lambda v: isinstance(v, list) and bool(v) and all(_int(x) for x in v), "a list of integers",
                  lambda t: [int(x) for x in t.split(",")], "integers joined by commas (e.g. 0,1,2)"),
    "detail": _Kind(lambda v: isinstance(v, dict) and set(v) == set(DETAIL_FIELDS),
                    f"a table {{{', '.join(DETAIL_FIELDS)}}}", _detail_from_text,
                    "sigma,radius,fused_candidate,noise_k,channels (e.g. 8,4,0,3,luma)"),
}


def check_value(key: RecipeKey, value: Any, where: str) -> Any:
    """``value`` as the key's kind, or a LatentfuseError naming ``where`` and the key."""
    kind = KINDS[key.kind]
    if not kind.in_file(value):
        raise LatentfuseError(f"{where}: {key.name} must be {kind.file_form}, got {value!r}")
    if key.choices and value not in key.choices:
        raise LatentfuseError(f"{where}: {key.name} must be one of {', '.join(key.choices)}, got {value!r}")
    if key.kind == "float":
        return float(value)
    if key.kind == "detail":
        from latentfuse.model.image_processing.detail import DetailConfig

        try:
            table = {**value, "sigma": float(value["sigma"]), "noise_k": float(value["noise_k"])}
            DetailConfig(**table)
        except (LatentfuseError, ValueError, TypeError) as err:
            raise LatentfuseError(f"{where}: {key.name}: {err}") from None
        return table
    return value


def load_recipe(path: str | Path, keys: tuple[RecipeKey, ...] = DEFAULT_RECIPE_KEYS) -> dict[str, Any]:
    """The recipe at ``path`` as ``{name: value}``, every key of ``keys`` present, in its section, of its kind."""
    path = Path(path)
    raw = read_config_file(path, "recipe")
    sections = {k.section for k in keys}
    not_tables = [s for s in sections if s in raw and not isinstance(raw[s], dict)]
    if not_tables:
        raise LatentfuseError(f"recipe {path}: {', '.join(f'[{s}]' for s in sorted(not_tables))} must be a section "
                              f"(a table of keys), got a value")
    unknown = [f"[{s}]" for s in raw if s not in sections]
    unknown += [f"{s}.{n}" for s, table in raw.items() if s in sections and isinstance(table, dict)
                for n in table if not any(k.section == s and k.name == n for k in keys)]
    if unknown:
        raise LatentfuseError(f"recipe {path}: unknown {', '.join(unknown)} (sections {', '.join(sorted(sections))}; "
                              "the keys are in model/training/recipe.py)")
    missing = [f"{k.section}.{k.name}" for k in keys if k.name not in raw.get(k.section, {})]
    if missing:
        raise LatentfuseError(f"recipe {path}: missing {', '.join(missing)}")
    return {k.name: check_value(k, raw[k.section][k.name], f"recipe {path}") for k in keys}


def _cli_value(key: RecipeKey, text: str) -> Any:
    """A ``--KEY`` override as the key's kind (``KINDS``: ``ints`` take ``0,1,2``, ``detail`` takes
    ``sigma,radius,fused_candidate,noise_k,channels``, ``bool`` takes true/false/1/0)."""
    flag = "--" + key.name.replace("_", "-")
    try:
        value = KINDS[key.kind].parse(text)
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{flag} takes {KINDS[key.kind].flag_form}, got {text!r}") from None
    if key.choices and value not in key.choices:
        raise argparse.ArgumentTypeError(f"{flag} must be one of {', '.join(key.choices)}, got {text!r}")
    return value


def add_recipe_overrides(parser: argparse.ArgumentParser, keys: tuple[RecipeKey, ...] = DEFAULT_RECIPE_KEYS) -> None:
    """One ``--KEY`` per recipe key (default None: the recipe's value), grouped by section."""
    groups: dict[str, Any] = {}
    for key in keys:
        group = groups.setdefault(key.section, parser.add_argument_group(f"recipe [{key.section}] overrides"))
        group.add_argument("--" + key.name.replace("_", "-"), dest=key.name, default=None, metavar=key.kind.upper(),
                           type=lambda text, key=key: _cli_value(key, text), help=key.help)


def resolve_recipe(args: argparse.Namespace, path: str | Path,
                   keys: tuple[RecipeKey, ...] = DEFAULT_RECIPE_KEYS) -> dict[str, Any]:
    """Fill ``args`` with the recipe at ``path``, keeping the ``--KEY`` overrides given; returns the overrides."""
    values = load_recipe(path, keys)
    overrides = {k.name: getattr(args, k.name) for k in keys if getattr(args, k.name, None) is not None}
    for name, value in values.items():
        setattr(args, name, overrides.get(name, value))
    return overrides
