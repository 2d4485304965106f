"""Fusion tasks and which degradations each one draws from (MMAIF paper, section 3.1).

The paper fixes the scope to three tasks -- visible/infrared (VIF), multi-exposure (MEF) and
multi-focus (MFF) fusion -- with a common set of degradations (Gaussian blur, motion blur, downsample,
Gaussian noise, rain, haze, snow; we add JPEG, listed in the paper's comparisons as "de-JPEG") plus
task-specific extras: low exposure, low contrast and IR dark strips for VIF, low contrast for MEF,
low and high exposure for MFF.
"""

from __future__ import annotations

from latentfuse.model.errors import LatentfuseError

TASKS: tuple[str, ...] = ("vif", "mef", "mff")

TASK_NAMES: dict[str, str] = {
    "vif": "visible and infrared image fusion",
    "mef": "multi-exposure image fusion",
    "mff": "multi-focus image fusion",
}

# Every degradation type the pipeline knows, in the canonical order used for prompts and sample indexes.
DEGRADATIONS: tuple[str, ...] = (
    "gaussian_blur",
    "motion_blur",
    "downsample",
    "noise",
    "jpeg",
    "rain",
    "snow",
    "haze",
    "low_exposure",
    "high_exposure",
    "low_contrast",
    "ir_strips",
)

COMMON_DEGRADATIONS: tuple[str, ...] = (
    "gaussian_blur", "motion_blur", "downsample", "noise", "jpeg", "rain", "snow", "haze",
)

TASK_EXTRAS: dict[str, tuple[str, ...]] = {
    "vif": ("low_exposure", "low_contrast", "ir_strips"),
    "mef": ("low_contrast",),
    "mff": ("low_exposure", "high_exposure"),
}

WEATHER: tuple[str, ...] = ("rain", "snow", "haze")


def check_task(task: str) -> str:
    """Return ``task`` lower-cased, or raise a LatentfuseError naming the valid tasks."""
    key = str(task).lower()
    if key not in TASKS:
        raise LatentfuseError(f"unknown fusion task {task!r}: expected one of {', '.join(TASKS)}")
    return key


def task_degradations(task: str) -> tuple[str, ...]:
    """Degradation types sampled for ``task``: the common set plus the task's extras (paper 3.1)."""
    key = check_task(task)
    return COMMON_DEGRADATIONS + TASK_EXTRAS[key]
