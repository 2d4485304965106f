"""Loss curves of a training run: ``train_log.csv`` → PNG (matplotlib, headless Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path

from latentfuse.model.atomic import atomic_file

TERMS = ("loss", "main", "aux", "label", "balance", "ewc")


def plot_log(csv_path: str | Path, png_path: str | Path, smooth: int = 0) -> Path | None:
    """One panel per loss term (log scale where positive) plus the learning rate; None if no rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with Path(csv_path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    steps = np.array([int(r["step"]) for r in rows])
    terms = [t for t in TERMS if any(float(r[t]) != 0.0 for r in rows)] + ["lr"]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8), squeeze=False)
    window = smooth or max(1, len(rows) // 50)
    for ax, term in zip(axes[0], terms):
        values = np.array([float(r[term]) for r in rows])
        ax.plot(steps, values, lw=0.6, alpha=0.4, color="C0")
        if window > 1 and len(values) > window:
            kernel = np.ones(window) / window
            ax.plot(steps[window - 1:], np.convolve(values, kernel, mode="valid"), lw=1.2, color="C1")
        if term != "lr" and (values > 0).all() and values.max() > 10 * values.min():  # log only if it spans a decade
            ax.set_yscale("log")
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_file(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return png_path
