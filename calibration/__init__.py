"""Calibration, one room for every reduced precision: what each graph is measured on, and what that decides.

FP16: TensorRT 11 builds only strongly typed networks, so an FP16 engine comes from a mixed-precision FP16
ONNX graph (docs/design.md "Precision"). This package measures the FP32 graphs of a bundle on a
calibration set and writes the precision plan (``plan``: its rules and its file format) that ``fp16``
converts the graphs with:

``dataset`` (degraded pairs of every task, sizes, aspect ratios, prompts) -> ``feeds`` (graph inputs
through the bundle's own graphs) -> ``ranges`` (per-tensor max |x|, inf/nan, fp16 underflow) ->
``plan`` (the FP32-island rules) -> ``calibrate`` (per bundle, with a whole-graph error check through
``fp16``) -> ``cli`` (``latentfuse calibrate``).

INT8 / FP8: ``quant_inputs`` records each graph's inputs from the FP32 pipeline on crops of real pairs,
which post-training quantization (:mod:`latentfuse.export.quantize`) calibrates on.

Export, the layer above, applies both: the bundle writer converts with the plan (:mod:`latentfuse.export.fp16`)
and quantizes on the recorded inputs.
"""
