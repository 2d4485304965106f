#!/usr/bin/env python
"""Evaluate a latentfuse model directory on held-out degraded pairs (the bundled default's model card).

For every task and every held-out sample of a ``latentfuse data build`` folder (pairs never used in
training), four fused images are scored:

    (a) regression   the regression DiT, one call (MMAIF Eq. 8 head)
    (b) flow         the flow DiT, 5 midpoint steps with velocity reuse (MMAIF Algorithm 1, ODE: g = 0)
        flow_sde     the same with the runtime's default sampler (``runtime.samplers.DEFAULT_SAMPLER``,
                     g = ``DEFAULT_G``): what ``latentfuse fuse`` runs when no flag is given
    (c) teacher      the selected + refined teacher label itself (the training target)
        vae_label    the VAE round trip D(E(label)) of that label at the model's working scale: the
                     ceiling of any latent model with this VAE (a perfect DiT would predict E(label))
    (d) average      the plain average of the two degraded inputs
    regression_raw   for a model with a detail path (``model.detail``): the regression DiT with the stage
                     off, i.e. what the DiT itself gives

and, per method, the share of samples on which its Q^AB/F beats the average's (a mean can hide a few
pairs that decide it).

Metrics: VIF and Q^AB/F (``model.metrics``, corrected convention) against the *clean* sources
``clean_a`` / ``clean_b`` (the task is restoration + fusion, so the reference information is the clean
one), and SSIM (skimage, RGB, data range 1) to the teacher label.

    python scripts/evaluate_default.py --model model/weights/default --data runs/default_training/build/test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

from latentfuse.model.errors import LatentfuseError  # noqa: E402
from latentfuse.model.flow import describe_prior  # noqa: E402
from latentfuse.model.work_scale import downscale, upscale  # noqa: E402

METHODS = ("regression", "regression_raw", "flow", "flow_sde", "teacher", "vae_label", "average")
FLOW_SAMPLER, FLOW_STEPS = "midpoint_reuse", 5


def _pad16(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
    return x, h, w


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return torch.from_numpy(img).permute(2, 0, 1)[None] * 2.0 - 1.0


def _decode_image(vae, z: torch.Tensor, h: int, w: int) -> np.ndarray:
    """[0, 1] RGB HxWx3 of one latent, the padding of :func:`_pad16` cut off."""
    from latentfuse.model.vae import from_vae_output

    return from_vae_output(vae.decode(z)[..., :h, :w])[0].permute(1, 2, 0).numpy()


@torch.no_grad()
def vae_round_trip(components, img: np.ndarray) -> np.ndarray:
    """D(E(img)) for a [0, 1] RGB image, at the model's working scale; returns [0, 1] RGB."""
    k = components.work_scale
    x, h, w = _pad16(_to_tensor(upscale(img, k)))
    return downscale(_decode_image(components.vae, components.vae.encode(x), h, w), k)


def fuse(pipe, head: str, a: np.ndarray, b: np.ndarray, task: str, prompt: str, seed: int = 0,
         sampler: str = FLOW_SAMPLER, detail: str = "auto") -> np.ndarray:
    """Fuse two [0, 1] RGB images with ``head`` ("regression" or "flow", sampled by ``sampler`` in
    ``FLOW_STEPS`` steps) through ``pipe`` (:class:`latentfuse.runtime.pipeline.Pipeline`): the runtime's own
    working scale, windows, padding and noise. Returns [0, 1] RGB."""
    if head == "regression":
        return pipe(a, b, task=task, prompt=prompt, mode="regression", seed=seed, detail=detail).image
    return pipe(a, b, task=task, prompt=prompt, mode="flow", sampler=sampler, steps=FLOW_STEPS, seed=seed,
                detail=detail).image


