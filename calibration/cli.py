"""``latentfuse calibrate``: measure a bundle's FP32 graphs and write the FP16 precision plan."""

from __future__ import annotations

import argparse


def _sizes(text: str) -> list[int]:
    from latentfuse.model.errors import LatentfuseError

    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LatentfuseError(f"--sizes {text!r}: expected comma-separated pixel sizes, e.g. 128,192,256") from None
    if not sizes or any(s < 16 for s in sizes):
        raise LatentfuseError(f"--sizes {text!r}: sizes must be >= 16 px")
    return sizes


def register(subparsers) -> None:
    from latentfuse.calibration.calibrate import DEFAULT_GRAPH_TOLERANCE
    from latentfuse.calibration.plan import Thresholds

    d = Thresholds()
    p = subparsers.add_parser(
        "calibrate",
        help="measure activation ranges and FP16 error on a calibration set; write the precision plan",
        description="Run the bundle's FP32 graphs on a calibration set (degraded pairs of every task at "
                    "several sizes and aspect ratios, the canonical prompts) and decide which nodes must "
                    "stay FP32 in the mixed-precision FP16 graphs TensorRT builds from. Writes a JSON plan.",
    )
    p.add_argument("--bundle", required=True, help="deployment bundle with the FP32 ONNX graphs")
    p.add_argument("--out", required=True, help="precision plan to write (JSON)")
    p.add_argument("--samples", type=int, default=12, help="calibration pairs (default 12, cycling VIF/MEF/MFF)")
    p.add_argument("--sizes", type=_sizes, default=None, metavar="PX,PX,...",
                   help="long sides of the calibration crops (default 128,192,256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graph", action="append", default=None, metavar="NAME", help="calibrate only this graph")
    p.add_argument("--fp32-graph", action="append", default=[], metavar="NAME",
                   help="keep this whole graph in FP32 (recorded in the plan)")
    p.add_argument("--range-fraction", type=float, default=d.range_fraction,
                   help=f"keep a tensor FP32 above this fraction of 65504 (default {d.range_fraction})")
    p.add_argument("--norm-tolerance", type=float, default=d.norm_tolerance,
                   help=f"max normalised FP16 error of a normalisation / softmax node (default {d.norm_tolerance})")
    p.add_argument("--flush-fraction", type=float, default=d.flush_fraction,
                   help=f"keep a tensor FP32 if more than this fraction of it flushes to 0 in FP16 (default {d.flush_fraction})")
    p.add_argument("--graph-tolerance", type=float, default=DEFAULT_GRAPH_TOLERANCE,
                   help=f"keep a whole graph FP32 if its mixed-precision output error exceeds this (default {DEFAULT_GRAPH_TOLERANCE})")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from latentfuse.calibration.calibrate import calibrate_bundle
    from latentfuse.calibration.dataset import DEFAULT_LONG_SIDES
    from latentfuse.calibration.plan import Thresholds, save_plan
    from latentfuse.model.errors import LatentfuseError

    if args.samples < 1:
        raise LatentfuseError(f"--samples must be >= 1, got {args.samples}")
    for name in ("range_fraction", "norm_tolerance", "graph_tolerance"):
        if not getattr(args, name) > 0:
            raise LatentfuseError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.range_fraction <= 1 or not 0 < args.flush_fraction <= 1:
        raise LatentfuseError("--range-fraction and --flush-fraction must be in (0, 1]")
    thresholds = Thresholds(range_fraction=args.range_fraction, flush_fraction=args.flush_fraction,
                            norm_tolerance=args.norm_tolerance)
    plan = calibrate_bundle(args.bundle, samples=args.samples, seed=args.seed, thresholds=thresholds,
                            graphs=args.graph, fp32_graphs=args.fp32_graph, graph_tolerance=args.graph_tolerance,
                            long_sides=args.sizes or DEFAULT_LONG_SIDES)
    path = save_plan(plan, args.out)
    print(f"{'graph':<16} {'policy':<7} {'nodes':>6} {'fp32':>5}  {'fp16 err':>9}  reasons")
    for name, entry in plan["graphs"].items():
        err = (entry.get("fp16_error") or {}).get("rel", "-")
        err = f"{err:.2e}" if isinstance(err, float) else str(err)
        reasons = ", ".join(f"{k}={v}" for k, v in sorted((entry.get("reason_counts") or {}).items())) or "-"
        fp32 = "all" if entry["policy"] == "fp32" else len(entry.get("fp32_nodes", []))
        print(f"{name:<16} {entry['policy']:<7} {entry.get('num_nodes', 0):>6} {fp32:>5}  {err:>9}  {reasons}")
        if entry.get("policy_reason"):
            print(f"{'':<16} -> {entry['policy_reason']}")
    print(f"precision plan -> {path}")
    return 0
