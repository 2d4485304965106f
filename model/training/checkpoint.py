"""Training checkpoints: model weights as safetensors plus one file with everything else.

    <output_dir>/checkpoints/step_00001000/
        dit/                 MoEDiT.save_pretrained (config.json + model.safetensors, fp32)
        dit_ema/             the EMA weights, same layout (when ema.decay > 0)
        trainer_state.pt     torch.save dict: step, optimizer, scheduler, RNG, EMA, EWC, replay, config
    <output_dir>/checkpoints/latest          name of the newest complete checkpoint

Each checkpoint directory is written through ``model.atomic.atomic_dir``: a crash mid-write leaves
the previous checkpoint intact and no partial directory. ``trainer_state.pt`` holds only tensors and
plain containers and is read with ``weights_only=True``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from latentfuse.model.atomic import atomic_dir, atomic_file
from latentfuse.model.errors import LatentfuseError

STATE_NAME = "trainer_state.pt"
DIT_DIR = "dit"
LATEST = "latest"
STATE_FORMAT = 1
# Keys that may change between a run and its resumption without changing the maths.
RESUMABLE_DIFFERENCES = {"run.output_dir", "run.device", "run.log_every", "run.checkpoint_every",
                         "run.keep_checkpoints", "run.plot", "run.progress"}


def step_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:08d}"


def save_checkpoint(directory: Path, dit, state: dict, keep: int = 0, extra_models: dict | None = None) -> Path:
    """Write ``dit`` (+ ``extra_models``, e.g. the EMA weights as ``dit_ema/``) and ``state`` atomically
    into ``directory``; prune to the newest ``keep`` siblings."""
    directory = Path(directory)
    with atomic_dir(directory, overwrite=True) as tmp:
        dit.save_pretrained(tmp / DIT_DIR)
        for name, model in (extra_models or {}).items():
            model.save_pretrained(tmp / name)
        torch.save({"format": STATE_FORMAT, **state}, tmp / STATE_NAME)
    with atomic_file(directory.parent / LATEST) as tmp:
        tmp.write_text(directory.name + "\n")
    if keep > 0:
        older = sorted(p for p in directory.parent.glob("step_*") if p.is_dir() and p != directory)
        for old in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return directory


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory / its ``checkpoints`` folder (newest checkpoint)."""
    path = Path(path)
    if (path / STATE_NAME).exists() or (path / DIT_DIR).exists():
        return path
    for folder in (path / "checkpoints", path):
        pointer = folder / LATEST
        if pointer.is_file():
            candidate = folder / pointer.read_text().strip()
            if candidate.is_dir():
                return candidate
        steps = sorted(p for p in folder.glob("step_*") if p.is_dir())
        if steps:
            return steps[-1]
    if not path.exists():
        raise LatentfuseError(f"checkpoint not found: {path}")
    raise LatentfuseError(f"{path} is not a training checkpoint (no {STATE_NAME}, no checkpoints/step_*)")


def load_checkpoint(path: str | Path):
    """Return (checkpoint dir, MoEDiT with the saved weights, trainer state dict); clear errors otherwise."""
    from latentfuse.model.dit import MoEDiT

    directory = resolve(path)
    state_path = directory / STATE_NAME
    if not state_path.is_file():
        raise LatentfuseError(f"checkpoint {directory} lacks {STATE_NAME} (incomplete or not a training checkpoint)")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, pickle of foreign objects
        raise LatentfuseError(f"checkpoint state {state_path} is corrupt or unreadable "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise LatentfuseError(f"{state_path} is not a latentfuse trainer state (format {STATE_FORMAT})")
    missing = [k for k in ("step", "optimizer", "scheduler", "rng", "config") if k not in state]
    if missing:
        raise LatentfuseError(f"{state_path} lacks {', '.join(missing)}")
    dit = MoEDiT.from_pretrained(directory / DIT_DIR)  # raises LatentfuseError on corrupt / mismatched weights
    return directory, dit, state


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "overrides":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ (other than those in RESUMABLE_DIFFERENCES), formatted for an error."""
    a, b = flatten(saved), flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_DIFFERENCES:
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: checkpoint {a.get(key)!r} vs config {b.get(key)!r}")
    return diffs
