"""The fidelity decoder: a learned pixel-space stage that gives the decoded fused image the sources' detail.

An f = 8 VAE renders what is finer than its latent cells as blur, whatever the DiT put in the latent
(docs/real-data-ceilings.md); the sources still hold that detail at full resolution. As StableSR's
controllable feature wrapping and DiffBIR's IRControlNet feed the degraded input's features back to the
decoder, this network reads the VAE decoder's image F and the two sources A, B (all at the working
resolution, in [-1, 1]) and predicts the residual that makes F the fused image::

    x      = [F, A, B]                                  [B, 9, H, W]
    level  1: pixel-unshuffle 2 -> 1x1 conv (-> blocks)  H/2,  c1
           2: 2x2 stride-2 conv -> blocks                H/4,  c2
           3: 2x2 stride-2 conv -> blocks (+ prompt)     H/8,  c3   FiLM from the prompt's masked mean
           up: 1x1 conv -> pixel-shuffle 2, + skip -> blocks   back to H/2
    head   pixel-shuffle(1x1 conv(level 1))             [B, 3·n_sel + 3, H, W]: per selection, logits over
                                                        {A, B, F}; and a residual image r
    bands  L_k(X) = bilinear-up_k(box-mean_k(X))        a fixed low-pass per band size k (4, 16 px):
           D1_X = X - L_4(X),  D2_X = L_4(X) - L_16(X)  the fine and the middle band of each image
    out    = L_16(F) + Σ_band Σ_X softmax(logits_band)_X · D_band,X + r
    select_coarse: the coarse band is chosen too, its luma Y and its colour C = L_16 - Y apart:
           + Σ_X softmax(logits_Y)_X · (Y_X - Y_F) + Σ_X softmax(logits_C)_X · (C_X - C_F)

so the network decides, per pixel and per band, whose detail the fused image gets (a source's, or the
VAE image's own where a source's is degraded) and what to restore on top (r); without ``select_coarse`` the
coarse band stays the DiT's, with it the network may take a source's intensity or colour (a focus rule's
pixels, a visible image's colour) where the DiT's is off. Its weights are shared by the RGB channels (colour
edges come from the same source as luma edges). The logits start with a bias towards F: an untrained decoder
returns about F.

Everything is local: each block is NAFNet's without its global channel attention (a LayerNorm over
channels, 1x1 convs, a 3x3 depthwise conv, a simple gate), so the receptive field is bounded
(:func:`receptive_halo`) and the runtime can run a large image in strips of rows with that much context
and get the whole image's answer. The prompt enters once, at the coarsest level, as a per-channel scale
and shift (zero-initialised, like the residual head: an untrained network returns F unchanged), so the
stage can tell "remove the rain" (do not copy the streaks back) from a clean fusion.

H and W must be multiples of :data:`MULTIPLE` (the pipeline's 16-pixel grid is).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as nnf

from latentfuse.model.atomic import atomic_dir
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import BT601
from latentfuse.model.nafblock import NAFBlock

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MULTIPLE = 16  # the largest band's box (and the pixel-unshuffle 2 x two stride-2 convs)
F_PRIOR = 4.0  # logit bias of F in every band at initialisation: softmax weight 0.96


@dataclass(frozen=True)
class FidelityConfig:
    """Widths and depths of :class:`FidelityDecoder` (``text_dim``: the prompt encoder's width)."""

    text_dim: int = 128
    widths: tuple[int, int, int] = (32, 64, 96)
    # no blocks at H/2 by default: the stem's features reach the head by the skip; blocks there cost 0.4x the
    # network's time at 640x480 on ONNX Runtime CPU for what the H/4 cells (4x4 pixels each) already see
    enc_blocks: tuple[int, int, int] = (0, 2, 3)
    dec_blocks: tuple[int, int] = (1, 0)  # at H/4, then H/2
    expand: int = 2
    bands: tuple[int, ...] = (4, 16)  # box sizes of the low-pass bands, increasing, each dividing MULTIPLE
    # whether the coarse band (L_16) is chosen per pixel among {A, B, F} too, as the finer bands are, instead of
    # being F's: a fusion rule weighs the sources' intensities, not only their detail. Its luma and its colour
    # are chosen apart (a gray infrared source has intensity to give, not colour) (False: the decoders before it)
    select_coarse: bool = False

    def __post_init__(self):
        if len(self.widths) != 3 or len(self.enc_blocks) != 3 or len(self.dec_blocks) != 2:
            raise LatentfuseError("fidelity config: widths and enc_blocks take 3 values, dec_blocks 2")
        if not isinstance(self.select_coarse, bool):
            raise LatentfuseError(f"fidelity config: select_coarse is true or false, got {self.select_coarse!r}")
        if min(self.widths) < 1 or min(self.enc_blocks + self.dec_blocks) < 0 or self.text_dim < 1:
            raise LatentfuseError(f"fidelity config: sizes must be positive, got {self}")
        if (not self.bands or list(self.bands) != sorted(set(self.bands))
                or any(k < 2 or MULTIPLE % k for k in self.bands)):
            raise LatentfuseError(f"fidelity config: bands must increase and divide {MULTIPLE}, got {self.bands}")

    def to_dict(self) -> dict:
        return {"model": "latentfuse.FidelityDecoder", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str = "fidelity config") -> "FidelityConfig":
        data = {k: v for k, v in data.items() if k != "model"}
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except TypeError as err:
            raise LatentfuseError(f"{where}: {err}") from None


def _blocks(channels: int, n: int, expand: int) -> nn.Sequential:
    # NAFNet's block without its channel attention (a global pool): mixing stays local
    return nn.Sequential(*(NAFBlock(channels, expand, channel_attention=False) for _ in range(n)))


class FidelityDecoder(nn.Module):
    """F, A, B [B, 3, H, W] in [-1, 1] + the prompt -> the fused image [B, 3, H, W] (module docstring)."""

    def __init__(self, config: FidelityConfig | None = None):
        super().__init__()
        self.config = cfg = config or FidelityConfig()
        c1, c2, c3 = cfg.widths
        self.unshuffle = nn.PixelUnshuffle(2)
        self.stem = nn.Conv2d(9 * 4, c1, 1)
        self.enc1 = _blocks(c1, cfg.enc_blocks[0], cfg.expand)
        self.down1 = nn.Conv2d(c1, c2, 2, stride=2)
        self.enc2 = _blocks(c2, cfg.enc_blocks[1], cfg.expand)
        self.down2 = nn.Conv2d(c2, c3, 2, stride=2)
        self.film = nn.Linear(cfg.text_dim, 2 * c3)
        self.mid = _blocks(c3, cfg.enc_blocks[2], cfg.expand)
        self.up2 = nn.Sequential(nn.Conv2d(c3, c2 * 4, 1), nn.PixelShuffle(2))
        self.dec2 = _blocks(c2, cfg.dec_blocks[0], cfg.expand)
        self.up1 = nn.Sequential(nn.Conv2d(c2, c1 * 4, 1), nn.PixelShuffle(2))
        self.dec1 = _blocks(c1, cfg.dec_blocks[1], cfg.expand)
        self.head = nn.Conv2d(c1, (3 * self.selections + 3) * 4, 1)
        self.shuffle = nn.PixelShuffle(2)
        for layer in (self.film, self.head):  # start at about F (F_PRIOR), the prompt without effect
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("prior", torch.tensor([0.0, 0.0, F_PRIOR]).view(1, 3, 1, 1), persistent=False)

    @property
    def selections(self) -> int:
        """Bands whose content is chosen among {A, B, F}: the finer ones, and the coarse luma and colour if
        selected."""
        return len(self.config.bands) + 2 * int(self.config.select_coarse)

    def forward(self, image: torch.Tensor, source_a: torch.Tensor, source_b: torch.Tensor,
                prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        x = self.unshuffle(torch.cat([image, source_a, source_b], dim=1))
        s1 = self.enc1(self.stem(x))
        s2 = self.enc2(self.down1(s1))
        h = self.down2(s2)
        mask = prompt_mask.to(prompt_embeds.dtype).unsqueeze(-1)  # [B, L, 1]
        pooled = (prompt_embeds * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        scale, shift = self.film(pooled)[:, :, None, None].chunk(2, dim=1)
        h = self.mid(h * (1 + scale) + shift)
        h = self.dec2(self.up2(h) + s2)
        h = self.dec1(self.up1(h) + s1)
        out = self.shuffle(self.head(h))
        images = (source_a, source_b, image)
        lows = [images] + [tuple(lowpass(x, k) for x in images) for k in self.config.bands]
        bands = [tuple(hi - lo for hi, lo in zip(lows[k], lows[k + 1])) for k in range(len(self.config.bands))]
        fused = out[:, 3 * self.selections:] + lows[-1][2]  # r + the coarse band of F
        if self.config.select_coarse:  # + the chosen coarse luma's and colour's differences to F's (F's own: none)
            ys = [luma(x) for x in lows[-1]]
            bands.append(tuple(y - ys[2] for y in ys))
            bands.append(tuple(x - y - (lows[-1][2] - ys[2]) for x, y in zip(lows[-1], ys)))
        for band, parts in enumerate(bands):
            weights = torch.softmax(out[:, 3 * band:3 * band + 3] + self.prior, dim=1)
            for i in range(3):
                fused = fused + weights[:, i:i + 1] * parts[i]
        return fused

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, overwrite: bool = True) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "model": "latentfuse.FidelityDecoder"})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "FidelityDecoder":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise LatentfuseError(f"{directory} is not a fidelity decoder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            config = FidelityConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text()),
                                              str(directory / CONFIG_NAME))
            state = load_file(str(directory / WEIGHTS_NAME))
        except (SafetensorError, OSError, json.JSONDecodeError) as err:
            raise LatentfuseError(f"cannot read the fidelity decoder in {directory}: {err}") from None
        model = cls(config)
        expected = model.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise LatentfuseError(f"{directory / WEIGHTS_NAME} does not match its config {config}")
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
        return model


def luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of [B, 3, H, W], kept [B, 1, H, W] (broadcast over the channels when added)."""
    kr, kg, kb = BT601
    return kr * x[:, :1] + kg * x[:, 1:2] + kb * x[:, 2:3]


def lowpass(x: torch.Tensor, k: int) -> torch.Tensor:
    """The band's low-pass: box means over k x k cells, bilinearly enlarged back (H, W multiples of k)."""
    return nnf.interpolate(nnf.avg_pool2d(x, k), scale_factor=float(k), mode="bilinear", align_corners=False)


def receptive_halo(config: FidelityConfig | None = None) -> int:
    """Rows of context, in pixels and a multiple of :data:`MULTIPLE`, that a strip needs on each side for
    its rows to come out as in the whole image: the receptive field's reach, counted layer by layer."""
    cfg = config or FidelityConfig()
    # per block one 3x3 depthwise conv: 1 cell each side at its level's stride (2, 4, 8 pixels)
    reach = (cfg.enc_blocks[0] + cfg.dec_blocks[1]) * 2 + (cfg.enc_blocks[1] + cfg.dec_blocks[0]) * 4
    reach += cfg.enc_blocks[2] * 8
    reach += 2 + 4 + 8  # the cells of the unshuffle and the two stride-2 convs
    # the largest band's low-pass: a pixel's value mixes the two nearest k-cells, up to 1.5 k away
    reach = max(reach, 3 * max(cfg.bands) // 2)
    return -(-reach // MULTIPLE) * MULTIPLE


def check_fidelity_size(height: int, width: int) -> None:
    if height % MULTIPLE or width % MULTIPLE:
        raise LatentfuseError(f"the fidelity decoder takes sides that are multiples of {MULTIPLE} px, "
                              f"got {width}x{height}")


__all__ = ["FidelityConfig", "FidelityDecoder", "receptive_halo", "MULTIPLE"]
