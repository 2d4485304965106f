"""Quantization calibration inputs: what each graph receives in deployment, recorded on real pairs.

Post-training quantization (:mod:`latentfuse.export.quantize`) fixes every activation's range from the inputs it
is calibrated on, so those inputs are the ones the deployed graphs see, not stand-ins: crops of real
image pairs (``TASK=DIR`` folders in any layout :func:`latentfuse.model.data.pairs.discover_pairs` reads, e.g.
``vif=DATA/vif/RoadScene``; the shipped sample pairs when none is given) run through the
FP32 PyTorch pipeline (:class:`latentfuse.runtime.pipeline.Pipeline` on the torch backend) with a
:class:`RecordingBackend` in front of the networks. It records, per graph, the arrays of every call:

* ``vae_encoder``: the enlarged, padded pair (the model's working scale, ``model.work_scale``);
* ``dit_flow``: ``z_t`` and ``t`` at every step of the sampler the bundle defaults to (seeded noise,
  the flow DiT's own prior), so the timesteps calibrated are the ones the sampler visits;
* ``dit_regression``: its single call; both DiTs get the VAE latents of the pair and the text
  encoder's embedding of the task's canonical prompt (a sample pair's own prompt);
* ``vae_decoder``: the fused latents of both heads;
* ``fidelity`` (a model with a fidelity decoder, ``model.fidelity``): the decoded image of both heads,
  the pair in model range and the prompt's embedding, as the pipeline passes them after the decoder.

A crop is the model's window in input pixels (``window / work_scale``: one DiT window, the size the
DiT was trained on and always runs at), or ``DEFAULT_CROP`` for a model without a window; smaller images
are used whole. Crops are drawn seeded, tasks in turn, each pair at most once before any is reused
(then at another position), and every crop is listed in :func:`RecordedInputs.provenance`, so a report
can keep its held-out pairs apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.backends.base import Backend, WrappedBackend

TASKS = ("vif", "mef", "mff")
DEFAULT_CROP = 128           # input pixels per crop for a model without a window
DEFAULT_SAMPLES = 24         # crops (8 per task)


@dataclass(frozen=True)
class PairSource:
    """One folder of pairs of one task."""

    task: str
    root: Path

    def describe(self) -> str:
        return f"{self.task}={self.root}"


def parse_source(text: str) -> PairSource:
    """``TASK=DIR`` (``vif=DATA/vif/TNO``) -> :class:`PairSource`."""
    from latentfuse.model.data.tasks import check_task

    if "=" not in str(text):
        raise LatentfuseError(f"--calibration-data {text!r}: expected TASK=DIR, e.g. vif=datasets/vif/RoadScene")
    task, root = (s.strip() for s in str(text).split("=", 1))
    try:
        task = check_task(task)
    except LatentfuseError:
        raise LatentfuseError(f"--calibration-data {text!r}: unknown task {task!r} (vif, mef or mff)") from None
    path = Path(root).expanduser()
    if not path.is_dir():
        raise LatentfuseError(f"--calibration-data {text!r}: {path} is not a folder")
    return PairSource(task, path.resolve())


@dataclass
class CalibrationCrop:
    """One crop of a pair: float32 [0, 1] images (HxW or HxWx3), where it came from, its prompt."""

    task: str
    name: str                      # "<task>:<folder>/<pair name>@y,x,h,w" (or "samples/<task>/<name>@...")
    a: np.ndarray
    b: np.ndarray
    prompt: str


def _sample_pair_list(task: str) -> list[tuple[str, object]]:
    from latentfuse.model.data.samples import sample_pairs

    return [(f"samples/{task}/{p.name}", p) for p in sample_pairs(task)]


def _read(task: str, pair) -> tuple[np.ndarray, np.ndarray, str]:
    """(a, b, prompt) of a dataset pair (:class:`latentfuse.model.data.pairs.ImagePair`) or a shipped sample pair."""
    from latentfuse.model.data.prompts import CANONICAL_TASK_PROMPTS
    from latentfuse.model.image_io import read_image

    if hasattr(pair, "prompt"):                      # model.data.samples.SamplePair
        return read_image(pair.a), read_image(pair.b), pair.prompt
    from latentfuse.model.data.pairs import load_pair

    a, b, _ = load_pair(pair, task)
    return a, b, CANONICAL_TASK_PROMPTS[task]


def _pairs_of(source: PairSource) -> list[tuple[str, object]]:
    from latentfuse.model.data.pairs import discover_pairs

    found = discover_pairs(source.root, source.task)
    if not found.pairs:
        raise LatentfuseError(f"--calibration-data {source.describe()}: no {source.task} pairs found")
    return [(f"{source.task}:{source.root.name}/{p.name}", p) for p in found.pairs]


def draw_crops(sources: Sequence[PairSource] | None, samples: int, *, crop: int, seed: int = 0,
               exclude: Iterable[str] = ()) -> list[CalibrationCrop]:
    """``samples`` crops of ``crop`` x ``crop`` input pixels, tasks in turn (see the module docstring).

    ``sources`` None: the shipped sample pairs of every task. ``exclude``: pair names (as they appear
    in crop names before ``@``) never to draw, e.g. an evaluation's held-out pairs.
    """
    if samples < 1:
        raise LatentfuseError(f"--calibration-samples must be at least 1, got {samples}")
    if crop < 16:
        raise LatentfuseError(f"calibration crops need at least 16 px, got {crop}")
    rng = np.random.default_rng(seed)
    excluded = set(exclude)
    pools: list[tuple[str, list]] = []
    if sources:
        for source in sources:
            pairs = [p for p in _pairs_of(source) if p[0] not in excluded]
            if not pairs:
                raise LatentfuseError(f"--calibration-data {source.describe()}: every pair is excluded")
            pools.append((source.task, [pairs[i] for i in rng.permutation(len(pairs))]))
    else:
        for task in TASKS:
            pairs = [p for p in _sample_pair_list(task) if p[0] not in excluded]
            if pairs:
                pools.append((task, pairs))
        if not pools:
            raise LatentfuseError("no calibration pairs: the shipped sample pairs are all excluded")
    crops, cache = [], {}
    for i in range(samples):
        task, pairs = pools[i % len(pools)]
        name, pair = pairs[(i // len(pools)) % len(pairs)]
        if name not in cache:
            cache[name] = _read(task, pair)
        a, b, prompt = cache[name]
        if a.shape[:2] != b.shape[:2]:
            raise LatentfuseError(f"calibration pair {name}: A is {a.shape[1]}x{a.shape[0]}, "
                                  f"B is {b.shape[1]}x{b.shape[0]} (W x H); pairs must be registered")
        h, w = a.shape[:2]
        ch, cw = min(crop, h), min(crop, w)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crops.append(CalibrationCrop(task, f"{name}@{y},{x},{ch},{cw}", np.ascontiguousarray(a[y:y + ch, x:x + cw]),
                                     np.ascontiguousarray(b[y:y + ch, x:x + cw]), prompt))
    return crops


def crop_side(components) -> int:
    """Input pixels per crop: one DiT window (``window / work_scale``), else :data:`DEFAULT_CROP`."""
    window, k = int(components.window), int(components.work_scale)
    return max(16, window // k) if window else DEFAULT_CROP


# ------------------------------------------------------------------------------ recording
class RecordingBackend(WrappedBackend):
    """Forwards every call to ``inner`` and keeps a copy of its inputs, keyed by graph and input name
    (the names of :mod:`latentfuse.export.graphs`)."""

    name = "recording"

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self.name = "recording"
        self.calls: dict[str, list[dict[str, np.ndarray]]] = {}
        self.prompts: list[str] = []

    def _keep(self, graph: str, **arrays) -> None:
        self.calls.setdefault(graph, []).append({k: np.array(v, copy=True) for k, v in arrays.items()})

    def encode_images(self, images):
        self._keep("vae_encoder", image=np.asarray(images, np.float32))
        return self.inner.encode_images(images)

    def encode_prompts(self, prompts):
        self.prompts.extend(prompts)
        return self.inner.encode_prompts(prompts)

    def velocity(self, z_t, t, z_a, z_b, embeds, mask):
        self._keep("dit_flow", z_t=np.asarray(z_t, np.float32), t=np.asarray(t, np.float32).reshape(-1),
                   z_a=z_a, z_b=z_b, prompt_embeds=embeds, prompt_mask=np.asarray(mask, np.int64))
        return self.inner.velocity(z_t, t, z_a, z_b, embeds, mask)

    def regress(self, z_a, z_b, embeds, mask):
        self._keep("dit_regression", z_a=z_a, z_b=z_b, prompt_embeds=embeds, prompt_mask=np.asarray(mask, np.int64))
        return self.inner.regress(z_a, z_b, embeds, mask)

    def decode(self, latents):
        self._keep("vae_decoder", latent=np.asarray(latents, np.float32))
        return self.inner.decode(latents)

    def fidelity(self, image, source_a, source_b, embeds, mask):
        self._keep("fidelity", image=np.asarray(image, np.float32), source_a=np.asarray(source_a, np.float32),
                   source_b=np.asarray(source_b, np.float32), prompt_embeds=np.asarray(embeds, np.float32),
                   prompt_mask=np.asarray(mask, np.int64))
        return self.inner.fidelity(image, source_a, source_b, embeds, mask)


@dataclass
class RecordedInputs:
    """Per graph, the list of input dicts (numpy) the FP32 pipeline gave it, and how they were made."""

    feeds: dict[str, list[dict[str, np.ndarray]]]
    crops: list[str]
    sources: list[str]
    crop: int
    seed: int
    prompts: dict[str, str] = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        """The manifest's ``calibration`` section."""
        times = sorted({round(float(t), 6) for f in self.feeds.get("dit_flow", []) for t in f["t"]})
        return {
            "method": "graph inputs recorded from the FP32 torch pipeline (runtime.pipeline) on crops of real pairs "
                      "(calibration.quant_inputs)",
            "sources": list(self.sources), "samples": len(self.crops), "crop": self.crop, "seed": self.seed,
            "pairs": list(self.crops), "prompts": dict(self.prompts), "sampler": dict(self.sampler),
            "flow_timesteps": times,
            "feeds": {name: len(v) for name, v in self.feeds.items()},
        }


