"""What ``latentfuse evaluate`` writes for people: the markdown tables and the figure grids of a report.

The numbers all come from ``report.json`` (:mod:`latentfuse.bench.quality`); the figures from the panels
cached for the first ``--figures N`` samples of each task and protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentfuse.model.image_processing.color import to_rgb

FIGURE_HEIGHT = 160  # px per panel row
CAPTION = 16  # px of caption strip above a panel


def _cell(stat: dict | None, fmt: str, ci: bool = True) -> str:
    if not stat or stat.get("mean") is None or stat["mean"] != stat["mean"]:
        return ""
    lo, hi = stat.get("ci95", [None, None])
    text = format(stat["mean"], fmt)
    return f"{text} [{format(lo, fmt)}, {format(hi, fmt)}]" if ci and lo is not None and lo == lo else text


def _share(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f} %"


def method_table(methods: dict) -> list[str]:
    """One row per method: Q^AB/F, SSIM / PSNR to the reference (means, bootstrap 95 % CI), seconds, shares
    above the controls, paired Q^AB/F difference to ``average_detail``."""
    lines = ["| method | Q^AB/F ↑ | SSIM to ref ↑ | PSNR to ref (dB) ↑ | s / pair | Q above average | "
             "Q above average_detail | ΔQ vs average_detail | ΔPSNR vs average_detail |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        d = m.get("vs_average_detail", {})
        control = name in ("average", "average_detail")
        lines.append(f"| {name} | {_cell(m['qabf'], '.3f')} | {_cell(m['ssim_ref'], '.3f')} | "
                     f"{_cell(m['psnr_ref'], '.2f')} | {_cell(m['seconds'], '.2f', ci=False)} | "
                     f"{'' if name == 'average' else _share(m.get('above_average'))} | "
                     f"{'' if control else _share(m.get('above_average_detail'))} | "
                     f"{'' if control else _cell(d.get('qabf'), '+.3f')} | "
                     f"{'' if control else _cell(d.get('psnr_ref'), '+.2f')} |")
    return lines


def overview_table(report: dict, metrics: tuple[str, ...] = ("qabf", "ssim_ref", "psnr_ref")) -> list[str]:
    """Method × (protocol, task): one metric per table column group, means only (report.md has the CIs)."""
    tasks = report["tasks"]
    columns = [(protocol, task) for protocol in ("clean", "degraded") for task in tasks if protocol in tasks[task]]
    methods = list(dict.fromkeys(m for p, t in columns for m in tasks[t][p]["methods"]))
    fmt = {"qabf": ".3f", "ssim_ref": ".3f", "psnr_ref": ".2f"}
    names = {"qabf": "Q^AB/F", "ssim_ref": "SSIM", "psnr_ref": "PSNR"}
    head = [f"{names.get(m, m)} {p} {t.upper()}" for m in metrics for p, t in columns]
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for name in methods:
        cells = [_cell(tasks[t][p]["methods"].get(name, {}).get(m), fmt.get(m, ".3f"), ci=False)
                 for m in metrics for p, t in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def family_table(families: dict, metric: str = "psnr_ref", fmt: str = ".2f") -> list[str]:
    """Degradation family × method: the mean of ``metric`` (a sample counts in every family it has)."""
    if not families:
        return []
    methods = list(next(iter(families.values()))["methods"])
    lines = ["| family | n | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for family, entry in families.items():
        cells = [_cell(entry["methods"].get(m, {}).get(metric), fmt, ci=False) for m in methods]
        lines.append(f"| {family} | {entry['n']} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    """report.md: what was measured, then :func:`task_tables`."""
    s = report["settings"]
    lines = ["# latentfuse evaluate", "",
             f"Model: `{report['model'].get('checkpoint') or report['model'].get('bundle') or '?'}` on "
             f"{report['backend']}. Data: `{s['data']}`, split {s['split']}, long side "
             f"{s['max_side'] or 'as stored'}. Q^AB/F ({report['convention']} convention) against the clean sources; "
             "SSIM / PSNR to the reference (the clean pair's teacher label). Means with bootstrap 95 % "
             f"intervals; the control `average_detail` runs {report['control_detail']}.", ""]
    for w in report.get("warnings", []):
        lines += [f"> warning: {w}", ""]
    return "\n".join(lines + task_tables(report))


def task_tables(report: dict, heading: str = "##") -> list[str]:
    """Per task and protocol: the method table and, degraded, the per-family PSNR table."""
    s, lines = report["settings"], []
    for task, protocols in report["tasks"].items():
        for protocol, entry in protocols.items():
            extra = (f", {s['seeds']} seed(s) per pair, {'-'.join(map(str, s['degradations']))} degradations, "
                     "the sample's prompt" if protocol == "degraded" else ", the task's canonical prompt")
            lines += [f"{heading} {task.upper()}, {protocol} ({entry['n']} samples{extra})", ""]
            lines += method_table(entry["methods"]) + [""]
            if entry.get("families"):
                lines += [f"PSNR to the reference (dB) per degradation family, {task.upper()}:", ""]
                lines += family_table(entry["families"]) + [""]
    return lines


# ------------------------------------------------------------------------------------------- figures


def _shrink(img: np.ndarray, height: int) -> np.ndarray:
    from skimage.transform import resize

    h, w = img.shape[:2]
    if h == height:
        return img
    return resize(img, (height, max(1, round(w * height / h))) + img.shape[2:], order=1,
                  anti_aliasing=h > height).astype(np.float32)


def captioned(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` (HxW or HxWx3, [0, 1]) with a caption strip above it."""
    from PIL import Image, ImageDraw

    rgb = to_rgb(img, None)
    rgb = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    canvas = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + CAPTION), "white")
    canvas.paste(Image.fromarray(rgb), (0, CAPTION))
    ImageDraw.Draw(canvas).text((3, 2), text, fill="black")
    return np.asarray(canvas, np.float32) / 255.0


