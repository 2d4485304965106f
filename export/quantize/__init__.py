"""Explicit INT8 / FP8 post-training quantization: Q/DQ graphs for TensorRT 10/11 and ONNX Runtime.

TensorRT 10.12+ and 11 build only strongly typed networks, and TensorRT 11 removed the INT8 calibrators:
a quantized engine comes from an ONNX graph whose QuantizeLinear / DequantizeLinear pairs say where it
runs in INT8 or FP8 (explicit quantization). This package makes those graphs the way NVIDIA's own
diffusion deployment does (TensorRT demoDiffusion), with NVIDIA ModelOpt's PyTorch quantization
(``pip install 'latentfuse[quant]'``, imported only here and only when asked for):

1. **Calibration inputs** (:mod:`latentfuse.calibration.quant_inputs`): each graph's inputs recorded from the
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
default they stay FP32. So does the fidelity decoder (``"fidelity"``, the optional fifth graph, calibrated
on the decoded images and pairs the FP32 pipeline hands it): accurate in INT8 (54-62 dB fused-image PSNR
against FP32) but no faster on ONNX Runtime's CPU provider, where ``target="onnxruntime"`` keeps every one
of its layers FP32 (docs/quantization.md, "The fidelity graph"). The text encoder runs once per prompt
(canonical prompts are cached) and stays FP32.

FP8: no runtime here executes FP8 arithmetic. ONNX Runtime's CPU provider implements FP8
QuantizeLinear / DequantizeLinear, so an FP8 graph runs as FP32 arithmetic on FP8-rounded values
(what TensorRT's FP8 kernels compute, up to accumulation order); FP8 engines need an NVIDIA GPU of
compute capability >= 8.9 (:func:`latentfuse.export.engines.check_precision_support`).

Modules, in the order of the steps: ``options``, ``modelopt_utils`` (ModelOpt, imported lazily), ``layers``,
``stats``, ``calibrate``, ``onnx_qdq``, ``ort_report``, ``bundle_step``, ``accuracy``.
"""

from latentfuse.export.quantize.options import (DEFAULT_GRAPH_TOLERANCE, DEFAULT_GRAPHS, DEFAULT_LAYER_TOLERANCE,
                                                DEFAULT_LEVEL, LEVELS, MIN_OPSET, QUANTIZABLE_KINDS, QuantOptions,
                                                TARGETS)
from latentfuse.export.quantize.modelopt_utils import modelopt_version, quant_config, require_modelopt
from latentfuse.export.quantize.layers import candidate_layers, layer_role
from latentfuse.export.quantize.stats import ErrorStats, torch_feeds
from latentfuse.export.quantize.calibrate import choose_layers, LayerPlan, QuantizedGraph
from latentfuse.export.quantize.onnx_qdq import (add_fp8_conv_weights, convert_fp8_ops, export_quantized,
                                                 fold_weight_quantizers, graph_quantized_layers, postprocess)
from latentfuse.export.quantize.ort_report import ort_kernel_report, ort_outputs, ort_session
from latentfuse.export.quantize.bundle_step import quantize_bundle_graphs
from latentfuse.export.quantize.accuracy import (AccuracyRow, format_accuracy, fusion_accuracy, FusionRow,
                                                 graph_accuracy)

__all__ = ["LEVELS", "DEFAULT_LEVEL", "TARGETS", "DEFAULT_GRAPHS", "QUANTIZABLE_KINDS", "MIN_OPSET",
           "DEFAULT_GRAPH_TOLERANCE", "DEFAULT_LAYER_TOLERANCE", "QuantOptions", "require_modelopt",
           "modelopt_version", "quant_config", "candidate_layers", "layer_role", "ErrorStats", "torch_feeds",
           "QuantizedGraph", "LayerPlan", "choose_layers", "export_quantized", "postprocess",
           "fold_weight_quantizers", "convert_fp8_ops", "add_fp8_conv_weights", "graph_quantized_layers",
           "ort_kernel_report", "ort_outputs", "ort_session", "quantize_bundle_graphs", "graph_accuracy",
           "fusion_accuracy", "format_accuracy", "AccuracyRow", "FusionRow"]
