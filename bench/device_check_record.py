"""The device check's settings and per-part records (:mod:`latentfuse.bench.device_check`): sizes, models,
the budget per part, and the JSON record each part keeps up to date."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from latentfuse.model.atomic import atomic_file


SCHEMA = "latentfuse.device_check/1"
PARTS = ("machine", "latency", "aoti", "tensorrt", "cpp")
STAGE_NAMES = ("VAE-Enc", "T5", "DiT", "VAE-Dec", "Fidelity", "Detail", "total")  # runtime.latency.STAGES + total
DIT_DTYPES = ("fp32", "fp16")  # the torch DiT's dtype in the latency part
MODES = ("regression", "flow")
TASK = "vif"
SEED = 0

# MMAIF Table 5 ("Whole pipeline latency under 1024x1024 resolution", seconds per image) and section
# 4.6.4, as printed in the paper. It does not say which GPU timed them; the
# only GPU it names is the training one (2x RTX 4090).
PAPER = {
    "source": "MMAIF Table 5 and section 4.6.4",
    "size": "1024x1024",
    "gpu": "not stated in the paper (it names only its training GPUs, 2x NVIDIA RTX 4090)",
    "rows": [
        {"method": "MMAIF (Reg)", "mode": "regression", "seconds": 0.108, "bound": "="},
        {"method": "MMAIF (flow)", "mode": "flow", "seconds": 0.6, "bound": "<",
         "note": "section 4.6.4: 'less than 0.6 seconds' with the velocity-reuse sampler"},
        {"method": "NAFNet+PSLPT", "mode": None, "seconds": 0.345 + 0.013, "bound": "=",
         "note": "restoration 0.345 s + fusion 0.013 s"},
        {"method": "SwinIR+EMMA", "mode": None, "seconds": 5.78 + 0.02, "bound": "="},
        {"method": "DA-CLIP+EMMA", "mode": None, "seconds": 19.45 + 0.02, "bound": "="},
    ],
}


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Size:
    role: str    # demo | camera | table5
    height: int
    width: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Settings:
    smoke: bool
    device: str
    sizes: tuple[Size, ...]
    models: tuple[tuple[str, str], ...]   # (name, source): "bundled" or a preset's random weights
    warmup: int
    runs: int
    aoti_graphs: tuple[str, ...]


def demo_size() -> tuple[int, int]:
    """(H, W) of the pair `latentfuse demo` times first: the first shipped VIF sample."""
    from latentfuse.model.data.samples import sample_pairs
    from latentfuse.model.image_io import read_image

    return read_image(sample_pairs(TASK)[0].a).shape[:2]


AOTI_GRAPHS = ("dit_regression", "vae_decoder", "vae_encoder", "dit_flow")
AOTI_ENV = "DEVICE_CHECK_AOTI_GRAPHS"


def aoti_graphs(smoke: bool) -> tuple[str, ...]:
    """The graphs the aoti part compiles, in priority order: the DiT first (what the latent space makes
    cheap); never the text encoder (the canonical prompt comes from the prompt cache, as in deployment).
    --smoke compiles none (each takes 40 s or more of C++ compile on two CPU cores); ``$DEVICE_CHECK_AOTI_GRAPHS``
    (comma-separated) overrides either choice."""
    text = os.environ.get(AOTI_ENV)
    if text is None:
        return () if smoke else AOTI_GRAPHS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in AOTI_GRAPHS]
    if unknown:
        raise ValueError(f"{AOTI_ENV}: unknown graph(s) {', '.join(unknown)}; choose from {', '.join(AOTI_GRAPHS)}")
    return names


def settings(smoke: bool) -> Settings:
    h, w = demo_size()
    if smoke:
        # same roles, sides divided so that a CPU call takes a fraction of a second; one timed call
        sizes = (Size("demo", h // 4, w // 4), Size("camera", 480 // 8, 640 // 8), Size("table5", 1024 // 16, 1024 // 16))
        return Settings(True, "cpu", sizes, (("default", "bundled"), ("tiny", "random")), 1, 1, aoti_graphs(True))
    sizes = (Size("demo", h, w), Size("camera", 480, 640), Size("table5", 1024, 1024))
    return Settings(False, "cuda", sizes, (("default", "bundled"), ("paper", "random")), 2, 5, aoti_graphs(False))


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")


def progress(msg: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------ part record


class Part:
    """One part's record, saved atomically after every change so a killed part keeps its rows."""

    def __init__(self, name: str, work: Path, budget_s: float, smoke: bool):
        self.name = name
        self.path = work / f"{name}.json"
        self.start = time.monotonic()
        self.budget_s = float(budget_s)
        self.data: dict[str, Any] = {"part": name, "status": "running", "reason": None, "budget_s": self.budget_s,
                                     "seconds": 0.0, "smoke": smoke, "started": now_iso(), "rows": []}
        self.save()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def save(self) -> None:
        self.data["seconds"] = round(time.monotonic() - self.start, 2)
        write_json(self.path, self.data)

    def plan(self, configs: dict[tuple, dict]) -> None:
        """Every configuration's rows up front, as ``pending``: a part killed at its limit still reports
        each one (assemble() turns them into ``timeout``)."""
        self._slots = {key: stage_rows(base, status="pending", reason="not reached") for key, base in configs.items()}
        self._flush()

    def put(self, key: tuple, rows: Sequence[dict]) -> None:
        self._slots[key] = list(rows)
        self._flush()

    def _flush(self) -> None:
        self.data["rows"] = [r for rows in self._slots.values() for r in rows]
        self.save()

    def finish(self, status: str = "ok", reason: str | None = None) -> None:
        self.data.update(status=status, reason=reason)
        self.save()


def stage_rows(base: dict, summary=None, status: str = "ok", reason: str | None = None) -> list[dict]:
    """One row per stage of one configuration: the medians of ``summary`` (a runtime.latency
    LatencySummary), or empty times with ``status`` and ``reason``."""
    rows = []
    for stage in STAGE_NAMES:
        # every field in every row (null where not measured), so readers need no per-status schema
        row = {"nfe": None, "prompt_cached": None, "sampler": None, "finite": None, "peak_mem_mib": None,
               "vae_tiled": None, **base, "stage": stage, "status": status, "reason": reason,
               "median_ms": None, "min_ms": None, "max_ms": None, "runs": 0}
        if summary is not None:
            lo, hi = summary.spread[stage]
            row.update(median_ms=round(summary.median[stage] * 1e3, 3), min_ms=round(lo * 1e3, 3),
                       max_ms=round(hi * 1e3, 3), runs=summary.runs, nfe=summary.nfe,
                       prompt_cached=summary.prompt_cached)
        rows.append(row)
    return rows
