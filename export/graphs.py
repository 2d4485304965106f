"""Graph specs: one object per deployed graph, the single source of truth for its ONNX interface.

Following TensorRT demoDiffusion's per-model classes, each deployed graph is a
:class:`GraphSpec` that knows its ONNX input/output names, dtypes and symbolic dims, the supported
resolution range and the optimization-profile shapes (min/opt/max), how to build sample inputs at a
given (batch, height, width, text length), and how to wrap the PyTorch module as a tensor-in /
tensor-out ``nn.Module`` for ``torch.onnx.export``. Export (:mod:`latentfuse.export.onnx`), verification
(:mod:`latentfuse.export.verify`), the engine builder, the runtime and the manifest (:mod:`latentfuse.export.bundle`) all
read these specs; no other module lists input names.

The deployed graphs (docs/design.md "The four graphs")::

    vae_encoder     image [batch, 3, height, width] in [-1, 1]        -> latent [batch, z, height/8, width/8]
    vae_decoder     latent [batch, z, latent_height, latent_width]     -> image [batch, 3, height, width]
    text_encoder    input_ids, attention_mask [batch, text_length]    -> prompt_embeds [batch, text_length, d_t]
    dit_flow        z_t, t, z_a, z_b, prompt_embeds, prompt_mask     -> velocity  v_θ (MMAIF Eq. 11)
    dit_regression  z_a, z_b, prompt_embeds, prompt_mask              -> latent    f_θ (MMAIF Eq. 8)
    fidelity        image, source_a, source_b [batch, 3, height, width], prompt_embeds, prompt_mask
                                                                      -> fused_image (model.fidelity; optional)

Every spatial dim is derived from one symbol per axis, the 16-pixel grid (VAE f=8 times DiT patch
p=2): ``height = 16·grid_h``, ``latent_height = 2·grid_h``. Exporting with these derived dims
(``torch.export.Dim``) is what lets the graph keep H and W symbolic through the patchify reshapes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from latentfuse.model.errors import LatentfuseError

from latentfuse.model.geometry import HEADS, LATENT_FACTOR, MIN_GRID, PATCH, PIXEL_MULTIPLE
# The manifest schema's symbolic dims and tensor roles (runtime.manifest, the reader every host shares).
from latentfuse.runtime.manifest import (BATCH, HEIGHT, LATENT_HEIGHT, LATENT_WIDTH, TEXT_LENGTH, WIDTH, Bundle,
                                         legacy_role)


# Range the exported graphs accept (torch.export Dim bounds); the profiles below are narrower.
EXPORT_MAX_BATCH = 64
EXPORT_MAX_PIXELS = 8192


@dataclass(frozen=True)
class Resolution:
    """Supported image sizes in pixels: each side in [min, max], a multiple of ``multiple``."""

    min: int = 64
    max: int = 1024
    multiple: int = PIXEL_MULTIPLE
    opt: int = 512
    aspect_ratios: tuple[str, ...] = ("1:1", "4:3", "3:4", "16:9", "9:16")

    def __post_init__(self):
        if self.multiple % PIXEL_MULTIPLE:
            raise LatentfuseError(f"resolution multiple {self.multiple} must be a multiple of {PIXEL_MULTIPLE} px")
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if value % self.multiple or value <= 0:
                raise LatentfuseError(f"resolution {name}={value} must be a positive multiple of {self.multiple} px")
        if not self.min <= self.opt <= self.max:
            raise LatentfuseError(f"resolution needs min <= opt <= max, got {self.min}, {self.opt}, {self.max}")

    def check(self, height: int, width: int) -> None:
        for side, value in (("height", height), ("width", width)):
            if value % self.multiple or not self.min <= value <= self.max:
                raise LatentfuseError(f"image {side} {value} px is outside the supported range: a multiple of "
                                      f"{self.multiple} in [{self.min}, {self.max}]")

    def to_manifest(self) -> dict:
        return {"min": self.min, "max": self.max, "multiple": self.multiple, "opt": self.opt,
                "aspect_ratios": list(self.aspect_ratios),
                # explicit per-side bounds for hosts that want them spelled out
                "min_height": self.min, "min_width": self.min, "max_height": self.max, "max_width": self.max}


# How sample inputs are drawn, by tensor role (anything else: a standard-normal latent).
SAMPLE_KINDS = {"image": "image", "source_image_a": "image", "source_image_b": "image", "timestep": "timestep",
                "token_ids": "token_ids", "attention_mask": "mask", "prompt_mask": "mask", "prompt_embeds": "embeds"}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``shape`` mixes ints (static) and symbol names (dynamic); ``role`` says
    what the tensor is (``runtime.manifest.ROLE_NAMES``: hosts find tensors by it; it also decides how
    sample inputs are drawn). Without one, the role follows from the name (as for old manifests)."""

    name: str
    dtype: str
    shape: tuple
    role: str | None = None

    def __post_init__(self):
        if self.role is None:
            object.__setattr__(self, "role", legacy_role(self.name))

    @property
    def sample_kind(self) -> str:
        return SAMPLE_KINDS.get(self.role, "latent")

    def dims(self, sizes: Mapping[str, int]) -> list[int]:
        return [int(sizes[d]) if isinstance(d, str) else int(d) for d in self.shape]

    def to_manifest(self) -> dict:
        entry = {"name": self.name}
        if self.role is not None:
            entry["role"] = self.role
        entry.update({"dtype": self.dtype, "shape": list(self.shape)})
        return entry

    @classmethod
    def from_manifest(cls, entry: Mapping, kind: str | None = None, output: bool = False) -> "TensorSpec":
        name = str(entry["name"])
        role = entry.get("role") or legacy_role(name, kind, output)
        return cls(name, str(entry["dtype"]), tuple(entry["shape"]), role)


