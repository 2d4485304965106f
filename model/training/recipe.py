"""The bundled default's training recipe as a file (``configs/recipes/default.toml``): its keys, declared here.

``latentfuse train --recipe FILE`` (``model.training.recipe_cli``, stages in ``model.training.default_model``)
builds the default in stages (data, VAE, DiTs, save, fidelity decoder, evaluation); every value that decides
*what* it builds — data sizes, the VAE stages, the DiT's size and schedule, the flow's second stage, the
detail path, the fidelity decoder — is a key of the recipe, grouped in sections (``[data]``, ``[vae]``,
``[dit]``, ``[flow]``, ``[detail]``, ``[fidelity]``). The command's own flags say *where and how* it runs
(folders, threads, resume) and one ``--KEY`` per recipe key overrides the file for a run
(``--reg-steps 8000``). The run records the recipe's path, its sha256 and the overrides in its report and
the model card.

The recipe is a config of the one config system (``model.training.config``, which ``latentfuse train
--config``'s TrainConfig uses too): :class:`Recipe` is a dataclass of sections, each key a field with its
type, help text and choices; ``config.sections_from_dict`` reads and checks the file, ``config.add_flags``
makes the ``--KEY`` flags. No key has a default, so every key must be in the file; a key the recipe does
not know, a missing key, or a value of the wrong type is a LatentfuseError naming the file, the key and
what it takes, before any work starts. Key names are unique across sections: each is also a ``--flag``
and an attribute of the command's ``args`` (``args.reg_steps``), which ``model.training.default_model``
reads.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.flow import Prior
from latentfuse.model.training.config import (add_flags, config_sections, flat_keys, read_config_file,
                                              sections_from_dict, setting)


@dataclass(frozen=True)
class DetailTable:
    """The parameters of the detail path for one kind of prompt: ``image_processing.detail.DetailConfig``'s
    fields but its gain (1), checked by it."""

    sigma: float = setting(help="base / detail split, in pixels")
    radius: int = setting(help="local-energy window (2r + 1 pixels)")
    fused_candidate: bool = setting(help="the fused image's own detail competes in the selection")
    noise_k: float = setting(help="noise gate in units of each source's noise estimate (0: off)")
    channels: str = setting(help="luma or rgb")

    def __post_init__(self):
        from latentfuse.model.image_processing.detail import DetailConfig

        DetailConfig(**dataclasses.asdict(self))


@dataclass(frozen=True)
class RecipeData:
    seed: int = setting(help="seed of every stage (data, weights, order)")
    data: str = setting(help="real: the real registered pairs (training scenes; held-out scenes for the evaluation); "
                             "synthetic: pairs rendered from the scikit-image photographs", choices=("real", "synthetic"))
    real_degradations: list[int] = setting(help="degradation counts drawn per real training tuple (0: the clean pair "
                                                "with the task's canonical prompt, so clean input stays clean)",
                                           example="0,1,2")
    size: int = setting(help="long side of the training images")
    test_size: int = setting(help="long side of the real held-out pairs")
    per_pair: int = setting(help="degraded variants per training pair")
    pairs: int = setting(help="synthetic training pairs per task")
    test_pairs: int = setting(help="synthetic held-out pairs per task (seeded: a smaller set is a prefix of a larger one)")
    crop: int = setting(help="DiT training crop (pixels of the enlarged images)")
    crops_per_tuple: int = setting(help="crops of each training tuple, spread evenly over the grid that covers it "
                                        "(1: the centre one)")

    def __post_init__(self):
        if not self.real_degradations:
            raise LatentfuseError("data.real_degradations must be a list of integers, at least one, got []")


@dataclass(frozen=True)
class RecipeVAE:
    vae_steps: int = setting(help="steps of the from-scratch VAE stage")
    vae_patch: int = setting(help="patch side of the from-scratch stage")
    vae_batch: int = setting(help="VAE batch size")
    vae_lr: float = setting(help="learning rate of the from-scratch stage")
    vae_eval_patches: int = setting(help="held-out patches the VAE's PSNR / SSIM are measured on")
    vae_decoder_steps: int = setting(help="decoder-only fine-tune steps (0: none)")
    vae_joint_steps: int = setting(help="encoder + decoder fine-tune steps (0: none)")
    vae_ft_patch: int = setting(help="patch side of the fine-tune stages")
    vae_ft_lr: float = setting(help="learning rate of the fine-tune stages")
    vae_ft_edge: float = setting(help="edge-loss weight of the fine-tune stages")


@dataclass(frozen=True)
class RecipeDiT:
    work_scale: int = setting(help="the model's working scale (model.work_scale): pairs enlarged k times before the VAE")
    window: int = setting(help="the model's window (model.work_scale): larger pairs run in overlapping windows of this "
                               "many enlarged pixels; 0: whole images")
    dit_width: int = setting(help="DiT hidden size (tiny preset: 128; experts 2x)")
    dit_depth: int = setting(help="DiT blocks (tiny preset: 4)")
    batch: int = setting(help="DiT batch size")
    lr: float = setting(help="DiT learning rate (cautious AdamW, cosine schedule with warm-up)")
    reg_steps: int = setting(help="regression DiT steps")
    flow_steps: int = setting(help="flow DiT steps (first stage)")
    aux_weight: float = setting(help="weight of the pixel-space auxiliary terms (MMAIF Eq. 9-10)")
    aux_samples: int = setting(help="decoded items per batch for the pixel-space terms (0: all)")
    label_weight: float = setting(help="weight of the pixel-space label term (losses.label_loss)")
    ema: float = setting(help="EMA decay of the weights (0: none)")


@dataclass(frozen=True)
class RecipeFlow:
    flow_finetune_steps: int = setting(help="a second flow stage from the first one's weights (0: none)")
    flow_finetune_lr: float = setting(help="learning rate of the flow's second stage")
    flow_prior: str = setting(help="the flow DiT's prior p0 (model.flow); the model declares it, so every runtime "
                                   "samples from it", choices=tuple(p.value for p in Prior))
    prior_sigma: float = setting(help="σ_p of a source prior (model.flow)")
    flow_start: float = setting(help="where the runtime's flow starts, t0 in [0, 1) (model.flow.DEFAULT_START): t0 > 0 "
                                     "refines the regression DiT's estimate noised to t0; 0: from the prior")
    flow_sample_steps: int = setting(help="the runtime's flow steps over [t0, 1] (NFE: these + 1 with a start)")


@dataclass(frozen=True)
class RecipeDetail:
    detail: bool = setting(help="give the model the pixel-space detail path (model.image_processing.detail)")
    detail_clean: DetailTable = setting(help="its parameters for the task's canonical prompt (clean pairs)",
                                        metavar="DETAIL", example="8,4,0,3,luma")
    detail_safe: DetailTable = setting(help="its parameters for other prompts (degraded pairs)", metavar="DETAIL",
                                       example="8,4,0,3,luma")


@dataclass(frozen=True)
class RecipeFidelity:
    fidelity: bool = setting(help="train the model's fidelity decoder (model.fidelity) on what its DiTs and "
                                  "VAE make of the training scenes, after the DiT stages (model.training.fidelity)")
    fidelity_steps: int = setting(help="fidelity decoder training steps")
    fidelity_batch: int = setting(help="fidelity decoder batch size")
    fidelity_crop: int = setting(help="fidelity decoder training crop (pixels)")
    fidelity_lr: float = setting(help="fidelity decoder learning rate (AdamW, cosine schedule with warm-up)")
    fidelity_source_grad: float = setting(help="weight of the fidelity decoder's edge term on clean tuples "
                                               "(its Sobel magnitude towards the stronger source's; 0: none)")
    fidelity_select_coarse: bool = setting(help="the fidelity decoder chooses the coarse band's luma and colour among "
                                                "the sources and the VAE image too (model.fidelity "
                                                "FidelityConfig.select_coarse)")
    fidelity_per_pair: int = setting(help="degraded tuples per training pair of the fidelity decoder's data")
    fidelity_size: int = setting(help="long side of the fidelity decoder's training tuples")
    fidelity_seed: int = setting(help="seed of the fidelity decoder's tuples")


@dataclass(frozen=True)
class Recipe:
    """The default's recipe: its sections, in file order."""

    data: RecipeData
    vae: RecipeVAE
    dit: RecipeDiT
    flow: RecipeFlow
    detail: RecipeDetail
    fidelity: RecipeFidelity

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> "Recipe":
        """The recipe of a file's mapping of sections (``config.sections_from_dict``: every key present)."""
        return cls(**sections_from_dict(data, config_sections(cls), source))

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        return cls.from_dict(read_config_file(path, "recipe"), f"recipe {path}")

    def values(self) -> dict[str, Any]:
        """``{key: value}`` over every section, in file order (a detail table as a dict)."""
        return {name: value for section in dataclasses.asdict(self).values() for name, value in section.items()}


