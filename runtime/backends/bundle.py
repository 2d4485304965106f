"""What the bundle-based backends and the pipeline read from a deployment bundle, and the code those
backends share (:class:`BundleBackend`: the calls of :class:`~latentfuse.runtime.backends.base.Backend` as graph
runs with feeds found by role; a backend supplies ``_run``).

:class:`latentfuse.export.bundle.Bundle` is the reader (the manifest is the one source of truth, shared with the
C++ host; graph input names are those of the graph specs in :mod:`latentfuse.export.graphs`). This subclass adds
the runtime's questions: tokenize a prompt with the bundle's sentencepiece model, the prompt cache
keyed by prompt text, the largest image the bundle supports, the engines built for this TensorRT
version and GPU, and the sampler defaults in the pipeline's terms.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.geometry import HEADS
from latentfuse.runtime.backends.base import Backend, as_f32
from latentfuse.runtime.manifest import FIDELITY_GRAPH, MANIFEST_NAME, Bundle


class RuntimeBundle(Bundle):
    # ------------------------------------------------------------------ text
    @functools.cached_property
    def _tokenizer(self):
        """The bundle's sentencepiece model (the same file the C++ host tokenizes with)."""
        from latentfuse.model.text_encoder import SpieceTokenizer

        if not self.tokenizer_path.is_file():
            raise LatentfuseError(f"{self.root}: tokenizer file {self.tokenizer_path.name} is missing")
        return SpieceTokenizer.from_file(self.tokenizer_path)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int64 [B, L], L = the longest prompt (T5 ids + EOS, 0-padded)."""
        ids, mask = self._tokenizer(list(prompts), max_length=int(self.manifest["text"]["max_length"]))
        return ids.numpy().astype(np.int64), mask.numpy().astype(np.int64)

    def prompt_cache_by_text(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """prompt text -> (embeds [1, L, d], mask [1, L]) for the canonical prompts the bundle ships."""
        by_id = self.prompt_cache()
        return {" ".join(text.split()): by_id[key] for key, text in self.prompts.items() if key in by_id}

    # ------------------------------------------------------------------ limits
    def max_image_size(self) -> tuple[int, int] | None:
        """(H, W) in pixels: the largest size the bundle's graphs were exported and verified for."""
        res = self.manifest.get("resolution") or {}
        if "max_height" in res and "max_width" in res:
            return int(res["max_height"]), int(res["max_width"])
        return None

    def work_scale(self) -> int:
        """The working scale of the exported model (``model.work_scale``; 1 in bundles that predate it)."""
        from latentfuse.model.work_scale import check_work_scale

        value = (self.manifest.get("latent") or {}).get("work_scale", 1)
        return check_work_scale(value, f"{self.root}/manifest.json latent.work_scale")

    def window(self) -> int:
        """The window of the exported model (``model.work_scale``; 0, whole images, when absent)."""
        from latentfuse.model.work_scale import check_window

        value = (self.manifest.get("latent") or {}).get("window", 0)
        return check_window(value, f"{self.root}/manifest.json latent.window")

    def detail_settings(self):
        """The model's detail path (manifest ``detail``, ``model.detail.DetailSettings``); None when absent."""
        from latentfuse.model.detail import DetailSettings

        section = self.manifest.get("detail")
        return None if section is None else DetailSettings.from_dict(section, f"{self.root}/manifest.json detail")

    # ------------------------------------------------------------------ engines
    def engine_paths(self, trt_version: str | None = None, gpu_name: str | None = None) -> dict[str, Path]:
        """Graph -> engine file, for the engines ``latentfuse build-engines`` recorded for this TensorRT
        version and GPU (an engine only deserializes on the TensorRT version and GPU it was built for)."""
        out = {}
        for name, entry in (self.manifest.get("engines") or {}).items():
            entry = entry if isinstance(entry, dict) else {"file": entry}
            if trt_version and entry.get("trt_version") not in (None, trt_version):
                continue
            gpu = entry.get("gpu")
            built_on = gpu.get("name") if isinstance(gpu, dict) else gpu
            if gpu_name and built_on not in (None, gpu_name):
                continue
            path = self.root / entry["file"]
            if path.is_file():
                out[name] = path
        return out

    def has_graph(self, name: str) -> bool:
        return name in self.manifest["graphs"]

    def dit_graph_or_none(self, head: str) -> str | None:
        try:
            return self.dit_graph(head)
        except LatentfuseError:
            return None

    # ------------------------------------------------------------------ sampler
    def sampler_defaults(self) -> dict:
        """The manifest's sampler section in :class:`latentfuse.runtime.pipeline.Pipeline`'s terms."""
        s = self.sampler
        out = {}
        if s.get("name"):
            out["sampler"] = s["name"]
        for key in ("steps", "g", "prior"):
            if s.get(key) is not None:
                out[key] = s[key]
        sigma = s.get("prior_sigma", s.get("sigma"))
        if sigma is not None:
            out["prior_sigma"] = sigma
        return out


