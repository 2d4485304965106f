"""Pseudo ground truth for a clean pair: teachers → task-aware selection → Fusion Refiner (FusionFM).

MMAIF (3.1) labels each clean pair with a pre-trained fusion network; FusionFM replaces the single
network by several teachers, a selection function and a refiner. This module runs that chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latentfuse.model.data.refiner import RefinerConfig, refine
from latentfuse.model.data.selection import select_label
from latentfuse.model.data.tasks import check_task
from latentfuse.model.data.teachers import Teacher, run_teachers, teachers_for


@dataclass
class PseudoLabel:
    image: np.ndarray
    selected: np.ndarray
    teacher: str
    scores: dict[str, float]
    criteria: dict[str, dict[str, float]]
    refinement: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-friendly record of the choice (stored in sample indexes)."""
        return {"teacher": self.teacher, "scores": {k: round(v, 5) for k, v in self.scores.items()},
                "criteria": {k: {m: round(float(x), 5) for m, x in v.items()} for k, v in self.criteria.items()},
                "refinement": {k: round(v, 5) for k, v in self.refinement.items()}}


def pseudo_label(a: np.ndarray, b: np.ndarray, task: str, teachers: list[Teacher] | None = None,
                 sample: str | None = None, refine_label: bool = True,
                 refiner: RefinerConfig | None = None) -> PseudoLabel:
    """Run every teacher of ``task`` on the clean pair, select the best candidate, refine it."""
    task = check_task(task)
    chosen = teachers if teachers is not None else teachers_for(task)
    candidates = run_teachers(a, b, chosen, sample)
    sel = select_label(a, b, candidates, task)
    if refine_label:
        ref = refine(sel.image, a, b, refiner)
        image, applied = ref.image, ref.applied
    else:
        image, applied = sel.image, {}
    return PseudoLabel(image=image, selected=sel.image, teacher=sel.name, scores=sel.scores,
                       criteria=sel.criteria, refinement=applied)
