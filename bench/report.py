"""Write a sweep result (:func:`bench.sweep.run_sweep`) as ``bench.json``, ``bench.md`` and PNG plots.

    latency.png   latency vs pixels, log-log, one line per pipeline (× backend / precision), one panel
                  per aspect ratio; infeasible / OOM sizes are marked on the x axis, not dropped
    speedup.png   speed-up of each latent pipeline over the fastest pixel-space pipeline (solid) and
                  over its parameter-matched pixel-space DiT twin (dashed), per size

The markdown holds the parameter counts, the per-size table (status, median and IQR, per-stage
medians, analytic GFLOPs, memory), the fitted exponents and the speed-ups, and says that the
weights are random.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from model.atomic import atomic_file

STATUS_TEXT = {"ok": "ok", "analytic": "not timed", "infeasible": "infeasible (memory)", "oom": "OOM", "unavailable": "n/a", "error": "error"}


def _ms(s: float | None) -> str:
    return "—" if s is None else (f"{s * 1e3:.1f}" if s < 10 else f"{s:.2f} s")


def _mib(b) -> str:
    return "—" if b is None else f"{b / 2**20:.0f}"


def _gflops(f) -> str:
    return "—" if f is None else f"{f / 1e9:.1f}"


def _label(row: dict) -> str:
    return f"{row['pipeline']} [{row['backend']}/{row['precision']}]"


def markdown(result: dict) -> str:
    meta = result["meta"]
    budget = meta["memory_budget_bytes"]
    budget_text = "none" if budget is None else f"{budget / 2**30:.1f} GiB"
    lines = ["# latentfuse bench: latent vs pixel-space restoration+fusion", ""]
    lines += [f"- device: {meta['device']} ({meta['device_name']}), torch {meta['torch']}, {meta['threads']} threads",
              f"- preset: {meta['preset']}; weights: {meta['weights']}",
              f"- FLOPs: {meta['flops_method']}",
              f"- memory: {meta['memory_method']}; budget {budget_text} "
              f"({meta.get('memory_budget_kind', 'per pipeline')})",
              "- matmul peak: " + (", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in meta["matmul_peak_flops_per_s"].items())
                                   or "not measured") + f" ({meta['peak_method']})",
              *(f"- {n}" for n in meta.get("notes", [])),
              f"- timing: {meta['config']['warmup']} warm-up + {meta['config']['repeat']} timed calls per pipeline and "
              "size, round-robin over pipelines; median, [IQR]", ""]

    lines += ["## Parameters", "", "| pipeline | components | total |", "|---|---|---:|"]
    for name, parts in result["params"].items():
        comp = ", ".join(f"{k} {v / 1e6:.3f} M" for k, v in parts.items())
        lines.append(f"| {name} | {comp} | {sum(parts.values()) / 1e6:.2f} M |")
    lines.append("")

    lines += ["## Latency", "",
              "| pipeline | backend | prec | size (WxH) | status | total ms, median [IQR] | stages, median ms | "
              "GFLOPs | est. peak MiB | meas. peak MiB | DiT % of matmul peak |",
              "|---|---|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in sorted(result["rows"], key=lambda r: (r["aspect"], r["pixels"], r["status"] != "ok",
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
        lines.append(f"| {r['pipeline']} | {r['backend']} | {r['precision']} | {size} | {status} | {total} | {stages} | "
                     f"{_gflops(r.get('total_flops'))} | {_mib(r.get('est_peak_bytes'))} | "
                     f"{_mib(r.get('measured_peak_bytes'))} | {'—' if frac is None else f'{100 * frac:.1f}'} |")
    lines.append("")

    if result.get("fits"):
        lines += ["## Cost exponent (latency ∝ pixels^k, least squares in log-log)", "",
                  "| pipeline | backend | prec | aspect | k (total) | k (DiT stage) | R² | sizes |", "|---|---|---|---|---:|---:|---:|---:|"]
        for f in result["fits"]:
            kd = f.get("k_dit")
            lines.append(f"| {f['pipeline']} | {f['backend']} | {f['precision']} | {f['aspect']} | {f['k']:.2f} | "
                         f"{'—' if kd is None else f'{kd:.2f}'} | {f['r2']:.3f} | {f['points']} |")
        lines.append("")
    if result.get("speedups"):
        lines += ["## Speed-up over the fastest pixel-space pipeline", "",
                  "Twin: the same MoE-DiT (parameter-matched, same head and sampler) run on pixels instead of latents.", "",
                  "| latent pipeline | backend | prec | aspect | size | latent ms | fastest pixel pipeline | its ms | "
                  "speed-up | pixel twin ms | speed-up vs twin |",
                  "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
        for s in result["speedups"]:
            twin = f"{_ms(s['twin_s'])} | {s['twin_speedup']:.2f}x" if "twin" in s else "— | —"
            lines.append(f"| {s['pipeline']} | {s['backend']} | {s['precision']} | {s['aspect']} | {s['resolution']} | "
                         f"{_ms(s['latent_s'])} | {s['best_pixel']} | {_ms(s['best_pixel_s'])} | {s['speedup']:.2f}x | {twin} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_latency(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aspects = sorted({r["aspect"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(aspects), figsize=(7 * len(aspects), 5), squeeze=False)
    for ax, aspect in zip(axes[0], aspects):
        rows = [r for r in result["rows"] if r["aspect"] == aspect]
        series: dict[str, list] = {}
        for r in rows:
            series.setdefault(_label(r), []).append(r)
        for label, rs in sorted(series.items()):
            ok = sorted((r for r in rs if r["status"] == "ok" and "median_s" in r), key=lambda r: r["pixels"])
            if ok:
                style = "-" if ok[0]["space"] == "latent" else "--"
                x = [r["pixels"] for r in ok]
                y = [r["median_s"]["total"] for r in ok]
                err = [[r["median_s"]["total"] - r["iqr_s"]["total"][0] for r in ok],
                       [r["iqr_s"]["total"][1] - r["median_s"]["total"] for r in ok]]
                ax.errorbar(x, y, yerr=err, fmt=style + "o", ms=4, capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # sizes a pipeline could not run are marked, not dropped
        bottom = ax.get_ylim()[0]
        for r in rows:
            if r["status"] in ("infeasible", "oom"):
                ax.axvline(r["pixels"], color="grey", lw=0.5, ls=":")
                ax.annotate(f"{_label(r)}: {STATUS_TEXT[r['status']]}", (r["pixels"], bottom),
                            rotation=90, fontsize=6, va="bottom", ha="right")
        ax.set_xlabel("pixels per image (W x H)")
        ax.set_ylabel("latency per fused pair [s] (median, IQR bars)")
        ax.set_title(f"aspect {aspect}")
        ax.grid(True, which="both", lw=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "nothing timed at this aspect ratio", ha="center", transform=ax.transAxes)
    fig.suptitle(f"latency vs resolution — {result['meta']['device_name']}, preset {result['meta']['preset']}, random weights",
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
        series.setdefault(f"{s['pipeline']} [{s['backend']}/{s['precision']}] {s['aspect']}", []).append(s)
    for label, ss in sorted(series.items()):
        ss = sorted(ss, key=lambda s: s["resolution"])
        line, = ax.plot([s["resolution"] for s in ss], [s["speedup"] for s in ss], "o-", ms=4,
                        label=label + " vs fastest pixel")
        twins = [s for s in ss if "twin_speedup" in s]
        if twins:  # same colour, dashed: against the parameter-matched pixel-space DiT
            ax.plot([s["resolution"] for s in twins], [s["twin_speedup"] for s in twins], "s--", ms=3,
                    color=line.get_color(), label=label + f" vs {twins[0]['twin']}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("resolution (long side, px)")
    ax.set_ylabel("speed-up over the fastest pixel-space pipeline (x)")
    ax.grid(True, which="both", lw=0.3)
    if series:
        ax.legend(fontsize=7)
    else:
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
