"""Explicit INT8 / FP8 post-training quantization: Q/DQ graphs for TensorRT 10/11 and ONNX Runtime.

TensorRT 10.12+ and 11 build only strongly typed networks, and TensorRT 11 removed the INT8 calibrators:
a quantized engine comes from an ONNX graph whose QuantizeLinear / DequantizeLinear pairs say where it
runs in INT8 or FP8 (explicit quantization). This module makes those graphs the way NVIDIA's own
diffusion deployment does (TensorRT demoDiffusion), with NVIDIA ModelOpt's PyTorch quantization
(``pip install 'latentfuse[quant]'``, imported only here and only when asked for):

1. **Calibration inputs** (:mod:`latentfuse.export.calib_inputs`): each graph's inputs recorded from the
   FP32 PyTorch pipeline on crops of real pairs: VAE latents of real images, text-encoder embeddings of
   real prompts, the flow DiT at every step of its sampler.
2. **Calibrate** (``mtq.quantize``, ``max`` calibration): INT8 weights per output channel and
   activations per tensor, symmetric; FP8 (E4M3) weights and activations per tensor. The candidate
   layers are the ``nn.Linear`` / ``nn.Conv2d`` modules of the chosen *level* (:data:`LEVELS`, the
   ladder of demoDiffusion's quantization levels): ``conv`` (convolutions), ``ffn`` (+ the MoE
   experts), ``qkv`` (+ attention projections), ``all-linear`` (every Linear and Conv: AdaLN,
   embeddings, router, output projection too).
3. **Decide which layers stay unquantized, from measured error** (:func:`choose_layers`): each
   candidate is quantized alone and the relative RMS error of the graph output against FP32 measured
   (its *sensitivity*); a layer whose error alone exceeds the layer tolerance stays FP32, then the
   whole graph is measured and, while its error exceeds the graph tolerance, the most sensitive layer
   still quantized is excluded too. Every candidate's sensitivity and every exclusion's reason go into
   the manifest.
4. **Export** with the TorchScript exporter (ModelOpt's Q/DQ symbolics are TorchScript ones) at the
   bundle's opset (>= 19: FP8 QuantizeLinear needs it), then post-process the graph
   (:func:`postprocess`): weight quantizers are folded into INT8 / FP8 initializers that keep the
   parameter's name (``dit.blocks.0.attn.qkv.weight``) behind a DequantizeLinear, a weight Transpose
   in front of a MatMul is folded into the stored weight (so the DequantizeLinear feeds the MatMul, the
   pattern TensorRT and ONNX Runtime fuse), ModelOpt's ``trt::TRT_FP8*`` ops become standard ONNX
   QuantizeLinear / DequantizeLinear with an FLOAT8E4M3FN zero point, and FP8 convolution weights
   (whose quantizers the TorchScript exporter cannot trace) get their DequantizeLinear here.
5. **Measure** the exported graph on ONNX Runtime: error against FP32 and against ModelOpt's
   fake-quantized PyTorch model on the calibration inputs, and which layers ONNX Runtime runs as
   integer kernels after its graph optimisation (:func:`ort_kernel_report`).

Which graphs: the DiTs (both heads) by default. The VAE's convolutions can be quantized too
(``graphs=("dit", "vae_decoder", "vae_encoder")``); on ONNX Runtime's CPU provider they were measured
*slower* in INT8 (its integer convolution kernel needs quantized outputs; README "INT8 / FP8"), so by
default they stay FP32. The text encoder runs once per prompt (canonical prompts are cached) and stays
FP32.

FP8: no runtime here executes FP8 arithmetic. ONNX Runtime's CPU provider implements FP8
QuantizeLinear / DequantizeLinear, so an FP8 graph runs as FP32 arithmetic on FP8-rounded values
(what TensorRT's FP8 kernels compute, up to accumulation order); FP8 engines need an NVIDIA GPU of
compute capability >= 8.9 (:func:`latentfuse.export.engines.check_precision_support`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError, MissingDependencyError
from latentfuse.runtime.manifest import QUANTIZED_PRECISIONS

LEVELS = ("conv", "ffn", "qkv", "all-linear")
DEFAULT_LEVEL = "all-linear"
QUANTIZABLE_KINDS = ("dit", "vae_encoder", "vae_decoder")
# What the graph is tuned for: TensorRT runs every Q/DQ'd Linear / Conv as an INT8 / FP8 kernel; ONNX
# Runtime's CPU provider only MatMuls (MatMulIntegerToFloat) and a Conv whose output is quantized too
# (QLinearConv) - every other quantized layer it runs in FP32 behind a DequantizeLinear, where the Q/DQ
# only cost time (measured: the default DiT at 16 windows 1.17x faster than FP32 with its convolutions
# quantized, 1.39x without), so ``onnxruntime`` keeps those FP32, by the kernel report of the export.
TARGETS = ("tensorrt", "onnxruntime")
DEFAULT_GRAPHS = ("dit",)
MIN_OPSET = 19                    # QuantizeLinear with FLOAT8E4M3FN / per-axis INT8 in one opset for both
# Relative RMS error of a graph's output against FP32 on the calibration inputs. On the bundled default
# (README "INT8 / FP8") 3e-2 kept 5 / 7 of the DiTs' 116 / 114 layers FP32 and measured 46-53 dB mean
# fused-image PSNR against FP32 on held-out pairs (35.8 dB the worst pair); 5e-2 kept 3 / 0 and measured
# 46-53 dB (35.3 dB the worst).
DEFAULT_GRAPH_TOLERANCE = 3e-2
DEFAULT_LAYER_TOLERANCE = 2e-2    # one layer alone may cost at most this
SENSITIVITY_ROWS = 16             # calibration rows (windows) each layer's sensitivity is measured on
BATCH_ROWS = 32                   # rows per calibration forward
ACCURACY_SLACK = 1.5              # verify: ONNX Runtime may differ from the fake-quant model a little
# ONNX Runtime vs ModelOpt's fake-quantized PyTorch model at the verify shapes (seeded random inputs, other
# sizes than the export example), relative RMS: the same quantized arithmetic up to summation order and
# values on rounding boundaries; measured <= 1e-3 on the DiTs. A deep convolution stack (a VAE) turns
# the ~1e-7 float differences between PyTorch and ONNX Runtime kernels into whole quantization steps
# wherever a value sits on a rounding boundary, layer after layer: its ONNX Runtime output is then
# another quantization of the FP32 graph, as close to it as the fake-quant one (measured: 2.7 % vs
# 2.7 % on the default VAE decoder) but not to it. Either passes: a wrong scale, axis or transpose fails
# both by far.
FAKE_QUANT_PARITY = 1e-2
FAKE_QUANT_PEER = 1.5             # ... or ONNX Runtime at most this much farther from FP32 than fake quant
FP8_MAX = 448.0                   # largest FLOAT8E4M3FN value
MODELOPT_MIN = "0.47"

# Layer roles (what a Linear / Conv does in the graph) and which roles each level quantizes.
ROLES = ("conv", "ffn", "qkv", "attn_out", "adaln", "router", "embed", "output", "other")
LEVEL_ROLES = {
    "conv": {"conv"},
    "ffn": {"conv", "ffn"},
    "qkv": {"conv", "ffn", "qkv", "attn_out"},
    "all-linear": set(ROLES),
}
INSTALL_HINT = "pip install 'latentfuse[quant]'"


# ------------------------------------------------------------------------------ ModelOpt, lazily
def require_modelopt(precision: str = "int8"):
    """``modelopt.torch.quantization``, or a one-line error saying how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # "transformers X is not tested with modelopt ..."
            import modelopt.torch.quantization as mtq
    except ImportError:
        raise MissingDependencyError("nvidia-modelopt", extra="quant",
                                     purpose=f"--precision {precision} (post-training quantization)") from None
    return mtq


