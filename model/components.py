"""The set of models one fusion pipeline needs, saved together as one *model directory*.

    <dir>/model_index.json      {"vae": "vae", "text_encoder": "text_encoder", "dit_flow": ..., ...,
                                 "work_scale": k, "window": w,   (``model.work_scale``; 1 / 0 when absent)
                                 "detail": {...},                (``DetailSettings`` of
                                                                  ``model.image_processing.detail``; optional)
                                 "sampler": {"start": t0, "steps": n}}  (the flow head's own sampling defaults,
                                                                  ``model.flow.check_model_sampler``; optional)
    <dir>/vae/                  LatentVAE.save_pretrained (diffusers AutoencoderKL layout)
    <dir>/text_encoder/         PromptEncoder.save_pretrained (transformers T5 layout + spiece.model)
    <dir>/dit_flow/             MoEDiT.save_pretrained (flow head), optional
    <dir>/dit_regression/       MoEDiT.save_pretrained (regression head), optional
    <dir>/fidelity/             FidelityDecoder.save_pretrained (``model.fidelity``), optional

This is what ``--checkpoint DIR`` means for export and the runtime, and what training writes; like a
diffusers pipeline folder, each component knows nothing of the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentfuse.model.atomic import atomic_dir
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.flow import check_model_sampler
from latentfuse.model.geometry import HEADS
from latentfuse.model.image_processing.detail import DetailSettings
from latentfuse.model.work_scale import check_window, check_work_scale

INDEX_NAME = "model_index.json"
DEFAULT_MODEL_DIR = Path(__file__).with_name("weights") / "default"


def read_index(directory: str | Path) -> dict:
    """The checked ``model_index.json`` of a model directory, ``work_scale`` and ``window`` filled in."""
    index_path = Path(directory) / INDEX_NAME
    if not index_path.is_file():
        raise LatentfuseError(f"{directory} is not a latentfuse model directory (no {INDEX_NAME})")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise LatentfuseError(f"{index_path} is not valid JSON: {err}") from None
    if not isinstance(index, dict):
        raise LatentfuseError(f"{index_path} must hold a JSON object")
    for key in ("vae", "text_encoder"):
        if key not in index:
            raise LatentfuseError(f"{index_path} lacks the {key!r} entry")
    detail = index.get("detail")
    heads = [h for h in HEADS if f"dit_{h}" in index]
    return {**index, "work_scale": check_work_scale(index.get("work_scale", 1), f"{index_path}: work_scale"),
            "window": check_window(index.get("window", 0), f"{index_path}: window"),
            "detail": None if detail is None else DetailSettings.from_dict(detail, f"{index_path}: detail"),
            "sampler": check_model_sampler(index.get("sampler", {}), heads, f"{index_path}: sampler")}


@dataclass
class FusionComponents:
    vae: "torch.nn.Module"
    text_encoder: "torch.nn.Module"
    dits: dict  # head name -> MoEDiT
    work_scale: int = 1  # the pair is enlarged k times before the VAE (model.work_scale)
    window: int = 0  # networks run on windows of at most this many enlarged pixels (0: whole images)
    detail: DetailSettings | None = None  # the pixel-space detail path after decoding (model.image_processing.detail)
    fidelity: "torch.nn.Module | None" = None  # the learned fidelity decoder after the VAE (model.fidelity)
    sampler: dict = field(default_factory=dict)  # the flow head's own sampling defaults (model.flow.MODEL_SAMPLER_KEYS)

    def __post_init__(self):
        self.work_scale = check_work_scale(self.work_scale)
        self.window = check_window(self.window)
        self.sampler = check_model_sampler(self.sampler, list(self.dits), "the model's sampler defaults")

    def dit(self, head: str):
        if head not in self.dits:
            raise LatentfuseError(f"this model has no {head!r} DiT; available heads: {', '.join(sorted(self.dits)) or 'none'}")
        return self.dits[head]

    @classmethod
    def from_preset(cls, preset: str = "tiny", heads=HEADS, seed: int = 0, fidelity: bool = False) -> "FusionComponents":
        """Randomly initialised components of a preset (tests, benchmarks, training from scratch); ``fidelity``:
        with a fidelity decoder (``model.fidelity``, default widths, ``text_dim`` the text encoder's width),
        freshly initialised, i.e. the identity until trained or perturbed."""
        from latentfuse.model.config import DiTConfig
        from latentfuse.model.dit import MoEDiT
        from latentfuse.model.text_encoder import PromptEncoder
        from latentfuse.model.vae import LatentVAE

        torch.manual_seed(seed)
        vae = LatentVAE.from_preset(preset)
        text_encoder = PromptEncoder.from_preset(preset)
        dits = {}
        for head in heads:
            cfg = DiTConfig.from_preset(preset, head=head, text_dim=text_encoder.hidden_size,
                                        latent_channels=vae.latent_channels)
            dits[head] = MoEDiT(cfg)
        decoder = None
        if fidelity:
            from latentfuse.model.fidelity import FidelityConfig, FidelityDecoder

            decoder = FidelityDecoder(FidelityConfig(text_dim=int(text_encoder.hidden_size))).eval()
        return cls(vae.eval(), text_encoder.eval(), {h: d.eval() for h, d in dits.items()}, fidelity=decoder)

    @classmethod
    def from_pretrained(cls, directory: str | Path = DEFAULT_MODEL_DIR) -> "FusionComponents":
        from latentfuse.model.dit import MoEDiT
        from latentfuse.model.text_encoder import PromptEncoder
        from latentfuse.model.vae import LatentVAE

        directory = Path(directory)
        index = read_index(directory)
        work_scale, window = index["work_scale"], index["window"]
        dits = {h: MoEDiT.from_pretrained(directory / index[f"dit_{h}"]).eval() for h in HEADS if f"dit_{h}" in index}
        if not dits:
            raise LatentfuseError(f"{directory / INDEX_NAME} names no DiT (dit_flow / dit_regression)")
        vae = LatentVAE.from_pretrained(directory / index["vae"]).eval()
        text_encoder = PromptEncoder.from_pretrained(directory / index["text_encoder"]).eval()
        fidelity = None
        if "fidelity" in index:
            from latentfuse.model.fidelity import FidelityDecoder

            fidelity = FidelityDecoder.from_pretrained(directory / index["fidelity"]).eval()
        return cls(vae, text_encoder, dits, work_scale, window, index["detail"], fidelity, index["sampler"])

    def save_pretrained(self, directory: str | Path, overwrite: bool = True) -> Path:
        directory = Path(directory)
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            index = {"vae": "vae", "text_encoder": "text_encoder"}
            self.vae.save_pretrained(tmp / "vae")
            self.text_encoder.save_pretrained(tmp / "text_encoder")
            for head, dit in self.dits.items():
                dit.save_pretrained(tmp / f"dit_{head}")
                index[f"dit_{head}"] = f"dit_{head}"
            if self.fidelity is not None:
                self.fidelity.save_pretrained(tmp / "fidelity")
                index["fidelity"] = "fidelity"
            if self.work_scale != 1:
                index["work_scale"] = self.work_scale
            if self.window:
                index["window"] = self.window
            if self.detail is not None:
                index["detail"] = self.detail.to_dict()
            if self.sampler:
                index["sampler"] = dict(self.sampler)
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return directory
