"""What a sweep's measurements say (:mod:`latentfuse.bench.sweep` runs, :mod:`latentfuse.bench.report` writes the files).

* per pipeline and size: median, inter-quartile range, min / max of the total and of every stage, and
  the achieved FLOP/s per stage as a fraction of the measured matmul peak (:func:`finish_row`);
* per pipeline over sizes: the fitted exponent k of latency ∝ pixels^k (:func:`fits`);
* per size: each latent pipeline's speed-up over the fastest pixel-space pipeline and over its
  pixel-space twin (:func:`speedups`), and the headline comparison (:func:`headline`);
* the result's ``meta`` and ``params`` sections and the result itself (:func:`assemble`).

Pure functions of rows and settings: nothing here runs a pipeline.
"""

from __future__ import annotations

import platform
import statistics
from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch

from latentfuse.bench.flops import fit_exponent
from latentfuse.bench.pipelines import BenchPipeline
from latentfuse.bench.plan import ANY_PRESET, PLANNER_NOTE, PRESET_INDEPENDENT, WARMUP_NOTE, WEIGHTS_NOTE, MemoryBudget, SweepConfig


def _quantile(xs: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(xs, dtype=np.float64), q))


def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage (and ``total``): median, quartiles, min and max over the timed calls."""
    keys = list(runs[0])
    out = {}
    for k in keys:
        xs = [r.get(k, 0.0) for r in runs]
        out[k] = {"median": statistics.median(xs), "q25": _quantile(xs, 0.25), "q75": _quantile(xs, 0.75),
                  "min": min(xs), "max": max(xs)}
    return out


def finish_row(row: dict, runs: list[dict[str, float]], peak: float | None) -> None:
    """Write the timed calls' statistics into ``row``; ``peak``: the matmul peak the FLOP/s are a fraction of."""
    stats = summary(runs)
    row["runs"] = len(runs)
    row["total_s"] = [r["total"] for r in runs]
    row["median_s"] = {k: v["median"] for k, v in stats.items()}
    row["iqr_s"] = {k: (v["q25"], v["q75"]) for k, v in stats.items()}
    row["min_max_s"] = {k: (v["min"], v["max"]) for k, v in stats.items()}
    achieved, fraction = {}, {}
    for stage, fl in (row.get("flops") or {}).items():
        t = row["median_s"].get(stage)
        if t and t > 0 and fl:
            achieved[stage] = fl / t
            if peak:
                fraction[stage] = fl / t / peak
    row["achieved_flops_per_s"] = achieved
    row["peak_fraction"] = fraction


