"""A graph calibrated with ModelOpt (:class:`QuantizedGraph`), and the choice of the layers that stay FP32,
from measured error (:func:`choose_layers`)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from latentfuse.export.quantize.layers import candidate_layers
from latentfuse.export.quantize.modelopt_utils import quant_config, quiet_modelopt, require_modelopt
from latentfuse.export.quantize.options import LEVELS, SENSITIVITY_ROWS
from latentfuse.export.quantize.stats import ErrorStats, json_number, torch_error
from latentfuse.model.errors import LatentfuseError


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

        with quiet_modelopt():
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
    excluded = {name: f"alone it adds {format_error(e)} relative error, over the layer tolerance {layer_tolerance:g}"
                for name, e in sensitivity.items() if not e <= layer_tolerance}
    excluded.update({name: "its weights are all zero: nothing to quantize" for name in graph.zero_weights})
    quantized = [n for n in order if n not in excluded]
    graph.enable(quantized)
    error = graph.error()
    steps = [{"quantized": len(quantized), "rel_rms": json_number(error.rel_rms)}]
    while quantized and not error.rel_rms <= graph_tolerance:
        worst = max(quantized, key=lambda n: sensitivity[n])
        quantized.remove(worst)
        excluded[worst] = (f"excluded to bring the graph error under {graph_tolerance:g} ({format_error(error.rel_rms)} "
                           f"with it; alone it adds {format_error(sensitivity[worst])})")
        graph.enable(quantized)
        error = graph.error()
        steps.append({"quantized": len(quantized), "excluded": worst, "rel_rms": json_number(error.rel_rms)})
    return LayerPlan(quantized, excluded, {k: json_number(v) for k, v in sensitivity.items()}, dict(graph.candidates),
                     steps, error)


def format_error(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "inf"
