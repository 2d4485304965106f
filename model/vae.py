"""The image tokenizer: a KL-VAE with f=8 and z=16 (MMAIF section 3.2, "Image tokenizers").

``E(X) = Z`` maps an image ``X ∈ R^{H×W×3}`` to latents ``Z ∈ R^{h×w×z}`` with ``H = h·f``, f=8 and
z=16; ``D(Z)`` maps back. The paper compares Flux KL-VAE, an asymmetric KL-VAE and Cosmos VAE, all at
f=8, z=16. This wraps ``diffusers.AutoencoderKL`` (the Flux / SD3 VAE architecture) and applies the
latent normalisation those models ship in their config, as diffusers' SD3 / Flux pipelines do::

    z = (mean(E(x)) - shift_factor) · scaling_factor          (encode)
    x = D(z / scaling_factor + shift_factor)                  (decode)

Presets are data (:data:`VAE_PRESETS`): ``tiny`` (about 2M parameters, random weights, tests and the
bundled default) and ``paper`` (the Flux KL-VAE architecture with its scale/shift, random weights:
sizing and export); real weights come from :meth:`LatentVAE.from_pretrained` on a local diffusers
folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, e.g. an SD3 / Flux ``vae/`` folder).

Images are float tensors ``(B, 3, H, W)`` in [-1, 1] with H, W multiples of 8 (the pipeline pads to
16, the DiT patch size in pixels); gray images are repeated to 3 channels (:func:`to_vae_input`).
:meth:`LatentVAE.encode_graph` / :meth:`LatentVAE.decode_graph` are the plain tensor functions the
``vae_encoder`` / ``vae_decoder`` ONNX graphs are exported from.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from latentfuse.model.atomic import atomic_dir
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.geometry import LATENT_FACTOR

DOWNSAMPLE_FACTOR = LATENT_FACTOR  # model.geometry: the f=8 every graph assumes
RANGE_TOLERANCE = 0.02  # inputs may overshoot [-1, 1] by resampling round-off, not by a wrong convention

_FOUR_BLOCKS = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,   # three downsamplers -> f = 2**3 = 8
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "act_fn": "silu",
    "latent_channels": 16,
    "use_quant_conv": False,                          # Flux / SD3 16-channel VAEs have no quant convs
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}

#: diffusers ``AutoencoderKL`` configs. ``paper``: Flux KL-VAE (black-forest-labs/FLUX.1 ``vae/config.json``).
VAE_PRESETS: dict[str, dict] = {
    "tiny": {
        **_FOUR_BLOCKS,
        "block_out_channels": [32, 48, 64, 96],
        "layers_per_block": 1,
        "norm_num_groups": 16,                         # divides every block width
        "sample_size": 128,
        # Flux's normalisation as placeholders: re-estimate with estimate_scaling() for trained weights.
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
    },
    "paper": {
        **_FOUR_BLOCKS,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
    },
}


def available_vae_presets() -> list[str]:
    return sorted(VAE_PRESETS)


def to_vae_input(image01: torch.Tensor) -> torch.Tensor:
    """``(B, 1 or 3, H, W)`` float in [0, 1] -> ``(B, 3, H, W)`` in [-1, 1] (gray repeated to RGB)."""
    if image01.ndim != 4 or image01.shape[1] not in (1, 3):
        raise LatentfuseError(f"expected a (B, 1 or 3, H, W) image tensor, got shape {tuple(image01.shape)}")
    if image01.shape[1] == 1:
        image01 = image01.expand(-1, 3, -1, -1)
    return image01 * 2.0 - 1.0


def from_vae_output(images: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] -> [0, 1]."""
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


