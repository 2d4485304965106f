"""``latentfuse data synth`` and ``latentfuse data build``: make clean pairs, then training tuples."""

from __future__ import annotations

import argparse


def _teacher_dirs(specs: list[str] | None):
    """``NAME=DIR`` plug-in teachers (precomputed outputs of learned fusion networks)."""
    from latentfuse.model.data.teachers import FolderTeacher
    from latentfuse.model.errors import LatentfuseError

    out = []
    for spec in specs or []:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise LatentfuseError(f"--teacher-dir expects NAME=DIR, got {spec!r}")
        out.append(FolderTeacher(name, folder))
    return out


def _synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from latentfuse.model.data.depth import load_depth_estimator
    from latentfuse.model.data.synth import make_synthetic

    out = make_synthetic(args.task, args.out, args.n, seed=args.seed, long_side=args.size, gt=args.gt,
                         overwrite=args.force, depth_estimator=load_depth_estimator(args.depth_model),
                         progress=tqdm)
    print(f"wrote {args.n} synthetic {args.task} pairs to {out}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from latentfuse.model.data.build import build_dataset
    from latentfuse.model.data.depth import load_depth_estimator

    report = build_dataset(
        args.src, args.out, args.task, n_degradations=args.n_degradations, seed=args.seed,
        per_pair=args.per_pair, long_side=args.size, crop=not args.no_crop,
        teacher_names=args.teachers, extra_teachers=_teacher_dirs(args.teacher_dir),
        depth_estimator=load_depth_estimator(args.depth_model), limit=args.limit, split=args.split,
    )
    print(f"{report.built} sample(s) built, {report.skipped} already present, "
          f"{report.total} in total; index: {report.index}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="make synthetic pairs and degraded training datasets")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    tasks = ("vif", "mef", "mff")

    synth = sub.add_parser("synth", help="render clean pairs from the images bundled with scikit-image")
    synth.add_argument("--task", required=True, choices=tasks)
    synth.add_argument("--out", required=True, help="output folder (a/, b/, gt/, source/, synth.json)")
    synth.add_argument("-n", type=int, default=16, help="number of pairs (default 16)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=256, help="long side in pixels (default 256)")
    synth.add_argument("--gt", choices=("teachers", "source"), default="teachers",
                       help="ground truth: teacher pseudo-labels (default) or the source photograph")
    synth.add_argument("--depth-model", default=None,
                       help="local transformers depth-estimation model dir (default: the depth prior)")
    synth.add_argument("--force", action="store_true", help="replace an existing output folder")
    synth.set_defaults(func=_synth)

    build = sub.add_parser("build", help="write degraded/clean/GT/prompt samples with a JSONL sample index")
    build.add_argument("--task", required=True, choices=tasks)
    build.add_argument("--src", required=True, help="dataset folder (layout auto-detected) or a synth folder")
    build.add_argument("--out", required=True, help="output folder; re-running resumes")
    build.add_argument("--n-degradations", type=int, nargs="+", default=[1, 2, 3], metavar="N",
                       help="numbers of composed degradations to draw from (default 1 2 3)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--per-pair", type=int, default=1, help="degraded samples per clean pair")
    build.add_argument("--size", type=int, default=None,
                       help="resize crops to this long side (multiples of 16; default: keep crop size)")
    build.add_argument("--no-crop", action="store_true", help="no random aspect-ratio crops")
    build.add_argument("--teachers", nargs="+", default=None, metavar="NAME",
                       help="teacher names (default: every registered teacher for the task)")
    build.add_argument("--teacher-dir", action="append", default=None, metavar="NAME=DIR",
                       help="add a teacher that reads precomputed outputs DIR/<pair name>.png (repeatable)")
    build.add_argument("--depth-model", default=None,
                       help="local transformers depth-estimation model dir (default: the depth prior)")
    build.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    build.add_argument("--split", choices=("train", "heldout", "all"), default=None,
                       help="scenes of real pairs to write, split by a hash of the scene name (about 20 %% "
                            "held out, model/data/split.py): train (default), heldout (for evaluation) or all; "
                            "synthetic folders are not split")
    build.set_defaults(func=_build)
