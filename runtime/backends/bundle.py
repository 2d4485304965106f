"""The code the bundle-based backends share (:class:`BundleBackend`: the calls of
:class:`~latentfuse.runtime.backends.base.Backend` as graph runs with feeds found by role; a backend supplies
``_run``). The bundle is read by :class:`latentfuse.runtime.manifest.Bundle`, the one reader (the manifest is the
one source of truth, shared with the C++ host).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from latentfuse.model.geometry import HEADS
from latentfuse.runtime.backends.base import Backend, as_f32
from latentfuse.runtime.manifest import FIDELITY_GRAPH, Bundle


class BundleBackend(Backend):
    """A backend over a deployment bundle (``self.bundle``, a :class:`~latentfuse.runtime.manifest.Bundle`): the
    graph calls are here once. A subclass runs one graph on named host arrays (:meth:`_run`) and says which graphs it
    has (:meth:`_has_graph`); inputs are named by role through the manifest (old bundles: by name)."""

    bundle: Bundle

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

    def fidelity(self, image, source_a, source_b, embeds, mask) -> np.ndarray:
        if not (self.bundle.has_fidelity() and self._has_graph(FIDELITY_GRAPH)):
            return super().fidelity(image, source_a, source_b, embeds, mask)
        return self._call(FIDELITY_GRAPH, image=as_f32(image, "decoded image"),
                          source_image_a=as_f32(source_a, "source A"), source_image_b=as_f32(source_b, "source B"),
                          prompt_embeds=as_f32(embeds, "prompt embeddings"), prompt_mask=np.asarray(mask, np.int64))

    def max_image_size(self):
        return self.bundle.max_image_size()
