"""Natural-language instructions for each degradation, their compositions and the clean-fusion prompts.

MMAIF (section 3.1) asks ChatGPT for 10-20 restoration prompts per degradation type (e.g. "please remove
the noise of the image pairs") and pairs composed degradations with composite prompts. We write the
per-type prompts by hand and build composite prompts from per-type noun phrases ("the rain", "the noise")
and corrective clauses ("enhance the contrast") so that two or three degradations read as one sentence:
"remove the rain and the noise", "please get rid of the haze, and brighten the dark image".

Everything here is a pure function of constants: :func:`corpus` is the exact, finite set of strings the
pipeline can emit (the tokenizer is trained on it), and it only changes when this file changes.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from latentfuse.model.data.tasks import DEGRADATIONS, TASKS, check_task
from latentfuse.model.errors import LatentfuseError

# --- clean fusion (no degradation) ----------------------------------------------------------------

CANONICAL_TASK_PROMPTS: dict[str, str] = {
    "vif": "fuse the infrared and visible images",
    "mef": "fuse the multi-exposure images",
    "mff": "fuse the multi-focus images",
}

TASK_PROMPTS: dict[str, tuple[str, ...]] = {
    "vif": (
        "fuse the infrared and visible images",
        "fuse the visible and infrared images",
        "please fuse the infrared and visible image pair",
        "combine the thermal and visible images into one",
        "merge the infrared image with the visible image",
    ),
    "mef": (
        "fuse the multi-exposure images",
        "please fuse the underexposed and overexposed images",
        "merge the exposure bracket into one well-exposed image",
        "combine the dark and bright exposures",
        "fuse the image pair with different exposures",
    ),
    "mff": (
        "fuse the multi-focus images",
        "please fuse the near-focus and far-focus images",
        "merge the two focal planes into an all-in-focus image",
        "combine the image pair so that everything is in focus",
        "fuse the differently focused images",
    ),
}

# --- single degradations (10-20 each; the first one is canonical) -------------------------------

SINGLE_PROMPTS: dict[str, tuple[str, ...]] = {
    "gaussian_blur": (
        "please deblur the image pairs",
        "remove the blur",
        "remove the blur from the image pairs",
        "the images are blurry, please sharpen them",
        "sharpen the blurry images and fuse them",
        "get rid of the blur",
        "please restore the sharp details of the images",
        "deblur and fuse the images",
        "the image pair is out of focus, please deblur it",
        "make the blurry images sharp",
        "please remove the gaussian blur",
        "fix the blurriness of the images",
    ),
    "motion_blur": (
        "remove the motion blur",
        "please remove the motion blur from the image pairs",
        "the camera shook, please fix the motion blur",
        "get rid of the motion blur",
        "deblur the shaky images",
        "please correct the camera shake",
        "remove the blur caused by motion",
        "fix the motion streaks in the images",
        "restore the images blurred by motion",
        "please sharpen the motion-blurred image pairs",
        "undo the motion blur and fuse the images",
    ),
    "downsample": (
        "please restore the resolution of the image pairs",
        "upscale the low-resolution images",
        "the images are low resolution, please enhance the details",
        "super-resolve the image pairs",
        "recover the fine details lost to downsampling",
        "please increase the resolution",
        "restore the resolution",
        "fix the pixelated low-resolution images",
        "enhance the resolution and fuse the images",
        "make the low-resolution images crisp",
        "please super-resolve and fuse the images",
    ),
    "noise": (
        "please remove the noise of the image pairs",
        "remove the noise",
        "denoise the images",
        "get rid of the noise",
        "please denoise the image pairs",
        "the images are noisy, please clean them",
        "remove the grain from the images",
        "suppress the sensor noise",
        "clean up the noisy images and fuse them",
        "denoise and fuse the images",
        "please reduce the noise",
        "remove the gaussian noise",
    ),
    "jpeg": (
        "please remove the JPEG artifacts of the image pairs",
        "remove the JPEG artifacts",
        "remove the compression artifacts",
        "fix the blocky compression artifacts",
        "get rid of the JPEG blocks",
        "the images are heavily compressed, please restore them",
        "please reduce the compression artifacts",
        "clean up the JPEG compression",
        "remove the blocking artifacts and fuse the images",
        "restore the images damaged by JPEG compression",
        "undo the JPEG compression",
    ),
    "rain": (
        "please remove the rain of the image pairs",
        "remove the rain",
        "remove the rain streaks",
        "derain the images",
        "get rid of the rain",
        "please derain the image pairs",
        "it is raining, please clean the images",
        "remove the rain streaks and fuse the images",
        "clear the rain from the scene",
        "erase the raindrops and streaks",
        "derain and fuse the images",
    ),
    "snow": (
        "please remove the snow of the image pairs",
        "remove the snow",
        "remove the snowflakes",
        "desnow the images",
        "get rid of the falling snow",
        "please clear the snow from the images",
        "it is snowing, please clean the images",
        "remove the snow particles and fuse the images",
        "erase the snowflakes from the scene",
        "desnow and fuse the images",
        "clean up the snowy images",
    ),
    "haze": (
        "please remove the haze of the image pairs",
        "remove the haze",
        "remove the fog",
        "dehaze the images",
        "get rid of the haze",
        "please dehaze the image pairs",
        "the scene is foggy, please clear it",
        "remove the mist and fuse the images",
        "clear the haze from the distant objects",
        "dehaze and fuse the images",
        "restore the visibility lost to haze",
    ),
    "low_exposure": (
        "please brighten the dark image pairs",
        "brighten the dark image",
        "fix the underexposure",
        "the images are too dark, please brighten them",
        "enhance the low-light images",
        "correct the underexposed images",
        "increase the brightness",
        "please fix the low exposure",
        "lighten the dark regions and fuse the images",
        "recover the details hidden in the dark",
        "brighten and fuse the images",
    ),
    "high_exposure": (
        "please correct the overexposure of the image pairs",
        "tone down the overexposure",
        "fix the overexposed image",
        "the images are too bright, please darken them",
        "recover the blown-out highlights",
        "reduce the brightness",
        "please correct the high exposure",
        "restore the washed-out details",
        "tone down the bright regions and fuse the images",
        "fix the overexposure and fuse the images",
        "recover the saturated highlights",
    ),
    "low_contrast": (
        "please enhance the contrast of the image pairs",
        "enhance the contrast",
        "boost the contrast",
        "the images look flat, please increase the contrast",
        "fix the low contrast",
        "increase the contrast of the washed-out images",
        "please improve the contrast",
        "make the dull images more vivid",
        "enhance the contrast and fuse the images",
        "restore the contrast of the faded images",
        "stretch the contrast",
    ),
    "ir_strips": (
        "please remove the dark stripes of the infrared image",
        "remove the dark stripes",
        "remove the stripe noise from the infrared image",
        "fix the dark strips in the infrared image",
        "get rid of the striping artifacts",
        "the infrared sensor shows dark lines, please remove them",
        "destripe the infrared image",
        "please remove the infrared stripe noise",
        "remove the dark bands and fuse the images",
        "clean up the stripes in the thermal image",
        "correct the non-uniform stripes of the infrared image",
    ),
}

# --- pieces for composite prompts ---------------------------------------------------------------

# Degradations that read as something to "remove": noun phrases joined under one verb.
REMOVAL_NOUNS: dict[str, tuple[str, ...]] = {
    "gaussian_blur": ("the blur", "the blurriness"),
    "motion_blur": ("the motion blur", "the camera shake"),
    "noise": ("the noise", "the grain"),
    "jpeg": ("the JPEG artifacts", "the compression artifacts"),
    "rain": ("the rain", "the rain streaks"),
    "snow": ("the snow", "the snowflakes"),
    "haze": ("the haze", "the fog"),
    "ir_strips": ("the dark stripes", "the stripe noise"),
}

# Degradations that read as something to "correct": verb clauses appended to the sentence.
CORRECTION_CLAUSES: dict[str, tuple[str, ...]] = {
    "downsample": ("restore the resolution", "enhance the fine details"),
    "low_exposure": ("brighten the dark image", "fix the underexposure"),
    "high_exposure": ("tone down the overexposure", "recover the highlights"),
    "low_contrast": ("enhance the contrast", "boost the contrast"),
}

_REMOVAL_TEMPLATES: tuple[str, ...] = (
    "remove {}",
    "please remove {} from the image pairs",
    "get rid of {}",
    "fuse the images and remove {}",
    "please clean up {}",
)

_CORRECTION_TEMPLATES: tuple[str, ...] = (
    "{}",
    "please {}",
    "{}, then fuse the images",
    "fuse the images, then {}",
    "please {} of the image pairs",
)

N_COMPOSITE_VARIANTS = len(_REMOVAL_TEMPLATES)
MAX_COMPOSED = 3


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _check(degradations: Sequence[str]) -> tuple[str, ...]:
    unknown = [d for d in degradations if d not in SINGLE_PROMPTS]
    if unknown:
        raise LatentfuseError(
            f"unknown degradation(s) {unknown}: expected names from {', '.join(DEGRADATIONS)}"
        )
    if len(set(degradations)) != len(degradations):
        raise LatentfuseError(f"degradation list {list(degradations)} repeats an entry")
    # Prompts name degradations in canonical order, so a set of degradations has one prompt family.
    return tuple(sorted(degradations, key=DEGRADATIONS.index))


def composite_prompts(degradations: Sequence[str]) -> list[str]:
    """All composite prompts for 2-3 degradations, e.g. ['remove the rain and the noise', ...].

    Removal-type degradations share one verb ("remove the rain and the noise"); correction-type ones add
    clauses ("..., and enhance the contrast"). Variant ``v`` uses template ``v`` and noun/clause
    alternative ``v mod len``, so the list is deterministic and finite.
    """
    degs = _check(degradations)
    prompts: list[str] = []
    for v in range(N_COMPOSITE_VARIANTS):
        nouns = [REMOVAL_NOUNS[d][v % len(REMOVAL_NOUNS[d])] for d in degs if d in REMOVAL_NOUNS]
        clauses = [CORRECTION_CLAUSES[d][v % len(CORRECTION_CLAUSES[d])]
                   for d in degs if d in CORRECTION_CLAUSES]
        if nouns and clauses:
            text = _REMOVAL_TEMPLATES[v].format(_join(nouns)) + ", and " + _join(clauses)
        elif nouns:
            text = _REMOVAL_TEMPLATES[v].format(_join(nouns))
        else:
            text = _CORRECTION_TEMPLATES[v].format(_join(clauses))
        prompts.append(text)
    return list(dict.fromkeys(prompts))


def prompts_for(degradations: Sequence[str], task: str | None = None) -> list[str]:
    """Every prompt that may describe ``degradations`` (the task prompts when the list is empty)."""
    if not degradations:
        if task is None:
            raise LatentfuseError("a prompt for a clean pair needs its task (vif, mef or mff)")
        return list(TASK_PROMPTS[check_task(task)])
    degs = _check(degradations)
    if len(degs) == 1:
        return list(SINGLE_PROMPTS[degs[0]])
    if len(degs) > MAX_COMPOSED:
        raise LatentfuseError(f"at most {MAX_COMPOSED} composed degradations, got {list(degs)}")
    return composite_prompts(degs)


def sample_prompt(degradations: Sequence[str], rng: np.random.Generator, task: str | None = None) -> str:
    """Draw one prompt for ``degradations`` uniformly from :func:`prompts_for`."""
    options = prompts_for(degradations, task)
    return options[int(rng.integers(len(options)))]


def canonical_prompt(degradations: Sequence[str], task: str | None = None) -> str:
    """The first (canonical) prompt for ``degradations``; the task prompt for a clean pair."""
    if not degradations and task is not None:
        return CANONICAL_TASK_PROMPTS[check_task(task)]
    return prompts_for(degradations, task)[0]


def canonical_prompts() -> dict[str, str]:
    """Key -> prompt for the deployment prompt-embedding cache: one per task and one per degradation."""
    out = dict(CANONICAL_TASK_PROMPTS)
    for name in DEGRADATIONS:
        out[name] = SINGLE_PROMPTS[name][0]
    return out


def corpus() -> list[str]:
    """Every prompt string the pipeline can emit (deduplicated, sorted): tokenizer training text."""
    texts: set[str] = set()
    for task in TASKS:
        texts.update(TASK_PROMPTS[task])
    for name in DEGRADATIONS:
        texts.update(SINGLE_PROMPTS[name])
    for k in range(2, MAX_COMPOSED + 1):
        for combo in itertools.combinations(DEGRADATIONS, k):
            texts.update(composite_prompts(combo))
    return sorted(texts)
