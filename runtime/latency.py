"""Per-stage latency of one fuse call, and the table the CLI prints after warm-up runs.

The stages are the four deployed graphs (docs/design.md "Data flow"): ``VAE-Enc`` (both sources in one
batch), ``T5`` (prompt encoding; a prompt-cache hit costs ~0), ``DiT`` (all NFE network calls of the
sampler, with the sampler's host-side arithmetic), ``VAE-Dec``, ``Detail`` (the pixel-space detail path,
``model.image_processing.detail``, on the host; 0 when it is off); plus ``total`` for the whole call
including image padding and conversion. The table follows the layout public diffusion demos print
(TensorRT demoDiffusion's ``print_summary``: one row per module, ``UNet x N`` style for the
denoiser, then the pipeline total and images/s).

Backends run asynchronously on GPUs, so the pipeline calls ``backend.synchronize()`` before reading
the clock at each stage boundary (:class:`StageTimer`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

STAGES: tuple[str, ...] = ("VAE-Enc", "T5", "DiT", "VAE-Dec", "Fidelity", "Detail")


@dataclass
class StageTimes:
    """Seconds spent per stage in one fuse call; ``nfe`` is the number of DiT evaluations."""

    stages: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    nfe: int = 0
    cache_hit: bool = False

    def as_dict(self) -> dict:
        return {"stages_s": dict(self.stages), "total_s": self.total, "nfe": self.nfe, "prompt_cache_hit": self.cache_hit}


class StageTimer:
    """Accumulate wall time per stage; ``sync`` (the backend's device synchronisation) runs at each edge."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self._sync = sync or (lambda: None)
        self.times = StageTimes(stages={name: 0.0 for name in STAGES})
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.times.stages[name] = self.times.stages.get(name, 0.0) + time.perf_counter() - start

    def finish(self, nfe: int, cache_hit: bool = False) -> StageTimes:
        self._sync()
        self.times.total = time.perf_counter() - self._start
        self.times.nfe = int(nfe)
        self.times.cache_hit = bool(cache_hit)
        return self.times


@dataclass
class LatencySummary:
    """Median (and min/max) per stage over several timed runs of the same configuration."""

    label: str
    nfe: int
    runs: int
    median: dict[str, float]
    spread: dict[str, tuple[float, float]]
    prompt_cached: bool = False  # every timed run took the prompt embedding from the cache

    @property
    def images_per_s(self) -> float:
        total = self.median["total"]
        return 1.0 / total if total > 0 else float("inf")

    def as_dict(self) -> dict:
        return {
            "label": self.label, "nfe": self.nfe, "runs": self.runs,
            "median_ms": {k: v * 1e3 for k, v in self.median.items()},
            "min_max_ms": {k: (lo * 1e3, hi * 1e3) for k, (lo, hi) in self.spread.items()},
            "images_per_s": self.images_per_s, "prompt_cached": self.prompt_cached,
        }


def summarize(times: Sequence[StageTimes], label: str = "") -> LatencySummary:
    """Median per stage over ``times`` (warm-up runs must already be excluded by the caller)."""
    if not times:
        raise ValueError("summarize() needs at least one timed run")
    keys = list(STAGES) + ["total"]
    series = {k: [t.stages.get(k, 0.0) if k != "total" else t.total for t in times] for k in keys}
    return LatencySummary(
        label=label,
        nfe=times[-1].nfe,
        runs=len(times),
        median={k: statistics.median(v) for k, v in series.items()},
        spread={k: (min(v), max(v)) for k, v in series.items()},
        prompt_cached=all(t.cache_hit for t in times),
    )


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "|" + "|".join(f" {c:^{w}} " for c, w in zip(cells, widths)) + "|"


def format_table(summaries: LatencySummary | Sequence[LatencySummary]) -> str:
    """demoDiffusion-style table; several summaries become side-by-side columns (e.g. two backends).

    ::

        |   Module    | onnxruntime flow |
        |-------------|------------------|
        |   VAE-Enc   |      12.31 ms    |
        |     T5      |       0.00 ms    |
        |  DiT x 5    |      40.02 ms    |
        |   VAE-Dec   |      10.50 ms    |
        |-------------|------------------|
        |  Pipeline   |      63.40 ms    |
        |  Images/s   |      15.77       |
    """
    if isinstance(summaries, LatencySummary):
        summaries = [summaries]
    summaries = list(summaries)
    nfes = {s.nfe for s in summaries}
    dit_name = f"DiT x {nfes.pop()}" if len(nfes) == 1 else "DiT x NFE"
    names = ["VAE-Enc", "T5", dit_name, "VAE-Dec", "Fidelity", "Detail"]
    header = ["Module"] + [s.label or f"run {i + 1}" for i, s in enumerate(summaries)]
    body = []
    for name, stage in zip(names, STAGES):
        cells = [name]
        for s in summaries:
            ms = s.median[stage] * 1e3
            suffix = f" ({s.nfe})" if stage == "DiT" and dit_name == "DiT x NFE" else ""
            suffix += " (cached)" if stage == "T5" and s.prompt_cached else ""
            cells.append(f"{ms:.2f} ms{suffix}")
        body.append(cells)
    total = ["Pipeline"] + [f"{s.median['total'] * 1e3:.2f} ms" for s in summaries]
    rate = ["Images/s"] + [f"{s.images_per_s:.2f}" for s in summaries]
    widths = [max(len(r[i]) for r in [header, total, rate, *body]) for i in range(len(header))]
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    lines = [rule, _row(header, widths), rule, *(_row(r, widths) for r in body), rule,
             _row(total, widths), _row(rate, widths), rule]
    runs = {s.runs for s in summaries}
    lines.append(f"median of {'/'.join(str(r) for r in sorted(runs))} timed run(s) after warm-up")
    return "\n".join(lines)
