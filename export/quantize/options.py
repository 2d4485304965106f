"""The options of a quantized export (precision, level, target, graphs, tolerances) and the constants they
default to."""

from __future__ import annotations

import math
from dataclasses import dataclass

from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.manifest import QUANTIZED_PRECISIONS

LEVELS = ("conv", "ffn", "qkv", "all-linear")


DEFAULT_LEVEL = "all-linear"


# "fidelity": the optional fifth graph (model.fidelity), a local conv net after the VAE decoder; quantizable
# by option (docs/quantization.md, "The fidelity graph": no faster in INT8 on ONNX Runtime's CPU provider)
QUANTIZABLE_KINDS = ("dit", "vae_encoder", "vae_decoder", "fidelity")


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


@dataclass
class QuantOptions:
    """What ``latentfuse export --precision int8|fp8`` asks for."""

    precision: str = "int8"
    level: str = DEFAULT_LEVEL
    graphs: tuple[str, ...] = DEFAULT_GRAPHS        # kinds: dit, vae_encoder, vae_decoder, fidelity
    calibration_samples: int = 24
    calibration_data: tuple = ()                   # calibration.quant_inputs.PairSource, or "TASK=DIR"
    seed: int = 0
    graph_tolerance: float = DEFAULT_GRAPH_TOLERANCE
    layer_tolerance: float = DEFAULT_LAYER_TOLERANCE
    sensitivity_rows: int = SENSITIVITY_ROWS
    target: str = "tensorrt"

    def __post_init__(self):
        from latentfuse.calibration.quant_inputs import PairSource, parse_source

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