def _scores(clean_a: np.ndarray, clean_b: np.ndarray, fused: np.ndarray, label: np.ndarray, task: str) -> dict:
    from skimage.metrics import structural_similarity

    from latentfuse.model.metrics import compute

    m = compute(clean_a * 255.0, clean_b * 255.0, fused * 255.0, names=["vif", "qabf"])
    m["ssim_label"] = float(structural_similarity(fused, label, data_range=1.0, channel_axis=-1))
    m["psnr_label"] = float(10 * np.log10(1.0 / max(float(np.mean((fused - label) ** 2)), 1e-10)))
    if task == "vif":
        m.update(modality_scores(clean_a, clean_b, fused))
    return m


def modality_scores(visible: np.ndarray, infrared: np.ndarray, fused: np.ndarray, hot: float = 0.05) -> dict:
    """Does a VIF fusion keep both modalities?

    chroma_err   mean |CbCr(fused) - CbCr(visible)| x 255: the visible image's colours (0: kept)
    ir_contrast  the infrared targets' contrast in the fused luma over the same in the infrared image:
                 targets = the ``hot`` share of brightest infrared pixels, contrast = their mean minus
                 the mean of the rest (1: the targets stand out as much as in the infrared image)
    """
    from latentfuse.model.data.color import luma, rgb_to_ycbcr

    chroma = float(np.mean(np.abs(rgb_to_ycbcr(fused)[..., 1:] - rgb_to_ycbcr(visible)[..., 1:])) * 255.0)
    ir, y = luma(infrared), luma(fused)
    mask = ir >= np.quantile(ir, 1.0 - hot)
    if mask.all() or not mask.any():
        return {"chroma_err": chroma, "ir_contrast": float("nan")}
    ir_contrast = float(ir[mask].mean() - ir[~mask].mean())
    fused_contrast = float(y[mask].mean() - y[~mask].mean())
    return {"chroma_err": chroma, "ir_contrast": fused_contrast / ir_contrast if ir_contrast > 1e-6 else float("nan")}


def _rgb(path: Path) -> np.ndarray:
    from latentfuse.model.image_io import read_image

    img = np.asarray(read_image(path), dtype=np.float32)  # float [0, 1]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return img[..., :3]