def modelopt_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-modelopt")
    except PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------ options
@dataclass
class QuantOptions:
    """What ``latentfuse export --precision int8|fp8`` asks for."""

    precision: str = "int8"
    level: str = DEFAULT_LEVEL
    graphs: tuple[str, ...] = DEFAULT_GRAPHS        # kinds: dit, vae_encoder, vae_decoder
    calibration_samples: int = 24
    calibration_data: tuple = ()                   # export.calib_inputs.PairSource, or "TASK=DIR"
    seed: int = 0
    graph_tolerance: float = DEFAULT_GRAPH_TOLERANCE
    layer_tolerance: float = DEFAULT_LAYER_TOLERANCE
    sensitivity_rows: int = SENSITIVITY_ROWS
    target: str = "tensorrt"

    def __post_init__(self):
        from latentfuse.export.calib_inputs import PairSource, parse_source

        problems = []
        if self.precision not in QUANTIZED_PRECISIONS:
            problems.append(f"precision must be one of {', '.join(QUANTIZED_PRECISIONS)}, got {self.precision!r}")
        if self.level not in LEVELS:
            problems.append(f"quantization level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        graphs = tuple(dict.fromkeys(str(g).strip() for g in self.graphs if str(g).strip()))
        bad = [g for g in graphs if g not in QUANTIZABLE_KINDS]
        if bad or not graphs:
            problems.append(f"quantized graphs must be among {', '.join(QUANTIZABLE_KINDS)}, got {', '.join(bad) or 'none'}")
        self.graphs = graphs
        if int(self.calibration_samples) < 1:
            problems.append(f"--calibration-samples must be at least 1, got {self.calibration_samples}")
        for name in ("graph_tolerance", "layer_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                problems.append(f"{name.replace('_', ' ')} must be a positive number, got {value!r}")
        if self.target not in TARGETS:
            problems.append(f"quantization target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        elif self.target == "onnxruntime" and self.precision == "fp8":
            problems.append("ONNX Runtime's CPU provider has no FP8 kernels (it emulates FP8 Q/DQ in FP32): "
                            "--quant-target onnxruntime is for int8")
        if self.sensitivity_rows < 1:
            problems.append(f"sensitivity rows must be at least 1, got {self.sensitivity_rows}")
        if problems:
            raise LatentfuseError("invalid quantization settings: " + "; ".join(problems))
        self.calibration_data = tuple(s if isinstance(s, PairSource) else parse_source(s)
                                      for s in self.calibration_data)

    def quantizes(self, kind: str) -> bool:
        return kind in self.graphs


# ------------------------------------------------------------------------------ layers
def layer_role(name: str, module) -> str:
    """The role of a quantizable module by its path in the graph wrapper (``dit.blocks.0.attn.qkv``)."""
    from torch import nn

    parts = name.split(".")
    leaf = parts[-1]
    if isinstance(module, nn.Conv2d):
        return "conv"
    if ".moe.experts." in name or ".moe.shared." in name:
        return "ffn"
    if leaf == "router":
        return "router"
    if leaf in ("qkv", "to_q", "to_k", "to_v"):
        return "qkv"
    if (leaf == "proj" and parts[-2:-1] == ["attn"]) or "to_out" in parts:
        return "attn_out"
    if "adaln" in parts:
        return "adaln"
    if any(p in ("x_embed", "cond_embed", "t_embed", "pos_embed", "prompt_proj") for p in parts):
        return "embed"
    if name.endswith("final.linear"):
        return "output"
    return "other"


def candidate_layers(module, level: str) -> dict[str, str]:
    """``{layer path: role}`` of every ``nn.Linear`` / ``nn.Conv2d`` of ``module`` that ``level`` quantizes."""
    from torch import nn

    roles = LEVEL_ROLES[level]
    out = {}
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            role = layer_role(name, sub)
            if role in roles:
                out[name] = role
    return out


def quant_config(precision: str, layers: Iterable[str]) -> dict:
    """ModelOpt config quantizing the weights and inputs of exactly ``layers`` (``max`` calibration)."""
    if precision == "int8":
        weight, act = {"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None}
    else:
        weight, act = {"num_bits": (4, 3), "axis": None}, {"num_bits": (4, 3), "axis": None}
    entries = [{"quantizer_name": "*", "enable": False}]
    for layer in layers:
        entries.append({"quantizer_name": f"{layer}.weight_quantizer", "cfg": dict(weight)})
        entries.append({"quantizer_name": f"{layer}.input_quantizer", "cfg": dict(act)})
    return {"quant_cfg": entries, "algorithm": "max"}


def _quiet():
    """ModelOpt prints a line per detected MoE and a quantizer count; the CLI shows its own progress."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


# ------------------------------------------------------------------------------ feeds and errors
def torch_feeds(spec, feeds: Sequence[Mapping[str, np.ndarray]], max_rows: int = BATCH_ROWS) -> list[tuple]:
    """Recorded numpy feeds -> tuples of tensors in the spec's input order, stacked into batches."""
    import torch

    from latentfuse.export.calib_inputs import stack_feeds

    names = spec.input_names
    out = []
    for feed in stack_feeds(feeds, max_rows):
        missing = [n for n in names if n not in feed]
        if missing:
            raise LatentfuseError(f"calibration feed of {spec.name!r} lacks inputs {missing}")
        out.append(tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names))
    return out


@dataclass
class ErrorStats:
    """Output error against a reference over a set of feeds: relative RMS (||y - r|| / ||r||) and max |y - r|."""

    rel_rms: float
    max_abs: float
    ref_rms: float = 0.0
    nonfinite: int = 0

    def to_dict(self) -> dict:
        return {"rel_rms": _num(self.rel_rms), "max_abs": _num(self.max_abs), "ref_rms": _num(self.ref_rms),
                "nonfinite": int(self.nonfinite)}


def _num(x: float) -> float | str:
    return float(f"{x:.4g}") if math.isfinite(x) else "inf"


class _ErrorSum:
    def __init__(self):
        self.sq = self.ref_sq = self.max_abs = 0.0
        self.n = self.nonfinite = 0

    def add(self, y: np.ndarray, r: np.ndarray) -> None:
        y = np.asarray(y, np.float64)
        r = np.asarray(r, np.float64)
        bad = ~np.isfinite(y)
        self.nonfinite += int(bad.sum())
        d = np.where(bad, 0.0, y - r)
        self.sq += float((d * d).sum())
        self.ref_sq += float((r * r).sum())
        self.max_abs = max(self.max_abs, float(np.abs(d).max()) if d.size else 0.0)
        self.n += r.size

    def stats(self) -> ErrorStats:
        rel = math.sqrt(self.sq / self.ref_sq) if self.ref_sq > 0 else (0.0 if self.sq == 0 else math.inf)
        if self.nonfinite:
            rel = math.inf
        return ErrorStats(rel, self.max_abs, math.sqrt(self.ref_sq / max(self.n, 1)), self.nonfinite)


def torch_error(module, batches: Sequence[tuple], references: Sequence) -> ErrorStats:
    import torch

    acc = _ErrorSum()
    with torch.no_grad():
        for args, ref in zip(batches, references):
            acc.add(module(*args).float().numpy(), ref)
    return acc.stats()


# ------------------------------------------------------------------------------ calibrated graph
class QuantizedGraph:
    """One graph's FP32 module, its ModelOpt-calibrated copy and the layer switches."""

    def __init__(self, spec, module, precision: str, level: str, batches: Sequence[tuple]):
        import torch
        from torch import nn

        mtq = require_modelopt(precision)
        self.spec, self.precision, self.level = spec, precision, level
        self.fp32 = module.eval()
        if hasattr(self.fp32, "dit"):
            # quantizers wrap nn.Linear forwards: the dense MoE runs every expert through its Linears
            self.fp32.dit.set_moe_dispatch("dense")
        called = _called_modules(self.fp32, batches[0]) if batches else set()
        self.candidates = {n: r for n, r in candidate_layers(self.fp32, level).items() if n in called}
        if not self.candidates:
            raise LatentfuseError(f"graph {spec.name!r} has no {level!r} layers to quantize "
                                  f"(levels: {', '.join(LEVELS)})")
        self.batches = list(batches)
        with torch.no_grad():
            self.references = [self.fp32(*args).float().numpy() for args in self.batches]
        model = copy.deepcopy(self.fp32)

        def forward_loop(m):
            with torch.no_grad():
                for args in self.batches:
                    m(*args)

        with _quiet():
            self.model = mtq.quantize(model, quant_config(precision, self.candidates), forward_loop).eval()
        self.layers = {}
        for name in self.candidates:
            sub = self.model.get_submodule(name)
            if not isinstance(sub, (nn.Linear, nn.Conv2d)) or not hasattr(sub, "weight_quantizer"):
                raise LatentfuseError(f"ModelOpt did not wrap layer {name!r} of {spec.name!r}")
            self.layers[name] = sub
        self.enabled = set(self.layers)
        # an all-zero weight (a zero-initialised, untrained gate) has no range to quantize to
        self.zero_weights = {n for n in self.layers if not float(np.abs(self.amax(n)).max()) > 0}

    def enable(self, layers: Iterable[str]) -> None:
        """Quantize exactly ``layers`` (weights and inputs); the rest run in FP32."""
        wanted = set(layers)
        for name, sub in self.layers.items():
            for q in (sub.weight_quantizer, sub.input_quantizer):
                q.enable() if name in wanted else q.disable()
        self.enabled = wanted & set(self.layers)

    def error(self, batches=None, references=None) -> ErrorStats:
        return torch_error(self.model, batches or self.batches, references or self.references)

    def amax(self, name: str, which: str = "weight") -> np.ndarray:
        q = getattr(self.layers[name], f"{which}_quantizer")
        return np.asarray(q.amax.detach().float().cpu().numpy())


def _called_modules(module, args: tuple) -> set[str]:
    """Names of the submodules one forward of ``module`` calls (a VAE wrapper holds both halves)."""
    import torch

    names = {id(m): n for n, m in module.named_modules()}
    called: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: called.add(names[id(mod)])) for m in module.modules()]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for h in hooks:
            h.remove()
    return called


@dataclass
class LayerPlan:
    """Which candidate layers are quantized, which are not and why, and the errors behind it."""

    quantized: list[str]
    excluded: dict[str, str]
    sensitivity: dict[str, float]
    roles: dict[str, str]
    steps: list[dict] = field(default_factory=list)
    error: ErrorStats | None = None


def choose_layers(graph: QuantizedGraph, layer_tolerance: float, graph_tolerance: float, *,
                  sensitivity_rows: int = SENSITIVITY_ROWS, seed: int = 0, progress: bool | str = False) -> LayerPlan:
    """Measured exclusions (see the module docstring, step 3); leaves ``graph`` with the plan enabled."""
    from tqdm.auto import tqdm

    order = sorted(graph.layers)
    # sensitivity on a fixed subset of the calibration rows (each layer alone)
    rows, sub, sub_refs = 0, [], []
    for i in np.random.default_rng(seed).permutation(len(graph.batches)):
        sub.append(graph.batches[i])
        sub_refs.append(graph.references[i])
        rows += int(graph.batches[i][0].shape[0])
        if rows >= sensitivity_rows:
            break
    sensitivity = {}
    desc = f"{progress}: layer sensitivity" if isinstance(progress, str) else "layer sensitivity"
    for name in tqdm(order, desc=desc, unit="layer", disable=not progress, leave=False):
        graph.enable([name])
        sensitivity[name] = graph.error(sub, sub_refs).rel_rms
    excluded = {name: f"alone it adds {_fmt(e)} relative error, over the layer tolerance {layer_tolerance:g}"
                for name, e in sensitivity.items() if not e <= layer_tolerance}
    excluded.update({name: "its weights are all zero: nothing to quantize" for name in graph.zero_weights})
    quantized = [n for n in order if n not in excluded]
    graph.enable(quantized)
    error = graph.error()
    steps = [{"quantized": len(quantized), "rel_rms": _num(error.rel_rms)}]
    while quantized and not error.rel_rms <= graph_tolerance:
        worst = max(quantized, key=lambda n: sensitivity[n])
        quantized.remove(worst)
        excluded[worst] = (f"excluded to bring the graph error under {graph_tolerance:g} ({_fmt(error.rel_rms)} "
                           f"with it; alone it adds {_fmt(sensitivity[worst])})")
        graph.enable(quantized)
        error = graph.error()
        steps.append({"quantized": len(quantized), "excluded": worst, "rel_rms": _num(error.rel_rms)})
    return LayerPlan(quantized, excluded, {k: _num(v) for k, v in sensitivity.items()}, dict(graph.candidates),
                     steps, error)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "inf"


# ------------------------------------------------------------------------------ ONNX post-processing
def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def _set_attr(node, name: str, value) -> None:
    import onnx

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {}
    for init in graph.initializer:
        if init.data_type not in (17, 18, 19, 20):     # numpy has no FP8: skip (never read back here)
            values[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
    return values


def _fp8_tensor(values: np.ndarray, name: str):
    """A FLOAT8E4M3FN initializer of ``values`` (already scaled), round to nearest even, saturating."""
    import onnx
    import torch

    t = torch.from_numpy(np.ascontiguousarray(np.clip(np.asarray(values, np.float32), -FP8_MAX, FP8_MAX)))
    raw = t.to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = onnx.TensorProto.FLOAT8E4M3FN
    tensor.dims.extend(raw.shape)
    tensor.raw_data = raw.tobytes()
    return tensor


def _fp8_zero(name: str):
    return _fp8_tensor(np.zeros((), np.float32), name)


def convert_fp8_ops(model) -> int:
    """ModelOpt's ``trt::TRT_FP8QuantizeLinear`` / ``TRT_FP8DequantizeLinear`` -> standard ONNX
    QuantizeLinear (``saturate=1``) / DequantizeLinear with a FLOAT8E4M3FN zero point (opset >= 19)."""
    graph = model.graph
    count = 0
    zero_name = "fp8_zero_point"
    fp8_outputs = set()
    for node in graph.node:
        if node.op_type in ("TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"):
            quant = node.op_type == "TRT_FP8QuantizeLinear"
            node.op_type = "QuantizeLinear" if quant else "DequantizeLinear"
            node.domain = ""
            while len(node.input) < 3:
                node.input.append(zero_name)
            if quant:
                _set_attr(node, "saturate", 1)
                fp8_outputs.add(node.output[0])
            count += 1
    if count:
        graph.initializer.append(_fp8_zero(zero_name))
        keep = [v for v in graph.value_info if v.name not in fp8_outputs]   # exporter typed them uint8
        del graph.value_info[:]
        graph.value_info.extend(keep)
        keep = [o for o in model.opset_import if o.domain != "trt"]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return count


def fold_weight_quantizers(model) -> dict[str, str]:
    """Replace ``QuantizeLinear(W) -> DequantizeLinear`` on a constant weight by the quantized weight
    (INT8, or FP8 by the zero point's type) stored under W's name, read by the DequantizeLinear; a
    Transpose between the DequantizeLinear and MatMul / Gemm consumers is folded into the stored weight
    (and the DequantizeLinear's axis). Returns ``{weight name: "int8" | "fp8"}``."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    values = _constants(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    fp8_zero = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN}
    remove, folded = [], {}
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        weight = q.input[0]
        if weight not in inits or weight in folded:
            continue
        outs = consumers.get(q.output[0], [])
        if len(outs) != 1 or outs[0].op_type != "DequantizeLinear":
            continue
        dq = outs[0]
        w = values[weight].astype(np.float32)
        scale = values[q.input[1]].astype(np.float32)
        axis = _attr(q, "axis", 1)
        if scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        fp8 = len(q.input) > 2 and q.input[2] in fp8_zero
        if fp8:
            stored = np.asarray(w / scale, np.float32)
        else:
            zp = values[q.input[2]] if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
            info = np.iinfo(zp.dtype)
            stored = np.clip(np.rint(w / scale) + zp.astype(np.float32).reshape(scale.shape if zp.size > 1 else ()),
                             info.min, info.max).astype(zp.dtype)
        after = consumers.get(dq.output[0], [])
        if (len(after) == 1 and after[0].op_type == "Transpose"
                and all(c.op_type in ("MatMul", "Gemm") for c in consumers.get(after[0].output[0], []))):
            t = after[0]
            perm = list(_attr(t, "perm", list(range(w.ndim))[::-1]))
            stored = np.ascontiguousarray(np.transpose(stored, perm))
            if scale.size > 1:
                _set_attr(dq, "axis", perm.index(axis if axis >= 0 else axis + w.ndim))
            for c in consumers.get(t.output[0], []):
                for i, x in enumerate(c.input):
                    if x == t.output[0]:
                        c.input[i] = dq.output[0]
            remove.append(t)
        others = [c for c in consumers.get(weight, []) if c is not q]
        name = weight if not others else weight + "_quantized"
        new = _fp8_tensor(stored, name) if fp8 else numpy_helper.from_array(stored, name)
        if name == weight:
            inits[weight].CopyFrom(new)
        else:
            graph.initializer.append(new)
        dq.input[0] = name
        remove.append(q)
        folded[name] = "fp8" if fp8 else "int8"
    if remove:
        ids = {id(n) for n in remove}
        kept = [n for n in graph.node if id(n) not in ids]
        del graph.node[:]
        graph.node.extend(kept)
        used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
        kept_inits = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
    return folded


def add_fp8_conv_weights(model, amax: Mapping[str, float]) -> list[str]:
    """FP8 weights for the convolutions whose weight quantizers were off during export: ``amax`` maps
    a weight initializer name (``<layer>.weight``) to its calibrated max |w|; each such Conv weight is
    stored as FLOAT8E4M3FN (per-tensor scale amax / 448) behind a DequantizeLinear."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    done = []
    new_nodes = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in amax:
            continue
        name = node.input[1]
        if name not in inits:
            raise LatentfuseError(f"FP8 export: the weight {name!r} of Conv {node.name!r} is not an initializer")
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        scale = np.float32(max(float(amax[name]), 1e-12) / FP8_MAX)
        inits[name].CopyFrom(_fp8_tensor(w / scale, name))
        scale_name, zp_name, out = f"{name}_scale", f"{name}_zero_point", f"{name}_dequantized"
        graph.initializer.append(numpy_helper.from_array(np.asarray(scale, np.float32), scale_name))
        graph.initializer.append(_fp8_zero(zp_name))
        new_nodes.append(onnx.helper.make_node("DequantizeLinear", [name, scale_name, zp_name], [out],
                                               name=f"{node.name}/weight_quantizer/DequantizeLinear"))
        node.input[1] = out
        done.append(name)
    if new_nodes:
        nodes = list(new_nodes) + list(graph.node)       # DQ of constants first: still topological
        del graph.node[:]
        graph.node.extend(nodes)
    return done


def postprocess(model, precision: str, fp8_conv_amax: Mapping[str, float] | None = None) -> dict[str, str]:
    """Every step of the module docstring's step 4 on an exported model; returns the quantized weights."""
    if precision == "fp8":
        convert_fp8_ops(model)
    folded = fold_weight_quantizers(model)
    if precision == "fp8" and fp8_conv_amax:
        for name in add_fp8_conv_weights(model, fp8_conv_amax):
            folded[name] = "fp8"
    # the exporter's shape / type hints of Q/DQ outputs predate the folding (transposed weights, FP8
    # types): drop them, shape inference recomputes them
    qdq = {o for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for o in n.output}
    kept = [v for v in model.graph.value_info if v.name not in qdq]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return folded


def graph_quantized_layers(model) -> dict[str, dict]:
    """``{layer: {"weight": "int8"|"fp8", "activation": bool}}`` from a Q/DQ graph: a layer is quantized
    where a DequantizeLinear reads its INT8 / FP8 weight ``<layer>.weight``; its activation is quantized
    where the node consuming that weight reads its other input from a DequantizeLinear too."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    types = {i.name: i.data_type for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    names = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "int8", onnx.TensorProto.FLOAT8E4M3FN: "fp8"}
    out = {}
    for dq in (n for n in graph.node if n.op_type == "DequantizeLinear"):
        w = dq.input[0]
        if types.get(w) not in names or not w.removesuffix("_quantized").endswith(".weight"):
            continue
        layer = w.removesuffix("_quantized")[: -len(".weight")]
        act = False
        for op in consumers.get(dq.output[0], []):
            others = [x for x in op.input if x and x != dq.output[0] and x in producer]
            act = act or any(producer[x].op_type == "DequantizeLinear" for x in others[:1])
        out[layer] = {"weight": names[types[w]], "activation": act}
    return out


# ------------------------------------------------------------------------------ export
def export_quantized(graph: QuantizedGraph, out_dir: str | os.PathLike, opset: int) -> "ExportedGraph":
    """Export the calibrated module (its current layer plan) to ``out_dir/<name>.onnx`` (+ ``.data``)."""
    import onnx
    import torch

    from latentfuse.export.checks import check_symbolic_dims
    from latentfuse.export.onnx import export_graph, save_with_external_data

    if opset < MIN_OPSET:
        raise LatentfuseError(f"quantized export needs ONNX opset >= {MIN_OPSET} (QuantizeLinear with per-axis INT8 "
                              f"and FLOAT8E4M3FN), got --opset {opset}")
    spec = graph.spec
    out_dir = Path(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.name}.quant-", dir=out_dir))
    conv_amax, switched = {}, []
    try:
        if graph.precision == "fp8":
            # ModelOpt's FP8 weight op has no static output shape, which the TorchScript Conv symbolic
            # needs: export those weights unquantized and add their DequantizeLinear afterwards.
            for name, sub in graph.layers.items():
                if isinstance(sub, torch.nn.Conv2d) and sub.weight_quantizer.is_enabled:
                    conv_amax[f"{name}.weight"] = float(graph.amax(name).max())
                    sub.weight_quantizer.disable()
                    switched.append(sub.weight_quantizer)
        with _quiet():
            raw = export_graph(spec, graph.model, stage, opset=min(opset, 20), exporter="torchscript", check=False)
        model = onnx.load(str(raw.path))
        postprocess(model, graph.precision, conv_amax)
        final = out_dir / f"{spec.name}.onnx"
        files = save_with_external_data(model, final)
        del model
        check_symbolic_dims(final, spec)
        raw.path, raw.files = final, files
        return raw
    finally:
        for q in switched:
            q.enable()
        shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------------------ ONNX Runtime
def ort_session(path: str | os.PathLike, optimized: str | os.PathLike | None = None, threads: int | None = None):
    from latentfuse.runtime.backends.onnxruntime_backend import ort_session as session

    return session(path, optimization="all", threads=threads, optimized=optimized, purpose="quantized graphs")


def ort_outputs(session, spec, batches: Sequence[tuple]) -> list[np.ndarray]:
    names = spec.input_names
    out = []
    for args in batches:
        feed = {n: (a.numpy() if hasattr(a, "numpy") else np.asarray(a)) for n, a in zip(names, args)}
        out.append(np.asarray(session.run([spec.output_names[0]], feed)[0], np.float32))
    return out


INTEGER_KERNELS = ("MatMulIntegerToFloat", "MatMulInteger", "QLinearMatMul", "QGemm", "QLinearConv", "ConvInteger",
                   "DynamicQuantizeMatMul", "QAttention")


def ort_kernel_report(path: str | os.PathLike, layers: Iterable[str] = ()) -> dict:
    """Which quantized layers ONNX Runtime's CPU provider runs as integer kernels after its graph
    optimisation (``ORT_ENABLE_ALL``) and which it dequantizes (a DequantizeLinear in front of an FP32
    MatMul / Conv), read from the optimised model it writes."""
    import onnx

    known = set(layers)
    with tempfile.TemporaryDirectory(prefix="latentfuse-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort_session(path, optimized)
        model = onnx.load(str(optimized), load_external_data=False)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}

    def layer_of(tensor: str) -> str | None:
        base = tensor.removesuffix("_quantized")
        if base.endswith(".weight"):
            return base[: -len(".weight")]
        return None

    integer: dict[str, str] = {}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in INTEGER_KERNELS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for x in node.input:
                layer = layer_of(x)
                if layer:
                    integer[layer] = node.op_type
                    break
    dequantized: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in ("MatMul", "Conv", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm") and len(node.input) > 1:
            src = producer.get(node.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                layer = layer_of(src.input[0])
                if layer and layer not in integer:
                    dequantized[layer] = node.op_type
    q_left = sum(1 for n in graph.node if n.op_type == "QuantizeLinear")
    dq_left = sum(1 for n in graph.node if n.op_type == "DequantizeLinear")
    return {"integer_kernels": counts, "integer_layers": dict(sorted(integer.items())),
            "dequantized_layers": dict(sorted(dequantized.items())),
            "unattributed": sorted(known - set(integer) - set(dequantized)) if known else [],
            "quantize_nodes": q_left, "dequantize_nodes": dq_left}


# ------------------------------------------------------------------------------ the bundle step
def quantize_bundle_graphs(tmp: Path, results: dict, specs: Mapping, components, options: QuantOptions, *,
                           opset: int, progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Replace the chosen graphs of a bundle being written in ``tmp`` by quantized ones.

    ``results``: graph name -> :class:`latentfuse.export.onnx.ExportedGraph` of the FP32 export (updated in place).
    Returns ``{"graphs": {name: manifest "quantization" entry}, "calibration": provenance}``.
    """
    from tqdm.auto import tqdm

    from latentfuse.export.calib_inputs import calibration_inputs

    require_modelopt(options.precision)
    log = log or (lambda s: tqdm.write(s))
    targets = [n for n, s in specs.items() if options.quantizes(s.kind)]
    if not targets:
        raise LatentfuseError(f"the model has no graph of kind {', '.join(options.graphs)} to quantize")
    heads = [s.head for s in specs.values() if s.kind == "dit"]
    recorded = calibration_inputs(components, heads, sources=options.calibration_data or None,
                                  samples=options.calibration_samples, seed=options.seed, progress=progress)
    entries = {}
    stage = Path(tempfile.mkdtemp(prefix=".quant-", dir=tmp))
    try:
        for name in targets:
            spec = specs[name]
            feeds = recorded.feeds.get(name) or []
            if not feeds:
                raise LatentfuseError(f"calibration recorded no inputs for graph {name!r}")
            batches = torch_feeds(spec, feeds)
            graph = QuantizedGraph(spec, spec.module(components), options.precision, options.level, batches)
            plan = choose_layers(graph, options.layer_tolerance, options.graph_tolerance,
                                 sensitivity_rows=options.sensitivity_rows, seed=options.seed,
                                 progress=name if progress else False)
            if not plan.quantized:
                entries[name] = _entry(graph, plan, options, None, None, None, None)
                entries[name]["policy"] = "fp32"
                log(f"  {name}: every {options.level} layer stays FP32 (no layer within the tolerances)")
                continue
            result = export_quantized(graph, stage, opset)
            if options.target == "onnxruntime":
                result = _keep_cpu_dequantized_fp32(graph, plan, result, stage, opset, log)
                if not plan.quantized:
                    entries[name] = _entry(graph, plan, options, None, None, None, None)
                    entries[name]["policy"] = "fp32"
                    log(f"  {name}: ONNX Runtime runs none of its quantized layers as an integer kernel: FP32")
                    continue
            session = ort_session(result.path)
            ort_out = ort_outputs(session, spec, graph.batches)
            acc_fp32, acc_fq = _ErrorSum(), _ErrorSum()
            fake = _fake_outputs(graph)
            for y, r, f in zip(ort_out, graph.references, fake):
                acc_fp32.add(y, r)
                acc_fq.add(y, f)
            kernels = ort_kernel_report(result.path, plan.quantized) if options.precision == "int8" else None
            entries[name] = _entry(graph, plan, options, acc_fp32.stats(), acc_fq.stats(), kernels,
                                   graph_quantized_layers(str(result.path)))
            parity = fake_quant_parity(graph, result.path)
            entries[name]["parity_vs_fake_quant"] = {
                "bound": FAKE_QUANT_PARITY, "metric": "relative RMS",
                "rule": f"ONNX Runtime within {FAKE_QUANT_PARITY:g} of the fake-quant model, or at most "
                        f"{FAKE_QUANT_PEER:g}x its distance from FP32", "rows": parity}
            bad = [r for r in parity if not r["passed"]]
            if bad:
                raise LatentfuseError(f"graph {name!r}: the exported Q/DQ graph on ONNX Runtime differs from ModelOpt's "
                                      f"fake-quantized model by {bad[0]['rel_rms']} (relative RMS) at {bad[0]['dims']} "
                                      f"and from FP32 by {bad[0]['onnxruntime_vs_fp32']} (fake quant: "
                                      f"{bad[0]['fake_quant_vs_fp32']})")
            for f in results[name].files:
                (tmp / f).unlink(missing_ok=True)
            written = []
            for f in result.files:
                os.replace(stage / f, tmp / f)
                written.append(f)
            results[name].files = written
            results[name].exporter = "torchscript"
            results[name].fallback_reason = None
            log(f"  {name}: {options.precision} {len(plan.quantized)}/{len(graph.candidates)} {options.level} layers, "
                f"error vs fp32 {_fmt(plan.error.rel_rms)} (torch) / {_fmt(acc_fp32.stats().rel_rms)} (onnxruntime)")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"graphs": entries, "calibration": recorded.provenance()}


def fake_quant_parity(graph: QuantizedGraph, path: str | os.PathLike, seed: int = 1) -> list[dict]:
    """ONNX Runtime on the exported graph against the fake-quantized PyTorch model it was exported from,
    at :data:`latentfuse.export.graphs.DEFAULT_SHAPES` (batch, aspect ratios and prompt lengths other than the
    export example): the Q/DQ graph is the calibrated model at every shape, not just the traced one."""
    import torch

    from latentfuse.export.graphs import DEFAULT_SHAPES

    spec = graph.spec
    session = ort_session(path)
    rows = []
    for shape in DEFAULT_SHAPES:
        inputs = spec.sample_inputs(shape.batch, shape.height, shape.width, shape.text_length, seed=seed)
        with torch.no_grad():
            ref = graph.model(*inputs.values()).float().numpy()
            fp32 = graph.fp32(*inputs.values()).float().numpy()
        out = np.asarray(session.run([spec.output_names[0]], {k: v.numpy() for k, v in inputs.items()})[0])
        if out.shape != ref.shape:
            raise LatentfuseError(f"graph {spec.name!r}: ONNX Runtime output {out.shape} != PyTorch {ref.shape} at "
                                  f"{shape.describe()}")
        stats, ort_fp32, fq_fp32 = _ErrorSum(), _ErrorSum(), _ErrorSum()
        stats.add(out, ref)
        ort_fp32.add(out, fp32)
        fq_fp32.add(ref, fp32)
        stats, ort_fp32, fq_fp32 = stats.stats(), ort_fp32.stats(), fq_fp32.stats()
        passed = stats.rel_rms <= FAKE_QUANT_PARITY or ort_fp32.rel_rms <= FAKE_QUANT_PEER * fq_fp32.rel_rms
        rows.append({"shape": shape.label, "dims": shape.describe(), "rel_rms": _num(stats.rel_rms),
                     "max_abs": _num(stats.max_abs), "onnxruntime_vs_fp32": _num(ort_fp32.rel_rms),
                     "fake_quant_vs_fp32": _num(fq_fp32.rel_rms), "passed": bool(passed)})
    return rows


def _keep_cpu_dequantized_fp32(graph: QuantizedGraph, plan: LayerPlan, result, stage: Path, opset: int, log):
    """``--quant-target onnxruntime``: the layers ONNX Runtime's CPU provider would run dequantized
    (:func:`ort_kernel_report` of the export) stay FP32; the graph is measured and exported again, until
    none is left (a convolution runs as QLinearConv only while the next one quantizes its output)."""
    slow_all = []
    for _ in range(len(plan.quantized) + 1):
        kernels = ort_kernel_report(result.path, plan.quantized)
        slow = sorted(set(kernels["dequantized_layers"]) & set(plan.quantized))
        if not slow:
            break
        for name in slow:
            plan.quantized.remove(name)
            plan.excluded[name] = (f"ONNX Runtime's CPU provider runs it in FP32 behind a DequantizeLinear "
                                   f"({kernels['dequantized_layers'][name]}): its Q/DQ would only cost time "
                                   f"(--quant-target onnxruntime)")
        slow_all += slow
        graph.enable(plan.quantized)
        if not plan.quantized:
            break
        result = export_quantized(graph, stage, opset)
    if slow_all:
        plan.error = graph.error()
        plan.steps.append({"quantized": len(plan.quantized), "excluded_for_target": sorted(slow_all),
                           "rel_rms": _num(plan.error.rel_rms)})
        log(f"  {graph.spec.name}: {len(slow_all)} layers ONNX Runtime runs dequantized stay FP32 "
            f"(--quant-target onnxruntime)")
    return result


def _fake_outputs(graph: QuantizedGraph) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [graph.model(*args).float().numpy() for args in graph.batches]


def _entry(graph: QuantizedGraph, plan: LayerPlan, options: QuantOptions, ort_fp32: ErrorStats | None,
           ort_fake: ErrorStats | None, kernels: dict | None, in_graph: dict | None) -> dict:
    scheme = ("int8: weights per output channel, activations per tensor, symmetric" if options.precision == "int8"
              else "fp8 e4m3: weights and activations per tensor")
    entry = {
        "precision": options.precision,
        "policy": "quantized",
        "scheme": f"{scheme}; max calibration (ModelOpt mtq.quantize); explicit QuantizeLinear/DequantizeLinear",
        "level": options.level,
        "target": options.target,
        "modelopt": modelopt_version(),
        "candidates": len(graph.candidates),
        "quantized_layers": list(plan.quantized),
        "excluded_layers": dict(plan.excluded),
        "roles": dict(plan.roles),
        "sensitivity": dict(plan.sensitivity),
        "exclusion_steps": list(plan.steps),
        "tolerance": {"layer": options.layer_tolerance, "graph": options.graph_tolerance,
                      "metric": "relative RMS error of the graph output against FP32 on the calibration inputs"},
        "error": {"fake_quant_vs_fp32": plan.error.to_dict() if plan.error else None},
        "calibration_rows": int(sum(int(b[0].shape[0]) for b in graph.batches)),
    }
    if ort_fp32 is not None:
        entry["error"]["onnxruntime_vs_fp32"] = ort_fp32.to_dict()
        entry["error"]["onnxruntime_vs_fake_quant"] = ort_fake.to_dict()
    if kernels is not None:
        entry["onnxruntime_cpu"] = kernels
    if in_graph is not None:
        missing = sorted(set(plan.quantized) - set(in_graph))
        extra = sorted(set(in_graph) - set(plan.quantized))
        if missing or extra:
            raise LatentfuseError(f"graph {graph.spec.name!r}: the exported Q/DQ nodes do not match the plan "
                                  f"(missing {missing[:4]}, unexpected {extra[:4]})")
    return entry


# ------------------------------------------------------------------------------ accuracy report
@dataclass
class AccuracyRow:
    graph: str
    precision: str
    rows: int
    rel_rms: float
    max_abs: float
    recorded: float | None
    bound: float
    passed: bool
    source: str


def graph_accuracy(bundle_dir: str | os.PathLike, components, *, manifest: dict | None = None,
                   samples: int | None = None, progress: bool = True) -> tuple[list[AccuracyRow], str]:
    """Per quantized graph of a bundle: ONNX Runtime output against the FP32 PyTorch graph on
    calibration inputs re-recorded as the manifest's ``quantization.calibration`` describes them (the
    shipped sample pairs when its folders are gone). Returns the rows and where the inputs came from."""
    from latentfuse.export.calib_inputs import PairSource, calibration_inputs
    from latentfuse.runtime.manifest import load_manifest
    from latentfuse.export.graphs import graph_specs

    root = Path(bundle_dir)
    manifest = manifest or load_manifest(root, verify_hashes=False)
    quantized = {n: e for n, e in manifest["graphs"].items() if e.get("precision") in QUANTIZED_PRECISIONS}
    if not quantized:
        return [], ""
    section = manifest.get("quantization") or {}
    prov = section.get("calibration") or {}
    sources, note = [], ""
    for text in prov.get("sources", []):
        task, _, path = str(text).partition("=")
        if path and Path(path).is_dir():
            sources.append(PairSource(task, Path(path)))
        elif path:
            note = f"{path} is gone: the shipped sample pairs instead"
            sources = []
            break
    n = int(samples or prov.get("samples") or 6)
    heads = [e["head"] for e in manifest["graphs"].values() if e.get("kind") == "dit"]
    recorded = calibration_inputs(components, heads, sources=sources or None, samples=n,
                                  seed=int(prov.get("seed", 0)), progress=progress)
    where = ", ".join(recorded.sources) + f"; {n} crops, seed {prov.get('seed', 0)}" + (f" ({note})" if note else "")
    specs = graph_specs(components, heads)
    rows = []
    for name, entry in quantized.items():
        spec = specs[name]
        module = spec.module(components).eval()
        batches = torch_feeds(spec, recorded.feeds.get(name) or [])
        import torch

        with torch.no_grad():
            refs = [module(*a).float().numpy() for a in batches]
        outs = ort_outputs(ort_session(root / entry["file"]), spec, batches)
        acc = _ErrorSum()
        for y, r in zip(outs, refs):
            acc.add(y, r)
        stats = acc.stats()
        q = entry.get("quantization") or {}
        tol = float((q.get("tolerance") or {}).get("graph", DEFAULT_GRAPH_TOLERANCE))
        recorded_err = ((q.get("error") or {}).get("onnxruntime_vs_fp32") or {}).get("rel_rms")
        bound = ACCURACY_SLACK * tol
        rows.append(AccuracyRow(name, entry["precision"], int(sum(b[0].shape[0] for b in batches)), stats.rel_rms,
                                stats.max_abs, recorded_err if isinstance(recorded_err, (int, float)) else None,
                                bound, bool(stats.rel_rms <= bound and not stats.nonfinite), where))
    return rows, where


@dataclass
class FusionRow:
    task: str
    head: str
    pairs: int
    psnr_db: float            # mean over pairs of the fused-image PSNR, quantized bundle vs FP32
    psnr_min_db: float
    qabf_fp32: float
    qabf_quant: float

    @property
    def qabf_change(self) -> float:
        return self.qabf_quant - self.qabf_fp32


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def fusion_accuracy(reference, candidate, pairs: Sequence, heads: Sequence[str], *, seed: int = 0,
                    progress: bool = True) -> list[FusionRow]:
    """Per task and head: fused-image PSNR of ``candidate`` against ``reference`` (two
    :class:`latentfuse.runtime.pipeline.Pipeline`, e.g. the FP32 and INT8 bundles) and both Q^AB/F, over
    ``pairs`` (:class:`latentfuse.export.calib_inputs.CalibrationCrop`: task, a, b, prompt)."""
    from tqdm.auto import tqdm

    from latentfuse.model.metrics import qabf

    scores: dict[tuple[str, str], list] = {}
    jobs = [(p, h) for p in pairs for h in heads]
    for pair, head in tqdm(jobs, desc="fused images", unit="fuse", disable=not progress, leave=False):
        ref = reference(pair.a, pair.b, task=pair.task, prompt=pair.prompt, mode=head, seed=seed).image
        out = candidate(pair.a, pair.b, task=pair.task, prompt=pair.prompt, mode=head, seed=seed).image
        a, b = (np.asarray(x, np.float64) * 255.0 for x in (pair.a, pair.b))
        if a.ndim != b.ndim:
            a = a if a.ndim == 2 else a.mean(-1)
            b = b if b.ndim == 2 else b.mean(-1)
        f_ref, f_out = (np.asarray(x, np.float64) * 255.0 for x in (ref, out))
        if a.ndim == 2 and f_ref.ndim == 3:
            f_ref, f_out = f_ref.mean(-1), f_out.mean(-1)
        elif a.ndim == 3 and f_ref.ndim == 2:
            a, b = a.mean(-1), b.mean(-1)
        scores.setdefault((pair.task, head), []).append((_psnr(ref, out), qabf(a, b, f_ref), qabf(a, b, f_out)))
    rows = []
    for (task, head), vals in scores.items():
        v = np.asarray(vals, np.float64)
        finite = v[:, 0][np.isfinite(v[:, 0])]
        rows.append(FusionRow(task, head, len(vals), float(finite.mean()) if finite.size else math.inf,
                              float(finite.min()) if finite.size else math.inf, float(v[:, 1].mean()),
                              float(v[:, 2].mean())))
    return rows


def format_accuracy(rows: Sequence[AccuracyRow], fusion: Sequence[FusionRow] = ()) -> str:
    lines = []
    if rows:
        lines.append(f"{'graph':<16}{'precision':<10}{'rows':>6}{'rel_rms':>10}{'max_abs':>10}{'at export':>11}"
                     f"{'bound':>9}  ok   (ONNX Runtime vs FP32 PyTorch on calibration inputs)")
        for r in rows:
            rec = f"{r.recorded:.3g}" if r.recorded is not None else "-"
            lines.append(f"{r.graph:<16}{r.precision:<10}{r.rows:>6}{r.rel_rms:>10.3g}{r.max_abs:>10.3g}{rec:>11}"
                         f"{r.bound:>9.3g}  {'pass' if r.passed else 'FAIL'}")
        lines.append(f"calibration inputs: {rows[0].source}")
    if fusion:
        lines.append(f"{'task':<6}{'head':<12}{'pairs':>6}{'PSNR dB':>9}{'min dB':>8}{'QAB/F fp32':>12}"
                     f"{'quant':>8}{'change':>9}   (fused images, quantized vs FP32, held-out pairs)")
        for f in fusion:
            lines.append(f"{f.task:<6}{f.head:<12}{f.pairs:>6}{f.psnr_db:>9.2f}{f.psnr_min_db:>8.2f}"
                         f"{f.qabf_fp32:>12.4f}{f.qabf_quant:>8.4f}{f.qabf_change:>+9.4f}")
    return "\n".join(lines)


__all__ = ["QUANTIZED_PRECISIONS", "LEVELS", "QuantOptions", "require_modelopt", "candidate_layers", "layer_role",
           "quant_config", "QuantizedGraph", "choose_layers", "LayerPlan", "export_quantized", "postprocess",
           "fold_weight_quantizers", "convert_fp8_ops", "add_fp8_conv_weights", "graph_quantized_layers",
           "ort_kernel_report", "quantize_bundle_graphs", "graph_accuracy", "fusion_accuracy", "format_accuracy",
           "AccuracyRow", "FusionRow", "ErrorStats"]
