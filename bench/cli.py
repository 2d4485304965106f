"""``latentfuse bench``: latency and cost of the latent pipelines against pixel-space
restoration+fusion pipelines, side by side in one interleaved run (:mod:`latentfuse.bench.sweep`).

    latentfuse bench --resolutions 256,512,768,1024 --aspect 1:1,16:9 --backends torch \\
        --precision fp32,fp16 --preset paper --repeat 5 --warmup 2 --out bench-out/
    latentfuse bench --preset tiny,paper --time-budget 20 --threads 2 --out bench-out/

writes ``bench.json``, ``bench.md``, ``latency.png`` and ``speedup.png`` into ``--out`` and prints the
markdown tables.
"""

from __future__ import annotations

import argparse


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _names(text: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="latency / FLOPs / memory of latent vs pixel-space pipelines (MMAIF Table 5)",
        description="Time every pipeline (latent regression, latent flow with velocity reuse, latent Euler, "
                    "NAFNet+DenseFuse, pixel-space MoE-DiT) at every size, backend and precision in one "
                    "interleaved run; report medians, per-stage times, analytic FLOPs, peak memory, fitted "
                    "cost exponents and speed-ups. Weights are random unless --checkpoint is given.")
    p.add_argument("--resolutions", type=_ints, default=(256, 512, 768, 1024), help="long sides in px (default 256,512,768,1024)")
    p.add_argument("--aspect", type=_names, default=("1:1",), help="aspect ratios W:H (default 1:1), e.g. 1:1,16:9")
    p.add_argument("--backends", type=_names, default=("torch",), help="torch,onnxruntime,tensorrt (default torch)")
    p.add_argument("--precision", type=_names, default=("fp32",),
                   help="fp32,fp16,int8 (default fp32; fp16 needs CUDA for torch; int8 is a Q/DQ bundle: "
                        "onnxruntime / tensorrt, from --bundle-int8 or --export-bundle)")
    p.add_argument("--preset", type=_names, default=("tiny",),
                   help="model preset(s) of the latent pipelines and their pixel-space DiT twins, comma-separated "
                        "(tiny|paper, default tiny), e.g. tiny,paper: one interleaved sweep; NAFNet+DenseFuse has "
                        "no preset and is timed once per size")
    p.add_argument("--checkpoint", default=None, help="model directory for the latent pipelines instead of random preset weights")
    p.add_argument("--bundle", default=None, help="fp32 deployment bundle for --backends onnxruntime / tensorrt")
    p.add_argument("--bundle-fp16", default=None, help="fp16 deployment bundle for --precision fp16 on onnxruntime / tensorrt")
    p.add_argument("--bundle-int8", default=None,
                   help="int8 deployment bundle (latentfuse export --precision int8) for --precision int8 on "
                        "onnxruntime / tensorrt")
    p.add_argument("--export-bundle", action="store_true",
                   help="without --bundle / --bundle-fp16, export the benchmarked model to OUT/bundle-<preset>-<precision> "
                        "for the onnxruntime / tensorrt backends (export.bundle)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per pipeline and size first (default 1)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="finish within about this many minutes (model building included): before each size the "
                        "calls are projected from the smaller sizes and fitted into what is left, presets in the "
                        "order given: warm-up goes first, then repeats down to 2, then 1; a pipeline that still does "
                        "not fit is reported over-budget with its projected seconds and analytic FLOPs "
                        "(default: unlimited, every call as --warmup / --repeat say)")
    p.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads: torch.set_num_threads and ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="skip (and report as infeasible) a pipeline whose estimated peak exceeds this "
                        "(default: the GPU's memory, or the host's available memory)")
    p.add_argument("--pipelines", type=_names, default=None, help="only these pipeline names (default all)")
    p.add_argument("--flow-steps", type=int, default=5, help="velocity-reuse steps of the flow pipelines (default 5)")
    p.add_argument("--euler-steps", type=int, default=25, help="Euler steps of the latent-euler pipeline (default 25)")
    p.add_argument("--pixel-patch", type=int, default=8, help="patch size of the pixel-space DiT (default 8)")
    p.add_argument("--analytic-only", action="store_true",
                   help="parameter counts, analytic FLOPs and memory estimates only; time nothing")
    p.add_argument("--out", default="bench-out", help="output folder (default bench-out/)")
    p.add_argument("--user-pair", nargs="?", const="640x480", default=None, metavar="WxH[,WxH...]",
                   help="also fuse a camera-size pair (default 640x480; several sizes comma-separated, e.g. "
                        "640x480,4000x3000, run in the same rounds) end to end with a real model (--user-model) on "
                        "each of --backends and --user-modes, as `latentfuse fuse` runs it, with time per megapixel "
                        "and peak memory (bench.user_pair)")
    p.add_argument("--user-modes", default="regression,flow", metavar="MODES",
                   help="DiT heads of the --user-pair rows (default regression,flow)")
    p.add_argument("--user-model", default=None,
                   help="model directory for --user-pair (default: the bundled default model)")
    p.add_argument("--no-sweep", action="store_true", help="only the --user-pair rows, no preset sweep")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--serve", action="store_true",
                   help="only throughput through `latentfuse serve` (Triton) against the in-process pipeline: pairs/s "
                        "and p50 / p95 latency at concurrency 1, 4, 16, demo size and 640x480, batching off and on "
                        "(bench.serve_bench; --bundle or --user-model, --threads; needs latentfuse[serve])")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from latentfuse.bench.report import markdown, write_report
    from latentfuse.bench.plan import SweepConfig
    from latentfuse.bench.sweep import run_sweep
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.runtime.backends import check_backend_name

    if args.serve:
        return _run_serve(args)
    if args.no_sweep and not args.user_pair:
        raise LatentfuseError("--no-sweep leaves nothing to run: add --user-pair [WxH]")
    if args.user_pair:
        _run_user_pair(args)
        if args.no_sweep:
            return 0

    cfg = SweepConfig(
        resolutions=args.resolutions, aspects=args.aspect,
        backends=tuple(check_backend_name(b) for b in args.backends),
        precisions=tuple(p.lower() for p in args.precision), presets=args.preset, repeat=args.repeat,
        warmup=args.warmup, device=args.device, checkpoint=args.checkpoint, bundle=args.bundle,
        bundle_fp16=args.bundle_fp16, bundle_int8=args.bundle_int8, export_dir=args.out if args.export_bundle else None,
        memory_budget_gb=args.memory_budget_gb, pipelines=args.pipelines,
        flow_steps=args.flow_steps, euler_steps=args.euler_steps, pixel_patch=args.pixel_patch,
        threads=args.threads, analytic_only=args.analytic_only, progress=not args.no_progress,
        time_budget_s=None if args.time_budget is None else 60.0 * args.time_budget)
    result = run_sweep(cfg)
    paths = write_report(result, args.out)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _run_user_pair(args) -> None:
    from latentfuse.bench.user_pair import parse_sizes, run_user_pair, write_user_pair
    from latentfuse.model.components import DEFAULT_MODEL_DIR
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.runtime.backends import check_backend_name
    from latentfuse.runtime.pipeline import MODES

    sizes = parse_sizes(args.user_pair)
    modes = tuple(m.strip() for m in args.user_modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        raise LatentfuseError(f"--user-modes takes {' / '.join(MODES)}, comma-separated, got {args.user_modes!r}")
    model_dir = args.user_model or str(DEFAULT_MODEL_DIR)
    rows = run_user_pair(model_dir, backends=tuple(check_backend_name(b) for b in args.backends), modes=modes,
                         sizes=sizes, threads=args.threads, warmup=args.warmup, repeat=args.repeat,
                         progress=not args.no_progress)
    print(write_user_pair(rows, args.out, sizes[0], model_dir))


def _run_serve(args) -> int:
    import os
    import platform
    import time

    from latentfuse.bench.serve_bench import run_serve_bench, write_serve_bench
    from latentfuse.model.components import DEFAULT_MODEL_DIR
    from latentfuse.runtime.serve import import_pytriton

    import_pytriton()  # a missing extra is one line, before any model loads
    if args.bundle:
        bundle = args.bundle
    else:  # the model directory's cached export, as Pipeline.from_pretrained runs it
        from latentfuse.runtime.pipeline import cached_export

        bundle = cached_export(args.user_model or str(DEFAULT_MODEL_DIR), "onnxruntime")
    rows = run_serve_bench(bundle, threads=args.threads)
    meta = {"bundle": str(bundle), "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(write_serve_bench(rows, args.out, meta))
    return 0
