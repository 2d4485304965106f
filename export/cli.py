"""``latentfuse export``: model directory -> verified deployment bundle, or ``--verify BUNDLE``.

    latentfuse export --checkpoint DIR --out BUNDLE [--heads flow,regression] [--precision fp32|fp16
                      [--plan PLAN]] [--opset N] [--exporter auto|dynamo|torchscript] [--force] [--no-lint] [--aoti]
    latentfuse export --checkpoint DIR --out BUNDLE --precision int8|fp8 [--calibration-data TASK=DIR ...]
                      [--calibration-samples N] [--quant-level conv|ffn|qkv|all-linear]
                      [--quant-graphs dit,fidelity,...]
    latentfuse export --verify BUNDLE [--checkpoint DIR] [--no-lint] [--held-out N]
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from latentfuse.runtime.manifest import PRECISIONS

    p = subparsers.add_parser(
        "export", help="export a model to a deployment bundle (ONNX graphs + manifest), or verify one",
        description="Export the four deployed graphs (text_encoder, vae_encoder, vae_decoder, dit_<head>) "
                    "with dynamic batch/H/W/text length, the prompt cache and manifest.json, then verify "
                    "them against PyTorch with ONNX Runtime. With --verify, check an existing bundle.")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="model directory (model_index.json + components); default for export: the bundled model")
    p.add_argument("--out", metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("--verify", metavar="BUNDLE", help="verify an existing bundle instead of exporting")
    p.add_argument("--heads", default=None,
                   help="comma-separated DiT heads to export (flow, regression; default: all the model has)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="graph precision; fp16 needs a calibration precision plan (--plan); int8 / fp8: post-training "
                        "quantization with NVIDIA ModelOpt (pip install 'latentfuse[quant]'), explicit Q/DQ graphs "
                        "(int8: Jetson Orin and every TensorRT GPU; fp8: compute capability >= 8.9)")
    q = p.add_argument_group("int8 / fp8 quantization (export.quantize)")
    q.add_argument("--calibration-data", action="append", default=[], metavar="TASK=DIR",
                   help="folder of real pairs to calibrate on, e.g. vif=datasets/vif/RoadScene (repeatable; any layout "
                        "`latentfuse data build` reads; default: the shipped sample pairs)")
    q.add_argument("--calibration-samples", type=int, default=24, metavar="N",
                   help="calibration crops (one DiT window each, tasks in turn; default 24)")
    q.add_argument("--quant-level", default=None, metavar="LEVEL",
                   help="which layers are candidates: conv, ffn (+ MoE experts), qkv (+ attention projections), "
                        "all-linear (every Linear / Conv; default); measured error decides which stay FP32")
    q.add_argument("--quant-graphs", default=None, metavar="KINDS",
                   help="graph kinds to quantize, comma-separated: dit, vae_decoder, vae_encoder, fidelity "
                        "(default dit: the VAE and the fidelity decoder measured no faster in INT8 on ONNX Runtime's "
                        "CPU provider; TensorRT may run their convolutions faster)")
    q.add_argument("--quant-target", choices=("tensorrt", "onnxruntime"), default=None,
                   help="tensorrt (default): every chosen layer gets Q/DQ (TensorRT runs them all in INT8 / FP8); "
                        "onnxruntime: layers ONNX Runtime's CPU provider would run dequantized (convolutions, 2-D "
                        "Gemms) stay FP32, so the int8 graph is faster there")
    q.add_argument("--quant-tolerance", type=float, default=None, metavar="REL",
                   help="largest relative RMS error of a quantized graph's output against FP32 on the calibration "
                        "inputs (default 0.03)")
    q.add_argument("--quant-layer-tolerance", type=float, default=None, metavar="REL",
                   help="a layer whose quantization alone costs more than this stays FP32 (default 0.02)")
    q.add_argument("--calibration-seed", type=int, default=0, help="seed of the calibration crops and noise")
    p.add_argument("--held-out", type=int, default=2, metavar="N",
                   help="--verify of an int8 / fp8 bundle: fused-image PSNR and Q^AB/F against FP32 on N held-out "
                        "pairs per task (0: skip; default 2)")
    p.add_argument("--plan", metavar="PLAN", help="precision plan from `latentfuse calibrate` (for --precision fp16)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 20, TensorRT 10.0+ compatible)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="auto: dynamo, falling back to TorchScript per graph if it fails")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--no-lint", dest="lint", action="store_false", help="skip polygraphy check lint")
    p.add_argument("--no-verify", dest="run_verify", action="store_false",
                   help="skip the verification after export (not recommended)")
    p.add_argument("--aoti", action="store_true",
                   help="also compile AOTInductor .pt2 packages of every graph for the C++ host (runtime/cpp)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentfuse.model.errors import LatentfuseError

    if args.verify:
        if args.out:
            raise LatentfuseError("--verify BUNDLE checks an existing bundle; do not combine it with --out")
        from latentfuse.export.verify import verify_bundle

        if args.held_out < 0:
            raise LatentfuseError(f"--held-out must be >= 0, got {args.held_out}")
        report = verify_bundle(args.verify, args.checkpoint, lint=args.lint, accuracy=True, held_out=args.held_out)
        print(report.format())
        if not report.ok:
            print(f"latentfuse export: verification of {args.verify} FAILED:")
            for line in report.failures():
                print(f"  {line}")
            return 1
        print(f"{args.verify}: verification passed")
        return 0

    if not args.out:
        raise LatentfuseError("export needs --out BUNDLE (or --verify BUNDLE)")
    checkpoint = args.checkpoint
    if checkpoint is None:
        from latentfuse.model.components import DEFAULT_MODEL_DIR

        checkpoint = DEFAULT_MODEL_DIR
        if not Path(checkpoint).is_dir():
            raise LatentfuseError(f"no --checkpoint given and the bundled model {checkpoint} is not installed")
    heads = [h.strip() for h in args.heads.split(",") if h.strip()] if args.heads else None
    if args.plan and args.precision != "fp16":
        raise LatentfuseError("--plan is only used with --precision fp16")
    quantization = _quant_options(args, checkpoint)
    if args.aoti and quantization is not None:
        raise LatentfuseError(f"--aoti compiles the FP32 PyTorch graphs for the C++ host; a --precision {args.precision} "
                              "bundle runs its Q/DQ graphs on ONNX Runtime or TensorRT (export --aoti separately)")
    from latentfuse.export.bundle import export_bundle

    out = export_bundle(checkpoint, args.out, heads=heads, precision=args.precision, opset=args.opset,
                        force=args.force, plan=args.plan, exporter=args.exporter, verify=args.run_verify,
                        lint=args.lint, quantization=quantization)
    if args.aoti:
        from latentfuse.export.aoti import add_aoti_packages
        from latentfuse.model.components import FusionComponents

        add_aoti_packages(out, FusionComponents.from_pretrained(checkpoint))
    print(f"wrote {out}")
    return 0


def _quant_options(args: argparse.Namespace, checkpoint=None):
    """The QuantOptions of an int8 / fp8 export (None otherwise); quantization flags need such a precision, and a
    graph kind the model has (``fidelity``: a model with a fidelity decoder), checked before any export."""
    from pathlib import Path

    from latentfuse.model.errors import LatentfuseError
    from latentfuse.runtime.manifest import QUANTIZED_PRECISIONS

    given = [flag for flag, value in (("--calibration-data", args.calibration_data),
                                      ("--quant-level", args.quant_level), ("--quant-graphs", args.quant_graphs),
                                      ("--quant-target", args.quant_target),
                                      ("--quant-tolerance", args.quant_tolerance),
                                      ("--quant-layer-tolerance", args.quant_layer_tolerance)) if value]
    if args.precision not in QUANTIZED_PRECISIONS:
        if given:
            raise LatentfuseError(f"{given[0]} is for --precision int8 / fp8 (got --precision {args.precision})")
        return None
    from latentfuse.export.quantize import DEFAULT_GRAPH_TOLERANCE, DEFAULT_GRAPHS, DEFAULT_LAYER_TOLERANCE, DEFAULT_LEVEL, QuantOptions

    graphs = tuple(g.strip() for g in args.quant_graphs.split(",")) if args.quant_graphs else DEFAULT_GRAPHS
    options = QuantOptions(
        precision=args.precision, level=args.quant_level or DEFAULT_LEVEL, graphs=graphs,
        calibration_samples=args.calibration_samples, calibration_data=tuple(args.calibration_data),
        seed=args.calibration_seed, target=args.quant_target or "tensorrt",
        graph_tolerance=DEFAULT_GRAPH_TOLERANCE if args.quant_tolerance is None else args.quant_tolerance,
        layer_tolerance=DEFAULT_LAYER_TOLERANCE if args.quant_layer_tolerance is None else args.quant_layer_tolerance)
    if "fidelity" in options.graphs and checkpoint is not None and (Path(checkpoint) / "model_index.json").is_file():
        from latentfuse.runtime.model_info import ModelInfo

        if not ModelInfo.from_model_index(checkpoint).has_fidelity:
            raise LatentfuseError(f"--quant-graphs fidelity: the model in {checkpoint} has no fidelity decoder "
                                  "(model.fidelity) to quantize")
    return options
