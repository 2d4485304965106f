"""``latentfuse export``: model directory -> verified deployment bundle, or ``--verify BUNDLE``.

    latentfuse export --checkpoint DIR --out BUNDLE [--heads flow,regression] [--precision fp32|fp16
                      [--plan PLAN]] [--opset N] [--exporter auto|dynamo|torchscript] [--force] [--no-lint] [--aoti]
    latentfuse export --verify BUNDLE [--checkpoint DIR] [--no-lint]
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
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
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="graph precision; fp16 needs a calibration precision plan (--plan)")
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

    from model.errors import LatentfuseError

    if args.verify:
        if args.out:
            raise LatentfuseError("--verify BUNDLE checks an existing bundle; do not combine it with --out")
        from export.verify import verify_bundle

        report = verify_bundle(args.verify, args.checkpoint, lint=args.lint)
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
        from model.components import DEFAULT_MODEL_DIR

        checkpoint = DEFAULT_MODEL_DIR
        if not Path(checkpoint).is_dir():
            raise LatentfuseError(f"no --checkpoint given and the bundled model {checkpoint} is not installed")
    heads = [h.strip() for h in args.heads.split(",") if h.strip()] if args.heads else None
    if args.plan and args.precision != "fp16":
        raise LatentfuseError("--plan is only used with --precision fp16")
    from export.bundle import export_bundle

    out = export_bundle(checkpoint, args.out, heads=heads, precision=args.precision, opset=args.opset,
                        force=args.force, plan=args.plan, exporter=args.exporter, verify=args.run_verify,
                        lint=args.lint)
    if args.aoti:
        from export.aoti import add_aoti_packages
        from model.components import FusionComponents

        add_aoti_packages(out, FusionComponents.from_pretrained(checkpoint))
    print(f"wrote {out}")
    return 0
