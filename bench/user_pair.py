"""What a user waits for: one camera-size pair fused end to end, per backend and head, in one run.

The sweep (:mod:`latentfuse.bench.sweep`) times the graphs of random-weight presets at square sizes. This is the
other view: a real model directory (by default the bundled default, at its own working scale and
window) fusing one pair of a camera's size (640x480 by default: the shipped VIF sample enlarged to
it) through :class:`latentfuse.runtime.pipeline.Pipeline`, exactly as ``latentfuse fuse`` runs it: the VAE once
per image, the DiT in batched windows, the prompt from the cache. Backends are interleaved round by
round (warm-up first), so their ratio is measured under the same machine load.

    latentfuse bench --user-pair 640x480 --backends torch,onnxruntime --threads 2 --out bench-out/
    latentfuse bench --user-pair 640x480,1920x1080,4000x3000 --backends onnxruntime --user-modes regression \
        --threads 2 --warmup 1 --repeat 1 --no-sweep --out bench-out/      # time and memory against size

writes ``user_pair.json`` and ``user_pair.md`` (median per stage, min-max of the total, seconds per
megapixel, peak memory, the ONNX Runtime / torch ratio). Several sizes run in the same rounds, so their
time per megapixel is compared under the same machine load; warm-up rounds fuse only the smallest size
(they warm the sessions, which every size shares). Peak memory is the process's resident set during
each call (Linux VmHWM, reset before the call; the process's other pipelines included), the largest over
the timed calls, and on a GPU torch's allocator peak (torch backend only: ONNX Runtime's and TensorRT's
device allocators are not seen).
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
    size: tuple[int, int] = (0, 0)  # (H, W)
    peak_rss: int | None = None     # bytes, the largest over the timed calls; None where it cannot be read
    device_peak: int | None = None  # bytes, torch's CUDA allocator; None without a GPU

    @property
    def megapixels(self) -> float:
        return self.size[0] * self.size[1] / 1e6

    def as_dict(self) -> dict:
        return {"backend": self.backend, "mode": self.mode, "describe": self.describe,
                "size": {"height": self.size[0], "width": self.size[1]}, "peak_rss_bytes": self.peak_rss,
                "device_peak_bytes": self.device_peak,
                "s_per_megapixel": self.summary.median["total"] / self.megapixels if self.megapixels else None,
                **self.summary.as_dict()}


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' (W x H) -> (480, 640) as (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LatentfuseError(f"a pair size is WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    if min(w, h) < 16:
        raise LatentfuseError(f"the pair must be at least 16x16 px, got {text!r}")
    return h, w


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'640x480,4000x3000' -> [(480, 640), (3000, 4000)], smallest first, each once."""
    sizes = {parse_size(part.strip()) for part in str(text).split(",") if part.strip()}
    if not sizes:
        raise LatentfuseError(f"a pair size is WIDTHxHEIGHT, e.g. 640x480, got {text!r}")
    return sorted(sizes, key=lambda s: (s[0] * s[1], s))


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
    from latentfuse.runtime.pipeline import Pipeline

    options = {"threads": threads} if threads else {}
    per_backend = {"torch": options, "onnxruntime": {"providers": "cpu", **options}, "tensorrt": {}}
    out = {}
    for name in backends:
        if name not in per_backend:
            raise LatentfuseError(f"unknown backend {name!r} for the user-pair bench")
        # torch runs the model directory, onnxruntime / tensorrt its cached export
        out[name] = Pipeline.from_pretrained(model_dir, backend=name, **per_backend[name])
    return out


