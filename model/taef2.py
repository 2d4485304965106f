"""TAEF2: the tiny autoencoder Ollin Boer Bohan distilled from the FLUX.2 VAE (github madebyollin/taesd,
MIT licence), written here from the layout of its published weights.

f = 8, 32 latent channels, width 64 everywhere, plain 3x3 convolutions (padding 1) and ReLU, no attention::

    Block(x)    = ReLU(conv3(ReLU(conv3(ReLU(conv3(x'))))) + x'),   x' = x + pool(x) if the block has a
                  global-context branch (pool = 1x1 conv 64->256, no bias; GroupNorm(4, 256); ReLU;
                  1x1 conv 256->64, no bias), else x' = x
    encoder     conv3(3->64), Block,
                3 x [conv3 stride 2 (no bias), Block, Block, Block]   (the last three blocks: with pool)
                conv3(64->32)
    decoder     3·tanh(z/3), conv3(32->64), ReLU,
                3 x [Block, Block, Block, nearest 2x upsample, conv3 (no bias)]   (the first three: pool)
                Block, conv3(64->3)

The module indices are those of the published ``nn.Sequential`` (``<index>.conv.<k>``, ``<index>.pool.<k>``),
so the safetensors files load as they are: encoder 1,338,528 and decoder 1,338,499 parameters.
Images are in [0, 1] (not [-1, 1]); raw latents lie roughly in [-3, 3].

:class:`TAEF2` speaks the convention of :class:`latentfuse.model.vae.LatentVAE` (images in [-1, 1], latents
``(z_raw - shift) · scale``), so a model can use it in place of the KL-VAE; ``encode01`` / ``decode01``
are the raw published functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.geometry import LATENT_FACTOR

LATENT_CHANNELS = 32
WIDTH = 64
DOWNSAMPLE_FACTOR = LATENT_FACTOR  # model.geometry: the f=8 every graph assumes
ENCODER_FILE = "taef2_encoder.safetensors"
DECODER_FILE = "taef2_decoder.safetensors"
ENCODER_PARAMETERS = 1_338_528
DECODER_PARAMETERS = 1_338_499


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """3·tanh(z/3): the decoder's soft clamp of raw latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3.0) * 3.0


class Block(nn.Module):
    """Residual block of three 3x3 convs, optionally preceded by a global-context branch (``pool``)."""

    def __init__(self, n_in: int, n_out: int, global_context: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if global_context:
            wide = 4 * n_in
            self.pool = nn.Sequential(nn.Conv2d(n_in, wide, 1, bias=False), nn.GroupNorm(4, wide), nn.ReLU(),
                                      nn.Conv2d(wide, n_in, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(latent_channels: int = LATENT_CHANNELS, width: int = WIDTH) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, width), Block(width, width)]
    for level in range(3):
        gc = level == 2  # the lowest resolution
        layers += [_conv(width, width, stride=2, bias=False)] + [Block(width, width, gc) for _ in range(3)]
    layers.append(_conv(width, latent_channels))
    return nn.Sequential(*layers)


def build_decoder(latent_channels: int = LATENT_CHANNELS, width: int = WIDTH) -> nn.Sequential:
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, width), nn.ReLU()]
    for level in range(3):
        gc = level == 0  # the lowest resolution
        layers += [Block(width, width, gc) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
    layers += [Block(width, width), _conv(width, 3)]
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _load_state(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise LatentfuseError(f"TAEF2 weights not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise LatentfuseError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise LatentfuseError(f"{path}: keys do not match the TAEF2 layout (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise LatentfuseError(f"{path}: {key} has shape {tuple(value.shape)}, TAEF2 expects {tuple(own[key].shape)}")
    module.load_state_dict({k: v.float() for k, v in state.items()})


class TAEF2(nn.Module):
    """Encoder + decoder; ``encode`` / ``decode`` in the convention of :class:`latentfuse.model.vae.LatentVAE`."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, scaling_factor: float = 1.0,
                 shift_factor: float = 0.0):
        super().__init__()
        self.encoder = build_encoder(latent_channels)
        self.decoder = build_decoder(latent_channels)
        self._latent_channels = int(latent_channels)
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dtype: torch.dtype = torch.float32) -> "TAEF2":
        """Load ``taef2_encoder.safetensors`` + ``taef2_decoder.safetensors`` from a local folder."""
        directory = Path(directory)
        if not directory.is_dir():
            raise LatentfuseError(f"TAEF2 folder not found: {directory}")
        model = cls()
        _load_state(model.encoder, directory / ENCODER_FILE)
        _load_state(model.decoder, directory / DECODER_FILE)
        return model.to(dtype).eval()

    @property
    def latent_channels(self) -> int:
        return self._latent_channels

    @property
    def downsample_factor(self) -> int:
        return DOWNSAMPLE_FACTOR

    def set_scaling(self, scaling_factor: float, shift_factor: float) -> None:
        if not scaling_factor > 0:
            raise LatentfuseError(f"scaling_factor must be positive, got {scaling_factor}")
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor)

    def _check_images(self, images: torch.Tensor, lo: float, hi: float) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise LatentfuseError(f"TAEF2 expects images shaped (B, 3, H, W), got {shape}")
        h, w = images.shape[-2:]
        if h % DOWNSAMPLE_FACTOR or w % DOWNSAMPLE_FACTOR or not h or not w:
            raise LatentfuseError(f"TAEF2: image height and width must be positive multiples of "
                                  f"{DOWNSAMPLE_FACTOR}, got {h}x{w} (pad the image first)")
        if images.numel() and (float(images.min()) < lo - 0.02 or float(images.max()) > hi + 0.02):
            raise LatentfuseError(f"TAEF2: image values span [{float(images.min()):.4g}, {float(images.max()):.4g}], "
                                  f"expected [{lo:g}, {hi:g}]")

    def encode01(self, images01: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> raw latents (B, 32, H/8, W/8) (the published encoder)."""
        self._check_images(images01, 0.0, 1.0)
        return self.encoder(images01.to(next(self.encoder.parameters()).dtype))

    def decode01(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images in [0, 1] (clamped)."""
        if not isinstance(raw, torch.Tensor) or raw.ndim != 4 or raw.shape[1] != self.latent_channels:
            shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
            raise LatentfuseError(f"TAEF2 expects latents shaped (B, {self.latent_channels}, h, w), got {shape}")
        return self.decoder(raw.to(next(self.decoder.parameters()).dtype)).clamp(0.0, 1.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> normalised latents ``(raw - shift) · scale``."""
        self._check_images(images, -1.0, 1.0)
        return self.encode_graph(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in [-1, 1]."""
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise LatentfuseError(f"TAEF2 expects latents shaped (B, {self.latent_channels}, h, w), got {shape}")
        return self.decode_graph(latents)

    def encode_graph(self, images: torch.Tensor) -> torch.Tensor:
        """Unchecked :meth:`encode` (what a ``vae_encoder`` graph is exported from)."""
        x = ((images + 1.0) * 0.5).clamp(0.0, 1.0).to(next(self.encoder.parameters()).dtype)
        return (self.encoder(x) - self.shift_factor) * self.scaling_factor

    def decode_graph(self, latents: torch.Tensor) -> torch.Tensor:
        """Unchecked :meth:`decode`, output clamped to [-1, 1]."""
        raw = (latents / self.scaling_factor + self.shift_factor).to(next(self.decoder.parameters()).dtype)
        return self.decoder(raw).clamp(0.0, 1.0) * 2.0 - 1.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))
