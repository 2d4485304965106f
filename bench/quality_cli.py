"""``latentfuse evaluate``: one command over a dataset, the model's rows next to the controls, one table.

    latentfuse evaluate --task vif --data DIR --protocol both --out OUT
    latentfuse evaluate --task vif,mef,mff --data datasets --split heldout --max-side 512 \\
        --protocol both --seeds 3 --baseline other=fused/ --out eval-out

(:mod:`latentfuse.bench.quality` runs it; :mod:`latentfuse.bench.quality_report` writes the tables and figures.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

TASK_CHOICES = ("vif", "mef", "mff")
METHOD_NAMES = ("regression", "flow", "regression_no_detail", "regression_no_fidelity", "average", "average_detail", "classical")  # quality.METHODS, literal: --help stays light


def _tasks(text: str) -> tuple[str, ...]:
    names = TASK_CHOICES if text.strip().lower() == "all" else tuple(t.strip().lower() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in TASK_CHOICES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(bad) or text!r}: choose from vif, mef, mff, all")
    return names


def _list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _baseline(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name.strip(), Path(folder.strip())


def register(subparsers) -> None:
    from latentfuse.runtime.fuse_cli import add_model_args

    p = subparsers.add_parser(
        "evaluate", help="fusion quality on a dataset: the model against the no-network controls (Q^AB/F, SSIM, PSNR, CIs)",
        description="Score the model's regression and flow heads, and the controls (the plain average, the average "
                    "through the model's pixel detail stage, the label pipeline without restoration) and other "
                    "methods' images, on every pair of a dataset: clean, and degraded by the project's own "
                    "degradation pipeline with fixed seeds. Writes OUT/report.json, OUT/report.md and figure grids; "
                    "per-pair results are cached so an interrupted run resumes.")
    p.add_argument("--task", type=_tasks, required=True, help="vif, mef, mff, a comma list or all")
    p.add_argument("--data", type=Path, required=True,
                   help="dataset folder: any layout `latentfuse data build` reads, or plain A/ + B/ folders (same "
                        "stems); a folder holding vif/, mef/, mff/ is looked into per task")
    p.add_argument("--split", default="all", choices=("all", "heldout", "train"),
                   help="the project's scene split (default all; heldout: the scenes the bundled default never saw)")
    p.add_argument("--protocol", default="clean", choices=("clean", "degraded", "both"), help="default clean")
    p.add_argument("--n", type=int, default=None, help="an even spread of N pairs per task (default: every pair)")
    p.add_argument("--max-side", type=int, default=None, metavar="PX",
                   help="shrink both sources (bicubic) to this long side before anything runs (default: as stored)")
    p.add_argument("--seeds", type=int, default=3, help="degraded samples per pair (default 3)")
    p.add_argument("--degradations", default="1-2", help="how many degradations each degraded sample draws (default 1-2)")
    p.add_argument("--methods", type=_list, default=None,
                   help=f"rows to run, comma-separated, from {', '.join(METHOD_NAMES)} (default: all that apply)")
    p.add_argument("--baseline", type=_baseline, action="append", default=[], metavar="NAME=DIR",
                   help="another method's fused images (file stems = scene names), scored in the clean protocol; repeatable")
    p.add_argument("--metrics", type=_list, default=(), help="VIFB metrics to add to Q^AB/F, SSIM and PSNR (e.g. vif,mi,en)")
    p.add_argument("--resize", action="store_true", help="resample B to A's size when a pair differs in size")
    p.add_argument("--figures", type=int, default=4, help="samples per task and protocol in the figure grid (default 4)")
    p.add_argument("--flow-sampler", metavar="NAME", help="the flow row's sampler (euler, midpoint, midpoint_reuse, "
                                                          "*_sde; default: the model's)")
    p.add_argument("--flow-steps", type=int, metavar="N", help="the flow row's sampler steps (default: the model's)")
    p.add_argument("--flow-start", type=float, metavar="T", help="the flow row's start in [0, 1) (0: from the prior; "
                                                                   "default: the model's)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads per graph (default: all cores)")
    p.add_argument("--out", type=Path, required=True, help="output folder (report.json, report.md, figures/, cache/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from latentfuse.bench.quality import EvalSettings, evaluate, model_identity, parse_degradations, write_report
    from latentfuse.bench.quality_report import write_figures
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.runtime.fuse_cli import build_pipeline

    names = [name for name, _ in args.baseline]
    if len(set(names)) != len(names):
        raise LatentfuseError(f"--baseline names repeat: {', '.join(names)}")
    settings = EvalSettings(  # every argument checked before the model loads
        tasks=args.task, data=args.data, out=args.out, split=args.split,
        protocols=("clean", "degraded") if args.protocol == "both" else (args.protocol,), n=args.n,
        max_side=args.max_side, seeds=args.seeds, degradations=parse_degradations(args.degradations),
        methods=args.methods, baselines=dict(args.baseline), metrics=tuple(args.metrics), resize=args.resize,
        figures=args.figures, flow_sampler=args.flow_sampler, flow_steps=args.flow_steps,
        flow_start=args.flow_start)
    pipe = build_pipeline(args)
    report = evaluate(pipe, settings, model=model_identity(args), progress=not args.no_progress)
    json_path, md_path = write_report(report, args.out)
    figures = write_figures(report, args.out)
    print(md_path.read_text())
    print("wrote " + ", ".join(str(p) for p in [json_path, md_path, *figures]))
    return 0
