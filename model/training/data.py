"""The training set in latent space: VAE latents of every (A, B, GT) tuple, encoded once and cached.

The VAE and the text encoder are frozen (MMAIF 3.2-3.4), so their outputs never change during DiT
training: each tuple of a ``latentfuse data build`` folder is enlarged by the model's working scale
(``model.work_scale``, as its pipeline will), centre-cropped to ``crop`` pixels and encoded once
(posterior mean), and each distinct prompt is encoded once by T5. The cache is one
``torch.save`` file; the auxiliary loss (Eq. 9) also needs the two source images in pixel space, kept
as uint8 next to the latents, and the optional pixel-space label term the label itself.

    z_a, z_b, z_gt   [N, 16, crop/8, crop/8] float32   latents of the degraded A, B and the label
    x_a, x_b         [N, 3, crop, crop] uint8          aux-loss sources (clean or degraded)
    x_gt             [N, 3, crop, crop] uint8          the label (``loss.label_weight``)
    prompt_ids       [N]  index into prompt_embeds [P, L, d_t] / prompt_mask [P, L]
    task_ids         [N]  index into ``tasks``
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from latentfuse.model.atomic import atomic_file
from latentfuse.model.data.build import INDEX_NAME, LEGACY_INDEX_NAMES
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import to_rgb
from latentfuse.model.work_scale import check_work_scale, upscale

CACHE_FORMAT = 2  # 2: + x_gt
INDEX_NAMES = (INDEX_NAME, *LEGACY_INDEX_NAMES)  # per folder the first present is read


@dataclass
class LatentDataset:
    z_a: torch.Tensor
    z_b: torch.Tensor
    z_gt: torch.Tensor
    prompt_ids: torch.Tensor
    task_ids: torch.Tensor
    prompt_embeds: torch.Tensor
    prompt_mask: torch.Tensor
    tasks: tuple
    x_a: torch.Tensor | None = None
    x_b: torch.Tensor | None = None
    prompts: tuple = ()
    x_gt: torch.Tensor | None = None

    def __post_init__(self):
        n = self.z_a.shape[0]
        for name in ("z_b", "z_gt", "prompt_ids", "task_ids"):
            if getattr(self, name).shape[0] != n:
                raise LatentfuseError(f"latent dataset: {name} has {getattr(self, name).shape[0]} rows, z_a has {n}")
        if self.z_a.shape != self.z_b.shape or self.z_a.shape != self.z_gt.shape:
            raise LatentfuseError(f"latent dataset: z_a {tuple(self.z_a.shape)}, z_b {tuple(self.z_b.shape)} and "
                                  f"z_gt {tuple(self.z_gt.shape)} must have one shape")
        self._by_task: dict = {}

    def __len__(self) -> int:
        return int(self.z_a.shape[0])

    @property
    def has_images(self) -> bool:
        return self.x_a is not None and self.x_b is not None

    def indices_for(self, task: str | None) -> torch.Tensor:
        """Row indices of one task (None: all rows)."""
        if task not in self._by_task:
            if task is None:
                idx = torch.arange(len(self))
            else:
                if task not in self.tasks:
                    raise LatentfuseError(f"the training data has no {task!r} samples (tasks: {', '.join(self.tasks)})")
                idx = (self.task_ids == self.tasks.index(task)).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                raise LatentfuseError(f"the training data has no samples for task {task!r}")
            self._by_task[task] = idx
        return self._by_task[task]

    def batch(self, idx: torch.Tensor, device, with_images: bool = False) -> dict:
        pid = self.prompt_ids[idx]
        out = {
            "z_a": self.z_a[idx].to(device), "z_b": self.z_b[idx].to(device), "z_gt": self.z_gt[idx].to(device),
            "prompt_embeds": self.prompt_embeds[pid].to(device), "prompt_mask": self.prompt_mask[pid].to(device),
        }
        if with_images:
            if not self.has_images:
                raise LatentfuseError("the auxiliary loss needs the source images, but the latent cache has none")
            # uint8 [0, 255] -> [-1, 1], the VAE's image range
            out["x_a"] = self.x_a[idx].to(device).float() / 127.5 - 1.0
            out["x_b"] = self.x_b[idx].to(device).float() / 127.5 - 1.0
            if self.x_gt is not None:
                out["x_gt"] = self.x_gt[idx].to(device).float() / 127.5 - 1.0
        return out

    # ------------------------------------------------------------------ cache file
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["tasks"], state["prompts"] = list(self.tasks), list(self.prompts)
        state["format"] = CACHE_FORMAT
        with atomic_file(path) as tmp:
            torch.save(state, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatentDataset":
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise LatentfuseError(f"latent cache not found: {path}") from None
        except Exception as err:
            raise LatentfuseError(f"latent cache {path} is unreadable ({type(err).__name__}: {err}); delete it to rebuild") from None
        if not isinstance(state, dict) or state.get("format") != CACHE_FORMAT:
            raise LatentfuseError(f"{path} is not a latentfuse latent cache (format {CACHE_FORMAT}); delete it to rebuild")
        state.pop("format")
        state["tasks"], state["prompts"] = tuple(state["tasks"]), tuple(state["prompts"])
        return cls(**state)


# ---------------------------------------------------------------------------------- sample indexes


def _index_of(folder: Path) -> Path | None:
    return next((folder / name for name in INDEX_NAMES if (folder / name).is_file()), None)


def find_indexes(root: str | Path) -> list[Path]:
    """The sample index of a ``latentfuse data build`` folder (``index.jsonl``; ``manifest.jsonl`` in folders
    built before), or those of its sub-folders (one per task); ``root`` may be an index file itself."""
    root = Path(root)
    if root.is_file():
        return [root]
    if (own := _index_of(root)) is not None:
        return [own]
    found = sorted(p for d in (root.iterdir() if root.is_dir() else ()) if d.is_dir() and (p := _index_of(d)))
    if found:
        return found
    raise LatentfuseError(f"{root} holds no sample index ({' / '.join(INDEX_NAMES)}, itself or in its "
                          "sub-folders); make one with `latentfuse data build`")


def read_index(path: Path) -> list[dict]:
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise LatentfuseError(f"{path}:{lineno} is not valid JSON: {err}") from None
    if not records:
        raise LatentfuseError(f"{path} lists no samples")
    return records


def _field(record: dict, keys: tuple, path: Path, lineno: int, required: bool = True):
    files = record.get("files") if isinstance(record.get("files"), dict) else {}
    for key in keys:
        value = files.get(key) or record.get(key)
        if value and isinstance(value, str):
            return value
    if required:
        raise LatentfuseError(f"{path} sample {lineno}: none of the fields {', '.join(keys)} is present")
    return None


def _center_crop(img: np.ndarray, size: int, index: int = 0, count: int = 1) -> np.ndarray:
    """Crop ``index`` of ``count`` size×size crops (the centre one when ``count`` is 1), resizing up first
    when a side is shorter (keeps the aspect ratio); see :func:`crop_offsets`."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    if min(h, w) < size:
        scale = size / min(h, w)
        img = resize(img, (max(size, round(h * scale)), max(size, round(w * scale))), order=1,
                     anti_aliasing=False, preserve_range=True).astype(np.float32)
        h, w = img.shape[:2]
    top, left = crop_offsets(h, w, size, count)[index]
    return img[top:top + size, left:left + size]


