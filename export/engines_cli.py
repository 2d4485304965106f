"""``latentfuse build-engines BUNDLE``: TensorRT engines for every graph of a deployment bundle."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "build-engines",
        help="build TensorRT engines (strongly typed: FP16, INT8 / FP8 Q/DQ graphs) for a bundle",
        description="Build one TensorRT engine per graph of a deployment bundle from its mixed-precision "
                    "ONNX graphs, with one optimization profile per graph covering the bundle's resolution "
                    "range. Engines are cached: a graph whose ONNX hash, profile, TensorRT version and GPU "
                    "match the manifest entry is not rebuilt. Needs an NVIDIA GPU and "
                    "pip install 'latentfuse[trt]'.",
    )
    p.add_argument("bundle", help="deployment bundle directory (with manifest.json)")
    p.add_argument("--profile", action="append", default=[], metavar="GRAPH=MIN:OPT:MAX",
                   help="override a graph's profile; sizes are HxW pixels (BxHxW with batch), text graphs "
                        "take L or BxL tokens, e.g. dit=256x256:512x512:1024x1024 (repeatable)")
    p.add_argument("--graph", action="append", default=None, metavar="NAME",
                   help="build only this graph (repeatable; default: all)")
    p.add_argument("--timing-cache", default=None, metavar="FILE",
                   help="TensorRT timing cache to load and update (default: BUNDLE/engines/timing.cache)")
    p.add_argument("--workspace-gb", type=float, default=None, metavar="N",
                   help="builder workspace memory limit in GiB (default: TensorRT's, the device memory)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cached engine matches")
    p.add_argument("--dry-run", action="store_true",
                   help="print the profiles and cache keys without building (works without TensorRT)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json
    import sys

    from latentfuse.export.engines import build_bundle_engines, parse_profile_override, plan_builds
    from latentfuse.model.errors import LatentfuseError

    overrides = {}
    for text in args.profile:
        graph, extents = parse_profile_override(text)
        overrides[graph] = extents
    if args.workspace_gb is not None and args.workspace_gb <= 0:
        raise LatentfuseError(f"--workspace-gb must be positive, got {args.workspace_gb}")
    def warn(job):
        if job["precision"] == "fp32":
            print(f"note: {job['graph']} is an fp32 graph: its engine runs in that precision "
                  f"(export with --precision fp16 --plan PLAN, or int8 / fp8, for faster engines)", file=sys.stderr)
        if job["uncovered"]:
            sizes = ", ".join(f"{h}x{w}" for h, w in job["uncovered"][:4])
            print(f"warning: the {job['graph']} profile rejects image sizes the bundle supports: {sizes}"
                  f"{' ...' if len(job['uncovered']) > 4 else ''}", file=sys.stderr)

    if args.dry_run:
        jobs = plan_builds(args.bundle, overrides, args.graph, trt_version="<dry-run>", gpu={"name": "<dry-run>"})
        for job in jobs:
            warn(job)
            print(json.dumps({k: job[k] for k in ("graph", "onnx", "profile", "cache_key")}))
        return 0
    jobs = build_bundle_engines(args.bundle, overrides, graphs=args.graph, timing_cache=args.timing_cache,
                                workspace_gb=args.workspace_gb, force=args.force)
    for job in jobs:
        warn(job)
        extra = f" in {job['seconds']:.1f} s, {job['bytes'] / 2**20:.1f} MiB" if job["status"] == "built" else ""
        print(f"{job['graph']}: {job['status']} -> {job['file']}{extra}")
    return 0
