"""Calibration for FP16 deployment: which nodes of each graph must stay FP32, decided by measurement.

TensorRT 11 builds only strongly typed networks, so an FP16 engine comes from a mixed-precision FP16
ONNX graph (docs/design.md "Precision"). This package measures the FP32 graphs of a
bundle on a calibration set and writes the precision plan that :mod:`latentfuse.export.fp16` applies:

``dataset`` (degraded pairs of every task, sizes, aspect ratios, prompts) -> ``feeds`` (graph inputs
through the bundle's own graphs) -> ``ranges`` (per-tensor max |x|, inf/nan, fp16 underflow) ->
``plan`` (the FP32-island rules) -> ``calibrate`` (per bundle, with a whole-graph error check) ->
``cli`` (``latentfuse calibrate``).
"""
