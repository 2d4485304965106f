"""``latentfuse fuse``, ``fuse-dir`` and ``demo``: the command-line face of :mod:`latentfuse.runtime.pipeline`.

    latentfuse fuse A B --task vif [--prompt TEXT] [--bundle DIR | --checkpoint DIR] -o OUT
    latentfuse fuse-dir DIR_A DIR_B --task mef --bundle DIR --out DIR
    latentfuse demo [--out DIR]            # the README's main command

``fuse-dir`` pairs files by name stem, skips pairs whose output already exists (so an interrupted run
resumes), continues past a file that fails and lists every failure at the end (exit 1 if any).
``demo`` runs the bundled default model on the shipped sample pairs of each task through ONNX Runtime
and prints the latency table. A bundle backend given a model directory (``--backend onnxruntime`` with
no ``--bundle``, and ``demo``) runs its export, made once into the user cache (``Pipeline.from_pretrained``,
whose exporter, :mod:`latentfuse.export.bundle_cache`, is found through the ``latentfuse.exporters`` entry point).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentfuse.runtime.modes import DEFAULT_MODE, MODES

BACKEND_CHOICES = ("torch", "onnxruntime", "tensorrt")


# ------------------------------------------------------------------------------ registration


DETAIL_CHOICES = ("auto", "clean", "safe", "off")  # "auto" + model.detail.DETAIL_MODES, literal: --help stays free of scipy
DETAIL_HELP = ("the model's detail path after decoding (the sources' fine detail put back): auto picks 'clean' for a "
               "prompt that only asks for the fusion (the task prompts, the default one included), 'off' for rain / "
               "snow / stripe prompts, else 'safe' (default auto; models without one ignore it)")

FIDELITY_HELP = ("weight W in [0, 1] of the model's fidelity decoder, the learned stage after the VAE decoder that "
                 "gives the decoded image the sources' detail back (F + W (fidelity(F, A, B, prompt) - F)): default 1 "
                 "where the model has one, 0 skips it; with it, --detail auto runs no hand detail path. A weight "
                 "above 0 for a model without one is an error")

SERVER_HELP = ("fuse on a `latentfuse serve` server (http://HOST:8000 or grpc://HOST:8001) instead of loading a "
               "model here; the server's model, backend and sampler settings apply (latentfuse[serve])")


def add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="deployment bundle directory (latentfuse export); onnxruntime / tensorrt")
    src.add_argument("--checkpoint", help="model directory (model_index.json + components); torch backend "
                                          "(default: the bundled default model)")
    p.add_argument("--backend", choices=BACKEND_CHOICES,
                   help="inference backend (default: torch with --checkpoint, onnxruntime with --bundle)")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"),
                   help="ONNX Runtime execution provider (default: cuda if onnxruntime-gpu sees a GPU, else cpu)")
    p.add_argument("--compile", action="store_true", help="torch backend: torch.compile the DiT")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=("vif", "mef", "mff"), help="fusion task")
    p.add_argument("--prompt", help="instruction, e.g. 'remove the rain and the noise' (default: the task's canonical prompt)")
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                   help=f"DiT head (default {DEFAULT_MODE}: one DiT call; flow refines its estimate in five, level with it)")
    p.add_argument("--sampler", help="flow sampler: euler, midpoint, midpoint_reuse, *_sde (default: the bundle's, "
                                     "midpoint_reuse_sde)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the model's, 4 for the bundled default)")
    p.add_argument("--start", type=float, metavar="T",
                   help="where the flow starts, t in [0, 1): 0 samples from the prior (the paper), t > 0 refines the "
                        "regression DiT's estimate noised to t, one more DiT call (default: the model's, 0.5 for the "
                        "bundled default)")
    p.add_argument("--g", type=float, help="SDE diffusion norm g (kappa = g sin^2(pi t))")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--prior", choices=("gaussian", "source_a", "source_b", "source_mean"),
                   help="flow prior p0 (default: the one the model's flow DiT was trained from, which its "
                        "config / the bundle's sampler section declares)")
    p.add_argument("--resize", action="store_true", help="resample B to A's size when the pair differs in size")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="output bits per sample (default 8)")
    p.add_argument("--tile", type=int, nargs="?", const=True, metavar="PX",
                   help="run the VAE in tiles of at most PX working pixels per side, to bound memory (default: "
                        "whole images, tiled only over the graph's size limit; any size runs without it)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads per graph (ONNX Runtime intra-op threads, torch.set_num_threads; "
                        "default: all cores)")
    p.add_argument("--detail", choices=DETAIL_CHOICES, default="auto", help=DETAIL_HELP)
    p.add_argument("--fidelity", type=float, metavar="W", help=FIDELITY_HELP)
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory budget of one fuse, e.g. 3G or 1500M: VAE tiles, DiT windows per call and detail "
                        "strips are sized to it; one that cannot be met is an error (default: half the machine's "
                        "memory)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fuse", help="fuse one image pair")
    p.add_argument("a", help="image A (visible / under-exposed / near-focus)")
    p.add_argument("b", help="image B (infrared / over-exposed / far-focus)")
    p.add_argument("-o", "--out", required=True, help="output image path (.png, .jpg, .tif)")
    add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--warmup", type=int, default=0,
                   help="warm-up runs, then time --runs more and print the latency table")
    p.add_argument("--runs", type=int, default=3, help="timed runs for the latency table (with --warmup)")
    p.add_argument("--server", metavar="URL", help=SERVER_HELP)
    p.set_defaults(func=run_fuse)

    p = subparsers.add_parser("fuse-dir", help="fuse every pair of two folders (matched by file name)")
    p.add_argument("dir_a", help="folder of A images")
    p.add_argument("dir_b", help="folder of B images (same file names / stems as in A)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ext", default=".png", help="output suffix (default .png)")
    p.add_argument("--overwrite", action="store_true", help="redo pairs whose output already exists")
    add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--server", metavar="URL", help=SERVER_HELP)
    p.add_argument("--concurrency", type=int, default=4, metavar="N",
                   help="with --server: requests in flight, so the server can batch them (default 4)")
    p.set_defaults(func=run_fuse_dir)

    p = subparsers.add_parser("demo", help="fuse the shipped samples of every task with the bundled default model")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--checkpoint", help="model directory to demo instead of the bundled default")
    p.add_argument("--bundle", help="deployment bundle to demo (e.g. an int8 one from latentfuse export --precision "
                                    "int8) on onnxruntime / tensorrt, instead of exporting the model")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt", "torch"), default="onnxruntime")
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=f"DiT head (default {DEFAULT_MODE})")
    p.add_argument("--steps", type=int, help="sampler steps (default: the model's, 4 for the bundled default)")
    p.add_argument("--start", type=float, metavar="T",
                   help="where the flow starts, t in [0, 1): 0 samples from the prior (the paper), t > 0 refines the "
                        "regression DiT's estimate noised to t, one more DiT call (default: the model's, 0.5 for the "
                        "bundled default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs before timing (default 1)")
    p.add_argument("--runs", type=int, default=3, help="timed runs for the latency table (default 3)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads per graph (default: all cores)")
    p.add_argument("--detail", choices=DETAIL_CHOICES, default="auto", help=DETAIL_HELP)
    p.add_argument("--fidelity", type=float, metavar="W", help=FIDELITY_HELP)
    p.set_defaults(func=run_demo)


# ------------------------------------------------------------------------------ helpers


def build_pipeline(args: argparse.Namespace):
    """The Pipeline the model arguments ask for (one error line if they do not fit together)."""
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.model.components import DEFAULT_MODEL_DIR
    from latentfuse.runtime.backends import backend_source
    from latentfuse.runtime.manifest import check_bundle_dir
    from latentfuse.runtime.pipeline import Pipeline

    if not args.bundle and not args.checkpoint:
        # No model given: the bundled default model directory (eager torch, or a cached bundle of it)
        if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            raise LatentfuseError("give the model: --bundle DIR (onnxruntime / tensorrt) or --checkpoint DIR (torch)")
        args.checkpoint = str(DEFAULT_MODEL_DIR)
        args.backend = args.backend or "torch"
    backend = args.backend or ("torch" if args.checkpoint else "onnxruntime")
    options = {}
    if backend == "onnxruntime" and args.provider:
        options["providers"] = args.provider
    if backend == "torch" and args.compile:
        options["compile"] = True
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise LatentfuseError(f"--threads must be at least 1, got {args.threads}")
        if backend != "tensorrt":
            options["threads"] = args.threads
    if args.bundle:
        if backend_source(backend) != "bundle":
            raise LatentfuseError(f"the {backend} backend runs a model directory: pass --checkpoint DIR")
        check_bundle_dir(args.bundle)  # --bundle names a bundle: never export a model directory given as one
    # a model directory on onnxruntime / tensorrt: from_pretrained runs its cached export (made once)
    pipe = Pipeline.from_pretrained(args.bundle or args.checkpoint, backend=backend, **options)
    if not args.bundle and backend_source(backend) == "bundle":
        args.bundle = str(pipe.backend.bundle.root)  # later pipelines of these arguments (serve's instances) reuse it
    return pipe


def _call_kwargs(args: argparse.Namespace) -> dict:
    return dict(task=args.task, prompt=args.prompt, mode=args.mode, sampler=args.sampler, steps=args.steps,
                g=args.g, seed=args.seed, resize=args.resize, tile=args.tile, prior=args.prior, start=args.start,
                detail=args.detail, max_memory=args.max_memory, fidelity=args.fidelity)


def _check_fidelity(weight, pipe=None) -> None:
    """--fidelity W checked before any work: in [0, 1] (without ``pipe``), and > 0 only for a model with a
    fidelity decoder (with it)."""
    from latentfuse.runtime.pipeline import check_fidelity_weight

    check_fidelity_weight(weight, True if pipe is None else pipe.info.has_fidelity)


def _describe(result) -> str:
    sampler = "regression" if result.mode == "regression" else f"{result.sampler} x {result.steps} steps"
    scale = result.info.get("work_scale", 1)
    worked = f", worked at {scale}x" if scale > 1 else ""
    fidelity = result.info.get("fidelity")
    worked += f", fidelity {fidelity:g}" if fidelity else ""
    return (f"{sampler}, NFE {result.nfe}{worked}, prompt {result.prompt!r}"
            + (" (cached)" if result.timings.cache_hit else ""))


# ------------------------------------------------------------------------------ handlers


def run_fuse(args: argparse.Namespace) -> int:
    from latentfuse.runtime.latency import format_table
    from latentfuse.runtime.pipeline import load_image, match_pair

    if args.server:
        from latentfuse.runtime.serve_client import fuse_remote

        return fuse_remote(args)
    # read and check the pair and the budget before loading any model, so input errors come back at once
    a, b = match_pair(load_image(args.a, f"image A ({args.a})"), load_image(args.b, f"image B ({args.b})"),
                      args.resize, names=(args.a, args.b))
    if args.max_memory is not None:
        from latentfuse.runtime.memory import parse_memory

        parse_memory(args.max_memory)
    _check_fidelity(args.fidelity)
    pipe = build_pipeline(args)
    _check_fidelity(args.fidelity, pipe)
    kwargs = _call_kwargs(args)
    result = pipe(a, b, **kwargs)
    out = result.save(args.out, bit_depth=args.bit_depth)
    print(f"{out}: {result.image.shape[1]}x{result.image.shape[0]}, {pipe.backend.describe()}, {_describe(result)}, "
          f"{result.timings.total * 1e3:.1f} ms")
    if args.warmup > 0:
        summary = pipe.benchmark(a, b, warmup=args.warmup - 1, runs=args.runs,
                                 label=f"{pipe.backend.name} {args.mode}", **kwargs)
        print(format_table(summary))
    return 0


def pair_files(dir_a: Path, dir_b: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pairs of image files with the same stem in both folders, and the names present in only one."""
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.model.image_io import is_image_file

    for d in (dir_a, dir_b):
        if not d.is_dir():
            raise LatentfuseError(f"not a folder: {d}")
    files_a = {p.stem: p for p in sorted(dir_a.iterdir()) if p.is_file() and is_image_file(p)}
    files_b = {p.stem: p for p in sorted(dir_b.iterdir()) if p.is_file() and is_image_file(p)}
    pairs = [(files_a[s], files_b[s]) for s in sorted(files_a) if s in files_b]
    unmatched = sorted(f"{p.name} (only in {d})" for files, d in ((files_a, dir_a), (files_b, dir_b))
                       for s, p in files.items() if s not in (files_b if files is files_a else files_a))
    if not pairs:
        raise LatentfuseError(f"no image pairs with matching names in {dir_a} and {dir_b}")
    return pairs, unmatched


