#!/usr/bin/env python
"""README figures: per task, one real held-out pair as A | B | average | teacher | regression | flow.

The pair is the first held-out sample of each task in the manifest's order (``latentfuse data build
--split heldout``: sorted scene names), not a chosen one. Every fused image comes from the runtime
pipeline on the torch backend with the model's defaults (the task's canonical prompt, so the detail
path runs with its clean parameters; flow: the runtime's default sampler, 5 steps, seed 0). Panels
are shrunk to ``--height`` pixels and labelled; written as JPEG next to a JSON of the panel's Q^AB/F.

    python scripts/make_figures.py --data runs/default_training/build/real_heldout_512px_x1_n0_s5000 \\
        --out docs/figures
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from latentfuse.model.atomic import atomic_file  # noqa: E402
from latentfuse.model.errors import LatentfuseError  # noqa: E402

TASKS = ("vif", "mef", "mff")
PANELS = ("A", "B", "average", "teacher", "regression", "flow")


def _shrink(img: np.ndarray, height: int) -> np.ndarray:
    from skimage.transform import resize

    h, w = img.shape[:2]
    if h <= height:
        return img
    return resize(img, (height, round(w * height / h)), order=1, anti_aliasing=True).astype(np.float32)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` with a caption strip above it."""
    from PIL import Image, ImageDraw

    rgb = (np.clip(img if img.ndim == 3 else np.repeat(img[..., None], 3, -1), 0, 1) * 255).astype(np.uint8)
    canvas = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + 16), "white")
    canvas.paste(Image.fromarray(rgb), (0, 16))
    ImageDraw.Draw(canvas).text((3, 2), text, fill="black")
    return np.asarray(canvas, np.float32) / 255.0


def figure(components, data_root: Path, task: str, height: int) -> tuple[np.ndarray, dict]:
    """(the labelled strip, {panel: Q^AB/F, "pair": name}) for the first held-out sample of ``task``."""
    from latentfuse.model.metrics import compute
    from latentfuse.model.training.data import find_manifests, read_manifest
    from latentfuse.runtime.fuse_cli import side_by_side
    from latentfuse.runtime.pipeline import Pipeline, load_image

    records = [(m.parent, rec) for m in find_manifests(data_root / task) for rec in read_manifest(m)]
    if not records:
        raise LatentfuseError(f"no held-out {task} samples under {data_root / task}")
    base, rec = records[0]
    files = {k: base / v for k, v in rec["files"].items()}
    a, b, label = load_image(files["a"]), load_image(files["b"]), load_image(files["gt"])
    pipe = Pipeline.from_components(components)
    rgb = lambda x: x if x.ndim == 3 else np.repeat(x[..., None], 3, -1)  # noqa: E731
    images = {"A": a, "B": b, "average": 0.5 * (rgb(a) + rgb(b)), "teacher": label,
              "regression": pipe(a, b, task=task, mode="regression").image,
              "flow": pipe(a, b, task=task, mode="flow", seed=0).image}
    scores = {name: float(compute(rgb(a) * 255.0, rgb(b) * 255.0, rgb(img) * 255.0, names=["qabf"])["qabf"])
              for name, img in images.items() if name not in ("A", "B")}
    panels = [_label(_shrink(rgb(images[name]), height),
                      name if name in ("A", "B") else f"{name}  Q={scores[name]:.3f}") for name in PANELS]
    return side_by_side(panels), {"pair": rec.get("pair", files["a"].stem), "qabf": scores}


def main(argv=None) -> int:
    from latentfuse.model.components import DEFAULT_MODEL_DIR, FusionComponents
    from latentfuse.model.image_io import write_image

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--data", type=Path, required=True, help="held-out `latentfuse data build` folder with vif/ mef/ mff/")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    p.add_argument("--height", type=int, default=160, help="panel height in pixels")
    args = p.parse_args(argv)
    try:
        components = FusionComponents.from_pretrained(args.model)
        meta = {}
        for task in TASKS:
            strip, meta[task] = figure(components, args.data, task, args.height)
            path = write_image(args.out / f"heldout_{task}.jpg", strip)
            print(f"{path}: {meta[task]['pair']}, Q^AB/F " + ", ".join(f"{k} {v:.3f}" for k, v in meta[task]["qabf"].items()))
        with atomic_file(args.out / "heldout.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=1) + "\n")
    except LatentfuseError as err:
        print(f"make_figures: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
