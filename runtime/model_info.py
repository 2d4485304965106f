"""What the pipeline knows about its model besides its graphs: one frozen :class:`ModelInfo`.

A backend (:mod:`latentfuse.runtime.backends`) only runs graphs; the model's metadata reaches the
:class:`~latentfuse.runtime.pipeline.Pipeline` in this one object, read from where the model lives:

    ModelInfo.from_model_index(model_dir or FusionComponents)   model_index.json and the components' configs
    ModelInfo.from_manifest(bundle)                              a bundle's manifest.json (runtime.manifest.Bundle)

Fields: the DiT ``heads``; the working scale ``work_scale`` and ``window`` (``model.work_scale``); the
``sampler_defaults`` in the pipeline's terms (``prior`` / ``prior_sigma`` of the flow DiT, the ``start`` /
``steps`` a model declares in model_index.json "sampler"; a bundle's sampler section also gives ``sampler`` /
``g``); the pixel-space ``detail`` path (``DetailSettings``, or None);
whether the model has the fidelity decoder (``has_fidelity``, ``model.fidelity``) and the rows of context a
strip of it needs on each side (``fidelity_halo``, a multiple of 16 px; 0 without one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from latentfuse.model.geometry import HEADS
from latentfuse.model.work_scale import check_window, check_work_scale
from latentfuse.runtime.manifest import MANIFEST_NAME, Bundle


@dataclass(frozen=True)
class ModelInfo:
    heads: tuple[str, ...] = ()
    work_scale: int = 1
    window: int = 0
    sampler_defaults: Mapping[str, Any] = field(default_factory=dict)
    detail: Any = None  # model.image_processing.detail.DetailSettings, or None: no detail path
    has_fidelity: bool = False
    fidelity_halo: int = 0

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "sampler_defaults", MappingProxyType(dict(self.sampler_defaults)))

    # ------------------------------------------------------------------ a model directory
    @classmethod
    def from_model_index(cls, model) -> "ModelInfo":
        """The info of a model directory (its ``model_index.json`` and component configs, no weights read) or of
        loaded :class:`latentfuse.model.components.FusionComponents`."""
        if isinstance(model, (str, os.PathLike)):
            return cls._from_directory(Path(model))
        from latentfuse.runtime.backends.tiled import fidelity_halo

        flow = model.dits.get("flow")
        return cls(heads=tuple(h for h in HEADS if h in model.dits), work_scale=model.work_scale,
                   window=model.window,
                   sampler_defaults={**_prior_of(flow.config if flow is not None else None), **model.sampler},
                   detail=model.detail, has_fidelity=model.fidelity is not None,
                   fidelity_halo=0 if model.fidelity is None else fidelity_halo(model.fidelity.config))

    @classmethod
    def _from_directory(cls, directory: Path) -> "ModelInfo":
        import json

        from latentfuse.model.components import read_index
        from latentfuse.model.config import DiTConfig
        from latentfuse.model.dit import CONFIG_NAME as DIT_CONFIG
        from latentfuse.model.fidelity import CONFIG_NAME, FidelityConfig
        from latentfuse.runtime.backends.tiled import fidelity_halo

        index = read_index(directory)
        heads = tuple(h for h in HEADS if f"dit_{h}" in index)
        flow = DiTConfig.from_json(directory / index["dit_flow"] / DIT_CONFIG) if "dit_flow" in index else None
        halo = 0
        if "fidelity" in index:
            path = directory / index["fidelity"] / CONFIG_NAME
            halo = fidelity_halo(FidelityConfig.from_dict(json.loads(path.read_text()), str(path)))
        return cls(heads=heads, work_scale=index["work_scale"], window=index["window"],
                   sampler_defaults={**_prior_of(flow), **index["sampler"]}, detail=index["detail"],
                   has_fidelity="fidelity" in index,
                   fidelity_halo=halo)

    # ------------------------------------------------------------------ a bundle
    @classmethod
    def from_manifest(cls, bundle: Bundle | str | os.PathLike) -> "ModelInfo":
        """The info a bundle's manifest records (a :class:`~latentfuse.runtime.manifest.Bundle`, or its directory)."""
        from latentfuse.model.image_processing.detail import DetailSettings

        if not isinstance(bundle, Bundle):
            bundle = Bundle.open(bundle, verify_hashes=False)
        where = f"{bundle.root}/{MANIFEST_NAME}"
        latent = bundle.manifest.get("latent") or {}
        section = bundle.manifest.get("detail")
        has_fidelity = bundle.has_fidelity()
        return cls(heads=tuple(h for h in HEADS if bundle.dit_graph_or_none(h) is not None),
                   work_scale=check_work_scale(latent.get("work_scale", 1), f"{where} latent.work_scale"),
                   window=check_window(latent.get("window", 0), f"{where} latent.window"),
                   sampler_defaults=_sampler_section(bundle.sampler),
                   detail=None if section is None else DetailSettings.from_dict(section, f"{where} detail"),
                   has_fidelity=has_fidelity, fidelity_halo=bundle.fidelity_halo() if has_fidelity else 0)

    # ------------------------------------------------------------------ a backend's own model
    @classmethod
    def of(cls, backend) -> "ModelInfo":
        """The info of the model ``backend`` was loaded from: its ``components`` (torch) or its ``bundle``
        (onnxruntime, tensorrt), through any views of it (``inner``); a backend with neither: the defaults
        and its heads. What ``Pipeline(backend)`` uses when it is given no info."""
        view = backend
        while view is not None:
            if getattr(view, "components", None) is not None:
                return cls.from_model_index(view.components)
            if isinstance(getattr(view, "bundle", None), Bundle):
                return cls.from_manifest(view.bundle)
            view = getattr(view, "inner", None)
        return cls(heads=tuple(getattr(backend, "heads", ())))


def _prior_of(flow_config) -> dict:
    """The flow DiT's prior in the pipeline's terms (``prior``, ``prior_sigma``); {} without a flow DiT."""
    return {} if flow_config is None else {"prior": flow_config.prior, "prior_sigma": flow_config.prior_sigma}


def _sampler_section(section: Mapping) -> dict:
    """A manifest's ``sampler`` section in :class:`latentfuse.runtime.pipeline.Pipeline`'s terms."""
    out = {}
    if section.get("name"):
        out["sampler"] = section["name"]
    for key in ("steps", "g", "prior", "start"):
        if section.get(key) is not None:
            out[key] = section[key]
    sigma = section.get("prior_sigma", section.get("sigma"))
    if sigma is not None:
        out["prior_sigma"] = sigma
    return out


__all__ = ["ModelInfo"]
