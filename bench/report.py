"""Write a sweep result (:func:`latentfuse.bench.sweep.run_sweep`) as ``bench.json``, ``bench.md`` and PNG plots.

    latency.png   latency vs pixels, log-log, one line per pipeline (× backend / precision), one panel
                  per preset × aspect ratio (the preset-independent pipelines in every panel);
                  infeasible / OOM / over-budget sizes are marked on the x axis, not dropped
    speedup.png   speed-up of each latent pipeline over the fastest pixel-space pipeline (solid) and
                  over its parameter-matched pixel-space DiT twin (dashed), per size

The markdown holds the parameter counts, the per-size table per preset (status, calls, median and
IQR, per-stage medians, analytic GFLOPs, memory, the projection under a time budget), the fitted
exponents, the speed-ups and the headline (latent-reg vs the fastest pixel-space pipeline at the
largest measured size, next to :data:`PAPER_TABLE5`), and says that the weights are random.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from latentfuse.model.atomic import atomic_file

STATUS_TEXT = {"ok": "ok", "analytic": "not timed", "infeasible": "infeasible (memory)", "oom": "OOM",
               "unavailable": "n/a", "error": "error", "over-budget": "over budget (time)"}
#: Rows that could not run at a size and are marked on the plots.
NOT_RUN = ("infeasible", "oom", "over-budget")

#: MMAIF Table 5 (RTX 4090, 1024x1024, fp32 torch): pixel-space restoration + fusion vs the latent
#: regression pipeline, seconds per fused pair.
PAPER_TABLE5 = {
    "device": "RTX 4090",
    "resolution": 1024,
    "pixel_pipeline": "NAFNet+PSLPT",
    "pixel_stages_s": {"NAFNet": 0.345, "PSLPT": 0.013},
    "pixel_s": 0.358,
    "latent_pipeline": "MMAIF-Reg",
    "latent_s": 0.108,
}
PAPER_TABLE5["speedup"] = PAPER_TABLE5["pixel_s"] / PAPER_TABLE5["latent_s"]


def _ms(s: float | None) -> str:
    return "—" if s is None else (f"{s * 1e3:.1f}" if s < 10 else f"{s:.2f} s")


def _mib(b) -> str:
    return "—" if b is None else f"{b / 2**20:.0f}"


def _gflops(f) -> str:
    return "—" if f is None else f"{f / 1e9:.1f}"


ANY = "any"


def _preset(row: dict) -> str:
    return row.get("preset") or ANY


def _label(row: dict) -> str:
    tag = "" if _preset(row) == ANY else f"{_preset(row)}/"
    return f"{row['pipeline']} [{tag}{row['backend']}/{row['precision']}]"


def _presets(result: dict) -> list[str]:
    """The presets of the run in their order; ``any`` alone when no row has a preset."""
    meta = result["meta"].get("presets") or [p for p in str(result["meta"].get("preset", "")).split(",") if p]
    found = {_preset(r) for r in result["rows"]} - {ANY}
    ordered = [p for p in meta if p in found] + sorted(found - set(meta))
    return ordered or [ANY]


def _in_preset(row: dict, preset: str) -> bool:
    return _preset(row) in (preset, ANY)


def _timing_line(result: dict) -> str:
    meta, cfg = result["meta"], result["meta"]["config"]
    line = (f"- timing: up to {cfg['warmup']} warm-up + {cfg['repeat']} timed calls per pipeline and size, "
            "round-robin over pipelines; median, [IQR]")
    if meta.get("time_budget_s") is not None:
        spent = meta.get("wall_s")
        line += (f"; time budget {meta['time_budget_s'] / 60:.1f} min"
                 + ("" if spent is None else f", spent {spent / 60:.1f} min (model building included)")
                 + "; the calls column says what each row got")
    elif meta.get("wall_s") is not None:
        line += f"; wall time {meta['wall_s'] / 60:.1f} min"
    return line


def _calls(r: dict) -> str:
    if "timed_calls" not in r and "planned_calls" not in r:
        return "—"
    return f"{r.get('warmup_calls', 0)}+{r.get('timed_calls', 0)}"


def _headline_lines(result: dict) -> list[str]:
    paper = PAPER_TABLE5
    lines = ["## Headline: latent-reg vs the fastest pixel-space pipeline", "",
             f"- paper claims (MMAIF Table 5, {paper['device']}, {paper['resolution']}²): "
             + " + ".join(f"{k} {v:.3f} s" for k, v in paper["pixel_stages_s"].items())
             + f" = {paper['pixel_s']:.3f} s vs {paper['latent_pipeline']} {paper['latent_s']:.3f} s, "
               f"i.e. {paper['speedup']:.1f}x"]
    order = {p: i for i, p in enumerate(_presets(result))}
    heads = sorted(result.get("headline") or [], key=lambda h: order.get(h["preset"], len(order)))
    if not heads:
        lines.append("- ours: no size where latent-reg and a pixel-space pipeline were both measured")
    for h in heads:
        text = (f"- ours, preset {h['preset']} [{h['backend']}/{h['precision']}, {h['aspect']}], largest measured size "
                f"{h['resolution']}: latent-reg {h['latent_s']:.3f} s vs {h['best_pixel']} {h['best_pixel_s']:.3f} s, "
                f"i.e. **{h['speedup']:.2f}x**")
        missing = h.get("pixel_not_measured") or []
        if missing:
            text += "; not measured at that size: " + ", ".join(
                f"{m['pipeline']} ({STATUS_TEXT.get(m['status'], m['status'])}"
                + (f", projected {m['projected_s']:.1f} s" if m.get("projected_s") is not None else "") + ")"
                for m in missing)
        if h.get("largest_requested", h["resolution"]) != h["resolution"]:
            text += (f" (latent-reg at {h['largest_requested']}: {STATUS_TEXT.get(h.get('largest_status'), h.get('largest_status'))}"
                     + (f", {h['largest_reason']}" if h.get("largest_reason") else "") + ")")
        lines.append(text)
    return lines + [""]


def markdown(result: dict) -> str:
    meta = result["meta"]
    budget = meta["memory_budget_bytes"]
    budget_text = "none" if budget is None else f"{budget / 2**30:.1f} GiB"
    presets = _presets(result)
    lines = ["# latentfuse bench: latent vs pixel-space restoration+fusion", ""]
    lines += [f"- device: {meta['device']} ({meta['device_name']}), torch {meta['torch']}, {meta['threads']} threads",
              f"- preset{'s' if len(presets) > 1 else ''}: {', '.join(presets)}; weights: {meta['weights']}",
              f"- FLOPs: {meta['flops_method']}",
              f"- memory: {meta['memory_method']}; budget {budget_text} "
              f"({meta.get('memory_budget_kind', 'per pipeline')})",
              "- matmul peak: " + (", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in meta["matmul_peak_flops_per_s"].items())
                                   or "not measured") + f" ({meta['peak_method']})",
              *(f"- {n}" for n in meta.get("notes", [])),
              _timing_line(result), ""]

    lines += ["## Parameters", "", "| preset | pipeline | components | total |", "|---|---|---|---:|"]
    params = result["params"]
    if params and not all(isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()) for v in params.values()):
        params = {ANY: params}  # a result from before presets were grouped
    for preset, group in params.items():
        for name, parts in group.items():
            comp = ", ".join(f"{k} {v / 1e6:.3f} M" for k, v in parts.items())
            lines.append(f"| {preset} | {name} | {comp} | {sum(parts.values()) / 1e6:.2f} M |")
    lines.append("")

    lines += ["## Latency", ""]
    if len(presets) > 1:
        lines += [f"One table per preset; the rows of preset '{ANY}' have no preset, were timed once per size "
                  "and are repeated in every table.", ""]
    for preset in presets:
        lines += _latency_table(result, preset, titled=len(presets) > 1)

    if result.get("fits"):
        lines += ["## Cost exponent (latency ∝ pixels^k, least squares in log-log)", "",
                  "| preset | pipeline | backend | prec | aspect | k (total) | k (DiT stage) | R² | sizes |",
                  "|---|---|---|---|---|---:|---:|---:|---:|"]
        for f in result["fits"]:
            kd = f.get("k_dit")
            lines.append(f"| {f.get('preset', ANY)} | {f['pipeline']} | {f['backend']} | {f['precision']} | {f['aspect']} | "
                         f"{f['k']:.2f} | {'—' if kd is None else f'{kd:.2f}'} | {f['r2']:.3f} | {f['points']} |")
        lines.append("")
    if result.get("speedups"):
        lines += ["## Speed-up over the fastest pixel-space pipeline", "",
                  "Within a preset (the preset-independent pipelines count for every preset). "
                  "Twin: the same MoE-DiT (parameter-matched, same head and sampler) run on pixels instead of latents.", "",
                  "| preset | latent pipeline | backend | prec | aspect | size | latent ms | fastest pixel pipeline | its ms | "
                  "speed-up | pixel twin ms | speed-up vs twin |",
                  "|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
        for s in result["speedups"]:
            twin = f"{_ms(s['twin_s'])} | {s['twin_speedup']:.2f}x" if "twin" in s else "— | —"
            lines.append(f"| {s.get('preset', ANY)} | {s['pipeline']} | {s['backend']} | {s['precision']} | {s['aspect']} | "
                         f"{s['resolution']} | {_ms(s['latent_s'])} | {s['best_pixel']} | {_ms(s['best_pixel_s'])} | "
                         f"{s['speedup']:.2f}x | {twin} |")
        lines.append("")
    lines += _headline_lines(result)
    return "\n".join(lines) + "\n"


def _latency_table(result: dict, preset: str, titled: bool) -> list[str]:
    lines = [f"### preset {preset}", ""] if titled else []
    lines += ["| pipeline | backend | prec | size (WxH) | status | calls (warm-up+timed) | total ms, median [IQR] | "
              "stages, median ms | GFLOPs | est. peak MiB | meas. peak MiB | DiT % of matmul peak | projected s/call |",
              "|---|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    rows = [r for r in result["rows"] if _in_preset(r, preset)]
    for r in sorted(rows, key=lambda r: (r["aspect"], r["pixels"], r["status"] != "ok",
                                         r["backend"], r["precision"], r["space"], r["pipeline"])):
        size = f"{r['width']}x{r['height']}"
        status = STATUS_TEXT.get(r["status"], r["status"])
        if r["status"] == "ok" and "median_s" in r:
            med, (lo, hi) = r["median_s"]["total"], r["iqr_s"]["total"]
            total = f"{_ms(med)} [{_ms(lo)}–{_ms(hi)}]"
            stages = ", ".join(f"{k}{' x' + str(r['nfe']) if k == 'DiT' else ''} {_ms(v)}"
                               for k, v in r["median_s"].items() if k != "total")
        elif r["status"] == "analytic":
            total = "—"
            stages = "GFLOPs: " + ", ".join(f"{k} {_gflops(v)}" for k, v in (r.get("flops") or {}).items())
        else:
            total, stages = "—", (r.get("reason") or "")[:120].replace("|", "/")
        frac = r.get("peak_fraction", {}).get("DiT")
        proj = r.get("projected_s")
        name = r["pipeline"] + (f" ({ANY})" if titled and _preset(r) == ANY else "")
        lines.append(f"| {name} | {r['backend']} | {r['precision']} | {size} | {status} | {_calls(r)} | {total} | "
                     f"{stages} | {_gflops(r.get('total_flops'))} | {_mib(r.get('est_peak_bytes'))} | "
                     f"{_mib(r.get('measured_peak_bytes'))} | {'—' if frac is None else f'{100 * frac:.1f}'} | "
                     f"{'—' if proj is None else f'{proj:.2f}'} |")
    return lines + [""]


def plot_latency(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aspects = sorted({r["aspect"] for r in result["rows"]})
    presets = _presets(result)
    fig, axes = plt.subplots(len(presets), len(aspects), figsize=(7 * len(aspects), 5 * len(presets)), squeeze=False)
    for ax, (preset, aspect) in zip(axes.flat, [(p, a) for p in presets for a in aspects]):
        rows = [r for r in result["rows"] if r["aspect"] == aspect and _in_preset(r, preset)]
        series: dict[str, list] = {}
        for r in rows:
            series.setdefault(_label(r), []).append(r)
        for label, rs in sorted(series.items()):
            ok = sorted((r for r in rs if r["status"] == "ok" and "median_s" in r), key=lambda r: r["pixels"])
            color = None
            if ok:
                style = "-" if ok[0]["space"] == "latent" else "--"
                x = [r["pixels"] for r in ok]
                y = [r["median_s"]["total"] for r in ok]
                err = [[r["median_s"]["total"] - r["iqr_s"]["total"][0] for r in ok],
                       [r["iqr_s"]["total"][1] - r["median_s"]["total"] for r in ok]]
                color = ax.errorbar(x, y, yerr=err, fmt=style + "o", ms=4, capsize=2, label=label).lines[0].get_color()
            # over-budget sizes: the projection, drawn apart (open crosses, dotted) so it never reads as a measurement
            over = sorted((r for r in rs if r["status"] == "over-budget" and r.get("projected_s")), key=lambda r: r["pixels"])
            if over:
                ax.plot([r["pixels"] for r in over], [r["projected_s"] for r in over], "x:", ms=5, lw=0.8, color=color,
                        label=f"{label}: projected, not run (over budget)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # sizes a pipeline could not run for memory are marked, not dropped: one note per size
        bottom = ax.get_ylim()[0]
        notes: dict[int, list[str]] = {}
        for r in rows:
            if r["status"] in NOT_RUN and not (r["status"] == "over-budget" and r.get("projected_s")):
                notes.setdefault(r["pixels"], []).append(f"{_label(r)}: {STATUS_TEXT[r['status']]}")
        for pixels, texts in notes.items():
            ax.axvline(pixels, color="grey", lw=0.5, ls=":")
            ax.annotate("\n".join(texts), (pixels, bottom), rotation=90, fontsize=5, va="bottom", ha="right")
        ax.set_xlabel("pixels per image (W x H)")
        ax.set_ylabel("latency per fused pair [s] (median, IQR bars)")
        ax.set_title(f"aspect {aspect}" if preset == ANY else f"preset {preset}, aspect {aspect}")
        ax.grid(True, which="both", lw=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "nothing timed at this aspect ratio", ha="center", transform=ax.transAxes)
    fig.suptitle(f"latency vs resolution — {result['meta']['device_name']}, preset{'s' if len(presets) > 1 else ''} "
                 f"{', '.join(presets)}, weights: {'random' if 'random' in str(result['meta'].get('weights')) else 'checkpoint'}",
                 fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_speedup(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    series: dict[str, list] = {}
    for s in result.get("speedups", []):
        tag = "" if s.get("preset", ANY) == ANY else f"{s['preset']}/"
        series.setdefault(f"{s['pipeline']} [{tag}{s['backend']}/{s['precision']}] {s['aspect']}", []).append(s)
    for label, ss in sorted(series.items()):
        ss = sorted(ss, key=lambda s: s["resolution"])
        line, = ax.plot([s["resolution"] for s in ss], [s["speedup"] for s in ss], "o-", ms=4,
                        label=label + " vs fastest pixel")
        twins = [s for s in ss if "twin_speedup" in s]
        if twins:  # same colour, dashed: against the parameter-matched pixel-space DiT
            ax.plot([s["resolution"] for s in twins], [s["twin_speedup"] for s in twins], "s--", ms=3,
                    color=line.get_color(), label=label + f" vs {twins[0]['twin']}")
    ax.axhline(1.0, color="k", lw=0.8)
    paper = PAPER_TABLE5  # the paper's headline, as a reference mark at its resolution
    ax.plot([paper["resolution"]], [paper["speedup"]], "k*", ms=9,
            label=f"paper: {paper['latent_pipeline']} vs {paper['pixel_pipeline']} ({paper['device']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("resolution (long side, px)")
    ax.set_ylabel("speed-up over the fastest pixel-space pipeline (x)")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7)
    if not series:
        ax.text(0.5, 0.5, "no size with both a latent and a pixel-space measurement", ha="center",
                transform=ax.transAxes)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write bench.json, bench.md, latency.png and speedup.png into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md",
             "latency_plot": out / "latency.png", "speedup_plot": out / "speedup.png"}
    with atomic_file(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    with atomic_file(paths["markdown"]) as tmp:
        Path(tmp).write_text(markdown(result))
    plot_latency(result, paths["latency_plot"])
    plot_speedup(result, paths["speedup_plot"])
    return paths
