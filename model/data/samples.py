"""The small degraded sample pairs shipped in ``model/data/samples/<task>/`` (what the README demo fuses).

Each task folder holds ``<name>_a.png`` / ``<name>_b.png`` and a ``samples.json`` listing, per pair, its
name, task, degradations, prompt and size. They were rendered by :mod:`latentfuse.model.data.make_samples`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from latentfuse.model.data.tasks import check_task
from latentfuse.model.errors import LatentfuseError

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


@dataclass(frozen=True)
class SamplePair:
    name: str
    task: str
    a: Path
    b: Path
    prompt: str
    degradations: tuple[str, ...]


def sample_pairs(task: str) -> list[SamplePair]:
    """The shipped sample pairs of ``task`` (vif, mef or mff), with their prompts."""
    task = check_task(task)
    index = SAMPLES_DIR / task / "samples.json"
    if not index.is_file():
        raise LatentfuseError(f"sample index missing: {index} (regenerate with python -m latentfuse.model.data.make_samples)")
    entries = json.loads(index.read_text())["samples"]
    out = []
    for e in entries:
        pair = SamplePair(name=e["name"], task=task, a=SAMPLES_DIR / task / e["a"], b=SAMPLES_DIR / task / e["b"],
                          prompt=e["prompt"], degradations=tuple(e["degradations"]))
        missing = [str(p) for p in (pair.a, pair.b) if not p.is_file()]
        if missing:
            raise LatentfuseError(f"sample files missing: {', '.join(missing)}")
        out.append(pair)
    return out
