"""Regenerate the shipped sample pairs: ``python -m latentfuse.model.data.make_samples [--out DIR]``.

Three pairs per task at 256x144, 192x256 and 224x224, rendered from scikit-image photographs with
:mod:`latentfuse.model.data.synth` and degraded with fixed degradation lists (so the demo shows restoration), the
prompt being the canonical one for that list. Deterministic (seed 2024).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from latentfuse.model.data.pipeline import degrade_pair
from latentfuse.model.data.prompts import canonical_prompt
from latentfuse.model.data.samples import SAMPLES_DIR
from latentfuse.model.data.synth import load_natural_image, synth_pair

SIZES = ((144, 256), (256, 192), (224, 224))  # (height, width)

PLAN: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    # (pair name, source photograph, degradations)
    "vif": (("moto", "stereo_motorcycle", ("rain",)),
            ("astronaut", "astronaut", ("low_exposure", "noise")),
            ("cat", "chelsea", ("low_contrast", "ir_strips"))),
    "mef": (("rocket", "rocket", ("noise",)),
            ("astronaut", "astronaut", ("haze",)),
            ("coffee", "coffee", ("low_contrast", "jpeg"))),
    "mff": (("moto", "stereo_motorcycle", ("noise",)),
            ("cat", "chelsea", ("snow",)),
            ("coffee", "coffee", ("low_exposure", "downsample"))),
}
SEED = 2024


def fit(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Centre crop to the aspect ratio of ``hw`` and resize to exactly ``hw``."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    th, tw = hw
    scale = min(h / th, w / tw)
    ch, cw = int(th * scale), int(tw * scale)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top:top + ch, left:left + cw]
    return resize(crop, hw + crop.shape[2:], order=1, anti_aliasing=True).astype(np.float32)


def make_samples(out: Path = SAMPLES_DIR) -> list[Path]:
    from latentfuse.model.image_io import write_image

    written = []
    for t_index, (task, plan) in enumerate(PLAN.items()):
        entries = []
        for i, ((name, photo, degs), hw) in enumerate(zip(plan, SIZES)):
            rng = np.random.default_rng([SEED, t_index, i])
            pair = synth_pair(fit(load_natural_image(photo), hw), task, rng)
            sample = degrade_pair(pair.a, pair.b, None, task, rng, degradations=degs, crop=False)
            prompt = canonical_prompt(sample.degradations, task)
            for side, img in (("a", sample.a), ("b", sample.b)):
                path = out / task / f"{name}_{side}.png"
                write_image(path, img)
                written.append(path)
            entries.append({"name": name, "task": task, "a": f"{name}_a.png", "b": f"{name}_b.png",
                            "height": hw[0], "width": hw[1], "degradations": sample.degradations,
                            "prompt": prompt, "source_image": f"skimage.data.{photo}",
                            "params": sample.params})
        index = out / task / "samples.json"
        index.write_text(json.dumps({"task": task, "seed": SEED, "samples": entries}, indent=1, default=float))
        written.append(index)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR)
    args = parser.parse_args(argv)
    paths = make_samples(args.out)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files ({total / 1e6:.2f} MB) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