def meta(cfg: SweepConfig, device, weights: str, memory: MemoryBudget, peaks: dict[str, float]) -> dict:
    notes = [f"pixel-space pipelines run in torch on {device}; latent pipelines on every requested backend"]
    if device.type == "cpu":
        notes.append("CPU run: absolute times are not comparable with the paper's RTX 4090 numbers; "
                     "ratios and exponents are what carry over")
    if len(cfg.presets) > 1:
        notes.append(f"presets {', '.join(cfg.presets)} in one interleaved sweep; "
                     f"{', '.join(PRESET_INDEPENDENT)} has no preset (rows 'any'): timed once per size and "
                     "compared with every preset")
    if cfg.time_budget_s is not None:
        notes.append(PLANNER_NOTE + f"; presets share the budget in the order {', '.join(cfg.presets)}")
        if device.type == "cpu":
            notes.append(WARMUP_NOTE)
        notes.append("projected_s is a projection (see projection_method), never a measurement")
    info = {
        "notes": notes,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "weights": weights if weights != "random" else WEIGHTS_NOTE,
        "preset": ",".join(cfg.presets),
        "presets": list(cfg.presets),
        "time_budget_s": cfg.time_budget_s,
        "memory_budget_bytes": memory.bytes,
        "memory_budget_kind": ("per pipeline (--memory-budget-gb): estimated weights + activations" if memory.explicit
                               else "free device memory after loading every model: estimated activations"),
        "matmul_peak_flops_per_s": peaks,
        "peak_method": f"best of 3 timed {cfg.peak_matmul_n}^3 torch.mm on the sweep device (2n^3 FLOPs)",
        "flops_method": "torch.utils.flop_counter.FlopCounterMode on meta tensors (T5 on real tensors): "
                        "matmul, conv, attention at 2 FLOPs/MAC; element-wise ops not counted; routed MoE "
                        "experts scaled to top-k",
        "memory_method": ("torch.cuda.max_memory_allocated delta" if device.type == "cuda" else
                          "peak RSS above the RSS at call entry, sampled every 2 ms from /proc/self/statm"),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
    return info


def params(pipelines) -> dict[str, dict[str, dict[str, int]]]:
    """Parameter counts per preset (``"any"`` for the preset-independent pipelines), then per pipeline."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for p in pipelines:
        group = out.setdefault(getattr(p, "preset", ANY_PRESET), {})
        if isinstance(p, BenchPipeline) and p.name not in group:
            group[p.name] = p.params()
    return {k: v for k, v in out.items() if v}


def _preset(row: dict) -> str:
    return row.get("preset") or ANY_PRESET


def fits(rows: list[dict]) -> list[dict]:
    """Exponent k of latency ∝ pixels^k per (preset, pipeline, backend, precision, aspect), total and DiT stage."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok" and "median_s" in r:
            groups.setdefault((_preset(r), r["pipeline"], r["backend"], r["precision"], r["aspect"]), []).append(r)
    out = []
    for (preset, name, backend, precision, aspect), rs in groups.items():
        fit = fit_exponent([r["pixels"] for r in rs], [r["median_s"]["total"] for r in rs])
        if fit is None:
            continue
        entry = {"pipeline": name, "preset": preset, "backend": backend, "precision": precision, "aspect": aspect,
                 "k": fit.k, "c": fit.c, "r2": fit.r2, "points": fit.points}
        if all("DiT" in r["median_s"] for r in rs):
            dit = fit_exponent([r["pixels"] for r in rs], [r["median_s"]["DiT"] for r in rs])
            if dit is not None:
                entry["k_dit"] = dit.k
        out.append(entry)
    return out


def pixel_twin(latent_name: str) -> str | None:
    """The pixel-space DiT pipeline with the same head and sampler as a latent one (same parameters)."""
    if latent_name == "latent-reg":
        return "pixel-dit-reg"
    if latent_name.startswith("latent-flow-reuse"):
        return "pixel-dit-" + latent_name[len("latent-"):]
    return None


def speedups(rows: list[dict]) -> list[dict]:
    """Per preset, size and precision: each latent pipeline's speed-up over the fastest pixel-space
    pipeline (torch) of the same preset or of none (NAFNet+DenseFuse), and over its pixel-space twin
    (same DiT size, head and sampler: the latent-space effect alone)."""
    out = []
    ok = [r for r in rows if r["status"] == "ok" and "median_s" in r]
    keys = sorted({(_preset(r), r["precision"], r["aspect"], r["resolution"]) for r in ok if r["space"] == "latent"})
    for preset, precision, aspect, res in keys:
        same = [r for r in ok if (r["precision"], r["aspect"], r["resolution"]) == (precision, aspect, res)
                and _preset(r) in (preset, ANY_PRESET)]
        pixel = [r for r in same if r["space"] == "pixel"]
        if not pixel:
            continue
        best = min(pixel, key=lambda r: r["median_s"]["total"])
        for r in same:
            if r["space"] != "latent" or _preset(r) != preset:
                continue
            out.append({"pipeline": r["pipeline"], "preset": preset, "backend": r["backend"], "precision": precision,
                        "aspect": aspect, "resolution": res, "best_pixel": best["pipeline"],
                        "best_pixel_preset": _preset(best),
                        "best_pixel_s": best["median_s"]["total"], "latent_s": r["median_s"]["total"],
                        "speedup": best["median_s"]["total"] / r["median_s"]["total"]})
            twin = next((t for t in pixel if t["pipeline"] == pixel_twin(r["pipeline"])), None)
            if twin is not None:
                out[-1].update(twin=twin["pipeline"], twin_s=twin["median_s"]["total"],
                               twin_speedup=twin["median_s"]["total"] / r["median_s"]["total"])
    return out


def headline(speedups_: list[dict], rows: list[dict], pipeline: str = "latent-reg") -> list[dict]:
    """Per preset (and backend / precision / aspect): ``pipeline`` against the fastest pixel-space
    pipeline at the largest size where both were measured, and the largest size asked for, with what
    kept it from being measured there (over-budget, infeasible, ...) when it is not the same size."""
    out = []
    groups: dict[tuple, list[dict]] = {}
    for s in speedups_:
        if s["pipeline"] == pipeline:
            groups.setdefault((s["preset"], s["backend"], s["precision"], s["aspect"]), []).append(s)
    for (preset, backend, precision, aspect), ss in groups.items():
        top = max(ss, key=lambda s: s["resolution"])
        entry = dict(top)
        mine = [r for r in rows if r["pipeline"] == pipeline and _preset(r) == preset
                and (r["backend"], r["precision"], r["aspect"]) == (backend, precision, aspect)]
        largest = max((r["resolution"] for r in mine), default=top["resolution"])
        entry["largest_requested"] = largest
        # the pixel-space pipelines that were not measured at that size (the "fastest" is among the rest)
        entry["pixel_not_measured"] = [
            {"pipeline": r["pipeline"], "status": r["status"], "projected_s": r.get("projected_s")}
            for r in rows if r["space"] == "pixel" and r["status"] != "ok" and _preset(r) in (preset, ANY_PRESET)
            and (r["backend"], r["precision"], r["aspect"], r["resolution"]) == ("torch", top["precision"], aspect,
                                                                                  top["resolution"])]
        if largest != top["resolution"]:
            at = [r for r in mine if r["resolution"] == largest]
            entry["largest_status"] = at[0]["status"] if at else "?"
            entry["largest_reason"] = at[0].get("reason", "") if at else ""
        out.append(entry)
    return out


def assemble(cfg: SweepConfig, device, weights: str, memory: MemoryBudget, peaks: dict[str, float], pipelines,
             rows: list[dict], wall_s: float) -> dict:
    """The JSON-ready sweep result: meta, params, rows, and the fits, speed-ups and headline of the rows."""
    result = {
        "meta": meta(cfg, device, weights, memory, peaks),
        "params": params(pipelines),
        "rows": rows,
    }
    result["meta"]["wall_s"] = wall_s
    result["fits"] = fits(rows)
    result["speedups"] = speedups(rows)
    result["headline"] = headline(result["speedups"], rows)
    return result


__all__ = ["summary", "finish_row", "meta", "params", "fits", "pixel_twin", "speedups", "headline", "assemble"]