def run_fuse_dir(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from latentfuse.model.errors import LatentfuseError

    if not args.server:
        _check_fidelity(args.fidelity)
    pairs, unmatched = pair_files(Path(args.dir_a), Path(args.dir_b))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = args.ext if args.ext.startswith(".") else f".{args.ext}"
    todo = [(a, b, out_dir / f"{a.stem}{ext}") for a, b in pairs]
    skipped = [t for t in todo if t[2].exists() and not args.overwrite]
    todo = [t for t in todo if t not in skipped]
    failed: list[tuple[str, str]] = []
    done = 0
    if args.server:
        from latentfuse.runtime.serve_client import fuse_dir_remote

        done, failed = fuse_dir_remote(args, todo)
    else:
        pipe = build_pipeline(args) if todo else None
        if pipe is not None:
            _check_fidelity(args.fidelity, pipe)  # once, not as a failure of every pair
        kwargs = _call_kwargs(args)
        for a, b, out in tqdm(todo, desc="fuse-dir", unit="pair"):
            try:
                pipe(a, b, **kwargs).save(out, bit_depth=args.bit_depth)
                done += 1
            except (LatentfuseError, OSError) as err:
                failed.append((a.name, str(err)))
    print(f"fused {done}, skipped {len(skipped)} already done, failed {len(failed)}; outputs in {out_dir}")
    for name in unmatched:
        print(f"  unpaired: {name}")
    if failed:
        print("failed pairs:", file=sys.stderr)
        for name, msg in failed:
            print(f"  {name}: {msg}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------ demo

RANDOM_WEIGHTS_BANNER = """
##############################################################################
#  WARNING: the bundled default model ({where}) was not found.
#  The demo is running the `tiny` preset with RANDOM, UNTRAINED weights:
#  the fused images below are NOT meaningful, only the pipeline and its
#  latency are. Train the default (see the README) or pass --checkpoint DIR.
##############################################################################
"""


def side_by_side(images, gap: int = 4):
    """A | B | fused as one HxWx3 image (gray repeated to RGB), separated by white gaps."""
    import numpy as np

    from latentfuse.model.image_processing.color import to_rgb

    h = max(i.shape[0] for i in images)
    tiles = []
    for k, img in enumerate(images):
        img = to_rgb(img)
        tile = np.ones((h, img.shape[1], 3), np.float32)
        tile[: img.shape[0]] = img
        tiles.append(tile)
        if k < len(images) - 1:
            tiles.append(np.ones((h, gap, 3), np.float32))
    return np.concatenate(tiles, axis=1)


def demo_model_dir(out: Path, checkpoint: str | None) -> tuple[Path, bool]:
    """(model directory, weights are random): the given one, the bundled default, or a random tiny model."""
    from latentfuse.model.components import DEFAULT_MODEL_DIR, INDEX_NAME, FusionComponents

    if checkpoint:
        return Path(checkpoint), False
    if (DEFAULT_MODEL_DIR / INDEX_NAME).is_file():
        return DEFAULT_MODEL_DIR, False
    print(RANDOM_WEIGHTS_BANNER.format(where=DEFAULT_MODEL_DIR), file=sys.stderr, flush=True)
    random_dir = out / "random_tiny_model"
    if not (random_dir / INDEX_NAME).is_file():
        FusionComponents.from_preset("tiny", seed=0).save_pretrained(random_dir)
    return random_dir, True


def run_demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from latentfuse.model.data.samples import sample_pairs
    from latentfuse.model.data.tasks import TASKS
    from latentfuse.model.image_io import write_image
    from latentfuse.runtime.latency import format_table
    from latentfuse.runtime.backends.torch_backend import quiet_loaders
    from latentfuse.runtime.manifest import check_bundle_dir
    from latentfuse.runtime.pipeline import Pipeline, load_image

    quiet_loaders()  # no library progress bars / hints between the demo's own lines
    _check_fidelity(args.fidelity)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(args, "bundle", None) and (args.checkpoint or args.backend == "torch"):
        from latentfuse.model.errors import LatentfuseError

        raise LatentfuseError("demo --bundle runs a deployment bundle on onnxruntime / tensorrt: drop --checkpoint "
                              "and --backend torch")
    model_dir, random_weights = (None, False) if getattr(args, "bundle", None) else demo_model_dir(out, args.checkpoint)
    options = {"threads": args.threads} if args.threads and args.backend != "tensorrt" else {}
    if getattr(args, "bundle", None):
        check_bundle_dir(args.bundle)
    # a model directory on onnxruntime / tensorrt runs its cached export (made once)
    pipe = Pipeline.from_pretrained(getattr(args, "bundle", None) or model_dir, backend=args.backend, **options)
    print(f"backend: {pipe.backend.describe()}")
    _check_fidelity(args.fidelity, pipe)
    kwargs = dict(mode=args.mode, steps=args.steps, seed=args.seed, detail=args.detail, fidelity=args.fidelity,
                  start=args.start)
    jobs = [(task, pair) for task in TASKS for pair in sample_pairs(task)]
    for task, pair in tqdm(jobs, desc="demo", unit="pair"):
        a, b, name = _pair_paths(pair)
        result = pipe(a, b, task=task, prompt=getattr(pair, "prompt", None), **kwargs)
        stem = f"{task}_{name}"
        result.save(out / f"{stem}_fused.png")
        write_image(out / f"{stem}_side_by_side.png", side_by_side([load_image(a), load_image(b), result.image]))
        tqdm.write(f"{task}: {out / (stem + '_fused.png')} ({result.image.shape[1]}x{result.image.shape[0]}, "
                   f"{_describe(result)})")
    summaries = []
    for task in TASKS:  # one timed pair per task: warm-up runs, then the median of --runs
        pair = sample_pairs(task)[0]
        a, b, _ = _pair_paths(pair)
        h, w = load_image(a).shape[:2]
        summaries.append(pipe.benchmark(a, b, warmup=args.warmup, runs=args.runs, label=f"{task} {w}x{h}",
                                        task=task, prompt=getattr(pair, "prompt", None), **kwargs))
    print(f"\nlatency per image, {pipe.backend.name}, {args.mode} "
          f"({summaries[0].nfe} DiT call{'s' if summaries[0].nfe != 1 else ''}):")
    print(format_table(summaries))
    if random_weights:
        print("NOTE: random, untrained weights (see the warning above): the images show the pipeline, "
              "not the method.", file=sys.stderr)
    print(f"fused images and side-by-side views (A | B | fused) in {out}")
    return 0


def _pair_paths(pair) -> tuple[Path, Path, str]:
    """(A path, B path, name) from one entry of ``model.data.samples.sample_pairs``."""
    if isinstance(pair, dict):
        a, b = pair["a"], pair["b"]
        name = pair.get("name")
    elif hasattr(pair, "a") and hasattr(pair, "b"):
        a, b, name = pair.a, pair.b, getattr(pair, "name", None)
    else:
        a, b = pair[0], pair[1]
        name = None
    a, b = Path(a), Path(b)
    return a, b, name or a.stem
