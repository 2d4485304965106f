"""The memory model of one fuse call: what its stages cost in bytes, the budget they are planned within
(``max_memory``, ``--max-memory``) and the plan that keeps to it (:class:`MemoryPlan`, made by
:meth:`latentfuse.runtime.pipeline.Pipeline.plan_memory`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentfuse.model.errors import LatentfuseError

# The largest side one VAE call takes by default (``--tile`` raises it up to the graph's limit): the VAE's
# mid-block attention is quadratic in latent tokens; measured on ONNX Runtime CPU, a 1024^2 pair peaks at
# 7 GB and 8.7 s of encoder, a 768^2 pair at 2.5 GB and 3.7 s (slim tiny VAE, 2 threads).
VAE_MAX_SIDE = 768

# The memory model of one fuse call (bytes), for the budget (``max_memory``, ``--max-memory``). Measured with
# /usr/bin/time -v on ONNX Runtime 1.32 CPU, 2 threads, the bundled default (its arenas shrunk after each run):
# one VAE call on an h x w tile of one image peaks at about VAE_BYTES_PER_PX * h * w for its convolutions plus
# VAE_BYTES_PER_TOKEN2 * (h * w / 64)^2 for the mid-block attention's score matrices (384^2: 0.19 GB, 640x480:
# 0.37 GB, 768^2: 1.16 GB, 1024^2: 2.87 GB over the bare sessions' 76 MB); a DiT call about DIT_BYTES_PER_PX per
# pixel of its windows (35 windows of 128^2: 77 MB); the process before any image (interpreter, numpy, torch,
# the sessions) 365 MB, which RUNTIME_BYTES rounds up. Since the arenas are shrunk only for a tiled pair
# (Backend.low_memory), an untiled pair's sessions keep theirs, which these estimates do not count (a 640x480
# pair: 2.26 GB peak RSS against 1.40 GB when shrunk); the budget binds where the pair is large, and tiled.
VAE_BYTES_PER_PX = 640
VAE_BYTES_PER_TOKEN2 = 10
DIT_BYTES_PER_PX = 192
RUNTIME_BYTES = 512 << 20
# float64 planes the detail path (model.detail) holds per pixel of a strip at most (RGB channels, two sources)
DETAIL_PLANES = 40
# Speed caps, below which a budget only ever shrinks the work per call: VAE tiles of at most VAE_MAX_SIDE (above,
# the attention costs more per pixel than the overlap saves: 1024^2 encodes at 1.7x the time per pixel of 512^2)
# and detail strips of at most DETAIL_STRIP_ROWS rows (a 1920x1080 strip of 512 rows runs no slower per row than
# the whole image, and its planes stay under glibc's mmap threshold, so they are reused, not faulted in anew).
DETAIL_STRIP_ROWS = 512
MIN_VAE_TILE = 256  # twice the VAE tiles' overlap
# The fidelity decoder (model.fidelity) per pixel of one call on ONNX Runtime CPU: its 9-channel input at full
# resolution, the 32- / 64-channel feature maps (x2 inside each block) at H/2 and H/4, the arena's slack. An
# estimate from the default FidelityConfig's layer sizes (about 80 float32 values live per pixel, doubled),
# not a measurement like the constants above.
FIDELITY_BYTES_PER_PX = 640


def parse_memory(value: Any, what: str = "--max-memory") -> int:
    """Bytes from an int or '3G' / '2.5GB' / '3000M' / '512MiB' (powers of 1024); a clear error otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        import re

        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
        if not match:
            raise LatentfuseError(f"{what} takes a size such as 3G, 2.5GB or 3000M, got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * 1024 ** " kmgt".index(unit or " "))
    if size <= 0:
        raise LatentfuseError(f"{what} must be positive, got {value!r}")
    return size


def default_max_memory() -> int:
    """The budget a fuse call plans for when none is given: half the machine's memory (or of the cgroup's
    limit where that is lower), so the rest of the machine keeps the other half."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total // 2


def format_bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MB"


@dataclass(frozen=True)
class MemoryPlan:
    """How one fuse call splits its work to stay within ``budget`` bytes (:meth:`Pipeline.plan_memory`).

    ``dit_window`` / ``vae_tile``: as :meth:`Pipeline.plan_windows` (``vae_tile`` the largest tile side; the
    tiled backend spreads its tiles evenly within it); ``dit_batch``: DiT windows per graph call; ``detail_rows``:
    rows per strip of the detail path (None: the whole image); ``peak``: the estimated peak of the call's
    largest stage, bytes; ``fidelity_rows``: rows per strip of the fidelity decoder (working pixels, each strip
    read with the model's halo of context rows; None: the whole image, or no fidelity decoder)."""

    budget: int
    dit_window: tuple[int, int] | None
    vae_tile: tuple[int, int] | None
    dit_batch: int
    detail_rows: int | None
    peak: int
    fidelity_rows: int | None = None

    def as_dict(self) -> dict:
        return {"budget": self.budget, "dit_window": self.dit_window, "vae_tile": self.vae_tile,
                "dit_batch": self.dit_batch, "detail_rows": self.detail_rows, "fidelity_rows": self.fidelity_rows,
                "peak_estimate": self.peak}


def vae_call_bytes(height: int, width: int) -> int:
    """Estimated peak of one VAE call on one ``height`` x ``width`` image (module constants)."""
    px = height * width
    return VAE_BYTES_PER_PX * px + VAE_BYTES_PER_TOKEN2 * (px // 64) ** 2
