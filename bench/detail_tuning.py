"""Choosing the detail path's parameters (``model.image_processing.detail``) on training scenes: the grid, the
scores, the choice.

A model carries two detail configurations (``model.image_processing.detail.DetailSettings``): *clean*, for the
task's canonical prompt, and *safe*, for other prompts. They are chosen on the label's VAE round trip
F = D(E(label)) of *training* scenes (``model/data/split.py``), the ceiling of any latent model with that VAE:

* every configuration of :data:`TUNE_GRID` is scored on the clean pairs by the Q^AB/F of F after the detail
  path (mean over tasks of the task means), and on :data:`DEGRADED_VARIANTS` degraded versions of each pair
  (the pipeline's degradations, one each) by the change of PSNR to the clean label that the stage makes when
  fed the *degraded* sources (F stands for a model that restored them): negative when it puts degradation back;
* :func:`choose_config` keeps, for *clean*, the best clean Q^AB/F; for *safe*, the best clean Q^AB/F among the
  configurations that cost the degraded pairs at most :data:`MAX_DEGRADED_LOSS_DB`.

The shipped default's ``[detail]`` recipe table was chosen this way (``docs/real-data-ceilings.md`` records the
measurement). ``python -m latentfuse.bench.detail_tuning --data DATASETS --out tune.json`` runs it (DATASETS: a
folder holding vif/, mef/, mff/ pairs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import to_rgb

TUNE_GRID = {"sigma": (4.0, 8.0, 16.0, 24.0, 32.0), "radius": (2, 4, 8), "fused_candidate": (True, False),
             "channels": ("luma", "rgb"), "noise_k": (0.0, 3.0)}
DEGRADED_VARIANTS = 2        # degraded versions of each tuning pair
MAX_DEGRADED_LOSS_DB = 0.1   # the "safe" detail path may cost degraded pairs at most this much PSNR (mean, dB)
KINDS = ("clean", "safe")    # best on clean pairs / best that spares degraded pairs

#: a tuning pair: name and {"a", "b", "label", "rt_label"} ([0, 1] images; rt_label = D(E(label)))
Pair = tuple[str, dict]


def fit(img: np.ndarray, long_side: int) -> np.ndarray:
    """Shrink (anti-aliased) so the long side is at most ``long_side``; smaller images stay as they are."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    if max(h, w) <= long_side:
        return img.astype(np.float32)
    s = long_side / max(h, w)
    shape = (max(1, round(h * s)), max(1, round(w * s))) + img.shape[2:]
    return np.clip(resize(img, shape, order=1, anti_aliasing=True, mode="reflect"), 0, 1).astype(np.float32)


def round_trip(vae, img: np.ndarray, scale: int = 1) -> np.ndarray:
    """D(E(img)) of a [0, 1] image as the pipeline runs it: enlarged ``scale`` times (``model.work_scale``),
    reflect-padded to the pipeline's multiple (``runtime.pipeline.pad_to_multiple``), decoded, cropped, shrunk."""
    import torch

    from latentfuse.model.work_scale import downscale, upscale
    from latentfuse.runtime.pipeline import pad_to_multiple

    x, (h, w) = pad_to_multiple(upscale(to_rgb(img), scale))
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].float() * 2.0 - 1.0
    with torch.no_grad():
        y = vae.decode(vae.encode(t))[0, :, :h, :w]
    return downscale(np.ascontiguousarray(((y + 1.0) * 0.5).clamp(0, 1).permute(1, 2, 0).numpy()), scale)


def training_pairs(data: Path, task: str, per_task: int, long_side: int, trip: Callable[[np.ndarray], np.ndarray]) -> list[Pair]:
    """``per_task`` training-scene pairs of ``data/<task>`` in scene-hash order (a deterministic, shuffled choice),
    fitted to ``long_side``, with the teacher label and its round trip ``trip(label)``."""
    from latentfuse.model.data.labels import pseudo_label
    from latentfuse.model.data.pairs import discover_pairs, load_pair, validate_pairs
    from latentfuse.model.data.split import scene_hash, select

    pairs = sorted(select(validate_pairs(discover_pairs(data / task, task)).pairs, "train"), key=lambda p: scene_hash(p.name))
    out = []
    for pair in pairs[:per_task]:
        a, b, _ = load_pair(pair, task)
        a, b = fit(a, long_side), fit(b, long_side)
        label = pseudo_label(a, b, task, sample=pair.name).image
        out.append((pair.name, {"a": a, "b": b, "label": label, "rt_label": trip(label)}))
    if not out:
        raise LatentfuseError(f"{data / task}: no training-scene pairs to tune on")
    return out


def degraded_variants(name: str, d: dict, task: str, count: int) -> list[tuple[np.ndarray, np.ndarray, list]]:
    """``count`` degraded versions of a clean pair (one degradation of the task each, the pipeline's
    ``degrade_pair`` without cropping), seeded by the pair name."""
    from latentfuse.model.data.pipeline import degrade_pair

    out = []
    for v in range(count):
        rng = np.random.default_rng([11, zlib.crc32(name.encode()), v])
        sample = degrade_pair(d["a"], d["b"], d["label"], task, rng, n=[1], crop=False)
        out.append((sample.a, sample.b, sample.degradations))
    return out


