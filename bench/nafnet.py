"""NAFNet (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022): the pixel-space
restoration network of MMAIF's strongest restoration+fusion baseline (Table 5, "NAFNet+PSLPT").

The U-Net of the official code (megvii-research/NAFNet ``basicsr/models/archs/NAFNet_arch.py``):
3x3 intro conv to ``width`` channels; per encoder level ``enc_blk_nums[i]`` NAFBlocks then a 2x2
stride-2 conv doubling the channels; ``middle_blk_num`` NAFBlocks; per decoder level a 1x1 conv to
2x channels + PixelShuffle(2) (halving them), the skip added, ``dec_blk_nums[i]`` NAFBlocks; 3x3
ending conv to RGB plus the input (global residual). Inputs are padded to a multiple of 2^levels
and the output cropped back, as the official ``check_image_size`` does.

The blocks are :class:`latentfuse.model.nafblock.NAFBlock` (the same block the MoE-DiT uses), whose β / γ start
at zero like the official ones. Weights here are random: the benchmark measures cost, not quality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.nafblock import NAFBlock

#: The published GoPro deblurring configurations (``options/test/GoPro/NAFNet-width{32,64}.yml``).
NAFNET_PRESETS: dict[str, dict] = {
    "width32": {"width": 32, "enc_blk_nums": (1, 1, 1, 28), "middle_blk_num": 1, "dec_blk_nums": (1, 1, 1, 1)},
    "width64": {"width": 64, "enc_blk_nums": (1, 1, 1, 28), "middle_blk_num": 1, "dec_blk_nums": (1, 1, 1, 1)},
}


class NAFNet(nn.Module):
    def __init__(self, img_channel: int = 3, width: int = 32, enc_blk_nums=(1, 1, 1, 28), middle_blk_num: int = 1,
                 dec_blk_nums=(1, 1, 1, 1)):
        super().__init__()
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise LatentfuseError(f"NAFNet needs as many decoder as encoder levels, got {enc_blk_nums} / {dec_blk_nums}")
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        self.decoders, self.ups = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*(NAFBlock(chan) for _ in range(num))))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle = nn.Sequential(*(NAFBlock(chan) for _ in range(middle_blk_num)))
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(chan) for _ in range(num))))
        self.pad_multiple = 2 ** len(enc_blk_nums)

    @classmethod
    def from_preset(cls, name: str = "width32") -> "NAFNet":
        if name not in NAFNET_PRESETS:
            raise LatentfuseError(f"unknown NAFNet preset {name!r}; available: {', '.join(NAFNET_PRESETS)}")
        return cls(**NAFNET_PRESETS[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> restored [B, 3, H, W] (any H, W: padded internally)."""
        h, w = x.shape[-2:]
        m = self.pad_multiple
        inp = F.pad(x, (0, (-w) % m, 0, (-h) % m))
        y = self.intro(inp)
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            y = enc(y)
            skips.append(y)
            y = down(y)
        y = self.middle(y)
        for dec, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            y = dec(up(y) + skip)
        y = self.ending(y) + inp
        return y[..., :h, :w]