def evaluate(components, data_root: str | Path, limit: int = 0, progress: bool = True) -> dict:
    """{task: {method: {metric: mean}}, "_meta": {...}} over the held-out samples under ``data_root``."""
    from tqdm import tqdm

    from latentfuse.model.training.data import find_manifests, read_manifest
    from latentfuse.runtime import samplers
    from latentfuse.runtime.pipeline import Pipeline

    records = []
    for manifest in find_manifests(data_root):
        for rec in read_manifest(manifest):
            records.append((manifest.parent, rec))
    if limit:
        by_task: dict = {}
        for base, rec in records:
            by_task.setdefault(rec["task"], []).append((base, rec))
        records = [r for v in by_task.values() for r in v[:limit]]
    if not records:
        raise LatentfuseError(f"no held-out samples under {data_root}")
    sums: dict = {}
    counts: dict = {}
    pipe = Pipeline.from_components(components)
    start = time.perf_counter()
    for base, rec in tqdm(records, desc="evaluate", unit="sample", disable=not progress):
        files = {k: base / v for k, v in rec["files"].items()}
        a, b = _rgb(files["a"]), _rgb(files["b"])
        ca, cb, label = _rgb(files["clean_a"]), _rgb(files["clean_b"]), _rgb(files["gt"])
        outputs = {"teacher": label, "vae_label": vae_round_trip(components, label), "average": 0.5 * (a + b)}
        seconds = {}
        task, prompt = rec["task"], rec["prompt"]

        def timed(method, *args, **kwargs):
            t0 = time.perf_counter()
            outputs[method] = fuse(pipe, *args, **kwargs)
            seconds[method] = time.perf_counter() - t0

        if "regression" in components.dits:
            timed("regression", "regression", a, b, task, prompt)
            if components.detail is not None:
                timed("regression_raw", "regression", a, b, task, prompt, detail="off")
        if "flow" in components.dits:
            timed("flow", "flow", a, b, task, prompt)
            timed("flow_sde", "flow", a, b, task, prompt, sampler=samplers.DEFAULT_SAMPLER)
        scored = {method: _scores(ca, cb, fused.astype(np.float32), label, task) for method, fused in outputs.items()}
        for method, scores in scored.items():
            scores["qabf_over_average"] = float(scores["qabf"] > scored["average"]["qabf"])
            if method in seconds:
                scores["seconds"] = seconds[method]
            slot = sums.setdefault(rec["task"], {}).setdefault(method, {})
            for k, v in scores.items():
                if v == v:  # a NaN (e.g. no infrared contrast to keep) is left out of its mean
                    slot[k] = slot.get(k, 0.0) + v
                    counts[(rec["task"], method, k)] = counts.get((rec["task"], method, k), 0) + 1
    table = {task: {m: {k: v / counts[(task, m, k)] for k, v in ms.items()}
                    for m, ms in sorted(methods.items(), key=lambda kv: METHODS.index(kv[0]))}
             for task, methods in sums.items()}
    table["_meta"] = {"samples": len(records), "seconds": round(time.perf_counter() - start, 1),
                      "pipeline": f"runtime.pipeline.Pipeline on the torch backend: working scale {pipe.work_scale}, "
                                  + (f"{pipe.window} px windows" if pipe.window else "whole images"),
                      "flow_sampler": f"flow: {FLOW_SAMPLER}, {FLOW_STEPS} steps ({FLOW_STEPS} NFE, ODE); flow_sde: "
                                      f"{samplers.DEFAULT_SAMPLER}, g = {samplers.DEFAULT_G}, {FLOW_STEPS} steps "
                                      f"(the runtime default); {describe_prior(pipe.defaults['prior'], pipe.defaults['prior_sigma'])}, seed 0",
                      "metrics": "VIF, Q^AB/F vs the clean sources (corrected convention); SSIM vs the teacher label; "
                                 "qabf_over_average: share of samples whose Q^AB/F beats the plain average's"}
    return table


def markdown_table(table: dict) -> str:
    """Per task and method: the metrics, the share of samples above the average, seconds per pair and,
    for VIF, the modality checks (:func:`modality_scores`)."""
    def cell(m: dict, key: str, fmt: str) -> str:
        value = m.get(key)
        return "" if value is None or value != value else format(value, fmt)  # absent or NaN

    lines = ["| task | method | VIF ↑ | Q^AB/F ↑ | SSIM to label ↑ | PSNR to label ↑ | Q^AB/F above the average on "
             "| VIF chroma error vs visible ↓ | VIF IR target contrast kept ↑ | s / pair |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task in ("vif", "mef", "mff"):
        if task not in table:
            continue
        for method, m in table[task].items():
            share = "" if method == "average" or "qabf_over_average" not in m else f"{100 * m['qabf_over_average']:.0f} %"
            lines.append(f"| {task.upper()} | {method} | {m['vif']:.3f} | {m['qabf']:.3f} | {m['ssim_label']:.3f} | "
                         f"{cell(m, 'psnr_label', '.2f')} | {share} | {cell(m, 'chroma_err', '.2f')} | "
                         f"{cell(m, 'ir_contrast', '.2f')} | {cell(m, 'seconds', '.2f')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from latentfuse.model.components import DEFAULT_MODEL_DIR, FusionComponents

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="latentfuse model directory")
    p.add_argument("--data", required=True, help="held-out `latentfuse data build` folder(s)")
    p.add_argument("--limit", type=int, default=0, help="at most N samples per task")
    p.add_argument("--json", help="write the table as JSON here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        table = evaluate(FusionComponents.from_pretrained(args.model), args.data, args.limit)
    except LatentfuseError as err:
        print(f"evaluate_default: error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(table))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