class LatentVAE(nn.Module):
    """KL-VAE wrapper: normalised latents in, [-1, 1] images out (and back)."""

    def __init__(self, vae):
        super().__init__()
        from diffusers import AutoencoderKL

        if not isinstance(vae, AutoencoderKL):
            raise LatentfuseError(f"LatentVAE wraps a diffusers AutoencoderKL, got {type(vae).__name__}")
        cfg = vae.config
        if cfg.in_channels != 3 or cfg.out_channels != 3:
            raise LatentfuseError(f"the VAE must map 3-channel images, its config has in/out channels "
                                  f"{cfg.in_channels}/{cfg.out_channels}")
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        if factor != DOWNSAMPLE_FACTOR:
            raise LatentfuseError(f"the VAE downsamples by {factor} ({len(cfg.block_out_channels)} blocks); "
                                  f"latentfuse needs f={DOWNSAMPLE_FACTOR} (4 blocks)")
        self.vae = vae

    # ----------------------------------------------------------------- construction and storage
    @classmethod
    def from_config(cls, config: dict) -> "LatentVAE":
        from diffusers import AutoencoderKL

        try:
            return cls(AutoencoderKL(**config))
        except TypeError as err:  # unknown / missing keys
            raise LatentfuseError(f"invalid AutoencoderKL config: {err}") from None

    @classmethod
    def from_preset(cls, name: str = "tiny", seed: int | None = None, **overrides) -> "LatentVAE":
        """Randomly initialised VAE of a preset; ``seed`` makes the weights reproducible
        without touching the global RNG (``None``: draw from the global RNG)."""
        if name not in VAE_PRESETS:
            raise LatentfuseError(f"unknown VAE preset {name!r}; available: {', '.join(available_vae_presets())}")
        config = {**copy.deepcopy(VAE_PRESETS[name]), **overrides}
        if seed is None:
            return cls.from_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls.from_config(config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dtype: torch.dtype = torch.float32) -> "LatentVAE":
        """Load a diffusers VAE folder (``config.json`` + weights), or a pipeline folder with ``vae/``."""
        from diffusers import AutoencoderKL

        directory = Path(directory)
        if not (directory / "config.json").is_file() and (directory / "vae" / "config.json").is_file():
            directory = directory / "vae"
        if not (directory / "config.json").is_file():
            raise LatentfuseError(f"{directory} is not a diffusers VAE folder (no config.json)")
        if not any(directory.glob("diffusion_pytorch_model*.safetensors")) and not any(directory.glob("*.bin")):
            raise LatentfuseError(f"{directory} has a config.json but no diffusion_pytorch_model.safetensors")
        try:
            vae = AutoencoderKL.from_pretrained(directory, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise LatentfuseError(f"cannot load the VAE from {directory}: {err}") from None
        return cls(vae)

    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the diffusers layout (``config.json`` + safetensors) atomically."""
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise LatentfuseError(f"{directory} already exists (pass overwrite=True to replace it)")
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            self.vae.save_pretrained(tmp, safe_serialization=True)
            # diffusers records the folder a model was loaded from: a local path that must not ship
            config = json.loads((tmp / "config.json").read_text())
            if config.pop("_name_or_path", None) is not None:
                (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return directory

    # ----------------------------------------------------------------- properties
    @property
    def config(self):
        return self.vae.config

    @property
    def downsample_factor(self) -> int:
        return DOWNSAMPLE_FACTOR

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        shift = self.vae.config.shift_factor
        return 0.0 if shift is None else float(shift)

    def set_scaling(self, scaling_factor: float, shift_factor: float) -> None:
        """Replace the latent normalisation (stored in the config, so it is saved with the weights)."""
        if not scaling_factor > 0:
            raise LatentfuseError(f"scaling_factor must be positive, got {scaling_factor}")
        self.vae.register_to_config(scaling_factor=float(scaling_factor), shift_factor=float(shift_factor))

    @torch.no_grad()
    def estimate_scaling(self, images: torch.Tensor) -> tuple[float, float]:
        """``(scaling_factor, shift_factor)`` that give unit-variance, zero-mean latents on ``images``
        (the SD3 / Flux recipe: shift = mean, scale = 1 / std of the posterior means)."""
        self._check_images(images)
        mean = self._posterior(images).mean.double()
        return float(1.0 / mean.std()), float(mean.mean())

    # ----------------------------------------------------------------- validation
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise LatentfuseError(f"expected a torch.Tensor of images, got {type(images).__name__}")
        if images.ndim != 4:
            raise LatentfuseError(f"expected images shaped (B, 3, H, W), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise LatentfuseError(f"expected float images in [-1, 1], got dtype {images.dtype}")
        b, c, h, w = images.shape
        if c != 3:
            raise LatentfuseError(f"expected 3-channel images (repeat gray ones, see to_vae_input), "
                                  f"got {c} channels in shape {tuple(images.shape)}")
        f = self.downsample_factor
        if h % f or w % f or h == 0 or w == 0:
            raise LatentfuseError(f"image height and width must be positive multiples of {f}, got {h}x{w} "
                                  f"(pad the image first)")
        if images.numel():
            lo, hi = float(images.min()), float(images.max())
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise LatentfuseError("images contain NaN or Inf values")
            if lo < -1.0 - RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
                raise LatentfuseError(f"image values span [{lo:.4g}, {hi:.4g}]; the VAE expects [-1, 1] "
                                      f"(map [0, 1] images with to_vae_input)")

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise LatentfuseError(f"expected latents shaped (B, {self.latent_channels}, h, w), got {shape}")
        if not latents.is_floating_point():
            raise LatentfuseError(f"expected float latents, got dtype {latents.dtype}")
        if latents.shape[1] != self.latent_channels:
            raise LatentfuseError(f"expected {self.latent_channels} latent channels, got shape {tuple(latents.shape)}")

    # ----------------------------------------------------------------- encode / decode
    def _moments(self, images: torch.Tensor) -> torch.Tensor:
        # Encoder (+ quant conv) -> [mean, logvar] stacked on channels; no tiling branch (graph-safe).
        h = self.vae.encoder(images.to(self.vae.dtype))
        if self.vae.quant_conv is not None:
            h = self.vae.quant_conv(h)
        return h

    def _posterior(self, images: torch.Tensor):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(self._moments(images))

    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] -> normalised latents ``(B, 16, H/8, W/8)``.

        Deterministic by default (the posterior mean); ``sample=True`` draws ``mean + std·ε`` for
        training, seeded by ``generator``.
        """
        self._check_images(images)
        if sample:
            raw = self._posterior(images).sample(generator=generator)
            return (raw - self.shift_factor) * self.scaling_factor
        return self.encode_graph(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``(B, 16, h, w)`` -> images ``(B, 3, 8h, 8w)`` clamped to [-1, 1]."""
        self._check_latents(latents)
        return self.decode_graph(latents)

    def encode_graph(self, images: torch.Tensor) -> torch.Tensor:
        """Unchecked encode (posterior mean, normalised): the ``vae_encoder`` graph body."""
        mean = self._moments(images)[:, : self.latent_channels]
        return (mean - self.shift_factor) * self.scaling_factor

    def decode_graph(self, latents: torch.Tensor) -> torch.Tensor:
        """Unchecked decode, output clamped to [-1, 1]: the ``vae_decoder`` graph body."""
        z = latents.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        return self.vae.decoder(z).clamp(-1.0, 1.0)

    def encoder_graph(self) -> nn.Module:
        """``nn.Module`` whose forward is :meth:`encode_graph` (what ``torch.onnx.export`` takes)."""
        return _GraphModule(self, "encode_graph")

    def decoder_graph(self) -> nn.Module:
        """``nn.Module`` whose forward is :meth:`decode_graph`."""
        return _GraphModule(self, "decode_graph")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(images))`` (posterior mean)."""
        return self.decode(self.encode(images))


class _GraphModule(nn.Module):
    def __init__(self, vae: LatentVAE, method: str):
        super().__init__()
        self.vae = vae
        self.method = method
        self.train(vae.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.vae, self.method)(x)