#: The recipe's key names, in file order (unique across its sections: ``config.flat_keys`` checks).
RECIPE_KEYS: tuple[str, ...] = tuple(flat_keys(config_sections(Recipe)))


def load_recipe(path: str | Path, cls: type = Recipe) -> dict[str, Any]:
    """The recipe at ``path`` as ``{name: value}``, every key present, in its section, of its type."""
    return cls.load(path).values()


def add_recipe_overrides(parser: argparse.ArgumentParser, cls: type = Recipe) -> None:
    """One ``--KEY`` per recipe key (default None: the recipe's value), grouped by section: its type's form
    (``config.parse_flag``: a list takes ``0,1,2``, a detail table ``sigma,radius,fused_candidate,noise_k,
    channels``, a bool true/false/1/0/yes/no), its help and its choices are the key's."""
    add_flags(parser, config_sections(cls), "recipe [{section}] overrides")


def resolve_recipe(args: argparse.Namespace, path: str | Path, cls: type = Recipe) -> dict[str, Any]:
    """Fill ``args`` with the recipe at ``path``, keeping the ``--KEY`` overrides given; returns the overrides."""
    values = load_recipe(path, cls)
    overrides = {name: getattr(args, name) for name in values if getattr(args, name, None) is not None}
    for name, value in values.items():
        setattr(args, name, overrides.get(name, value))
    return overrides
