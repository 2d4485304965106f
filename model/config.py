"""DiT configuration: a plain dataclass saved as ``config.json`` next to the weights.

Presets are data (``model/presets/<name>.json``), not code paths. ``paper`` is the MMAIF
configuration of section 4.2; ``tiny`` serves the tests and the bundled default model.

The paper gives no expert width. ``paper`` uses expert_hidden = 1536 = 8/3·576, the standard SwiGLU
width for d = 576: with NAFNet's default expansion (2) that gives 281.1 M total / 196.2 M active
parameters against the paper's 282 M / 185 M (-0.3 % / +6.0 %; ``latentfuse info --preset paper``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.flow import check_prior
from latentfuse.model.geometry import HEADS

PRESET_DIR = Path(__file__).with_name("presets")
DISPATCHES = ("sparse", "dense", "grouped")   # MoE dispatch forms (model.moe)
EXPORT_DISPATCHES = ("dense", "grouped")      # those without data-dependent shapes: TensorRT-safe ONNX


@dataclass(frozen=True)
class DiTConfig:
    head: str = "flow"              # "flow" (v_θ, timestep embedder) or "regression" (f_θ, Eq. 8)
    latent_channels: int = 16       # z of the f=8, z=16 VAE (paper 3.2)
    patch_size: int = 2             # p (paper 3.3.1)
    hidden_size: int = 576          # d
    depth: int = 16
    num_heads: int = 12
    lora_rank: int = 128            # d' of the LoRA-AdaLN (Eq. 7)
    rope_base: float = 2000.0
    text_dim: int = 768             # d_t of the prompt encoder (projected to d)
    num_experts: int = 4            # routed experts
    num_shared_experts: int = 1
    top_k: int = 2
    expert_hidden: int = 1536       # GLU inner width of every expert
    naf_expand: int = 2             # NAFBlock depthwise / FFN channel expansion (NAFNet default 2)
    pe_hidden: int = 256            # width of the per-block absolute-PE MLPs (Eq. 5)
    timestep_freq_dim: int = 256    # sinusoidal timestep features (flow head only)
    moe_dispatch: str = "sparse"    # "sparse" (index dispatch), "dense" (masked) or "grouped" (model.moe)
    # the MoE form of the exported (ONNX / TensorRT) graphs: "dense" or "grouped", both TensorRT-safe;
    # each preset records the one measured faster for its width (README "Deployment bundle")
    export_moe_dispatch: str = "dense"
    gradient_checkpointing: bool = False
    # flow head: the prior p0 its velocity field starts from (model.flow), set by the trainer from
    # [flow]; every runtime samples from it unless told otherwise
    prior: str = "gaussian"
    prior_sigma: float = 0.5        # σ_p of a source prior

    def __post_init__(self):
        problems = []
        if self.head not in HEADS:
            problems.append(f"head must be one of {HEADS}, got {self.head!r}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        elif (self.hidden_size // self.num_heads) % 4:
            problems.append(f"head dim {self.hidden_size // self.num_heads} must be a multiple of 4 (2D RoPE rotates pairs on two axes)")
        if not 1 <= self.top_k <= self.num_experts:
            problems.append(f"top_k {self.top_k} must be in [1, num_experts={self.num_experts}]")
        try:
            check_prior(self.prior, self.prior_sigma)
        except LatentfuseError as err:
            problems.append(f"prior: {err}")
        if self.moe_dispatch not in DISPATCHES:
            problems.append(f"moe_dispatch must be one of {', '.join(DISPATCHES)}, got {self.moe_dispatch!r}")
        if self.export_moe_dispatch not in EXPORT_DISPATCHES:
            problems.append(f"export_moe_dispatch must be one of {', '.join(EXPORT_DISPATCHES)} (no data-dependent "
                            f"shapes), got {self.export_moe_dispatch!r}")
        for name in ("latent_channels", "patch_size", "depth", "lora_rank", "text_dim", "expert_hidden"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive")
        if problems:
            raise LatentfuseError("invalid DiT config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Features of one patch of one latent: p·p·z."""
        return self.patch_size * self.patch_size * self.latent_channels

    def replace(self, **changes) -> "DiTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LatentfuseError(f"unknown DiT config keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "DiTConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LatentfuseError(f"DiT config not found: {path}") from None
        except json.JSONDecodeError as err:
            raise LatentfuseError(f"DiT config {path} is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DiTConfig":
        path = PRESET_DIR / f"{name}.json"
        if not path.is_file():
            raise LatentfuseError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
        return cls.from_json(path).replace(**overrides)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))
