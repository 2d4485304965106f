"""Write a degraded/clean/GT/prompt dataset (MMAIF section 4.1) from a folder of clean pairs.

Output layout (``latentfuse data build``)::

    OUT/build.json                 the build configuration (a re-run must match it)
    OUT/labels/<pair>.png|.json    teacher pseudo-label of each clean pair without dataset GT (cached)
    OUT/samples/<id>/              a.png b.png clean_a.png clean_b.png gt.png meta.json
    OUT/index.jsonl                the sample index: one JSON record per sample (the samples' meta.json,
                                   sorted by id); folders built before it was named read as ``manifest.jsonl``

Real pairs are split by scene name (:mod:`latentfuse.model.data.split`): by default only training scenes are
written (``split="train"``); ``"heldout"`` writes the held-out scenes (for evaluation), ``"all"`` both.
Every record carries its scene's side (``"split": "train" | "heldout"``) and the training data loader
refuses held-out records. Synthetic folders (``latentfuse data synth``) are not split: their held-out
pairs come from another seed.

Every sample directory is written atomically (:func:`latentfuse.model.atomic.atomic_dir`), so a sample either
exists completely or not at all; re-running the same command skips finished samples and rewrites the
index from their ``meta.json``. Sample ``<pair>_<k>`` draws everything from a generator seeded by
``(seed, crc32(pair), k)``: results do not depend on which samples were built before.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from latentfuse.model.atomic import atomic_dir, atomic_file
from latentfuse.model.data.depth import DepthEstimator
from latentfuse.model.data.labels import pseudo_label
from latentfuse.model.data.pairs import ImagePair, discover_pairs, load_pair, validate_pairs
from latentfuse.model.data.pipeline import N_CHOICES, degrade_pair
from latentfuse.model.data.split import check_split, select, split_of
from latentfuse.model.data.tasks import check_task
from latentfuse.model.data.teachers import Teacher, teachers_for
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_io import read_image, write_image

FORMAT_VERSION = 1
SAMPLE_FILES = ("a", "b", "clean_a", "clean_b", "gt")
INDEX_NAME = "index.jsonl"  # the sample index a build writes (JSON lines, one record per sample)
# the names the index had before (a folder with one of them is read as it is; a rebuild writes INDEX_NAME)
LEGACY_INDEX_NAMES = ("manifest.jsonl", "train.jsonl")


@dataclass
class BuildReport:
    out: Path
    total: int
    built: int
    skipped: int
    index: Path


def sample_rng(seed: int, pair: str, k: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(pair.encode()), int(k)])


def _config(src: Path, task: str, layout: str, n_degradations: Sequence[int], seed: int, per_pair: int,
            long_side: int | None, crop: bool, teachers: list[str], split: str | None) -> dict:
    config = {"format": FORMAT_VERSION, "task": task, "src": str(src.resolve()), "layout": layout,
              "n_degradations": [int(n) for n in n_degradations], "seed": int(seed), "per_pair": int(per_pair),
              "long_side": long_side, "crop": bool(crop), "teachers": teachers}
    if split is not None:  # synthetic sources are not split (and keep the build.json they always had)
        config["split"] = split
    return config


def resolve_split(split: str | None, synthetic: bool, src: Path) -> str | None:
    """The split a build writes: ``train`` by default for real pairs; None (unsplit) for synthetic ones."""
    if synthetic:
        if split not in (None, "all"):
            raise LatentfuseError(f"{src} holds synthetic pairs, which are not split by scene (hold out "
                                  f"another seed instead); drop --split {split}")
        return None
    return check_split(split or "train")


def _check_resume(out: Path, config: dict) -> None:
    path = out / "build.json"
    if not path.is_file():
        if (out / "samples").exists():
            raise LatentfuseError(f"{out} has samples/ but no build.json: not a latentfuse dataset folder")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LatentfuseError(f"cannot read {path}: {err}") from None
    diff = [k for k in config if old.get(k) != config[k]]
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {config[k]!r}" for k in diff)
        raise LatentfuseError(f"{out} was built with different settings ({detail}); "
                              "use a new --out folder (or the original settings to resume)")


def _ground_truth(pair: ImagePair, a: np.ndarray, b: np.ndarray, gt: np.ndarray | None, task: str,
                  out: Path, teachers: list[Teacher]) -> tuple[np.ndarray, dict]:
    """Dataset GT when present, else the (cached) teacher pseudo-label of the clean pair."""
    if gt is not None:
        return gt, {"gt_source": "dataset", "gt_path": str(pair.gt)}
    png, info = out / "labels" / f"{pair.name}.png", out / "labels" / f"{pair.name}.json"
    if png.is_file() and info.is_file():
        return read_image(png), json.loads(info.read_text())
    label = pseudo_label(a, b, task, teachers=teachers, sample=pair.name)
    meta = {"gt_source": "teachers", **label.summary()}
    write_image(png, label.image)
    with atomic_file(info) as tmp:
        tmp.write_text(json.dumps(meta))
    return label.image, meta


def _write_sample(out: Path, sid: str, pair: ImagePair, k: int, sample, label_meta: dict, seed: int,
                  split: str | None) -> dict:
    record = {
        "id": sid, "pair": pair.name, "variant": k, "task": sample.task, "seed": seed,
        **({"split": split_of(pair.name)} if split is not None else {}),
        "degradations": sample.degradations, "prompt": sample.prompt, "params": sample.params,
        "crop": sample.crop, "height": int(sample.a.shape[0]), "width": int(sample.a.shape[1]),
        "source": {"a": str(pair.a), "b": str(pair.b)}, "label": label_meta,
        "files": {name: f"samples/{sid}/{name}.png" for name in SAMPLE_FILES},
    }
    with atomic_dir(out / "samples" / sid, overwrite=True) as tmp:
        for name in SAMPLE_FILES:
            write_image(tmp / f"{name}.png", getattr(sample, name))
        (tmp / "meta.json").write_text(json.dumps(record, default=float))
    return record


def _rewrite_index(out: Path) -> Path:
    """The sample index rewritten from the samples' ``meta.json`` (it replaces the ``manifest.jsonl`` of a
    folder built before the index had its name: the same records)."""
    records = []
    samples = out / "samples"
    if samples.is_dir():
        for meta in sorted(samples.glob("*/meta.json")):
            records.append(json.loads(meta.read_text()))
    path = out / INDEX_NAME
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in records))
    (out / LEGACY_INDEX_NAMES[0]).unlink(missing_ok=True)
    return path


def build_dataset(src: str | os.PathLike, out: str | os.PathLike, task: str,
                  n_degradations: Sequence[int] = N_CHOICES, seed: int = 0, per_pair: int = 1,
                  long_side: int | None = None, crop: bool = True, teacher_names: list[str] | None = None,
                  extra_teachers: Sequence[Teacher] = (), depth_estimator: DepthEstimator | None = None,
                  limit: int | None = None, progress: bool = True, split: str | None = None) -> BuildReport:
    """Degrade every clean pair of ``src`` in ``split`` (default: the training scenes of real pairs, every
    synthetic pair) ``per_pair`` times into ``out`` (see module docstring)."""
    task = check_task(task)
    if per_pair < 1:
        raise LatentfuseError(f"--per-pair must be >= 1, got {per_pair}")
    if not n_degradations or any(int(n) not in (0, 1, 2, 3) for n in n_degradations):
        raise LatentfuseError(f"--n-degradations takes values in 0..3, got {list(n_degradations)}")
    src, out = Path(src), Path(out)
    pairset = validate_pairs(discover_pairs(src, task))
    split = resolve_split(split, pairset.layout.startswith("synthetic"), src)
    pairs = pairset.pairs if split is None else select(pairset.pairs, split)
    if not pairs:
        raise LatentfuseError(f"none of the {len(pairset.pairs)} {task} pairs in {src} is in the {split} split")
    pairs = pairs[:limit] if limit else pairs
    teachers = teachers_for(task, teacher_names, list(extra_teachers))
    config = _config(src, task, pairset.layout, n_degradations, seed, per_pair, long_side, crop,
                     [t.name for t in teachers], split)
    _check_resume(out, config)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "build.json") as tmp:
        tmp.write_text(json.dumps(config, indent=1))
    index = _rewrite_index(out)  # consistent with what is already on disk

    jobs = [(pair, k) for pair in pairs for k in range(per_pair)]
    done = {p.parent.name for p in (out / "samples").glob("*/meta.json")} if (out / "samples").is_dir() else set()
    todo = [(pair, k) for pair, k in jobs if f"{pair.name}_{k}" not in done]
    built = 0
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"build {task}", unit="sample", disable=not progress)
        by_pair: dict[str, list[int]] = {}
        for pair, k in todo:
            by_pair.setdefault(pair.name, []).append(k)
        lookup = {p.name: p for p in pairs}
        with open(index, "a") as log:
            for name, ks in by_pair.items():
                pair = lookup[name]
                a, b, gt = load_pair(pair, task)
                target, label_meta = _ground_truth(pair, a, b, gt, task, out, teachers)
                for k in ks:
                    sid = f"{pair.name}_{k}"
                    rng = sample_rng(seed, pair.name, k)
                    sample = degrade_pair(a, b, target, task, rng, n=n_degradations, long_side=long_side,
                                          crop=crop, depth_estimator=depth_estimator)
                    record = _write_sample(out, sid, pair, k, sample, label_meta, seed, split)
                    log.write(json.dumps(record, default=float) + "\n")
                    log.flush()
                    built += 1
                    bar.update(1)
        bar.close()
    index = _rewrite_index(out)
    return BuildReport(out=out, total=len(jobs), built=built, skipped=len(jobs) - len(todo), index=index)