def figure(out: Path, entry: dict, height: int = FIGURE_HEIGHT) -> np.ndarray | None:
    """One grid: a row per figure sample (A | B | reference | every method, Q^AB/F in the captions)."""
    from latentfuse.model.image_io import read_image
    from latentfuse.runtime.fuse_cli import side_by_side

    by_key = {f"{p['scene']}_s{p['seed']}": p for p in entry["pairs"]}
    rows = []
    for rel in entry.get("figure_pairs", []):
        folder = out / rel
        record = by_key.get(folder.name)
        if record is None or not (folder / "done").is_file():
            continue
        panels = []
        for name in ["A", "B", "reference", *entry["methods"]]:
            path = folder / f"{name}.png"
            if not path.is_file():
                continue
            q = record["methods"].get(name, {}).get("qabf")
            caption = name if q is None else f"{name} Q={q:.3f}"
            if name == "A":
                caption = f"{record['scene']} " + ("+".join(record["degradations"]) or "clean") + ": A"
            panels.append(captioned(_shrink(read_image(path), height), caption))
        rows.append(side_by_side(panels))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    padded = [np.concatenate([r, np.ones((r.shape[0], width - r.shape[1], 3), np.float32)], 1) for r in rows]
    gap = np.ones((4, width, 3), np.float32)
    return np.concatenate([x for r in padded for x in (r, gap)][:-1], 0)


def write_figures(report: dict, out: Path) -> list[Path]:
    """``OUT/figures/<task>_<protocol>.jpg`` for every task and protocol with figure samples."""
    from latentfuse.model.image_io import write_image

    written = []
    for task, protocols in report["tasks"].items():
        for protocol, entry in protocols.items():
            grid = figure(out, entry)
            if grid is not None:
                written.append(write_image(out / "figures" / f"{task}_{protocol}.jpg", grid))
    return written


__all__ = ["markdown", "task_tables", "overview_table", "method_table", "family_table", "write_figures", "captioned"]