def _qabf(d: dict, f: np.ndarray) -> float:
    from latentfuse.model.metrics import compute

    return compute(to_rgb(d["a"]) * 255, to_rgb(d["b"]) * 255, to_rgb(f) * 255, names=["qabf"])["qabf"]


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(to_rgb(ref).astype(np.float64), np.clip(to_rgb(x), 0, 1).astype(np.float64),
                                         data_range=1.0))


def grid_configs(grid: dict = TUNE_GRID) -> list:
    from latentfuse.model.image_processing.detail import DetailConfig

    return [DetailConfig(**dict(zip(grid, values))) for values in itertools.product(*grid.values())]


def score_configs(sets: dict[str, list[Pair]], configs: Iterable, variants: int = DEGRADED_VARIANTS) -> list[dict]:
    """One row per configuration: clean Q^AB/F per task and its mean; degraded ΔPSNR (dB) per task and its mean."""
    from latentfuse.model.image_processing.detail import restore_detail

    degraded = {task: [(d, va, vb) for name, d in items for va, vb, _ in degraded_variants(name, d, task, variants)]
                for task, items in sets.items()}
    rows = []
    for cfg in configs:
        clean = {task: float(np.mean([_qabf(d, restore_detail(d["rt_label"], d["a"], d["b"], cfg)) for _, d in items]))
                 for task, items in sets.items()}
        loss = {task: float(np.mean([_psnr(restore_detail(d["rt_label"], va, vb, cfg), d["label"])
                                     - _psnr(d["rt_label"], d["label"]) for d, va, vb in items]))
                for task, items in degraded.items()}
        rows.append({"config": cfg.as_dict(), "qabf": clean, "mean": float(np.mean(list(clean.values()))),
                     "degraded_dpsnr": loss, "degraded_mean": float(np.mean(list(loss.values())))})
    return rows


def choose_config(rows: list[dict], kind: str, max_loss_db: float = MAX_DEGRADED_LOSS_DB) -> dict:
    """``clean``: the row of best clean Q^AB/F (for pairs known to be clean: the task's canonical prompt);
    ``safe``: the best clean Q^AB/F among the rows whose mean degraded PSNR change is at least ``-max_loss_db``
    or, if none is, the row that costs the degraded pairs least."""
    if kind not in KINDS:
        raise LatentfuseError(f"detail choice must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "clean":
        return max(rows, key=lambda r: r["mean"])
    safe = [r for r in rows if r["degraded_mean"] >= -max_loss_db]
    return max(safe, key=lambda r: r["mean"]) if safe else max(rows, key=lambda r: r["degraded_mean"])


def tune(sets: dict[str, list[Pair]], grid: dict = TUNE_GRID, variants: int = DEGRADED_VARIANTS) -> dict:
    """Score the grid on ``sets`` ({task: tuning pairs}) and choose; returns the rows (best clean first), the
    Q^AB/F without the stage, the clean choice without its noise gate, and the two choices (``DetailConfig``
    dicts, as the recipe's ``detail_clean`` / ``detail_safe`` take them)."""
    from latentfuse.model.image_processing.detail import DetailConfig, restore_detail

    rows = score_configs(sets, grid_configs(grid), variants)
    best = DetailConfig(**choose_config(rows, "clean")["config"])
    ungated = replace(best, noise_k=0.0)
    return {"grid": {k: list(v) for k, v in grid.items()}, "degraded_variants": variants,
            "max_degraded_loss_db": MAX_DEGRADED_LOSS_DB,
            "without_detail": {t: float(np.mean([_qabf(d, d["rt_label"]) for _, d in items])) for t, items in sets.items()},
            "best_without_threshold": {t: float(np.mean([_qabf(d, restore_detail(d["rt_label"], d["a"], d["b"], ungated))
                                                         for _, d in items])) for t, items in sets.items()},
            "train_pairs": {t: [n for n, _ in items] for t, items in sets.items()},
            "rows": sorted(rows, key=lambda r: -r["mean"]),
            "chosen": {kind: choose_config(rows, kind)["config"] for kind in KINDS}}


def main(argv: list[str] | None = None) -> int:
    from latentfuse.model.atomic import atomic_file
    from latentfuse.model.data.tasks import TASKS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="real pairs, one folder per task (vif/ mef/ mff/)")
    p.add_argument("--model", type=Path, default=None, help="model directory whose VAE makes the round trips "
                                                            "(default: the bundled default)")
    p.add_argument("--out", type=Path, required=True, help="the JSON written (rows, choices)")
    p.add_argument("--per-task", type=int, default=8, help="training scenes per task")
    p.add_argument("--long-side", type=int, default=512)
    args = p.parse_args(argv)
    from latentfuse.model.components import DEFAULT_MODEL_DIR, FusionComponents

    components = FusionComponents.from_pretrained(args.model or DEFAULT_MODEL_DIR)
    vae = components.vae.float().eval()
    sets = {task: training_pairs(args.data, task, args.per_task, args.long_side,
                                 lambda img: round_trip(vae, img, components.work_scale)) for task in TASKS}
    result = tune(sets)
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    for kind, cfg in result["chosen"].items():
        print(f"{kind}: {cfg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