def record_inputs(components, crops: Sequence[CalibrationCrop], heads: Sequence[str], *, seed: int = 0,
                  sources: Sequence[str] = (), progress: bool = True) -> RecordedInputs:
    """Run every crop through the FP32 torch pipeline once per head and record each graph's inputs."""
    from tqdm.auto import tqdm

    from latentfuse.runtime.backends.torch_backend import TorchBackend
    from latentfuse.runtime.pipeline import Pipeline

    if not crops:
        raise LatentfuseError("calibration needs at least one crop")
    recorder = RecordingBackend(TorchBackend(components, device="cpu"))
    pipe = Pipeline(recorder)
    prompts = {}
    jobs = [(i, crop, head) for i, crop in enumerate(crops) for head in heads]
    for i, crop, head in tqdm(jobs, desc="calibration inputs", unit="call", disable=not progress, leave=False):
        pipe(crop.a, crop.b, task=crop.task, prompt=crop.prompt, mode=head, seed=seed + i)
        prompts.setdefault(crop.task, crop.prompt)
    sampler = {k: v for k, v in pipe.defaults.items() if v is not None}
    return RecordedInputs(feeds=recorder.calls, crops=[c.name for c in crops], sources=list(sources),
                          crop=max(max(c.a.shape[:2]) for c in crops), seed=seed, prompts=prompts,
                          sampler=sampler)


