"""The reference backend: the PyTorch modules of a model directory, eager (optionally torch.compile'd).

Loads :class:`latentfuse.model.components.FusionComponents` (``--checkpoint DIR``: VAE, T5 prompt encoder and
the flow / regression MoE-DiTs) and runs each on the host arrays of the
:class:`~latentfuse.runtime.backends.base.Backend` interface. It is what the exported graphs are verified
against, so it does nothing the graphs do not: the VAE graphs are ``LatentVAE.encode_graph`` /
``decode_graph``, the DiT is ``MoEDiT.forward``.

Options: ``device`` (default cuda when torch sees a GPU), ``dtype`` of the DiTs (float32 / float16 /
bfloat16; the VAE stays float32), ``compile=True`` (``torch.compile(dynamic=True)`` of the DiTs),
``threads`` (``torch.set_num_threads``).
Like ``nn.Module.to``, moving to the device / dtype happens in place on the given components.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.backends.base import Backend, as_f32


def quiet_loaders() -> None:
    """No per-file progress bars / accelerate hints from transformers and diffusers while loading:
    a fuse call prints one line per image, not library chatter."""
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
        dlog.set_verbosity_error()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, components, device: str | None = None, compile: bool = False,
                 dtype: str = "float32", source: str = "", threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))  # process-wide: torch has no per-module thread pool

        self._torch = torch
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as err:
            raise LatentfuseError(f"invalid torch device {device!r}: {err}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LatentfuseError("--device cuda was asked for but torch sees no CUDA GPU")
        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if dtype not in dtypes:
            raise LatentfuseError(f"unknown torch dtype {dtype!r}: choose one of {', '.join(dtypes)}")
        # The VAE stays float32: public pipelines keep it there because fp16 VAEs give NaN/black images.
        self.dtype = dtypes[dtype]
        self.components = components
        self.vae = components.vae.to(self.device, torch.float32).eval()
        self.text_encoder = components.text_encoder.to(self.device).eval()
        self.dits = {head: dit.to(self.device, self.dtype).eval() for head, dit in components.dits.items()}
        self.heads = tuple(h for h in ("flow", "regression") if h in self.dits)
        self._fidelity = None if components.fidelity is None else components.fidelity.to(self.device).eval()
        self._source = source
        self._compiled = bool(compile)
        if compile:
            # dynamic=True: one graph for every latent size instead of a recompile per resolution.
            self._run = {h: torch.compile(d, dynamic=True) for h, d in self.dits.items()}
        else:
            self._run = dict(self.dits)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, **options) -> "TorchBackend":
        from latentfuse.model.components import FusionComponents

        quiet_loaders()
        return cls(FusionComponents.from_pretrained(directory), source=str(directory), **options)

    # ------------------------------------------------------------------ helpers
    def _tensor(self, x: np.ndarray, what: str, dtype=None):
        t = self._torch.from_numpy(as_f32(x, what)).to(self.device)
        return t if dtype is None else t.to(dtype)

    @staticmethod
    def _numpy(t) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    # ------------------------------------------------------------------ interface
    def encode_images(self, images: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._numpy(self.vae.encode(self._tensor(images, "images")))

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.inference_mode():
            embeds, mask = self.text_encoder.encode(list(prompts))
        return self._numpy(embeds), mask.detach().cpu().numpy().astype(np.int64)

    def _dit(self, head: str, z_a, z_b, embeds, mask, z_t=None, t=None) -> np.ndarray:
        self.require_head(head)
        torch = self._torch
        with torch.inference_mode():
            kwargs = dict(
                z_a=self._tensor(z_a, "z_a", self.dtype),
                z_b=self._tensor(z_b, "z_b", self.dtype),
                prompt_embeds=self._tensor(embeds, "prompt embeddings", self.dtype),
                prompt_mask=torch.from_numpy(np.ascontiguousarray(mask)).to(self.device),
            )
            if head == "flow":
                kwargs["z_t"] = self._tensor(z_t, "z_t", self.dtype)
                kwargs["t"] = self._tensor(np.asarray(t, np.float32).reshape(-1), "t", self.dtype)
            return self._numpy(self._run[head](**kwargs))

    def velocity(self, z_t, t, z_a, z_b, embeds, mask) -> np.ndarray:
        return self._dit("flow", z_a, z_b, embeds, mask, z_t=z_t, t=t)

    def regress(self, z_a, z_b, embeds, mask) -> np.ndarray:
        return self._dit("regression", z_a, z_b, embeds, mask)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._numpy(self.vae.decode(self._tensor(latents, "latents")))

    def fidelity(self, image, source_a, source_b, embeds, mask) -> np.ndarray:
        if self._fidelity is None:
            return super().fidelity(image, source_a, source_b, embeds, mask)
        with self._torch.inference_mode():
            return self._numpy(self._fidelity(
                self._tensor(image, "decoded image"), self._tensor(source_a, "source A"),
                self._tensor(source_b, "source B"), self._tensor(embeds, "prompt embeddings"),
                self._torch.from_numpy(np.ascontiguousarray(mask)).to(self.device)))

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        extra = ", torch.compile" if self._compiled else ""
        src = f" from {self._source}" if self._source else ""
        return f"torch ({self.device}, {str(self.dtype).replace('torch.', '')}{extra}){src}"
