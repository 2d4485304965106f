#!/usr/bin/env python
"""What a latent model can reach on real pairs: the VAE ceilings and the pixel-space detail path.

On the real held-out scenes of every task (``model/data/split.py``; clean pairs as they are, long side at
most ``--long-side``), this measures, with the project's metrics (Q^AB/F, VIF, fusion SSIM: corrected
convention, against the two sources; SSIM and PSNR to the teacher label; for MEF the MEF-SSIM-like
structure score of the label selection, since the repository has no MEF-SSIM):

    average              the plain average of the two sources
    teacher              the teacher pseudo-label (``model.data.labels.pseudo_label``)
    <vae> label          the VAE round trip D(E(label)) at the VAE's working scale: the ceiling of any latent
                         model with that VAE (a perfect DiT predicts E(label))
    <vae> label+detail   the same after the detail path (``model.detail.restore_detail``) with the sources,
                         its "clean" parameters; ``(safe)``: its "safe" parameters (see ``tune``)
    <vae> average        D(E(average)): what a DiT that only learnt the average would give
    <vae> average+detail the same after the detail path

for the VAEs ``tiny_s1`` / ``tiny_s2`` (the bundled default's 1.9 M KL-VAE at working scale 1 / 2,
``model/work_scale.py``) and ``taef2_s1`` (TAEF2, ``model/taef2.py``, scale 1). The detail path's
parameters are tuned per VAE on *training* scenes only (``tune``); the held-out scenes are only measured.
``noise`` feeds the detail path degraded sources (the pipeline's noise, then every degradation) with a
clean decoded image and checks what it puts back; ``time`` times encode + decode of a 640x480 image on
2 (and 1) threads with torch and ONNX Runtime, and the detail path.

Stages (each resumable; intermediate images are cached in ``--work``; run them in this order, or ``all``)::

    python scripts/measure_real_ceilings.py prepare --split train     # labels + label round trips (tuning set)
    python scripts/measure_real_ceilings.py tune
    python scripts/measure_real_ceilings.py prepare --split heldout
    python scripts/measure_real_ceilings.py measure
    python scripts/measure_real_ceilings.py noise
    python scripts/measure_real_ceilings.py time
    python scripts/measure_real_ceilings.py report                    # -> docs/real-data-ceilings.md

``report`` rewrites the tables of the output file and keeps what follows ``NOTES_MARKER`` (the conclusions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from latentfuse.model.atomic import atomic_file  # noqa: E402
from latentfuse.model.errors import LatentfuseError  # noqa: E402

TASKS = ("vif", "mef", "mff")
VAES = {
    "tiny_s1": ("the bundled default's tiny KL-VAE (1.9 M), working scale 1", "tiny", 1),
    "tiny_s2": ("the bundled default's tiny KL-VAE, working scale 2 (as shipped)", "tiny", 2),
    "taef2_s1": ("TAEF2 (2.7 M, 32 channels), working scale 1", "taef2", 1),
    "taef2_s2": ("TAEF2, working scale 2", "taef2", 2),
}
DEFAULT_VAES = ("tiny_s1", "tiny_s2", "taef2_s1")
TUNE_GRID = {"sigma": (4.0, 8.0, 16.0, 24.0, 32.0), "radius": (2, 4, 8), "fused_candidate": (True, False),
             "channels": ("luma", "rgb"), "noise_k": (0.0, 3.0)}
DEGRADED_VARIANTS = 2        # degraded versions of each tuning pair
MAX_DEGRADED_LOSS_DB = 0.1   # the "safe" detail path may cost degraded pairs at most this much PSNR (mean, dB)
KINDS = ("clean", "safe")    # detail configurations: best on clean pairs / best that spares degraded pairs
TIME_SIZE = (480, 640)  # H, W
NOTES_MARKER = "<!-- conclusions: written by hand, kept when the report is regenerated -->"


# ----------------------------------------------------------------------------------------- helpers

def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """float [0, 1] images stored as uint16 (exact enough for every metric), written atomically."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{k: np.round(np.clip(v, 0, 1) * 65535).astype(np.uint16)
                                      for k, v in arrays.items()})


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k].astype(np.float32) / 65535.0 for k in data.files}


def _write_json(path: Path, obj) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise LatentfuseError(f"{path} not found: run the {what} stage first")
    return json.loads(path.read_text())


def _rgb(x: np.ndarray) -> np.ndarray:
    from latentfuse.model.image_io import to_rgb

    return to_rgb(np.asarray(x, np.float32))