def crop_grid(h: int, w: int, size: int) -> tuple[int, int]:
    """(rows, columns) of size×size crops that cover an h×w image (at least one each way)."""
    return max(1, -(-h // size)), max(1, -(-w // size))


def crop_offsets(h: int, w: int, size: int, count: int) -> list[tuple[int, int]]:
    """``count`` crop corners: the centre for 1; otherwise the covering grid of :func:`crop_grid`, its
    crops spread evenly between the image's edges (overlapping where the sides are not multiples of
    ``size``), in row order, the first ``count`` of them (a grid smaller than ``count`` repeats)."""
    if count <= 1:
        return [((h - size) // 2, (w - size) // 2)]
    rows, cols = crop_grid(h, w, size)
    tops = np.linspace(0, h - size, rows).round().astype(int) if rows > 1 else [(h - size) // 2]
    lefts = np.linspace(0, w - size, cols).round().astype(int) if cols > 1 else [(w - size) // 2]
    grid = [(int(t), int(x)) for t in tops for x in lefts]
    return [grid[i % len(grid)] for i in range(count)]


def _load_rgb(path: Path, size: int, work_scale: int = 1, index: int = 0, count: int = 1) -> np.ndarray:
    """Crop ``index`` of ``count`` (:func:`crop_offsets`; 1: the centre one) of an image enlarged
    ``work_scale`` times (as a pipeline enlarges it)."""
    from latentfuse.model.image_io import read_image

    img = to_rgb(read_image(path))  # float32 [0, 1]
    return np.clip(_center_crop(upscale(img, work_scale), size, index, count), 0.0, 1.0)


def read_training_index(path: Path) -> list[dict]:
    """:func:`read_index` for a training step: a record of a held-out scene (``"split": "heldout"``,
    :mod:`latentfuse.model.data.split`) is refused, so no training step ever reads one."""
    records = read_index(path)
    for lineno, rec in enumerate(records, 1):
        if rec.get("split") == "heldout":
            raise LatentfuseError(f"{path} sample {lineno} ({rec.get('pair', '?')}) is from a held-out scene "
                                  "(model/data/split.py): training never reads held-out scenes; build the "
                                  "training data with `latentfuse data build --split train`")
    return records


def _records(root):
    for path in find_indexes(root):
        for lineno, rec in enumerate(read_training_index(path), 1):
            yield path, path.parent, lineno, rec


def _balanced(rows: list, limit: int) -> list:
    """At most ``limit`` rows, taken round-robin over tasks so every task keeps samples."""
    by_task: dict = {}
    for r in rows:
        by_task.setdefault(r[0], []).append(r)
    out, i = [], 0
    while len(out) < limit and any(i < len(v) for v in by_task.values()):
        out.extend(v[i] for v in by_task.values() if i < len(v))
        i += 1
    return out[:limit]


@torch.no_grad()
def build_latent_cache(root: str | Path, vae, text_encoder, crop: int, tasks=None, max_samples: int = 0,
                       aux_sources: str = "clean", batch: int = 8, progress: bool = True,
                       work_scale: int = 1, crops_per_tuple: int = 1) -> LatentDataset:
    """Encode a ``latentfuse data build`` folder into a :class:`LatentDataset` (see the module doc);
    ``work_scale`` enlarges every image before cropping, as the pipeline of the trained model will.
    ``crops_per_tuple`` > 1: every tuple gives up to that many crops, spread evenly over the grid that
    covers its (enlarged) image (:func:`crop_offsets`), not only the centre one, so more of an image
    larger than the crop is seen."""
    from tqdm import tqdm

    from latentfuse.model.vae import to_vae_input

    work_scale = check_work_scale(work_scale, "work_scale")
    keep_tasks = tuple(tasks) if tasks else None
    rows = []
    for path, base, lineno, rec in _records(root):
        task = str(_field(rec, ("task",), path, lineno)).lower()
        if keep_tasks and task not in keep_tasks:
            continue
        a = _field(rec, ("a", "degraded_a", "input_a"), path, lineno)
        b = _field(rec, ("b", "degraded_b", "input_b"), path, lineno)
        gt = _field(rec, ("gt", "label", "target"), path, lineno)
        if aux_sources == "clean":
            sa = _field(rec, ("clean_a",), path, lineno, required=False) or a
            sb = _field(rec, ("clean_b",), path, lineno, required=False) or b
        else:
            sa, sb = a, b
        prompt = str(_field(rec, ("prompt",), path, lineno))
        rows.append((task, base / a, base / b, base / gt, base / sa, base / sb, prompt))
    if max_samples:
        rows = _balanced(rows, max_samples)
    if not rows:
        raise LatentfuseError(f"{root} has no samples of the tasks {', '.join(keep_tasks or ())}")
    for row in rows:
        for p in row[1:6]:
            if not p.is_file():
                raise LatentfuseError(f"the sample index under {root} references a missing image: {p}")
    if crops_per_tuple > 1:  # one row per crop: (row..., crop index in the grid, grid size)
        from latentfuse.model.image_io import read_image

        expanded = []
        for row in rows:
            h, w = (work_scale * s for s in read_image(row[3]).shape[:2])
            if min(h, w) < crop:  # _center_crop enlarges it first
                h, w = max(crop, round(h * crop / min(h, w))), max(crop, round(w * crop / min(h, w)))
            count = int(np.prod(crop_grid(h, w, crop)))
            picks = sorted({int(i) for i in np.linspace(0, count - 1, min(count, crops_per_tuple)).round()})
            expanded += [(*row, i, count) for i in picks]
        rows = expanded
    else:
        rows = [(*row, 0, 1) for row in rows]

    task_names = tuple(sorted({r[0] for r in rows}, key=lambda t: ("vif", "mef", "mff").index(t) if t in ("vif", "mef", "mff") else 9))
    prompts = tuple(sorted({r[6] for r in rows}))
    embeds, mask = text_encoder.encode(list(prompts))  # each distinct prompt encoded once
    device = next(vae.parameters()).device

    z = {"a": [], "b": [], "gt": []}
    x = {"a": [], "b": [], "gt": []}
    it = range(0, len(rows), batch)
    for start in tqdm(it, desc="encoding latents", disable=not progress, unit="batch"):
        chunk = rows[start:start + batch]
        for key, col in (("a", 1), ("b", 2), ("gt", 3)):
            imgs = np.stack([_load_rgb(r[col], crop, work_scale, *r[7:9]) for r in chunk]).transpose(0, 3, 1, 2)
            t = to_vae_input(torch.from_numpy(np.ascontiguousarray(imgs)).float()).to(device)
            z[key].append(vae.encode(t).float().cpu())
        for key, col in (("a", 4), ("b", 5), ("gt", 3)):
            imgs = np.stack([_load_rgb(r[col], crop, work_scale, *r[7:9]) for r in chunk]).transpose(0, 3, 1, 2)
            x[key].append(torch.from_numpy(np.round(imgs * 255.0).astype(np.uint8)))
    return LatentDataset(
        z_a=torch.cat(z["a"]), z_b=torch.cat(z["b"]), z_gt=torch.cat(z["gt"]),
        prompt_ids=torch.tensor([prompts.index(r[6]) for r in rows], dtype=torch.long),
        task_ids=torch.tensor([task_names.index(r[0]) for r in rows], dtype=torch.long),
        prompt_embeds=embeds.float().cpu(), prompt_mask=mask.cpu(),
        tasks=task_names, x_a=torch.cat(x["a"]), x_b=torch.cat(x["b"]), prompts=prompts, x_gt=torch.cat(x["gt"]),
    )