def run_user_pair(model_dir: str | os.PathLike | None = None, backends: Sequence[str] = ("torch", "onnxruntime"),
                  modes: Sequence[str] = ("regression", "flow"), size: tuple[int, int] = (480, 640),
                  threads: int | None = None, warmup: int = 1, repeat: int = 3, task: str = "vif",
                  progress: bool = True, sizes: Sequence[tuple[int, int]] | None = None) -> list[UserPairRow]:
    """Median per stage of ``repeat`` timed fuse calls per (size, backend, mode), rounds interleaved, with the
    peak memory of each; ``sizes`` (H, W) run in the same rounds (default: ``size`` alone), warm-up rounds
    only at the smallest."""
    from tqdm import tqdm

    from latentfuse.bench.memory import cuda_peak, process_peak_rss, reset_process_peak
    from latentfuse.model.components import DEFAULT_MODEL_DIR
    from latentfuse.runtime.latency import summarize

    model_dir = Path(model_dir or DEFAULT_MODEL_DIR)
    if repeat < 1 or warmup < 0:
        raise LatentfuseError(f"the user-pair bench needs --repeat >= 1 and --warmup >= 0, got {repeat}, {warmup}")
    sizes = sorted(sizes or [size], key=lambda s: s[0] * s[1])
    pairs = {s: sample_pair(s, task) for s in sizes}
    pipes = _pipelines(model_dir, backends, threads)
    for pipe in pipes.values():
        pipe.memoize_prompts = False  # as a deployment would: canonical prompts from the cache only
    jobs = [(s, name, mode) for s in sizes for name in pipes for mode in modes]
    times: dict[tuple, list] = {job: [] for job in jobs}
    peaks: dict[tuple, list] = {job: [] for job in jobs}
    device: dict[tuple, list] = {job: [] for job in jobs}
    label = ", ".join(f"{w}x{h}" for h, w in sizes)
    with tqdm(total=warmup * len(modes) * len(pipes) + repeat * len(jobs), desc=f"user pair {label}", unit="fuse",
              disable=not progress) as bar:
        for r in range(warmup + repeat):
            for job in jobs:
                s, name, mode = job
                if r < warmup and s != sizes[0]:
                    continue
                resettable = reset_process_peak()
                cuda_peak(reset=True)
                result = pipes[name](*pairs[s], task=task, mode=mode)
                if r >= warmup:
                    times[job].append(result.timings)
                    peaks[job].append(process_peak_rss() if resettable else None)
                    device[job].append(cuda_peak())
                bar.update()
    rows = []
    for job in jobs:
        s, name, mode = job
        rss = [p for p in peaks[job] if p is not None]
        dev = [p for p in device[job] if p is not None]
        rows.append(UserPairRow(name, mode, summarize(times[job], f"{name} {mode}"), pipes[name].backend.describe(),
                                size=s, peak_rss=max(rss) if rss else None, device_peak=max(dev) if dev else None))
    return rows


def format_user_pair(rows: Sequence[UserPairRow], size: tuple[int, int], model_dir: str) -> str:
    """Markdown: one row per (size, backend, mode), stages in ms, seconds per megapixel (and its ratio to the
    smallest size's), peak memory, and each backend's ratio to torch at the same size."""
    from latentfuse.runtime.latency import STAGES

    sizes = sorted({r.size for r in rows if r.size != (0, 0)} or {size}, key=lambda s: s[0] * s[1])
    title = (f"A {sizes[0][1]}x{sizes[0][0]} pair" if len(sizes) == 1
             else "Pairs of " + ", ".join(f"{w}x{h}" for h, w in sizes))
    device = any(r.device_peak is not None for r in rows)
    lines = [f"### {title}, end to end ({model_dir})", "",
             "| pair | backend | mode | " + " | ".join(STAGES) + " | total (min-max) | s/MP (vs smallest) | peak RSS"
             + (" | device peak" if device else "") + " | vs torch |",
             "|---|---|---|" + "---:|" * (len(STAGES) + 4 + device)]
    torch_total = {(r.size, r.mode): r.summary.median["total"] for r in rows if r.backend == "torch"}
    per_mp = {(r.size, r.backend, r.mode): r.summary.median["total"] / r.megapixels for r in rows if r.megapixels}

    def gb(n):
        return "—" if n is None else f"{n / 2 ** 30:.2f} GB"

    for r in rows:
        med, (lo, hi) = r.summary.median, r.summary.spread["total"]
        ratio = torch_total.get((r.size, r.mode))
        vs = f"{ratio / med['total']:.2f}x" if ratio and r.backend != "torch" else "—"
        mp = per_mp.get((r.size, r.backend, r.mode))
        first = per_mp.get((sizes[0], r.backend, r.mode))
        rate = "—" if mp is None else f"{mp:.2f}" + (f" ({mp / first:.2f}x)" if first and r.size != sizes[0] else "")
        h, w = r.size if r.size != (0, 0) else size
        lines.append(f"| {w}x{h} | {r.backend} | {r.mode} | " + " | ".join(f"{med[s] * 1e3:.0f} ms" for s in STAGES)
                     + f" | **{med['total']:.2f} s** ({lo:.2f}-{hi:.2f}) | {rate} | {gb(r.peak_rss)}"
                     + (f" | {gb(r.device_peak)}" if device else "") + f" | {vs} |")
    return "\n".join(lines) + "\n"


def write_user_pair(rows: Sequence[UserPairRow], out: str | os.PathLike, size: tuple[int, int], model_dir: str) -> str:
    from latentfuse.model.atomic import atomic_file

    out = Path(out)
    text = format_user_pair(rows, size, model_dir)
    sizes = sorted({r.size for r in rows if r.size != (0, 0)} or {size}, key=lambda s: s[0] * s[1])
    with atomic_file(out / "user_pair.json") as tmp:
        tmp.write_text(json.dumps({"size": {"height": size[0], "width": size[1]},
                                   "sizes": [{"height": h, "width": w} for h, w in sizes], "model": model_dir,
                                   "rows": [r.as_dict() for r in rows]}, indent=1) + "\n")
    with atomic_file(out / "user_pair.md") as tmp:
        tmp.write_text(text)
    return text
