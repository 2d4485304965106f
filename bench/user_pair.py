"""What a user waits for: one camera-size pair fused end to end, per backend and head, in one run.

The sweep (:mod:`latentfuse.bench.sweep`) times the graphs of random-weight presets at square sizes. This is the
other view: a real model directory (by default the bundled default, at its own working scale and
window) fusing one pair of a camera's size (640x480 by default: the shipped VIF sample enlarged to
it) through :class:`latentfuse.runtime.pipeline.Pipeline`, exactly as ``latentfuse fuse`` runs it: the VAE once
per image, the DiT in batched windows, the prompt from the cache. Backends are interleaved round by
round (warm-up first), so their ratio is measured under the same machine load.

    latentfuse bench --user-pair 640x480 --backends torch,onnxruntime --threads 2 --out bench-out/

writes ``user_pair.json`` and ``user_pair.md`` (median per stage, min-max of the total, the
ONNX Runtime / torch ratio).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError


@dataclass
class UserPairRow:
    backend: str
    mode: str
    summary: object  # runtime.latency.LatencySummary
    describe: str

    def as_dict(self) -> dict:
        return {"backend": self.backend, "mode": self.mode, "describe": self.describe, **self.summary.as_dict()}


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' (W x H) -> (480, 640) as (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LatentfuseError(f"a pair size is WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    if min(w, h) < 16:
        raise LatentfuseError(f"the pair must be at least 16x16 px, got {text!r}")
    return h, w


def sample_pair(size: tuple[int, int], task: str = "vif") -> tuple[np.ndarray, np.ndarray]:
    """The first shipped sample pair of ``task``, resampled to ``size`` (H, W) (bicubic, antialiased)."""
    from skimage.transform import resize

    from latentfuse.model.data.samples import sample_pairs
    from latentfuse.model.image_io import read_image

    pair = sample_pairs(task)[0]
    out = []
    for path in (pair.a, pair.b):
        img = read_image(path)
        out.append(np.clip(resize(img, size + img.shape[2:], order=3, anti_aliasing=True), 0, 1).astype(np.float32))
    return out[0], out[1]


def _pipelines(model_dir: Path, backends: Sequence[str], threads: int | None):
    from latentfuse.export.bundle_cache import cached_bundle
    from latentfuse.runtime.pipeline import Pipeline

    options = {"threads": threads} if threads else {}
    out = {}
    for name in backends:
        if name == "torch":
            out[name] = Pipeline.from_checkpoint(model_dir, **options)
        elif name == "onnxruntime":
            out[name] = Pipeline.from_bundle(cached_bundle(model_dir, name), backend=name, providers="cpu", **options)
        elif name == "tensorrt":
            out[name] = Pipeline.from_bundle(cached_bundle(model_dir, name), backend=name)
        else:
            raise LatentfuseError(f"unknown backend {name!r} for the user-pair bench")
    return out


def run_user_pair(model_dir: str | os.PathLike | None = None, backends: Sequence[str] = ("torch", "onnxruntime"),
                  modes: Sequence[str] = ("regression", "flow"), size: tuple[int, int] = (480, 640),
                  threads: int | None = None, warmup: int = 1, repeat: int = 3, task: str = "vif",
                  progress: bool = True) -> list[UserPairRow]:
    """Median per stage of ``repeat`` timed fuse calls per (backend, mode), rounds interleaved."""
    from tqdm import tqdm

    from latentfuse.model.components import DEFAULT_MODEL_DIR
    from latentfuse.runtime.latency import summarize

    model_dir = Path(model_dir or DEFAULT_MODEL_DIR)
    if repeat < 1 or warmup < 0:
        raise LatentfuseError(f"the user-pair bench needs --repeat >= 1 and --warmup >= 0, got {repeat}, {warmup}")
    a, b = sample_pair(size, task)
    pipes = _pipelines(model_dir, backends, threads)
    for pipe in pipes.values():
        pipe.memoize_prompts = False  # as a deployment would: canonical prompts from the cache only
    jobs = [(name, mode) for name in pipes for mode in modes]
    times: dict[tuple[str, str], list] = {job: [] for job in jobs}
    rounds = warmup + repeat
    with tqdm(total=rounds * len(jobs), desc=f"user pair {size[1]}x{size[0]}", unit="fuse",
              disable=not progress) as bar:
        for r in range(rounds):
            for name, mode in jobs:
                result = pipes[name](a, b, task=task, mode=mode)
                if r >= warmup:
                    times[(name, mode)].append(result.timings)
                bar.update()
    return [UserPairRow(name, mode, summarize(times[(name, mode)], f"{name} {mode}"), pipes[name].backend.describe())
            for name, mode in jobs]


def format_user_pair(rows: Sequence[UserPairRow], size: tuple[int, int], model_dir: str) -> str:
    """Markdown: one row per (backend, mode), stages in ms, and each backend's ratio to torch."""
    from latentfuse.runtime.latency import STAGES

    lines = [f"### A {size[1]}x{size[0]} pair, end to end ({model_dir})", "",
             "| backend | mode | " + " | ".join(STAGES) + " | total (min-max) | vs torch |",
             "|---|---|" + "---:|" * (len(STAGES) + 2)]
    torch_total = {r.mode: r.summary.median["total"] for r in rows if r.backend == "torch"}
    for r in rows:
        med, (lo, hi) = r.summary.median, r.summary.spread["total"]
        ratio = torch_total.get(r.mode)
        vs = f"{ratio / med['total']:.2f}x" if ratio and r.backend != "torch" else "—"
        lines.append(f"| {r.backend} | {r.mode} | " + " | ".join(f"{med[s] * 1e3:.0f} ms" for s in STAGES)
                     + f" | **{med['total']:.2f} s** ({lo:.2f}-{hi:.2f}) | {vs} |")
    return "\n".join(lines) + "\n"


def write_user_pair(rows: Sequence[UserPairRow], out: str | os.PathLike, size: tuple[int, int], model_dir: str) -> str:
    from latentfuse.model.atomic import atomic_file

    out = Path(out)
    text = format_user_pair(rows, size, model_dir)
    with atomic_file(out / "user_pair.json") as tmp:
        tmp.write_text(json.dumps({"size": {"height": size[0], "width": size[1]}, "model": model_dir,
                                   "rows": [r.as_dict() for r in rows]}, indent=1) + "\n")
    with atomic_file(out / "user_pair.md") as tmp:
        tmp.write_text(text)
    return text