def calibration_inputs(components, heads: Sequence[str], *, sources: Sequence[PairSource] | None = None,
                       samples: int = DEFAULT_SAMPLES, seed: int = 0, exclude: Iterable[str] = (),
                       progress: bool = True) -> RecordedInputs:
    """:func:`draw_crops` + :func:`record_inputs`: the calibration inputs of every graph of a model."""
    crops = draw_crops(sources, samples, crop=crop_side(components), seed=seed, exclude=exclude)
    described = [s.describe() for s in sources] if sources else ["model/data/samples (shipped sample pairs)"]
    return record_inputs(components, crops, heads, seed=seed, sources=described, progress=progress)


def stack_feeds(feeds: Sequence[Mapping[str, np.ndarray]], max_rows: int = 32) -> list[dict[str, np.ndarray]]:
    """Concatenate feeds of equal shapes along the batch dim (at most ``max_rows`` rows per batch), in
    first-seen order: fewer, larger calls with the same rows."""
    groups: dict[tuple, list] = {}
    for feed in feeds:
        key = tuple((k, tuple(np.shape(v))[1:], np.asarray(v).dtype.str) for k, v in feed.items())
        groups.setdefault(key, []).append(feed)
    out = []
    for items in groups.values():
        batch: list = []
        rows = 0
        for feed in items:
            n = int(np.shape(next(iter(feed.values())))[0])
            if batch and rows + n > max_rows:
                out.append({k: np.concatenate([f[k] for f in batch]) for k in batch[0]})
                batch, rows = [], 0
            batch.append(feed)
            rows += n
        if batch:
            out.append({k: np.concatenate([f[k] for f in batch]) for k in batch[0]})
    return out


def subsample(feeds: Sequence, n: int, seed: int = 0) -> list:
    """``n`` of ``feeds`` (all when there are fewer), seeded, in their original order."""
    if len(feeds) <= n:
        return list(feeds)
    keep = np.sort(np.random.default_rng(seed).choice(len(feeds), n, replace=False))
    return [feeds[i] for i in keep]


__all__ = ["PairSource", "parse_source", "CalibrationCrop", "draw_crops", "crop_side", "RecordingBackend",
           "RecordedInputs", "record_inputs", "calibration_inputs", "stack_feeds", "subsample"]
