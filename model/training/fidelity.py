"""Training the fidelity decoder (``model.fidelity``) on what the model's own DiTs and VAE make of real pairs.

Two resumable steps, each keeping its work on disk:

1. :func:`build_fidelity_cache`: for every tuple of ``latentfuse data build`` folders (degraded A, B, the
   teacher label, the prompt) run the model's pipeline without the decoder (regression, and the flow head's
   default sampler for every ``flow_every``-th tuple) and keep the decoded images beside the tuple, one
   ``<id>.npz`` per tuple (uint8), so the decoder learns from the inputs it will meet at run time.
2. :func:`train_fidelity`: random crops (flips, either head's image), L1 + gradient-L1 loss to the label
   (Q^AB/F and the eye judge edges), AdamW with a cosine schedule; a checkpoint every ``save_every`` steps
   (atomic) from which a re-run resumes.

The cache and the checkpoints live in a work folder; only the final weights go into a model directory.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from latentfuse.model.atomic import atomic_file
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.fidelity import MULTIPLE


def _uint8(img: np.ndarray) -> np.ndarray:
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def build_fidelity_cache(roots: list[str | Path], pipeline, out: str | Path, flow_every: int = 3,
                         progress: bool = True) -> int:
    """Decoded images of every training tuple under ``roots`` by ``pipeline`` (a
    :class:`latentfuse.runtime.pipeline.Pipeline` over the model, built by the caller: this layer does not
    import the runtime), with its fidelity decoder and detail path off; returns the number of tuples cached in
    ``out``."""
    from tqdm import tqdm

    from latentfuse.model.image_io import read_image
    from latentfuse.model.training.data import find_indexes, read_training_index

    pipe = pipeline
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(m.parent, rec) for root in roots for m in find_indexes(root) for rec in read_training_index(m)]
    if not jobs:
        raise LatentfuseError(f"no training tuples under {', '.join(map(str, roots))}")
    todo = [(folder, rec) for folder, rec in jobs if not (out / f"{rec['id']}.npz").is_file()]
    for i, (folder, rec) in enumerate(tqdm(todo, desc="fidelity cache", disable=not progress)):
        sample = folder / "samples" / rec["id"]
        a, b, gt = (read_image(sample / f"{name}.png") for name in ("a", "b", "gt"))
        arrays = {"a": _uint8(a), "b": _uint8(b), "gt": _uint8(gt)}
        for name in ("clean_a", "clean_b"):  # the sources before degradation: the edge term's target (EDGE_SOURCES)
            if (sample / f"{name}.png").is_file():
                arrays[name] = _uint8(read_image(sample / f"{name}.png"))
        common = dict(task=rec["task"], prompt=rec["prompt"], detail="off", fidelity=0.0)
        arrays["regression"] = _uint8(pipe(a, b, mode="regression", **common).image)
        if pipe.backend.heads.count("flow") and int(rec.get("variant", i)) % flow_every == 0:
            arrays["flow"] = _uint8(pipe(a, b, mode="flow", seed=int(rec.get("variant", 0)), **common).image)
        with atomic_file(out / f"{rec['id']}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, prompt=np.array(rec["prompt"]), task=np.array(rec["task"]),
                         degradations=np.array(json.dumps(rec.get("degradations", []))), **arrays)
    return len(jobs)


#: Where the edge term looks: ``clean``, on the tuples without degradations, at their sources; ``all``, on every
#: tuple, at its sources before degradation (the cache's clean_a / clean_b): the scene's edges, not the rain
#: streaks, JPEG blocks or stripes of the degraded pair the decoder reads; ``corruptions``, the same on the clean
#: tuples and those whose every degradation is in CORRUPTIONS (it adds false detail over edges the pair still
#: holds), not where detail is lost (blur, downsampling, haze, contrast, exposure).
EDGE_SOURCES = ("clean", "all", "corruptions")
CORRUPTIONS = frozenset({"rain", "snow", "ir_strips", "jpeg", "noise"})


@dataclass
class FidelityTrainConfig:
    steps: int = 3000  # the shipped decoder's settings (configs/recipes/default.toml [fidelity])
    batch_size: int = 6
    crop: int = 160
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_weight: float = 1.0
    flow_share: float = 0.3  # share of crops whose input image is the flow head's (where cached)
    # an edge term: the output's gradient magnitude towards the stronger source's, as unsupervised fusion losses
    # do (the labels' own edges are weaker than the sources'); on which tuples, against which sources: EDGE_SOURCES
    source_grad_weight: float = 1.5
    edge_sources: str = "clean"
    save_every: int = 250
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        bad = [f"{name} {getattr(self, name)}" for name, least in (("steps", 1), ("batch_size", 1), ("save_every", 1),
                                                                   ("crop", MULTIPLE)) if getattr(self, name) < least]
        bad += [f"lr {self.lr}"] if not self.lr > 0 else []
        bad += [f"flow_share {self.flow_share}"] if not 0 <= self.flow_share <= 1 else []
        bad += [f"source_grad_weight {self.source_grad_weight}"] if self.source_grad_weight < 0 else []
        if self.edge_sources not in EDGE_SOURCES:
            raise LatentfuseError(f"fidelity training: edge_sources must be one of {', '.join(EDGE_SOURCES)}, "
                                  f"got {self.edge_sources!r}")
        if bad:
            raise LatentfuseError(f"fidelity training: {', '.join(bad)} out of range (steps, batch and save_every >= 1, "
                                  f"crop >= {MULTIPLE} px, lr > 0, flow_share in [0, 1], source_grad_weight >= 0)")


def load_cache(cache: str | Path) -> list[dict]:
    files = sorted(Path(cache).glob("*.npz"))
    if not files:
        raise LatentfuseError(f"no fidelity cache in {cache} (build_fidelity_cache writes <id>.npz files)")
    records = []
    for f in files:
        with np.load(f) as z:
            rec = {k: (str(z[k]) if z[k].dtype.kind == "U" else z[k]) for k in z.files}
        # the file is <sample id>.npz and a sample id is <pair>_<variant> (model.data.build)
        records.append({**rec, "id": f.stem, "pair": f.stem.rsplit("_", 1)[0]})
    return records


def split_validation(records: list[dict], every: int = 10) -> tuple[list[dict], list[dict]]:
    """(training, validation) records: the scenes whose crc32 is 0 mod ``every`` are kept for validation, so
    the choices made while training never look at the held-out split."""
    import zlib

    val = [r for r in records if zlib.crc32(str(r.get("pair", r["prompt"])).encode()) % every == 0]
    keep = {id(r) for r in val}
    return [r for r in records if id(r) not in keep], val


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).float().div_(127.5).sub_(1.0).permute(2, 0, 1)[None]


@torch.no_grad()
def validate(model: torch.nn.Module, records: list[dict], text_encoder: torch.nn.Module) -> dict:
    """Per task: PSNR to the label of the VAE's image (``input``) and of the decoder's (``output``), whole
    tuples, regression head; and the mean over the flow-head tuples."""
    rows: dict = {}
    for rec in records:
        h, w = (s // MULTIPLE * MULTIPLE for s in rec["a"].shape[:2])
        f, a, b, gt = (_to_tensor(rec[k][:h, :w]) for k in ("regression", "a", "b", "gt"))
        embeds, mask = text_encoder.encode([rec["prompt"]])
        out = model(f, a, b, embeds.float(), mask.long()).clamp(-1, 1)
        mse = lambda x: float(((x - gt) / 2).pow(2).mean())  # noqa: E731
        row = rows.setdefault(str(rec["task"]), {"input": [], "output": [], "n": 0})
        row["input"].append(-10 * math.log10(mse(f) + 1e-12))
        row["output"].append(-10 * math.log10(mse(out) + 1e-12))
        row["n"] += 1
    return {task: {"n": r["n"], "psnr_input": round(float(np.mean(r["input"])), 3),
                   "psnr_output": round(float(np.mean(r["output"])), 3)} for task, r in sorted(rows.items())}


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def _sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude of [B, C, H, W] (the operator Q^AB/F measures edges with)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([kx, kx.T])[:, None].repeat(x.shape[1], 1, 1, 1)  # [2C, 1, 3, 3]
    g = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernels,
                                   groups=x.shape[1])
    return g.unflatten(1, (x.shape[1], 2)).pow(2).sum(2).add(1e-6).sqrt()


def fidelity_loss(out: torch.Tensor, target: torch.Tensor, grad_weight: float, a: torch.Tensor | None = None,
                  b: torch.Tensor | None = None, clean: torch.Tensor | None = None,
                  source_grad_weight: float = 0.0) -> torch.Tensor:
    """L1 + ``grad_weight`` x L1 of the finite differences (all in [-1, 1]); with ``source_grad_weight``, plus
    that weight x L1 between the output's Sobel magnitude and the larger of the sources' ``a`` / ``b``, on the rows
    marked ``clean`` (bool [B]: rows whose ``a`` / ``b`` hold the scene's edges; ``EDGE_SOURCES``)."""
    loss = (out - target).abs().mean()
    if grad_weight:
        for go, gt in zip(_gradients(out), _gradients(target)):
            loss = loss + grad_weight * (go - gt).abs().mean()
    if source_grad_weight and clean is not None and bool(clean.any()):
        strongest = torch.maximum(_sobel_magnitude(a[clean]), _sobel_magnitude(b[clean]))
        loss = loss + source_grad_weight * (_sobel_magnitude(out[clean]) - strongest).abs().mean()
    return loss


class _Batches:
    """Random crops of the cached tuples: (F, A, B, label, edge A, edge B) in [-1, 1], each row's prompt index and
    whether the edge term applies to it (``FidelityTrainConfig.edge_sources``)."""

    def __init__(self, records: list[dict], prompts: list[str], cfg: FidelityTrainConfig):
        self.records, self.cfg = records, cfg
        self.prompt_ids = [prompts.index(r["prompt"]) for r in records]
        degradations = [set(json.loads(str(r.get("degradations", "[]")))) for r in records]
        self.edge_rows = [not d for d in degradations]  # whether the edge term applies to the row
        self.edges = ("a", "b")
        if cfg.edge_sources != "clean":
            lacking = [r.get("id", "?") for r in records if "clean_a" not in r or "clean_b" not in r]
            if lacking:
                raise LatentfuseError(f"edge_sources {cfg.edge_sources!r} needs the clean sources in the fidelity cache; "
                                      f"{len(lacking)} tuple(s) lack them (e.g. {lacking[0]}): rebuild the cache")
            self.edge_rows = [cfg.edge_sources == "all" or d <= CORRUPTIONS for d in degradations]
            self.edges = ("clean_a", "clean_b")
        self.rng = np.random.default_rng(cfg.seed)

    def __call__(self):
        cfg, rng = self.cfg, self.rng
        rows, pids, on = [], [], []
        for _ in range(cfg.batch_size):
            i = int(rng.integers(len(self.records)))
            rec = self.records[i]
            h, w = rec["a"].shape[:2]
            c = min(cfg.crop, h, w) // MULTIPLE * MULTIPLE
            y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
            image = rec["flow"] if "flow" in rec and rng.random() < cfg.flow_share else rec["regression"]
            stack = np.stack([image, rec["a"], rec["b"], rec["gt"], rec[self.edges[0]], rec[self.edges[1]]])
            stack = stack[:, y:y + c, x:x + c]
            if rng.random() < 0.5:
                stack = stack[:, :, ::-1]
            if rng.random() < 0.5:
                stack = stack[:, ::-1]
            rows.append(np.ascontiguousarray(stack))
            pids.append(self.prompt_ids[i])
            on.append(self.edge_rows[i])
        size = min(r.shape[1] for r in rows), min(r.shape[2] for r in rows)
        batch = np.stack([r[:, :size[0], :size[1]] for r in rows])  # [B, 6, c, c, 3]
        t = torch.from_numpy(batch).float().div_(127.5).sub_(1.0).permute(1, 0, 4, 2, 3)  # [6, B, 3, c, c]
        return t[0], t[1], t[2], t[3], t[4], t[5], torch.tensor(pids), torch.tensor(on)


def train_fidelity(model: torch.nn.Module, records: list[dict], text_encoder: torch.nn.Module,
                   cfg: FidelityTrainConfig, work: str | Path, progress: bool = True) -> dict:
    """Train ``model`` (a :class:`~latentfuse.model.fidelity.FidelityDecoder`) in place on the cached tuples;
    resumes from ``work/checkpoint.pt`` when it was made with the same config. Returns the run's report."""
    from tqdm import tqdm

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    prompts = sorted({r["prompt"] for r in records})
    with torch.no_grad():
        embeds, mask = text_encoder.encode(prompts)
    embeds, mask = embeds.float(), mask.long()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress_ = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_))))

    # the checkpoint belongs to this config and this network's shape: another's is started over
    ckpt, key = work / "checkpoint.pt", {**asdict(cfg), "model": getattr(getattr(model, "config", None), "to_dict",
                                                                           dict)()}
    step, history = 0, []
    batches = _Batches(records, prompts, cfg)
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["config"] == key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step, history = state["step"], state["history"]
            batches.rng = np.random.default_rng([cfg.seed, step])
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="fidelity", disable=not progress)
    running = None
    while step < cfg.steps:
        image, a, b, target, edge_a, edge_b, pids, on = batches()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        out = model(image, a, b, embeds[pids], mask[pids])
        loss = fidelity_loss(out, target, cfg.grad_weight, edge_a, edge_b, on, cfg.source_grad_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % 50 == 0:
            history.append({"step": step, "loss": running, "lr": lr_at(step - 1)})
        if step % cfg.save_every == 0 or step == cfg.steps:
            with atomic_file(ckpt) as tmp:
                torch.save({"config": key, "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "step": step, "history": history}, tmp)
    bar.close()
    model.eval()
    return {"config": key, "steps": step, "final_loss": running, "history": history,
            "seconds": round(time.perf_counter() - start, 1), "tuples": len(records), "prompts": len(prompts)}


def run_fidelity_training(model_dir: str | Path, data: str | Path, work: str | Path, out: str | Path,
                          cfg: FidelityTrainConfig, pipeline, per_pair: int = 6, size: int = 384, data_seed: int = 1000,
                          threads: int | None = None, progress: bool = True, select_coarse: bool = False) -> dict:
    """The whole recipe, each step resumable in ``work``: degraded tuples with teacher labels from the training
    scenes of the real pairs under ``data`` (``<data>/<task>``), the decoded-image cache by the model in
    ``model_dir`` (``pipeline``, a Pipeline over it: :func:`build_fidelity_cache`), training, validation on
    held-aside training scenes; then ``out`` = ``model_dir``'s components plus the trained decoder (written
    atomically; ``fidelity/training.json`` holds the report). ``select_coarse``: the decoder's
    ``FidelityConfig.select_coarse``."""
    from latentfuse.model.components import FusionComponents
    from latentfuse.model.data.build import build_dataset
    from latentfuse.model.data.tasks import TASKS
    from latentfuse.model.fidelity import FidelityConfig, FidelityDecoder

    if threads:
        torch.set_num_threads(int(threads))
    work, data = Path(work), Path(data)
    roots = []
    for i, task in enumerate(TASKS):
        if not (data / task).is_dir():
            raise LatentfuseError(f"{data / task} does not exist: --data takes a folder with vif/ mef/ mff/ pairs")
        built = build_dataset(data / task, work / "build" / task, task, n_degradations=(0, 1, 2, 3),
                              seed=data_seed + 101 * i, per_pair=per_pair, long_side=size, crop=True,
                              progress=progress, split="train")
        roots.append(built.out)
    build_fidelity_cache(roots, pipeline, work / "cache", progress=progress)
    train, val = split_validation(load_cache(work / "cache"))
    components = FusionComponents.from_pretrained(model_dir)
    text_encoder = components.text_encoder
    torch.manual_seed(cfg.seed)
    decoder = FidelityDecoder(FidelityConfig(text_dim=text_encoder.hidden_size, select_coarse=select_coarse))
    report = train_fidelity(decoder, train, text_encoder, cfg, work / "train", progress=progress)
    report["validation"] = validate(decoder, val, text_encoder)
    report["data"] = {"root": str(data), "per_pair": per_pair, "size": size, "seed": data_seed,
                      "train_tuples": len(train), "validation_tuples": len(val),
                      "validation_scenes": sorted({r["pair"] for r in val})}
    components.fidelity = decoder
    components.save_pretrained(out, overwrite=True)
    with atomic_file(Path(out) / "fidelity" / "training.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    return report


__all__ = ["CORRUPTIONS", "EDGE_SOURCES", "FidelityTrainConfig", "build_fidelity_cache", "load_cache", "train_fidelity", "fidelity_loss",
           "run_fidelity_training", "split_validation", "validate"]