def _fit(img: np.ndarray, long_side: int) -> np.ndarray:
    """Shrink (anti-aliased) so the long side is at most ``long_side``; smaller images stay as they are."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    if max(h, w) <= long_side:
        return img.astype(np.float32)
    s = long_side / max(h, w)
    shape = (max(1, round(h * s)), max(1, round(w * s))) + img.shape[2:]
    return np.clip(resize(img, shape, order=1, anti_aliasing=True, mode="reflect"), 0, 1).astype(np.float32)


def split_pairs(data: Path, task: str, split: str, per_task: int = 0):
    """The validated pairs of ``task`` in ``split``; ``per_task`` > 0 keeps that many, in scene-hash order
    (a deterministic, shuffled choice that does not depend on the other scenes)."""
    from latentfuse.model.data.pairs import discover_pairs, validate_pairs
    from latentfuse.model.data.split import scene_hash, select

    pairs = select(validate_pairs(discover_pairs(data / task, task)).pairs, split)
    if per_task:
        pairs = sorted(pairs, key=lambda p: scene_hash(p.name))[:per_task]
    return pairs


class RoundTrip:
    """D(E(x)) of [0, 1] images through one VAE at one working scale, as the pipeline runs it
    (bicubic enlargement, reflect padding to 16, decode, crop, k x k box shrink)."""

    def __init__(self, key: str, model_dir: Path, taef2_dir: Path):
        import torch

        from latentfuse.model.vae import LatentVAE

        self.key = key
        self.description, family, self.scale = VAES[key]
        if family == "tiny":
            self.vae = LatentVAE.from_pretrained(model_dir / "vae").eval()
        else:
            from latentfuse.model.taef2 import TAEF2

            self.vae = TAEF2.from_pretrained(taef2_dir).eval()
        self.torch = torch

    def __call__(self, img: np.ndarray) -> np.ndarray:
        import torch.nn.functional as F

        from latentfuse.model.work_scale import downscale, upscale

        torch = self.torch
        x = upscale(_rgb(img), self.scale)
        h, w = x.shape[:2]
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None] * 2.0 - 1.0
        ph, pw = (-h) % 16, (-w) % 16
        if ph or pw:
            t = F.pad(t, (0, pw, 0, ph), mode="reflect")
        with torch.no_grad():
            y = self.vae.decode(self.vae.encode(t))[0, :, :h, :w]
        out = ((y + 1.0) * 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
        return downscale(np.ascontiguousarray(out), self.scale)


def _paths(work: Path, task: str, name: str) -> dict[str, Path]:
    return {"pair": work / "pairs" / task / f"{name}.npz",
            **{vae: work / "rt" / vae / task / f"{name}.npz" for vae in VAES}}


# ----------------------------------------------------------------------------------------- prepare

def prepare(args) -> None:
    """Sources (fitted to the long side), the teacher label and the VAE round trips, cached per pair."""
    from tqdm import tqdm

    from latentfuse.model.data.labels import pseudo_label
    from latentfuse.model.data.pairs import load_pair

    jobs = [(task, pair) for task in args.tasks
            for pair in split_pairs(args.data, task, args.split, args.per_task if args.split == "train" else 0)]
    trips: dict = {}
    for task, pair in tqdm(jobs, desc=f"prepare {args.split}", unit="pair"):
        paths = _paths(args.work, task, pair.name)
        if paths["pair"].is_file():
            cached = _load_npz(paths["pair"])
            a, b, label = cached["a"], cached["b"], cached["label"]
        else:
            a, b, _ = load_pair(pair, task)
            a, b = _fit(a, args.long_side), _fit(b, args.long_side)
            label = pseudo_label(a, b, task, sample=pair.name).image
            _save_npz(paths["pair"], a=a, b=b, label=label)
        average = 0.5 * (_rgb(a) + _rgb(b))
        for vae in args.vaes:
            if paths[vae].is_file():
                continue
            if vae not in trips:
                trips[vae] = RoundTrip(vae, args.model, args.taef2)
            out = {"label": trips[vae](label)}
            if args.split != "train":  # tuning needs the label's round trip only
                out["average"] = trips[vae](average)
            _save_npz(paths[vae], **out)


def _cached(work: Path, task: str, split: str, data: Path, vae: str, per_task: int = 0) -> list[tuple[str, dict]]:
    out = []
    for pair in split_pairs(data, task, split, per_task):
        paths = _paths(work, task, pair.name)
        if not paths["pair"].is_file() or not paths[vae].is_file():
            raise LatentfuseError(f"{pair.name} ({task}, {split}) has no cached {vae} round trip in {work}: "
                                  f"run `prepare --split {split}` first")
        out.append((pair.name, {**_load_npz(paths["pair"]), **{f"rt_{k}": v for k, v in _load_npz(paths[vae]).items()}}))
    return out


# ----------------------------------------------------------------------------------------- tune

def _degraded_variants(name: str, d: dict, task: str, count: int) -> list[tuple[np.ndarray, np.ndarray, list]]:
    """``count`` degraded versions of a cached clean pair (one degradation of the task each, the pipeline's
    ``degrade_pair`` without cropping), seeded by the pair name."""
    from latentfuse.model.data.pipeline import degrade_pair

    out = []
    for v in range(count):
        rng = np.random.default_rng([11, zlib.crc32(name.encode()), v])
        sample = degrade_pair(d["a"], d["b"], d["label"], task, rng, n=[1], crop=False)
        out.append((sample.a, sample.b, sample.degradations))
    return out


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR (dB, data range 1) of ``x`` to ``ref``, RGB; infinite for identical images."""
    mse = float(np.mean((np.clip(_rgb(x), 0, 1).astype(np.float64) - _rgb(ref)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def tune(args) -> None:
    """Grid over the detail path's parameters (``TUNE_GRID``) per VAE, on training scenes only.

    Each configuration is scored twice on the label's round trip F = D(E(label)): on the clean pairs, the
    Q^AB/F after the detail path (mean over tasks of the task means); on ``DEGRADED_VARIANTS`` degraded
    versions of each pair (the pipeline's degradations, one each), the change of PSNR to the clean label
    that the detail path makes when it is fed the *degraded* sources (F stands for a model that restored
    them): a negative change means the stage undoes restoration (blur, rain, noise back in).
    :func:`choose_config` keeps the best clean Q^AB/F among the configurations that cost the degraded pairs
    at most ``MAX_DEGRADED_LOSS_DB``."""
    import itertools

    from tqdm import tqdm

    from latentfuse.model.detail import DetailConfig, restore_detail
    from latentfuse.model.metrics import compute

    def qabf(d, f):
        return compute(_rgb(d["a"]) * 255, _rgb(d["b"]) * 255, _rgb(f) * 255, names=["qabf"])["qabf"]

    grid = [DetailConfig(**dict(zip(TUNE_GRID, values))) for values in itertools.product(*TUNE_GRID.values())]
    result = {"grid": TUNE_GRID, "per_task": args.per_task, "degraded_variants": DEGRADED_VARIANTS,
              "max_degraded_loss_db": MAX_DEGRADED_LOSS_DB, "vaes": {}}
    for vae in args.vaes:
        sets = {task: _cached(args.work, task, "train", args.data, vae, args.per_task) for task in args.tasks}
        degraded = {task: [(d, va, vb, names) for name, d in items
                           for va, vb, names in _degraded_variants(name, d, task, DEGRADED_VARIANTS)]
                    for task, items in sets.items()}
        base = {task: float(np.mean([qabf(d, d["rt_label"]) for _, d in items])) for task, items in sets.items()}
        rows = []
        for cfg in tqdm(grid, desc=f"tune {vae}", unit="config"):
            clean = {task: float(np.mean([qabf(d, restore_detail(d["rt_label"], d["a"], d["b"], cfg)) for _, d in items]))
                     for task, items in sets.items()}
            loss = {task: float(np.mean([_psnr(restore_detail(d["rt_label"], va, vb, cfg), d["label"])
                                         - _psnr(d["rt_label"], d["label"]) for d, va, vb, _ in items]))
                    for task, items in degraded.items()}
            rows.append({"config": cfg.as_dict(), "qabf": clean, "mean": float(np.mean(list(clean.values()))),
                         "degraded_dpsnr": loss, "degraded_mean": float(np.mean(list(loss.values())))})
        best = choose_config(rows, "clean")
        unthresholded = replace(DetailConfig(**best["config"]), noise_k=0.0)
        no_threshold = {task: float(np.mean([qabf(d, restore_detail(d["rt_label"], d["a"], d["b"], unthresholded))
                                             for _, d in items])) for task, items in sets.items()}
        result["vaes"][vae] = {"without_detail": base, "best_without_threshold": no_threshold,
                               "train_pairs": {t: [n for n, _ in items] for t, items in sets.items()},
                               "degradations": {t: sorted({x for *_, names in items for x in names})
                                                for t, items in degraded.items()},
                               "rows": sorted(rows, key=lambda r: -r["mean"])}
        for kind in KINDS:
            row = choose_config(rows, kind)
            print(f"{vae} {kind}: {row['config']} train Q^AB/F {row['mean']:.4f} (label round trip "
                  f"{np.mean(list(base.values())):.4f}), degraded PSNR change {row['degraded_mean']:+.3f} dB")
    _write_json(args.work / "tune.json", result)


def choose_config(rows: list[dict], kind: str) -> dict:
    """``clean``: the row of best clean Q^AB/F (for pairs known to be clean: the task's canonical prompt);
    ``safe``: the best clean Q^AB/F among the rows whose mean degraded PSNR change is at least
    ``-MAX_DEGRADED_LOSS_DB`` or, if none is, the row that costs the degraded pairs least."""
    if kind == "clean":
        return max(rows, key=lambda r: r["mean"])
    safe = [r for r in rows if r["degraded_mean"] >= -MAX_DEGRADED_LOSS_DB]
    return max(safe, key=lambda r: r["mean"]) if safe else max(rows, key=lambda r: r["degraded_mean"])


def _tuned(work: Path, vae: str, kind: str):
    from latentfuse.model.detail import DetailConfig

    tuned = _read_json(work / "tune.json", "tune")
    if vae not in tuned["vaes"]:
        raise LatentfuseError(f"tune.json has no tuned detail path for {vae}: run `tune --vaes {vae}`")
    return DetailConfig(**choose_config(tuned["vaes"][vae]["rows"], kind)["config"])


# ----------------------------------------------------------------------------------------- measure

def _scores(a: np.ndarray, b: np.ndarray, fused: np.ndarray, label: np.ndarray, task: str) -> dict:
    from skimage.metrics import structural_similarity

    from latentfuse.model.data.selection import structure_score
    from latentfuse.model.metrics import compute

    a3, b3, f3 = _rgb(a), _rgb(b), np.clip(_rgb(fused), 0, 1)
    m = compute(a3 * 255, b3 * 255, f3 * 255, names=["qabf", "vif", "ssim"])
    m["ssim_label"] = float(structural_similarity(f3, _rgb(label), data_range=1.0, channel_axis=-1))
    m["psnr_label"] = _psnr(f3, label)
    if task == "mef":
        m["structure"] = structure_score(a3, b3, f3)
    return m


def measure(args) -> None:
    from tqdm import tqdm

    from latentfuse.model.detail import restore_detail

    configs = {vae: {kind: _tuned(args.work, vae, kind) for kind in KINDS} for vae in args.vaes}
    out = {"long_side": args.long_side, "detail": {v: {k: c.as_dict() for k, c in cs.items()} for v, cs in configs.items()},
           "tasks": {}}
    for task in args.tasks:
        pairs = split_pairs(args.data, task, "heldout")
        per_pair = {}
        for pair in tqdm(pairs, desc=f"measure {task}", unit="pair"):
            paths = _paths(args.work, task, pair.name)
            d = _load_npz(paths["pair"]) if paths["pair"].is_file() else None
            if d is None or any(not paths[v].is_file() for v in args.vaes):
                raise LatentfuseError(f"{pair.name} ({task}) is not prepared: run `prepare --split heldout` first")
            a, b, label = d["a"], d["b"], d["label"]
            outputs = {"average": 0.5 * (_rgb(a) + _rgb(b)), "teacher": label}
            for vae in args.vaes:
                rt = _load_npz(paths[vae])
                for what in ("label", "average"):
                    outputs[f"{vae} {what}"] = rt[what]
                    for kind, cfg in configs[vae].items():
                        outputs[f"{vae} {what}+detail{'' if kind == 'clean' else ' (safe)'}"] = \
                            restore_detail(rt[what], a, b, cfg)
            scores = {m: _scores(a, b, f, label, task) for m, f in outputs.items()}
            for m in scores:
                scores[m]["above_average"] = float(scores[m]["qabf"] > scores["average"]["qabf"])
            per_pair[pair.name] = {"size": list(a.shape[:2]), "scores": scores}
        methods = list(next(iter(per_pair.values()))["scores"])
        mean = {m: {k: float(np.mean([p["scores"][m][k] for p in per_pair.values()]))
                    for k in next(iter(per_pair.values()))["scores"][m]} for m in methods}
        out["tasks"][task] = {"pairs": per_pair, "mean": mean}
    _write_json(args.work / "measure.json", out)


# ----------------------------------------------------------------------------------------- noise

def noise(args) -> None:
    """Degraded sources with a clean decoded image F = D(E(clean label)) (what a model that restored them
    decodes): does the detail path put the degradation back?

    * noise: both sources through the pipeline's noise degradation (sigma drawn from its range, seeded per
      pair); the output's noise estimate, PSNR to the clean label, Q^AB/F against the clean sources;
    * every degradation: ``DEGRADED_VARIANTS`` degraded versions per pair (as in ``tune``); the change of
      PSNR to the clean label that the detail path makes, per degradation type.

    ``--split train`` runs it on the tuning scenes (for developing the stage); ``heldout`` (default) is
    what is reported."""
    from tqdm import tqdm

    from latentfuse.model.data.color import luma
    from latentfuse.model.data.degradations import apply, sample_params
    from latentfuse.model.detail import noise_sigma, restore_detail
    from latentfuse.model.metrics import compute

    out = {"vaes": {}, "split": args.split}
    for vae in args.vaes:
        configs = {kind: _tuned(args.work, vae, kind) for kind in KINDS}
        variants = {"F (clean decoded)": None, "F + detail": configs["clean"], "F + detail (safe)": configs["safe"],
                    "F + detail, no noise gate": replace(configs["clean"], noise_k=0.0)}
        rows: dict = {}
        by_type: dict = {}
        for task in args.tasks:
            acc: dict = {v: {"noise": [], "psnr_label": [], "qabf_clean": []} for v in ["noisy average", *variants]}
            sigmas = []
            items = _cached(args.work, task, args.split, args.data, vae, args.per_task if args.split == "train" else 0)
            for name, d in tqdm(items, desc=f"degraded {vae} {task}", unit="pair"):
                rng = np.random.default_rng([7, zlib.crc32(name.encode())])
                params = sample_params("noise", rng)
                sigmas.append(params["sigma"])
                na, nb = apply("noise", d["a"], params, rng), apply("noise", d["b"], params, rng)
                outs = {"noisy average": 0.5 * (_rgb(na) + _rgb(nb))}
                for v, c in variants.items():
                    outs[v] = d["rt_label"] if c is None else restore_detail(d["rt_label"], na, nb, c)
                for v, f in outs.items():
                    acc[v]["noise"].append(255.0 * noise_sigma(luma(f)))
                    acc[v]["psnr_label"].append(_psnr(f, d["label"]))
                    acc[v]["qabf_clean"].append(compute(_rgb(d["a"]) * 255, _rgb(d["b"]) * 255, _rgb(f) * 255,
                                                        names=["qabf"])["qabf"])
                reference = _psnr(d["rt_label"], d["label"])
                for va, vb, names in _degraded_variants(name, d, task, DEGRADED_VARIANTS):
                    slot = by_type.setdefault(names[0], {kind: [] for kind in KINDS})
                    for kind, cfg in configs.items():
                        slot[kind].append(_psnr(restore_detail(d["rt_label"], va, vb, cfg), d["label"]) - reference)
            rows[task] = {"noise_sigma_255": [255 * float(np.min(sigmas)), 255 * float(np.max(sigmas))],
                          "pairs": len(sigmas),
                          **{v: {k: float(np.mean(x)) for k, x in m.items()} for v, m in acc.items()}}
        out["vaes"][vae] = {"detail": {k: c.as_dict() for k, c in configs.items()}, "tasks": rows,
                            "degraded_dpsnr": {t: {k: float(np.mean(x)) for k, x in kinds.items()} | {"n": len(kinds["clean"])}
                                               for t, kinds in sorted(by_type.items())}}
    _write_json(args.work / ("noise.json" if args.split == "heldout" else f"noise_{args.split}.json"), out)


# ----------------------------------------------------------------------------------------- time

def _median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timing(args) -> None:
    """Encode + decode of one 640x480 image (enlarged k times first) with torch and ONNX Runtime, for every
    thread count of ``--time-threads`` (2: the target; 1: a reference that a shared machine cannot
    oversubscribe); the detail path on the same image."""
    import tempfile

    import torch

    from latentfuse.model.detail import restore_detail

    h, w = TIME_SIZE
    rows = {}
    for vae in args.vaes:
        trip = RoundTrip(vae, args.model, args.taef2)
        k = trip.scale
        x = torch.rand(1, 3, h * k, w * k) * 2 - 1
        enc, dec = _Graph(trip.vae, "encode_graph"), _Graph(trip.vae, "decode_graph")
        with torch.no_grad():
            z = enc(x)

        def run_torch():
            with torch.no_grad():
                dec(enc(x))

        row = {"input": f"{w * k}x{h * k}", "latent": list(z.shape[1:]), "torch_s": {}, "onnxruntime_s": {}}
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            try:
                for name, module, example in (("enc", enc, x), ("dec", dec, z)):
                    paths[name] = Path(tmp) / f"{name}.onnx"
                    torch.onnx.export(module, (example,), str(paths[name]), dynamo=False, opset_version=17,
                                      input_names=["x"], output_names=["y"])
            except Exception as err:  # ONNX Runtime timing is optional here: report why it is missing
                row["onnxruntime_error"] = f"export: {type(err).__name__}: {err}"[:300]
            for threads in args.time_threads:
                torch.set_num_threads(threads)
                row["torch_s"][threads] = _median_seconds(run_torch, args.repeat)
                if "onnxruntime_error" in row:
                    continue
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
                sessions = [ort.InferenceSession(str(paths[n]), opts, providers=["CPUExecutionProvider"])
                            for n in ("enc", "dec")]
                xn = x.numpy()

                def run_ort():
                    zn = sessions[0].run(None, {"x": xn})[0]
                    sessions[1].run(None, {"x": zn})

                row["onnxruntime_s"][threads] = _median_seconds(run_ort, args.repeat)
        rows[vae] = row
        print(vae, row)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    a, b, f = rng.random((h, w, 3), np.float32), rng.random((h, w), np.float32), rng.random((h, w, 3), np.float32)
    detail = {vae: _median_seconds(lambda v=vae: restore_detail(f, a, b, _tuned(args.work, v, "clean")), args.repeat)
              for vae in args.vaes if (args.work / "tune.json").is_file()}
    load = os.getloadavg()
    _write_json(args.work / "timing.json", {"size": f"{w}x{h}", "threads": args.time_threads, "repeat": args.repeat,
                                            "vaes": rows, "detail_s": detail, "loadavg": list(load),
                                            "cpus": os.cpu_count()})


def _Graph(owner, method: str):
    """``owner.method`` as an ``nn.Module`` (what ``torch.onnx.export`` takes)."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.owner = owner

        def forward(self, t):
            return getattr(self.owner, method)(t)

    return Graph().eval()


# ----------------------------------------------------------------------------------------- report

def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _degradation_table(rows: dict) -> list[str]:
    """Markdown rows: PSNR change per degradation type, for every VAE and detail choice."""
    cols = [(v, k) for v in rows["vaes"] for k in KINDS]
    out = ["| degradation | n | " + " | ".join(f"{v} {k}" for v, k in cols) + " |",
           "|---|---:|" + "---:|" * len(cols)]
    first = next(iter(rows["vaes"].values()))["degraded_dpsnr"]
    for t in sorted({t for blob in rows["vaes"].values() for t in blob["degraded_dpsnr"]}):
        cells = [f"{rows['vaes'][v]['degraded_dpsnr'][t][k]:+.2f}" for v, k in cols]
        out.append(f"| {t} | {first.get(t, {}).get('n', '')} | " + " | ".join(cells) + " |")
    return out + [""]


def report(args) -> None:
    measured = _read_json(args.work / "measure.json", "measure")
    tuned = _read_json(args.work / "tune.json", "tune")
    noise_rows = _read_json(args.work / "noise.json", "noise")
    timing_rows = _read_json(args.work / "timing.json", "time")
    vaes = [v for v in VAES if v in measured["detail"]]
    L = []
    L.append("# Real-data ceilings: the VAE round trip of the teacher label, and the pixel-space detail path\n")
    L.append("Made by `scripts/measure_real_ceilings.py` (stages `prepare`, `tune`, `measure`, `noise`, `time`, "
             "`report`; its docstring gives the commands). Every number below is in the JSON files of its `--work` "
             "folder.\n")
    L.append("## Data\n")
    counts = []
    for task in TASKS:
        if task in measured["tasks"]:
            names = sorted(measured["tasks"][task]["pairs"])
            counts.append(f"| {task.upper()} | {len(names)} | {', '.join(names)} |")
    L.append(f"Real pairs of `../shared/datasets` (README there), held-out scenes only (`model/data/split.py`: "
             f"sha256 of the scene name, about 20 % of the scenes, independently per scene; `latentfuse data build` "
             f"writes training scenes only unless asked). Clean pairs as they are, shrunk to a long side of at most "
             f"{measured['long_side']} px (as the issue measured), the task's teacher label computed on them.\n")
    L.append("| task | held-out pairs | scenes |\n|---|---:|---|")
    L.extend(counts)
    L.append("")
    L.append("Metrics (`model.metrics`, corrected convention): Q^AB/F, VIF and the fusion SSIM against the two "
             "sources; SSIM and PSNR to the teacher label; *above avg*: share of pairs whose Q^AB/F beats the plain "
             "average's. The repository has no MEF-SSIM; for MEF the table adds the MEF-SSIM-like structure score of "
             "the label selection (`model.data.selection.structure_score`: mean of the pixel-wise max of the SSIM "
             "maps against either source).\n")
    L.append("VAEs: " + "; ".join(f"`{v}` {VAES[v][0]}" for v in vaes) + ". `label`: D(E(teacher label)), the ceiling "
             "of any latent model with that VAE; `average`: D(E(plain average)), what a model that only learnt the average "
             "would give; `+detail`: after the detail path (`model/detail.py`) with the two sources, its *clean* "
             "parameters; `+detail (safe)`: its *safe* parameters (both chosen on training scenes, below).\n")
    L.append("## Held-out results\n")
    for task in TASKS:
        if task not in measured["tasks"]:
            continue
        mean = measured["tasks"][task]["mean"]
        teacher_q = mean["teacher"]["qabf"]
        mef = task == "mef"
        L.append(f"### {task.upper()} ({len(measured['tasks'][task]['pairs'])} held-out pairs)\n")
        L.append("| method | Q^AB/F | % of teacher | VIF | SSIM | SSIM to label | PSNR to label | above avg |"
                 + (" structure |" if mef else ""))
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if mef else ""))
        for m, s in mean.items():
            above = "" if m == "average" else _pct(s["above_average"])
            psnr = "∞" if m == "teacher" else f"{s['psnr_label']:.2f}"
            L.append(f"| {m} | {s['qabf']:.3f} | {_pct(s['qabf'] / teacher_q)} | {s['vif']:.3f} | {s['ssim']:.3f} | "
                     f"{s['ssim_label']:.3f} | {psnr} | {above} |" + (f" {s['structure']:.3f} |" if mef else ""))
        L.append("")
    L.append("### Summary: Q^AB/F, held-out\n")
    L.append("| VAE | output | " + " | ".join(t.upper() for t in TASKS if t in measured["tasks"]) + " |")
    L.append("|---|---|" + "---:|" * len(measured["tasks"]))
    summary = [("", "average"), ("", "teacher")] + [(v, f"{v} {kind}") for v in vaes for kind in
                                                    ("label", "label+detail", "label+detail (safe)", "average",
                                                     "average+detail", "average+detail (safe)")]
    for v, m in summary:
        cells = []
        for task in TASKS:
            if task in measured["tasks"]:
                mean = measured["tasks"][task]["mean"]
                cells.append(f"{mean[m]['qabf']:.3f} ({_pct(mean[m]['qabf'] / mean['teacher']['qabf'])})")
        L.append(f"| {v} | {m.removeprefix(v).strip()} | " + " | ".join(cells) + " |")
    L.append("\n(in brackets: share of the teacher label's Q^AB/F)\n")
    L.append("## The detail path's parameters (training scenes only)\n")
    L.append(f"Grid: sigma {list(TUNE_GRID['sigma'])} (pixels of the input-size image), radius {list(TUNE_GRID['radius'])}, "
             f"F's own detail as a selection candidate {list(TUNE_GRID['fused_candidate'])}, channels "
             f"{list(TUNE_GRID['channels'])}, noise gate k {list(TUNE_GRID['noise_k'])}; gain 1. On {tuned['per_task']} training scenes per task (scene-hash order), F = D(E(label)): "
             f"*clean* is the Q^AB/F of F after the detail path with the clean sources (mean over tasks); *degraded "
             f"ΔPSNR* is the change of PSNR to the clean label when the stage is fed {tuned['degraded_variants']} "
             f"degraded versions of each pair instead (the pipeline's degradations, one each; F stands for a model "
             f"that restored them): negative when the stage puts degradation back. Two choices per VAE: **clean**, the "
             f"best clean Q^AB/F (for pairs known to be clean: the task's canonical prompt); **safe**, the best clean "
             f"Q^AB/F among the configurations that cost the degraded pairs at most {tuned['max_degraded_loss_db']} dB "
             f"(if none does, the one that costs them least). The held-out scenes were not looked at.\n")
    L.append("| VAE | choice | sigma, radius, F candidate, k, channels | train Q^AB/F label → +detail (VIF / MEF / MFF) | "
             "degraded ΔPSNR dB (VIF / MEF / MFF) | +detail without the noise gate (clean choice, k = 0) |")
    L.append("|---|---|---|---|---|---|")
    for v in vaes:
        t = tuned["vaes"][v]
        free = " / ".join(f"{t['best_without_threshold'][k]:.3f}" for k in TASKS if k in t["best_without_threshold"])
        for kind in KINDS:
            row = choose_config(t["rows"], kind)
            b = row["config"]
            lifts = " / ".join(f"{t['without_detail'][k]:.3f} → {row['qabf'][k]:.3f}" for k in TASKS if k in row["qabf"])
            loss = " / ".join(f"{row['degraded_dpsnr'][k]:+.2f}" for k in TASKS if k in row["degraded_dpsnr"])
            L.append(f"| {v} | {kind} | {b['sigma']:g}, {b['radius']}, {'yes' if b['fused_candidate'] else 'no'}, "
                     f"{b.get('noise_k', 3.0):g}, {b.get('channels', 'luma')} | "
                     f"{lifts} | {loss} | {free if kind == 'clean' else ''} |")
    L.append("")
    L.append("The whole grid (every configuration's clean Q^AB/F and degraded ΔPSNR) is in `tune.json`.\n")
    L.append("## Degraded inputs: does the detail path put the degradation back?\n")
    L.append("Held-out pairs with a clean decoded image F = D(E(clean label)) (what a model that restored the "
             "pair decodes) and degraded sources. First the noise check: both sources through the pipeline's "
             "`noise` degradation (sigma drawn from its range, seeded per pair); *noise est.*: Donoho's estimate on "
             "the output's luma (×255; F's own value is the floor); PSNR to the clean label; Q^AB/F against the "
             "clean sources (it rewards noise as if it were detail, so it rises with the noise).\n")
    L.append("| VAE | task | source noise sigma (×255) | output | noise est. | PSNR to label | Q^AB/F (clean sources) |")
    L.append("|---|---|---|---|---:|---:|---:|")
    for v, blob in noise_rows["vaes"].items():
        for task, row in blob["tasks"].items():
            lo, hi = row["noise_sigma_255"]
            for out_name in ("noisy average", "F (clean decoded)", "F + detail", "F + detail (safe)",
                             "F + detail, no noise gate"):
                r = row[out_name]
                L.append(f"| {v} | {task.upper()} | {lo:.1f}–{hi:.1f} | {out_name} | {r['noise']:.2f} | "
                         f"{r['psnr_label']:.2f} | {r['qabf_clean']:.3f} |")
    L.append("")
    L.append(f"Then every degradation of the pipeline: {DEGRADED_VARIANTS} degraded versions of each held-out pair "
             f"(one degradation each, drawn as in training); the change of PSNR to the clean label that the detail "
             f"path makes (dB, mean; n samples), per degradation type:\n")
    L.extend(_degradation_table(noise_rows))
    train_rows = args.work / "noise_train.json"
    if train_rows.is_file():
        L.append("The same on the training scenes (`noise --split train`, the tuning pairs), which is what a decision "
                 "about when to run the stage may rest on:\n")
        L.extend(_degradation_table(json.loads(train_rows.read_text())))
    L.append("## Time per 640×480 image\n")
    load = ", ".join(f"{x:.1f}" for x in timing_rows["loadavg"])
    threads = [str(t) for t in timing_rows["threads"]]
    L.append(f"Encode + decode of one {timing_rows['size']} image (enlarged k times first), fp32, median of "
             f"{timing_rows['repeat']} runs after a warm-up, on {' and '.join(threads)} thread(s). This machine has "
             f"{timing_rows['cpus']} CPU cores shared with other jobs (load average {load} at the end of the run): "
             f"absolute seconds are inflated by that sharing (torch's OpenMP threads suffer most when the cores are "
             f"oversubscribed), the ratios between rows are the reliable part. Detail path: numpy, one thread.\n")
    L.append("| VAE | VAE input | latent (C, h, w) | " + " | ".join(f"torch {t} thr s | ORT {t} thr s" for t in threads)
             + " | detail path s |")
    L.append("|---|---|---|" + "---:|---:|" * len(threads) + "---:|")
    for v, r in timing_rows["vaes"].items():
        cells = []
        for t in threads:
            cells.append(f"{r['torch_s'][t]:.2f}")
            o = r["onnxruntime_s"].get(t)
            cells.append("n/a" if o is None else f"{o:.2f}")
        det = timing_rows["detail_s"].get(v)
        L.append(f"| {v} | {r['input']} | {tuple(r['latent'])} | " + " | ".join(cells)
                 + f" | {'' if det is None else f'{det:.3f}'} |")
    if any("onnxruntime_error" in r for r in timing_rows["vaes"].values()):
        L.append("\nONNX Runtime not timed: " + "; ".join(f"{v}: {r['onnxruntime_error']}" for v, r in
                                                    timing_rows["vaes"].items() if "onnxruntime_error" in r))
    L.append("")
    text = "\n".join(L) + "\n"
    if args.out.is_file() and NOTES_MARKER in args.out.read_text():  # the hand-written conclusions stay
        text += "\n" + NOTES_MARKER + args.out.read_text().split(NOTES_MARKER, 1)[1]
    with atomic_file(args.out) as tmp:
        tmp.write_text(text)
    print(f"wrote {args.out}")


# ----------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("prepare", "tune", "measure", "noise", "time", "report", "all"))
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets", help="real datasets root")
    p.add_argument("--work", type=Path, default=Path("/tmp/latentfuse-ceilings"), help="cache and results folder")
    p.add_argument("--model", type=Path, default=REPO / "model" / "weights" / "default", help="model with the tiny VAE")
    p.add_argument("--taef2", type=Path, default=REPO.parent / "shared" / "pretrained" / "taef2", help="TAEF2 folder")
    p.add_argument("--split", choices=("train", "heldout"), default="heldout", help="prepare: which scenes")
    p.add_argument("--per-task", type=int, default=8, help="training scenes per task used for tuning")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--vaes", default=",".join(DEFAULT_VAES), help=f"of {', '.join(VAES)}")
    p.add_argument("--long-side", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads for prepare")
    p.add_argument("--time-threads", default="2,1", help="thread counts to time (comma-separated)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "real-data-ceilings.md")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.vaes = [v.strip() for v in args.vaes.split(",") if v.strip()]
    args.time_threads = [int(t) for t in str(args.time_threads).split(",") if t.strip()]
    try:
        bad = [t for t in args.tasks if t not in TASKS] + [v for v in args.vaes if v not in VAES]
        if bad:
            raise LatentfuseError(f"unknown task(s) / VAE(s): {', '.join(bad)}")
        if not args.data.is_dir():
            raise LatentfuseError(f"real datasets not found: {args.data}")
        import torch

        torch.set_num_threads(args.threads)
        stages = {"prepare": prepare, "tune": tune, "measure": measure, "noise": noise, "time": timing, "report": report}
        if args.stage == "all":
            for split in ("train", "heldout"):
                prepare(argparse.Namespace(**{**vars(args), "split": split}))
            for name in ("tune", "measure", "noise", "time", "report"):
                stages[name](args)
        else:
            stages[args.stage](args)
    except LatentfuseError as err:
        print(f"measure_real_ceilings: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