def open_bundle(directory: str | os.PathLike) -> RuntimeBundle:
    """Open and check a bundle (every file present with its recorded size and sha256)."""
    root = Path(directory)
    if not (root / MANIFEST_NAME).is_file():
        raise LatentfuseError(f"{root} is not a deployment bundle (no manifest.json); "
                              "make one with `latentfuse export --checkpoint DIR --out BUNDLE`")
    return RuntimeBundle.open(root)


class BundleBackend(Backend):
    """A backend over a deployment bundle (``self.bundle``, a :class:`RuntimeBundle`): the model's
    working scale, window and sampler defaults come from its manifest, and the five graph calls are
    here once. A subclass runs one graph on named host arrays (:meth:`_run`) and says which graphs it
    has (:meth:`_has_graph`); inputs are named by role through the manifest (old bundles: by name)."""

    bundle: RuntimeBundle

    # ------------------------------------------------------------------ what a subclass provides
    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run ``graph`` on ``{input name: array}``; its first output as float32."""
        raise NotImplementedError

    def _has_graph(self, graph: str) -> bool:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def _available_heads(self) -> tuple[str, ...]:
        return tuple(h for h in HEADS if self._has_graph(self.bundle.dit_graph_or_none(h)))

    def _call(self, graph: str, **by_role) -> np.ndarray:
        """Run ``graph`` with inputs given by role."""
        return self._run(graph, self.bundle.graph_entry(graph).feeds(by_role))

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        return self._call("vae_encoder", image=as_f32(images, "images"))

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.bundle.tokenize(list(prompts))
        embeds = self._call("text_encoder", token_ids=ids, attention_mask=mask)
        return embeds, mask.astype(np.int64)

    @staticmethod
    def _conditions(z_a, z_b, embeds, mask) -> dict:
        """The DiT's conditioning inputs by role, checked (NaN / Inf is a clear error, not garbage out)."""
        return {"source_latent_a": as_f32(z_a, "z_a"), "source_latent_b": as_f32(z_b, "z_b"),
                "prompt_embeds": as_f32(embeds, "prompt embeddings"), "prompt_mask": np.asarray(mask, np.int64)}

    def velocity(self, z_t, t, z_a, z_b, embeds, mask) -> np.ndarray:
        self.require_head("flow")
        return self._call(self.bundle.dit_graph("flow"), noisy_latent=as_f32(z_t, "z_t"),
                          timestep=np.asarray(t, np.float32).reshape(-1), **self._conditions(z_a, z_b, embeds, mask))

    def regress(self, z_a, z_b, embeds, mask) -> np.ndarray:
        self.require_head("regression")
        return self._call(self.bundle.dit_graph("regression"), **self._conditions(z_a, z_b, embeds, mask))

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self._call("vae_decoder", latent=as_f32(latents, "latents"))

    def has_fidelity(self) -> bool:
        return self.bundle.has_fidelity() and self._has_graph(FIDELITY_GRAPH)

    def fidelity(self, image, source_a, source_b, embeds, mask) -> np.ndarray:
        if not self.has_fidelity():
            return super().fidelity(image, source_a, source_b, embeds, mask)
        return self._call(FIDELITY_GRAPH, image=as_f32(image, "decoded image"),
                          source_image_a=as_f32(source_a, "source A"), source_image_b=as_f32(source_b, "source B"),
                          prompt_embeds=as_f32(embeds, "prompt embeddings"), prompt_mask=np.asarray(mask, np.int64))

    def fidelity_halo(self) -> int:
        return self.bundle.fidelity_halo() if self.has_fidelity() else 0

    def max_image_size(self):
        return self.bundle.max_image_size()

    def work_scale(self) -> int:
        return self.bundle.work_scale()

    def window(self) -> int:
        return self.bundle.window()

    def sampler_defaults(self) -> dict:
        return self.bundle.sampler_defaults()

    def detail_settings(self):
        return self.bundle.detail_settings()