@dataclass(frozen=True)
class Tolerance:
    """Export parity bound: ``max_abs <= atol + rtol · max|reference|`` (ONNX Runtime vs PyTorch, FP32)."""

    atol: float
    rtol: float

    def bound(self, ref_max: float) -> float:
        return self.atol + self.rtol * ref_max


@dataclass(frozen=True)
class VerifyShape:
    label: str
    batch: int
    height: int
    width: int
    text_length: int

    def describe(self, text: bool = True) -> str:
        return f"{self.batch}x{self.height}x{self.width}" + (f" L{self.text_length}" if text else "")


# The shapes a graph is checked at after export (export.verify, export.quantize's parity). None equals the
# export example (GraphSpec.example, 2 x 96 x 128, L 9): other aspect ratios, batch and lengths.
DEFAULT_SHAPES = (
    VerifyShape("square", 1, 64, 64, 5),
    VerifyShape("16:9", 1, 64, 112, 12),
    VerifyShape("portrait", 2, 96, 64, 17),
)
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
                "bool": torch.bool}


@dataclass(frozen=True)
class GraphSpec:
    """The ONNX interface of one deployed graph. Subclasses add :meth:`module` (the PyTorch side)."""

    name: str
    kind: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    head: str | None = None
    resolution: Resolution = field(default_factory=Resolution)
    max_text_length: int = 128
    opt_text_length: int = 32
    batch: tuple[int, int, int] = (1, 1, 4)          # profile min / opt / max batch
    tolerance: Tolerance = Tolerance(1e-4, 1e-4)
    vocab_size: int = 0                               # text_encoder: sample ids are drawn below it
    # Example the graph is traced at: batch >= 2 and sides that differ, so nothing specialises.
    example: tuple[int, int, int, int] = (2, 96, 128, 9)
    moe_dispatch: str | None = None                   # dit: the MoE form in the graph (model.moe)
    halo: int | None = None                           # fidelity: rows of context a strip needs each side (px)

    # ------------------------------------------------------------------ names
    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise LatentfuseError(f"graph {self.name!r} has no input {name!r} (inputs: {', '.join(self.input_names)})")

    # ------------------------------------------------------------------ shapes
    def sizes(self, batch: int, height: int, width: int, text_length: int | None = None) -> dict[str, int]:
        """Values of every symbolic dim for one call (height/width in pixels, multiples of 16)."""
        if height % PIXEL_MULTIPLE or width % PIXEL_MULTIPLE:
            raise LatentfuseError(f"image size {height}x{width} px is not a multiple of {PIXEL_MULTIPLE} "
                                  f"(pad the images first)")
        if batch < 1:
            raise LatentfuseError(f"batch must be >= 1, got {batch}")
        length = self.opt_text_length if text_length is None else int(text_length)
        if not 1 <= length <= self.max_text_length:
            raise LatentfuseError(f"text length {length} is outside [1, {self.max_text_length}]")
        return {BATCH: batch, HEIGHT: height, WIDTH: width, LATENT_HEIGHT: height // LATENT_FACTOR,
                LATENT_WIDTH: width // LATENT_FACTOR, TEXT_LENGTH: length}

    def shapes(self, batch: int, height: int, width: int, text_length: int | None = None) -> dict[str, list[int]]:
        sizes = self.sizes(batch, height, width, text_length)
        return {t.name: t.dims(sizes) for t in self.inputs}

    def output_shapes(self, batch: int, height: int, width: int, text_length: int | None = None) -> dict[str, list[int]]:
        sizes = self.sizes(batch, height, width, text_length)
        return {t.name: t.dims(sizes) for t in self.outputs}

    def profile(self) -> dict[str, dict[str, list[int]]]:
        """TensorRT optimization profile covering the supported resolutions, aspect ratios and prompts."""
        r = self.resolution
        b_min, b_opt, b_max = self.batch
        opt_text = min(self.opt_text_length, self.max_text_length)
        return {
            "min": self.shapes(b_min, r.min, r.min, 1),
            "opt": self.shapes(b_opt, r.opt, r.opt, opt_text),
            "max": self.shapes(b_max, r.max, r.max, self.max_text_length),
        }

    def dynamic_shapes(self) -> tuple[dict, ...]:
        """``dynamic_shapes`` for ``torch.onnx.export(dynamo=True)``, in input order. Spatial dims are
        derived from one 16-px grid symbol per axis so that the patchify reshapes stay symbolic."""
        from torch.export import Dim

        batch = Dim(BATCH, min=1, max=EXPORT_MAX_BATCH)
        grid_h = Dim("grid_height", min=MIN_GRID, max=EXPORT_MAX_PIXELS // PIXEL_MULTIPLE)
        grid_w = Dim("grid_width", min=MIN_GRID, max=EXPORT_MAX_PIXELS // PIXEL_MULTIPLE)
        dims = {BATCH: batch, HEIGHT: PIXEL_MULTIPLE * grid_h, WIDTH: PIXEL_MULTIPLE * grid_w,
                LATENT_HEIGHT: PATCH * grid_h, LATENT_WIDTH: PATCH * grid_w,
                TEXT_LENGTH: Dim(TEXT_LENGTH, min=1, max=self.max_text_length)}
        return tuple({axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} for t in self.inputs)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` for the TorchScript exporter (inputs and outputs)."""
        return {t.name: {axis: d for axis, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*self.inputs, *self.outputs)}

    # ------------------------------------------------------------------ sample inputs
    def sample_inputs(self, batch: int, height: int, width: int, text_length: int | None = None,
                      seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
        """Seeded inputs at one shape, in input order. Prompts in a batch get different lengths
        (row 0 uses the full ``text_length``), so padding and masks are exercised."""
        sizes = self.sizes(batch, height, width, text_length)
        gen = torch.Generator().manual_seed(seed)
        length = sizes[TEXT_LENGTH]
        lengths = [length] + [int(torch.randint(1, length + 1, (1,), generator=gen)) for _ in range(batch - 1)]
        mask = torch.zeros(batch, length, dtype=torch.int64)
        for row, n in enumerate(lengths):
            mask[row, :n] = 1
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for t in self.inputs:
            shape = t.dims(sizes)
            dtype = TORCH_DTYPES[t.dtype]
            kind = t.sample_kind
            if kind == "image":
                value = torch.rand(shape, generator=gen) * 2 - 1
            elif kind == "timestep":
                value = torch.rand(shape, generator=gen)
            elif kind == "token_ids":
                value = torch.randint(2, max(self.vocab_size, 3), shape, generator=gen)
                for row, n in enumerate(lengths):
                    value[row, n - 1] = 1           # EOS
                    value[row, n:] = 0              # padding
            elif kind == "mask":
                value = mask.clone()
            elif kind == "embeds":
                value = torch.randn(shape, generator=gen) * mask[..., None]
            else:
                value = torch.randn(shape, generator=gen)
            out[t.name] = value.to(dtype)
        return out

    def example_inputs(self, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
        return self.sample_inputs(*self.example, seed=seed)

    # ------------------------------------------------------------------ module / manifest
    def module(self, components) -> nn.Module:
        """The tensor-in / tensor-out module to export (inputs in :attr:`inputs` order)."""
        raise LatentfuseError(f"graph spec {self.name!r} was read from a manifest and has no PyTorch module")

    def to_manifest(self) -> dict:
        entry = {"kind": self.kind}
        if self.head is not None:
            entry["head"] = self.head
        if self.moe_dispatch is not None:
            entry["moe_dispatch"] = self.moe_dispatch
        if self.halo is not None:
            entry["halo"] = self.halo
        entry.update({
            "inputs": [t.to_manifest() for t in self.inputs],
            "outputs": [t.to_manifest() for t in self.outputs],
            "profile": self.profile(),
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
        })
        return entry

    @classmethod
    def from_manifest(cls, name: str, entry: Mapping, resolution: Mapping | None = None,
                      text: Mapping | None = None) -> "GraphSpec":
        """Interface-only spec rebuilt from a manifest entry (ONNX-only verification, engine builds)."""
        try:
            tol = entry.get("tolerance") or {}
            res = resolution or {}
            prof = entry.get("profile") or {}
            batch_of = lambda key: next(iter(prof[key].values()))[0] if prof.get(key) else 1  # noqa: E731
            return GraphSpec(
                name=name, kind=str(entry["kind"]), head=entry.get("head"),
                inputs=tuple(TensorSpec.from_manifest(t, str(entry["kind"])) for t in entry["inputs"]),
                outputs=tuple(TensorSpec.from_manifest(t, str(entry["kind"]), True) for t in entry["outputs"]),
                resolution=Resolution(**{k: (tuple(v) if k == "aspect_ratios" else v) for k, v in res.items()
                                         if k in ("min", "max", "multiple", "opt", "aspect_ratios")}),
                max_text_length=int((text or {}).get("max_length", 128)),
                batch=(batch_of("min"), batch_of("opt"), batch_of("max")),
                tolerance=Tolerance(float(tol.get("atol", 1e-4)), float(tol.get("rtol", 1e-4))),
                vocab_size=int((text or {}).get("vocab_size", 0)),
                moe_dispatch=entry.get("moe_dispatch"),
                halo=entry.get("halo"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise LatentfuseError(f"manifest entry for graph {name!r} is malformed: {err!r}") from None


def bundle_spec(bundle: Bundle, name: str) -> GraphSpec:
    """Export's view of a bundle's graph ``name``: its interface-only :class:`GraphSpec` (:meth:`GraphSpec.from_manifest`)."""
    return GraphSpec.from_manifest(name, bundle.graph(name), bundle.manifest.get("resolution"),
                                   bundle.manifest.get("text"))


# ---------------------------------------------------------------------- the graphs
class _VaeEncode(nn.Module):
    """image -> latent: ``LatentVAE.encode_graph`` (posterior mean, normalised)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode_graph(image)


class _VaeDecode(nn.Module):
    """latent -> image: ``LatentVAE.decode_graph`` (clamped to [-1, 1])."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_graph(latent)


class _TextEncode(nn.Module):
    """(input_ids, attention_mask) -> prompt_embeds: ``PromptEncoder.encode_graph`` (zero at padding)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder.encode_graph(input_ids, attention_mask)


def _export_copy(dit: nn.Module, dispatch: str) -> nn.Module:
    import copy

    from latentfuse.model.config import EXPORT_DISPATCHES

    if dispatch not in EXPORT_DISPATCHES:
        raise LatentfuseError(f"the exported MoE dispatch must be one of {', '.join(EXPORT_DISPATCHES)}, "
                              f"got {dispatch!r}")
    # A copy, so switching to the export MoE dispatch (dense or grouped: numerically identical to the
    # training one, no NonZero / scatter-add) leaves the caller's (training) model alone.
    dit = copy.deepcopy(dit).eval()
    dit.set_moe_dispatch(dispatch)
    return dit


class _DiTFlow(nn.Module):
    """v_θ(Z_t, t, Z_a, Z_b, P) (MMAIF Eq. 11)."""

    def __init__(self, dit: nn.Module, dispatch: str = "dense"):
        super().__init__()
        self.dit = _export_copy(dit, dispatch)

    def forward(self, z_t, t, z_a, z_b, prompt_embeds, prompt_mask):
        return self.dit(z_a, z_b, prompt_embeds, prompt_mask, z_t=z_t, t=t)


class _DiTRegression(nn.Module):
    """f_θ(Z_a, Z_b, P) (MMAIF Eq. 8)."""

    def __init__(self, dit: nn.Module, dispatch: str = "dense"):
        super().__init__()
        self.dit = _export_copy(dit, dispatch)

    def forward(self, z_a, z_b, prompt_embeds, prompt_mask):
        return self.dit(z_a, z_b, prompt_embeds, prompt_mask)


@dataclass(frozen=True)
class VaeEncoderSpec(GraphSpec):
    batch: tuple[int, int, int] = (1, 2, 8)           # both sources of a pair in one call
    tolerance: Tolerance = Tolerance(1e-4, 1e-4)   # measured ~1e-6 on the tiny preset

    @classmethod
    def create(cls, latent_channels: int, **kw) -> "VaeEncoderSpec":
        return cls(name="vae_encoder", kind="vae_encoder",
                   inputs=(TensorSpec("image", "float32", (BATCH, 3, HEIGHT, WIDTH), "image"),),
                   outputs=(TensorSpec("latent", "float32", (BATCH, latent_channels, LATENT_HEIGHT, LATENT_WIDTH),
                                       "latent"),),
                   **kw)

    def module(self, components) -> nn.Module:
        return _VaeEncode(components.vae).eval()


@dataclass(frozen=True)
class VaeDecoderSpec(GraphSpec):
    tolerance: Tolerance = Tolerance(2e-4, 1e-4)   # deepest conv stack; measured ~7e-6

    @classmethod
    def create(cls, latent_channels: int, **kw) -> "VaeDecoderSpec":
        return cls(name="vae_decoder", kind="vae_decoder",
                   inputs=(TensorSpec("latent", "float32", (BATCH, latent_channels, LATENT_HEIGHT, LATENT_WIDTH), "latent"),),
                   outputs=(TensorSpec("image", "float32", (BATCH, 3, HEIGHT, WIDTH), "image"),),
                   **kw)

    def module(self, components) -> nn.Module:
        return _VaeDecode(components.vae).eval()


@dataclass(frozen=True)
class TextEncoderSpec(GraphSpec):
    tolerance: Tolerance = Tolerance(1e-4, 1e-4)   # measured ~2e-6

    @classmethod
    def create(cls, hidden_size: int, **kw) -> "TextEncoderSpec":
        return cls(name="text_encoder", kind="text_encoder",
                   inputs=(TensorSpec("input_ids", "int64", (BATCH, TEXT_LENGTH), "token_ids"),
                           TensorSpec("attention_mask", "int64", (BATCH, TEXT_LENGTH), "attention_mask")),
                   outputs=(TensorSpec("prompt_embeds", "float32", (BATCH, TEXT_LENGTH, hidden_size), "prompt_embeds"),),
                   **kw)

    def module(self, components) -> nn.Module:
        return _TextEncode(components.text_encoder).eval()


@dataclass(frozen=True)
class DiTSpec(GraphSpec):
    tolerance: Tolerance = Tolerance(1e-4, 1e-4)   # measured ~1e-6
    # the runtime batches a pair's DiT windows (runtime.backends.tiled): the profile covers 16 per call
    batch: tuple[int, int, int] = (1, 1, 16)

    @classmethod
    def create(cls, head: str, latent_channels: int, text_dim: int, **kw) -> "DiTSpec":
        if head not in HEADS:
            raise LatentfuseError(f"unknown DiT head {head!r}; expected one of {', '.join(HEADS)}")
        latent = (BATCH, latent_channels, LATENT_HEIGHT, LATENT_WIDTH)
        cond = (TensorSpec("z_a", "float32", latent, "source_latent_a"),
                TensorSpec("z_b", "float32", latent, "source_latent_b"),
                TensorSpec("prompt_embeds", "float32", (BATCH, TEXT_LENGTH, text_dim), "prompt_embeds"),
                TensorSpec("prompt_mask", "int64", (BATCH, TEXT_LENGTH), "prompt_mask"))
        if head == "flow":
            inputs = (TensorSpec("z_t", "float32", latent, "noisy_latent"),
                      TensorSpec("t", "float32", (BATCH,), "timestep"), *cond)
            outputs = (TensorSpec("velocity", "float32", latent, "velocity"),)
        else:
            inputs, outputs = cond, (TensorSpec("latent", "float32", latent, "fused_latent"),)
        return cls(name=f"dit_{head}", kind="dit", head=head, inputs=inputs, outputs=outputs, **kw)

    def module(self, components) -> nn.Module:
        """The DiT with the spec's MoE form, else the one its config chooses (``export_moe_dispatch``)."""
        dit = components.dit(self.head)
        dispatch = self.moe_dispatch or dit.config.export_moe_dispatch
        return (_DiTFlow(dit, dispatch) if self.head == "flow" else _DiTRegression(dit, dispatch)).eval()


class _Fidelity(nn.Module):
    """(image, source_a, source_b, prompt_embeds, prompt_mask) -> image: ``model.fidelity.FidelityDecoder``."""

    def __init__(self, fidelity: nn.Module):
        super().__init__()
        self.fidelity = fidelity

    def forward(self, image, source_a, source_b, prompt_embeds, prompt_mask):
        return self.fidelity(image, source_a, source_b, prompt_embeds, prompt_mask)


@dataclass(frozen=True)
class FidelitySpec(GraphSpec):
    tolerance: Tolerance = Tolerance(1e-4, 1e-4)   # a shallow conv net; measured ~1e-6

    @classmethod
    def create(cls, text_dim: int, halo: int, **kw) -> "FidelitySpec":
        image = (BATCH, 3, HEIGHT, WIDTH)
        return cls(name="fidelity", kind="fidelity",
                   inputs=(TensorSpec("image", "float32", image, "image"),
                           TensorSpec("source_a", "float32", image, "source_image_a"),
                           TensorSpec("source_b", "float32", image, "source_image_b"),
                           TensorSpec("prompt_embeds", "float32", (BATCH, TEXT_LENGTH, text_dim), "prompt_embeds"),
                           TensorSpec("prompt_mask", "int64", (BATCH, TEXT_LENGTH), "prompt_mask")),
                   # ONNX names a value once: the output cannot be "image" as well
                   outputs=(TensorSpec("fused_image", "float32", image, "fused_image"),),
                   halo=int(halo), **kw)

    def module(self, components) -> nn.Module:
        if components.fidelity is None:
            raise LatentfuseError("this model has no fidelity decoder (model.fidelity) to export")
        return _Fidelity(components.fidelity).eval()


def graph_specs(components, heads: Sequence[str] = HEADS, resolution: Resolution | None = None) -> dict[str, GraphSpec]:
    """The specs of every graph of a model (``model.components.FusionComponents``), in export order."""
    heads = list(dict.fromkeys(heads))
    if not heads:
        raise LatentfuseError("export needs at least one DiT head (flow and/or regression)")
    for head in heads:
        if head not in HEADS:
            raise LatentfuseError(f"unknown DiT head {head!r}; expected one of {', '.join(HEADS)}")
        components.dit(head)  # clear error when the model lacks this head
    text = components.text_encoder
    z = int(components.vae.latent_channels)
    common = {"resolution": resolution or Resolution(), "max_text_length": int(text.max_length),
              "opt_text_length": min(32, int(text.max_length))}
    text_dim = int(text.hidden_size)
    specs: list[GraphSpec] = [
        TextEncoderSpec.create(text_dim, vocab_size=int(text.tokenizer.vocab_size), **common),
        VaeEncoderSpec.create(z, **common),
        VaeDecoderSpec.create(z, **common),
    ]
    for head in heads:
        dit_cfg = components.dit(head).config
        if dit_cfg.patch_size != PATCH:
            raise LatentfuseError(f"dit_{head} has patch size {dit_cfg.patch_size}; the deployed graphs assume {PATCH}")
        if dit_cfg.text_dim != text_dim or dit_cfg.latent_channels != z:
            raise LatentfuseError(f"dit_{head} expects text_dim={dit_cfg.text_dim}, latent_channels="
                                  f"{dit_cfg.latent_channels}; the model's text encoder / VAE give {text_dim} / {z}")
        specs.append(DiTSpec.create(head, z, text_dim, moe_dispatch=dit_cfg.export_moe_dispatch, **common))
    fidelity = getattr(components, "fidelity", None)
    if fidelity is not None:  # the optional fifth graph (model.fidelity): exported only where the model has one
        if int(fidelity.config.text_dim) != text_dim:
            raise LatentfuseError(f"the fidelity decoder expects text_dim={fidelity.config.text_dim}; the model's "
                                  f"text encoder gives {text_dim}")
        from latentfuse.runtime.backends.tiled import fidelity_halo

        specs.append(FidelitySpec.create(text_dim, fidelity_halo(fidelity.config), **common))
    return {s.name: s for s in specs}
