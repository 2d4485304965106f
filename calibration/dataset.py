"""The calibration set: degraded pairs of every task at several aspect ratios and sizes, with prompts.

Activation ranges are only as good as the inputs they are measured on, so the set spans what deployment
sees: all three tasks (VIF, MEF, MFF), the degradation pipeline of paper section 3.1 (random composed
degradations on top of the shipped sample pairs), the pipeline's random aspect-ratio crops (16:9, 4:3,
1:1, both orientations) at several long sides, the canonical prompts of the deployment embedding cache
plus each pair's own composite prompt, and flow times t spread over [0, 1] (stratified, so both ends of
the path - pure noise and nearly clean latents - are always present).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError

TASKS = ("vif", "mef", "mff")
DEFAULT_LONG_SIDES = (128, 192, 256)


@dataclass
class CalibrationSample:
    """One degraded pair in the layout the graphs take: float32 ``[3, H, W]`` in [-1, 1], H, W % 16 == 0."""

    task: str
    name: str
    image_a: np.ndarray
    image_b: np.ndarray
    prompt: str
    degradations: list[str] = field(default_factory=list)
    t: float = 0.5
    seed: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.image_a.shape[1:])


def to_graph_image(image01: np.ndarray, multiple: int = 16) -> np.ndarray:
    """HxW or HxWx3 in [0, 1] -> ``[3, H', W']`` in [-1, 1], reflect-padded to ``multiple`` (as the runtime)."""
    x = np.asarray(image01, np.float32)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, -1)
    h, w = x.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    return np.ascontiguousarray(np.transpose(x * 2.0 - 1.0, (2, 0, 1)))


def _source_pairs(task: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The shipped sample pairs of ``task`` (``model/data/samples``); skimage images if none are shipped."""
    try:
        from latentfuse.model.data.samples import sample_pairs
        from latentfuse.model.image_io import read_image

        pairs = [(p.name, read_image(p.a), read_image(p.b)) for p in sample_pairs(task)]
        if pairs:
            return pairs
    except (ImportError, LatentfuseError):
        pass
    from skimage import data

    img = data.astronaut().astype(np.float32) / 255.0
    return [("astronaut", img, img.mean(-1))]


def calibration_samples(n: int = 12, *, seed: int = 0, long_sides: Sequence[int] = DEFAULT_LONG_SIDES,
                        tasks: Sequence[str] = TASKS) -> list[CalibrationSample]:
    """``n`` degraded pairs cycling through tasks, shipped pairs and long sides (seeded, reproducible)."""
    from latentfuse.model.data.pipeline import degrade_pair

    if n < 1:
        raise LatentfuseError(f"the calibration set needs at least 1 sample, got {n}")
    rng = np.random.default_rng(seed)
    sources = {task: _source_pairs(task) for task in tasks}
    # Stratified flow times: one draw per equal-width bin, shuffled, so t covers [0, 1] for any n.
    times = rng.permutation((np.arange(n) + rng.uniform(size=n)) / n)
    samples = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        name, a, b = sources[task][(i // len(tasks)) % len(sources[task])]
        long_side = int(long_sides[i % len(long_sides)])
        pair = degrade_pair(a, b, None, task, rng, long_side=long_side, crop=True)
        samples.append(CalibrationSample(
            task=task, name=f"{task}/{name}#{i}", image_a=to_graph_image(pair.a), image_b=to_graph_image(pair.b),
            prompt=pair.prompt, degradations=list(pair.degradations), t=float(times[i]), seed=seed * 100_003 + i))
    return samples


def calibration_prompts(samples: Sequence[CalibrationSample]) -> list[str]:
    """The canonical deployment prompts followed by the samples' own prompts (deduplicated)."""
    from latentfuse.model.data.prompts import canonical_prompts

    return list(dict.fromkeys(list(canonical_prompts().values()) + [s.prompt for s in samples]))


def describe(samples: Sequence[CalibrationSample], prompts: Sequence[str]) -> dict:
    """The plan's ``calibration_set`` entry: enough to know what the ranges were measured on."""
    sizes = sorted({s.size for s in samples})
    return {
        "samples": len(samples),
        "tasks": {t: sum(s.task == t for s in samples) for t in sorted({s.task for s in samples})},
        "sizes": [list(s) for s in sizes],
        "aspect_ratios": sorted({round(max(s) / min(s), 3) for s in sizes}),
        "degradations": sorted({d for s in samples for d in s.degradations}),
        "prompts": len(prompts),
        "t_range": [min(s.t for s in samples), max(s.t for s in samples)],
        "pairs": [s.name for s in samples],
        "source": "model/data/samples + model.data.pipeline.degrade_pair (random crops, composed degradations), "
                  "model.data.prompts.canonical_prompts",
    }
