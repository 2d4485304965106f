"""The one small interface every inference backend implements.

A backend runs the four deployed graphs (docs/design.md "Data flow") and nothing else: padding, image
I/O, the prompt cache, the noise and the sampler loop stay in :mod:`latentfuse.runtime.pipeline` and
:mod:`latentfuse.runtime.samplers`, shared by every backend. Everything crosses this interface as host numpy
arrays (float32, NCHW), so the seeded host-side noise (:mod:`latentfuse.runtime.noise`) and the sampler
arithmetic are bit-identical whichever backend runs the networks; only the network outputs differ
(within the tolerance of the backend's precision).

    encode_images(x [B,3,H,W] in [-1,1])      -> latents [B,z,H/8,W/8]   (scaled: what the DiT sees)
    encode_prompts(["...", ...])               -> (embeds [B,L,d_t] float32, mask [B,L] int64)
    velocity(z_t, t [B], z_a, z_b, embeds, mask) -> v [B,z,h,w]           (flow head, Algorithm 1)
    regress(z_a, z_b, embeds, mask)            -> fused latent [B,z,h,w]  (regression head, Eq. 8)
    decode(latents)                            -> images [B,3,H,W] in about [-1,1]
    fidelity(image, a, b, embeds, mask)        -> images [B,3,H,W]        (fidelity decoder, model.fidelity;
                                                                           only a model with one)

The model's metadata (working scale, window, sampler defaults, detail path, fidelity halo) is not a backend's:
it reaches the pipeline as one :class:`latentfuse.runtime.model_info.ModelInfo`. What a backend states besides
its graph calls are its limits (largest / smallest image, most rows per DiT call), its ``heads`` (which DiT
graphs it runs), ``synchronize`` and ``describe``.
"""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError


class Backend(abc.ABC):
    """Runs the VAE encoder/decoder, the text encoder and the DiT heads on host numpy arrays."""

    name: str = "?"

    #: heads this backend can run ("flow", "regression")
    heads: tuple[str, ...] = ()

    #: hand memory back after every graph call where the runtime can (ONNX Runtime's arenas), at some cost in
    #: time; the pipeline sets it for a pair its memory plan tiles (``Pipeline.plan_memory``)
    low_memory: bool = False

    @abc.abstractmethod
    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """[B,3,H,W] float32 in [-1,1] (H, W multiples of 16) -> scaled latents [B,z,H/8,W/8]."""

    @abc.abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prompts -> (embeddings [B,L,d_t] float32, attention mask [B,L] int64, 1 = real token)."""

    @abc.abstractmethod
    def velocity(self, z_t: np.ndarray, t: np.ndarray, z_a: np.ndarray, z_b: np.ndarray,
                 embeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Flow-head velocity v_θ(Z_t, t, Z_a, Z_b, P) (paper Eq. 11); ``t`` is [B] float32 in [0, 1]."""

    @abc.abstractmethod
    def regress(self, z_a: np.ndarray, z_b: np.ndarray, embeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Regression-head fused latent f_θ(Z_a, Z_b, P) (paper Eq. 8), one network call."""

    @abc.abstractmethod
    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents [B,z,h,w] -> images [B,3,8h,8w], about [-1,1] (the pipeline clips)."""

    def fidelity(self, image: np.ndarray, source_a: np.ndarray, source_b: np.ndarray,
                 embeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The fidelity decoder: decoded ``image`` and the sources ``source_a`` / ``source_b`` [B,3,H,W] in
        [-1,1] (H, W multiples of 16) and the prompt -> the fused images [B,3,H,W], about [-1,1]."""
        raise LatentfuseError(f"the {self.name} backend's model has no fidelity decoder")

    def synchronize(self) -> None:
        """Wait for queued device work (GPU backends), so stage timings are honest. No-op on CPU."""

    def max_image_size(self) -> tuple[int, int] | None:
        """Largest (H, W) in pixels the backend accepts (an engine / profile limit), or None."""
        return None

    def max_batch_size(self) -> int | None:
        """Most rows one DiT call takes (a TensorRT profile's maximum batch), or None for no limit; the
        pipeline's batched DiT windows are chunked to it."""
        return None

    def min_image_size(self) -> int | None:
        """Smallest padded side in pixels the backend accepts (an engine profile minimum), or None;
        the pipeline pads smaller images up to it and crops back."""
        return None

    def require_head(self, head: str) -> None:
        if head not in self.heads:
            raise LatentfuseError(
                f"the {self.name} backend has no {head!r} DiT (available: {', '.join(self.heads) or 'none'}); "
                f"use --mode {' / --mode '.join(self.heads) or 'flow'} or export the {head} head"
            )

    def describe(self) -> str:
        """One line naming the backend and where its weights come from (printed by the CLI)."""
        return self.name


class WrappedBackend(Backend):
    """A view of another backend (``inner``): every call goes through to it unless a subclass overrides
    it (the tiled view, the calibration recorder). One home for the forwarding, so a method added to
    :class:`Backend` reaches every view."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name = inner.name
        self.heads = tuple(inner.heads)

    @property
    def low_memory(self) -> bool:
        return self.inner.low_memory

    @low_memory.setter
    def low_memory(self, value: bool) -> None:  # the wrapped backend is the one that holds the memory
        self.inner.low_memory = value

    def encode_images(self, images):
        return self.inner.encode_images(images)

    def encode_prompts(self, prompts):
        return self.inner.encode_prompts(prompts)

    def velocity(self, z_t, t, z_a, z_b, embeds, mask):
        return self.inner.velocity(z_t, t, z_a, z_b, embeds, mask)

    def regress(self, z_a, z_b, embeds, mask):
        return self.inner.regress(z_a, z_b, embeds, mask)

    def decode(self, latents):
        return self.inner.decode(latents)

    def fidelity(self, image, source_a, source_b, embeds, mask):
        return self.inner.fidelity(image, source_a, source_b, embeds, mask)

    def synchronize(self) -> None:
        self.inner.synchronize()

    def max_image_size(self):
        return self.inner.max_image_size()

    def max_batch_size(self):
        return self.inner.max_batch_size()

    def min_image_size(self):
        return self.inner.min_image_size()

    def describe(self) -> str:
        return self.inner.describe()


def as_f32(x: np.ndarray, what: str) -> np.ndarray:
    """Contiguous float32 view of ``x``; a clear error for NaN/Inf, which no graph should ever see."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise LatentfuseError(f"{what} contains NaN or Inf values (shape {arr.shape})")
    return arr
