"""``latentfuse evaluate``: fusion quality of a model on real pairs, next to the controls that keep it honest.

For every pair of a dataset (any layout ``latentfuse data build`` reads, or a plain ``A/`` + ``B/`` pair of
folders) and every protocol:

    clean      the pair as it is, the task's canonical prompt, noise seed 0
    degraded   per pair and seed k = 0 .. K-1, the project's own degradation pipeline
               (``model.data.pipeline.degrade_pair``, no crop) draws 1-2 degradations and their prompt from a
               generator seeded by (EVAL_SEED, crc32(pair), k): the same arguments give the same samples

the **reference** is the clean pair's pseudo-label (``model.data.labels.pseudo_label``: teachers, selection,
refiner), the training target. Every method fuses what the model is given (the degraded pair in the
degraded protocol) and is scored against the *clean* sources and that reference:

    regression            the model's regression head, as ``latentfuse fuse --mode regression`` runs it
    flow                  the flow head with the runtime's default sampler, as ``latentfuse fuse`` runs it
    regression_no_detail  the regression head with the model's pixel detail stage off (models that run one)
    regression_no_fidelity  the regression head with the model's fidelity decoder off: the VAE's image alone
                          (models with one, ``model.fidelity``)
    average               the plain average of the two inputs
    average_detail        that average through the detail stage with the parameters the prompt picks: the
                          control a learned model has to beat (no network at all)
    classical             degraded protocol: the label pipeline run on the degraded pair (fusion without
                          restoration)
    NAME                  ``--baseline NAME=DIR``: another method's fused images, file stems = scene names
                          (clean protocol)

Metrics per pair: Q^AB/F (VIFB convention, ``model.metrics``) against the clean sources, SSIM and PSNR to the
reference, seconds; ``metrics`` adds any of the VIFB set. Per method: the mean with a bootstrap 95 %
confidence interval, the share of pairs above ``average`` and above ``average_detail`` (Q^AB/F), and the
paired mean difference to each with its bootstrap CI; degraded: the same per degradation family.

Per-pair results are cached in ``OUT/cache`` as they finish, so an interrupted run resumes where it
stopped; ``OUT/report.json`` (schema: docs/evaluate.md), ``OUT/report.md`` and the figure grids
(:mod:`latentfuse.bench.quality_report`) are written at the end, atomically.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from latentfuse.model.atomic import atomic_file
from latentfuse.model.data.tasks import check_task
from latentfuse.model.errors import LatentfuseError

FORMAT = 1
TASK_ORDER = ("vif", "mef", "mff")
PROTOCOLS = ("clean", "degraded")
MODEL_METHODS = ("regression", "flow", "regression_no_detail", "regression_no_fidelity")
CONTROLS = ("average", "average_detail", "classical")
METHODS = MODEL_METHODS + CONTROLS
BASE_METRICS = ("qabf", "ssim_ref", "psnr_ref")
CONVENTION = "vifb"  # Q^AB/F as the benchmarks' toolboxes compute it (per RGB channel, averaged)
EVAL_SEED = 7  # the degraded protocol's generator: (EVAL_SEED, crc32(pair), seed)
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
PSNR_FLOOR = 1e-10  # MSE floor: an exact copy of the reference scores 100 dB, not infinity


# ------------------------------------------------------------------------------------------- settings


@dataclass
class EvalSettings:
    """What one ``latentfuse evaluate`` run measures (the model comes separately, as a Pipeline)."""

    tasks: tuple[str, ...]
    data: Path
    out: Path
    split: str = "all"
    protocols: tuple[str, ...] = ("clean",)
    n: int | None = None
    max_side: int | None = None
    seeds: int = 3
    degradations: tuple[int, ...] = (1, 2)
    methods: tuple[str, ...] | None = None  # None: every method that applies to the model
    baselines: dict[str, Path] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()  # VIFB metrics beyond BASE_METRICS
    resize: bool = False
    figures: int = 4
    flow_sampler: str | None = None  # the flow row's sampler and steps (None: the model's defaults)
    flow_steps: int | None = None
    flow_start: float | None = None  # the flow row's start t0 (None: the model's; model.flow.DEFAULT_START)

    def __post_init__(self):
        from latentfuse.model.data.split import check_split
        from latentfuse.model.metrics import resolve_names

        self.tasks = tuple(check_task(t) for t in self.tasks)
        self.split = check_split(self.split)
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise LatentfuseError(f"unknown protocol {bad or self.protocols}: choose clean, degraded or both")
        if self.n is not None and self.n < 1:
            raise LatentfuseError(f"--n must be at least 1 (the number of pairs per task), got {self.n}")
        if self.max_side is not None and self.max_side < 32:
            raise LatentfuseError(f"--max-side must be at least 32 px, got {self.max_side}")
        if self.seeds < 1:
            raise LatentfuseError(f"--seeds must be at least 1, got {self.seeds}")
        if not self.degradations or any(d not in (1, 2, 3) for d in self.degradations):
            raise LatentfuseError(f"--degradations takes counts in 1..3 (e.g. 1-2), got {list(self.degradations)}")
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown:
                raise LatentfuseError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)} "
                                      "(other methods' images come in with --baseline NAME=DIR)")
        clash = [name for name in self.baselines if name in METHODS]
        if clash:
            raise LatentfuseError(f"--baseline name(s) {', '.join(clash)} clash with the built-in methods")
        for name, folder in self.baselines.items():
            if not Path(folder).is_dir():
                raise LatentfuseError(f"--baseline {name}={folder}: folder not found")
        try:
            extra = resolve_names(list(self.metrics)) if self.metrics else []
        except (KeyError, ValueError, LatentfuseError) as err:
            raise LatentfuseError(f"--metrics: {err}") from None
        self.metrics = tuple(m for m in extra if m not in BASE_METRICS)
        if self.figures < 0:
            raise LatentfuseError(f"--figures must be >= 0, got {self.figures}")
        if self.flow_sampler is not None:
            from latentfuse.runtime import samplers

            if self.flow_sampler == "regression":
                raise LatentfuseError("--flow-sampler names a flow sampler; the regression head has its own row")
            samplers.get_sampler(self.flow_sampler)  # an unknown name fails before the model loads
        if self.flow_steps is not None and self.flow_steps < 1:
            raise LatentfuseError(f"--flow-steps must be at least 1, got {self.flow_steps}")
        if self.flow_start is not None:
            from latentfuse.model.flow import check_start

            self.flow_start = check_start(self.flow_start, "--flow-start")

    def result_key(self) -> dict:
        """The settings a cached per-pair result depends on (a resume must match them)."""
        key = {"max_side": self.max_side, "degradations": list(self.degradations), "resize": self.resize,
               "convention": CONVENTION, "eval_seed": EVAL_SEED}
        # only when set, so the caches of runs without them still resume
        key.update({k: v for k, v in (("flow_sampler", self.flow_sampler), ("flow_steps", self.flow_steps),
                                      ("flow_start", self.flow_start)) if v is not None})
        return key


def parse_degradations(text: str) -> tuple[int, ...]:
    """``"1-2"`` -> (1, 2); ``"1,3"`` -> (1, 3); ``"2"`` -> (2,)."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            return tuple(range(lo, hi + 1))
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise LatentfuseError(f"--degradations: expected a count range like 1-2 or a list like 1,2; got {text!r}") from None


# ------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class EvalItem:
    """One scored sample: a pair, a protocol and a seed."""

    task: str
    protocol: str
    pair: object  # model.data.pairs.ImagePair
    seed: int

    @property
    def key(self) -> str:
        return f"{self.pair.name}_s{self.seed}"


def find_pairs(data: Path, task: str, split: str = "all", n: int | None = None, resize: bool = False) -> list:
    """The pairs of ``task`` under ``data`` (or ``data/<task>``), in ``split``, evenly thinned to ``n``."""
    from latentfuse.model.data.pairs import discover_pairs, validate_pairs
    from latentfuse.model.data.split import select

    data = Path(data)
    if not data.is_dir():
        raise LatentfuseError(f"--data {data}: folder not found")
    roots = [data / task, data] if (data / task).is_dir() else [data]
    errors = []
    for root in roots:
        try:
            pairset = discover_pairs(root, task)
        except LatentfuseError as err:
            errors.append(str(err))
            continue
        pairset = validate_pairs(pairset, check_sizes=not resize)
        pairs = select(pairset.pairs, split)
        if not pairs:
            raise LatentfuseError(f"none of the {len(pairset.pairs)} {task} pairs in {root} ({pairset.layout}) "
                                  f"is in the {split} split")
        if n is not None and n < len(pairs):
            picks = sorted({int(round(i)) for i in np.linspace(0, len(pairs) - 1, n)})
            pairs = [pairs[i] for i in picks]
        return pairs
    raise LatentfuseError(errors[-1] + (f" (also looked in {roots[0]})" if len(roots) > 1 else ""))


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` with its long side at most ``max_side`` px (bicubic, antialiased); unchanged if smaller."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    from skimage.transform import resize

    scale = max_side / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale))) + image.shape[2:]
    return np.clip(resize(image, shape, order=3, anti_aliasing=True, mode="reflect"), 0, 1).astype(np.float32)


def load_sources(pair, task: str, max_side: int | None, resize: bool) -> tuple[np.ndarray, np.ndarray]:
    """The clean pair as the model gets it: float32 [0, 1], VIF infrared gray, shrunk to ``max_side``."""
    from latentfuse.model.data.pairs import load_pair
    from latentfuse.runtime.pipeline import match_pair

    a, b, _ = load_pair(pair, task)
    a, b = match_pair(a, b, resize, names=(str(pair.a), str(pair.b)))
    return shrink(a, max_side), shrink(b, max_side)


def rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    return np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]


# ------------------------------------------------------------------------------------------- metrics


def score(clean_a: np.ndarray, clean_b: np.ndarray, fused: np.ndarray, reference: np.ndarray,
          extra: Sequence[str] = ()) -> dict[str, float]:
    """Q^AB/F (+ ``extra``) of ``fused`` against the clean sources; SSIM and PSNR to ``reference``."""
    from skimage.metrics import structural_similarity

    from latentfuse.model.metrics import compute

    fused, reference = rgb(fused), rgb(reference)
    out = compute(rgb(clean_a) * 255.0, rgb(clean_b) * 255.0, fused * 255.0, names=["qabf", *extra],
                  convention=CONVENTION)
    mse = float(np.mean((fused.astype(np.float64) - reference) ** 2))
    out["ssim_ref"] = float(structural_similarity(fused, reference, data_range=1.0, channel_axis=-1))
    out["psnr_ref"] = float(10.0 * np.log10(1.0 / max(mse, PSNR_FLOOR)))
    return {k: out[k] for k in ("qabf", "ssim_ref", "psnr_ref", *extra)}


def bootstrap_ci(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> list[float]:
    """Percentile bootstrap 95 % interval of the mean (a fixed generator: the same values, the same interval)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return [float("nan"), float("nan")]
    idx = np.random.default_rng(seed).integers(0, v.size, size=(samples, v.size))
    means = v[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _stat(values: Sequence[float]) -> dict:
    v = [x for x in values if x == x]  # NaN (Q^AB/F of a pair without gradients) is left out
    return {"mean": float(np.mean(v)) if v else float("nan"), "ci95": bootstrap_ci(v), "n": len(v)}


def summarize(pairs: list[dict], methods: Sequence[str], metrics: Sequence[str]) -> dict:
    """Per method: each metric's mean and CI, seconds, shares above the two controls, paired differences."""
    out = {}
    for name in methods:
        rows = [p["methods"][name] for p in pairs if name in p["methods"]]
        if not rows:
            continue
        entry = {metric: _stat([r[metric] for r in rows]) for metric in metrics}
        entry["seconds"] = _stat([r["seconds"] for r in rows if "seconds" in r])
        entry["n"] = len(rows)
        for control in ("average", "average_detail"):
            both = [(p["methods"][name], p["methods"][control]) for p in pairs
                    if name in p["methods"] and control in p["methods"]]
            both = [(m, c) for m, c in both if m["qabf"] == m["qabf"] and c["qabf"] == c["qabf"]]
            entry[f"above_{control}"] = float(np.mean([m["qabf"] > c["qabf"] for m, c in both])) if both else None
            entry[f"vs_{control}"] = {metric: _stat([m[metric] - c[metric] for m, c in both]) for metric in metrics}
        out[name] = entry
    return out


# ------------------------------------------------------------------------------------------- methods


class Evaluator:
    """Runs every method on one sample and scores it; one Pipeline for the model's rows."""

    def __init__(self, pipe, settings: EvalSettings):
        self.pipe = pipe
        self.settings = settings
        self.detail_settings, self.detail_source = control_detail(pipe)

    def methods_for(self, protocol: str) -> list[str]:
        """The rows of ``protocol`` for this model, in report order (built-ins, then baselines)."""
        has = {"regression": self._has_head("regression"), "flow": self._has_head("flow"),
               # a model with a fidelity decoder runs no detail stage by default: nothing to turn off
               "regression_no_detail": (self._has_head("regression") and self.pipe.detail is not None
                                        and not self.pipe.info.has_fidelity),
               "regression_no_fidelity": self._has_head("regression") and self.pipe.info.has_fidelity,
               "average": True, "average_detail": True, "classical": protocol == "degraded"}
        asked = self.settings.methods
        if asked is not None:
            missing = [m for m in asked if not has[m] and not (m == "classical" and protocol == "clean")]
            if missing:
                why = {"regression": "the model has no regression head", "flow": "the model has no flow head",
                       "regression_no_detail": "the model runs no pixel detail stage to turn off",
                       "regression_no_fidelity": "the model has no fidelity decoder to turn off"}
                raise LatentfuseError("; ".join(f"method {m}: {why[m]}" for m in missing))
        names = [m for m in METHODS if has[m] and (asked is None or m in asked)]
        return names + (list(self.settings.baselines) if protocol == "clean" else [])

    def _has_head(self, head: str) -> bool:
        try:
            self.pipe.backend.require_head(head)
            return True
        except LatentfuseError:
            return False

    def run(self, item: EvalItem, methods: Sequence[str], sources: tuple[np.ndarray, np.ndarray],
            reference: np.ndarray, baseline_files: dict[str, Path]) -> tuple[dict, dict[str, np.ndarray], dict]:
        """(record fields, images by method, model input) for ``methods`` of one sample."""
        from latentfuse.model.image_processing.detail import restore_detail

        task = item.task
        clean_a, clean_b = sources
        if item.protocol == "degraded":
            sample = degrade(clean_a, clean_b, reference, task, item.pair.name, item.seed,
                             self.settings.degradations)
            a, b, prompt, degradations = sample.a, sample.b, sample.prompt, list(sample.degradations)
        else:
            a, b, prompt, degradations = clean_a, clean_b, self.pipe.default_prompt(task), []
        calls: dict[str, Callable[[], np.ndarray]] = {
            "regression": lambda: self.pipe(a, b, task=task, prompt=prompt, mode="regression", seed=item.seed).image,
            "flow": lambda: self.pipe(a, b, task=task, prompt=prompt, mode="flow", seed=item.seed,
                                      sampler=self.settings.flow_sampler, steps=self.settings.flow_steps,
                                      start=self.settings.flow_start).image,
            "regression_no_detail": lambda: self.pipe(a, b, task=task, prompt=prompt, mode="regression",
                                                      seed=item.seed, detail="off").image,
            "regression_no_fidelity": lambda: self.pipe(a, b, task=task, prompt=prompt, mode="regression",
                                                        seed=item.seed, detail="off", fidelity=0.0).image,
            "average": lambda: average(a, b),
            "average_detail": lambda: self._average_detail(a, b, prompt, restore_detail),
            "classical": lambda: label_of(a, b, task),
        }
        images, scores = {}, {}
        for name in methods:
            t0 = time.perf_counter()
            if name in baseline_files:
                fused = read_baseline(baseline_files[name], clean_a.shape[:2], self.settings.max_side)
            else:
                fused = calls[name]()
            seconds = time.perf_counter() - t0
            images[name] = rgb(fused)
            scores[name] = {**score(clean_a, clean_b, fused, reference, self.settings.metrics),
                            "seconds": round(seconds, 4)}
        fields = {"scene": item.pair.name, "seed": item.seed, "degradations": degradations, "prompt": prompt}
        return fields | {"methods": scores}, images, {"a": a, "b": b}

    def _average_detail(self, a, b, prompt, restore_detail) -> np.ndarray:
        config = self.detail_settings.config_for(prompt)
        avg = average(a, b)
        return avg if config is None else restore_detail(avg, a, b, config)


def control_detail(pipe):
    """(DetailSettings, where they come from) of the ``average_detail`` control: the model's own detail stage,
    else the bundled default model's, else the stage's neutral defaults."""
    from latentfuse.model.components import DEFAULT_MODEL_DIR, read_index
    from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings

    if pipe.detail is not None:
        return pipe.detail, "the model's own detail stage"
    try:
        settings = read_index(DEFAULT_MODEL_DIR)["detail"]
    except LatentfuseError:
        settings = None
    if settings is not None:
        return settings, "the bundled default model's detail stage"
    return DetailSettings.for_configs(DetailConfig(), DetailConfig()), "the detail stage's neutral defaults"


def average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 0.5 * (rgb(a) + rgb(b))


def label_of(a: np.ndarray, b: np.ndarray, task: str) -> np.ndarray:
    """The project's label pipeline (teachers + selection + refiner) on a pair: the reference of a clean
    pair, the ``classical`` row on a degraded one."""
    from latentfuse.model.data.labels import pseudo_label

    return rgb(pseudo_label(a, b, task).image)


def degrade(a: np.ndarray, b: np.ndarray, reference: np.ndarray, task: str, pair_name: str, seed: int,
            counts: Sequence[int]):
    """The degraded protocol's sample ``seed`` of a pair (model.data.pipeline.degrade_pair, no crop)."""
    from latentfuse.model.data.pipeline import degrade_pair

    rng = np.random.default_rng([EVAL_SEED, zlib.crc32(pair_name.encode()), int(seed)])
    return degrade_pair(a, b, reference, task, rng, n=tuple(counts), crop=False)


def baseline_files(folder: Path, pairs: list) -> tuple[dict[str, Path], list[str]]:
    """{pair name: file} of a baseline folder (file stem = the pair's name or its scene name, any case),
    and the pair names it lacks."""
    from latentfuse.model.data.split import SCENE_SEPARATOR
    from latentfuse.model.image_io import IMAGE_SUFFIXES

    by_stem = {p.stem.lower(): p for p in sorted(Path(folder).iterdir())
               if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    found, missing = {}, []
    for pair in pairs:
        names = (pair.name.lower(), pair.name.rsplit(SCENE_SEPARATOR, 1)[-1].lower())
        path = next((by_stem[n] for n in names if n in by_stem), None)
        if path is None:
            missing.append(pair.name)
        else:
            found[pair.name] = path
    return found, missing


def read_baseline(path: Path, size: tuple[int, int], max_side: int | None) -> np.ndarray:
    """A baseline's fused image at the evaluated size: as stored, or shrunk as the sources were."""
    from latentfuse.model.image_io import read_image

    image = read_image(path)
    if image.shape[:2] != tuple(size):
        image = shrink(image, max_side)
    if image.shape[:2] != tuple(size):
        raise LatentfuseError(f"baseline image {path} is {image.shape[1]}x{image.shape[0]}, but its pair is "
                              f"{size[1]}x{size[0]} (W x H) after --max-side")
    return image


# ------------------------------------------------------------------------------------------- the run


class ResultCache:
    """Per-sample results in ``OUT/cache/<task>/<protocol>/<pair>_s<seed>.json`` (and the figure pairs'
    images beside them), written atomically as each sample finishes."""

    def __init__(self, out: Path, key: dict):
        self.root = out / "cache"
        path = self.root / "settings.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise LatentfuseError(f"cannot read {path}: {err}") from None
            if old != key:
                diff = ", ".join(f"{k}: {old.get(k)!r} -> {key.get(k)!r}" for k in sorted(set(old) | set(key))
                                 if old.get(k) != key.get(k))
                raise LatentfuseError(f"{out} holds an evaluation made with other settings ({diff}); use a new "
                                      "--out (or the same settings to resume it)")
        else:
            with atomic_file(path) as tmp:
                tmp.write_text(json.dumps(key, indent=1, sort_keys=True))

    def _path(self, item: EvalItem) -> Path:
        return self.root / item.task / item.protocol / f"{item.key}.json"

    def image_dir(self, item: EvalItem) -> Path:
        return self.root / item.task / item.protocol / "images" / item.key

    def load(self, item: EvalItem) -> dict | None:
        path = self._path(item)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a damaged entry is measured again

    def save(self, item: EvalItem, record: dict) -> None:
        with atomic_file(self._path(item)) as tmp:
            tmp.write_text(json.dumps(record, sort_keys=True))


def model_identity(args) -> dict:
    """What model an evaluation scores: its directory or bundle and a content hash (part of the cache key)."""
    from latentfuse.runtime.manifest import sha256_file

    if getattr(args, "bundle", None):
        manifest = Path(args.bundle) / "manifest.json"
        return {"bundle": str(Path(args.bundle).resolve()),
                "sha256": sha256_file(manifest) if manifest.is_file() else None}
    from latentfuse.export.bundle_cache import model_key

    return {"checkpoint": str(Path(args.checkpoint).resolve()), "sha256": model_key(args.checkpoint)}


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(out / ".write-check") as tmp:
            tmp.write_text("")
        (out / ".write-check").unlink()
    except OSError as err:
        raise LatentfuseError(f"--out {out}: cannot write there ({err.strerror or err})") from None


def evaluate(pipe, settings: EvalSettings, model: dict | None = None, progress: bool = True) -> dict:
    """Run the evaluation (resuming from ``settings.out/cache``) and return the report (schema: docs/evaluate.md)."""
    from tqdm import tqdm

    evaluator = Evaluator(pipe, settings)
    pairs = {task: find_pairs(settings.data, task, settings.split, settings.n, settings.resize)
             for task in settings.tasks}
    baselines: dict[str, dict[str, dict[str, Path]]] = {}
    warnings = []
    for name, folder in settings.baselines.items():
        for task, task_pairs in pairs.items():
            found, missing = baseline_files(folder, task_pairs)
            if not found:
                raise LatentfuseError(f"--baseline {name}={folder}: no image named after any of the "
                                      f"{len(task_pairs)} {task} scenes (e.g. {task_pairs[0].name})")
            if missing:
                warnings.append(f"baseline {name}: {len(missing)} {task} scene(s) missing, left out of its row: "
                                + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
            baselines.setdefault(task, {})[name] = found
    for w in warnings:
        print(f"latentfuse evaluate: warning: {w}", flush=True)
    for protocol in settings.protocols:
        evaluator.methods_for(protocol)  # a method the model cannot run fails before anything is written
    check_writable(settings.out)

    # the model by its content: the same weights copied to another folder resume the same results
    weights = {k: v for k, v in (model or {}).items() if k == "sha256" or not (model or {}).get("sha256")}
    key = {**settings.result_key(), "model": weights, "backend": pipe.backend.name}
    cache = ResultCache(settings.out, key)
    report = {"format": FORMAT, "model": model or {}, "backend": pipe.backend.describe(),
              "settings": _settings_json(settings), "control_detail": evaluator.detail_source,
              "convention": CONVENTION, "warnings": warnings, "tasks": {}}
    for task in settings.tasks:
        for protocol in settings.protocols:
            seeds = range(settings.seeds) if protocol == "degraded" else range(1)
            items = [EvalItem(task, protocol, pair, s) for pair in pairs[task] for s in seeds]
            methods = evaluator.methods_for(protocol)
            figure_keys = {it.key for it in items[:settings.figures]}
            records = []
            bar = tqdm(items, desc=f"evaluate {task} {protocol}", unit="sample", disable=not progress)
            sources_of: dict[str, tuple] = {}
            for item in bar:
                files = {n: f[item.pair.name] for n, f in baselines.get(task, {}).items()
                         if protocol == "clean" and item.pair.name in f}
                wanted = [m for m in methods if m in METHODS or m in files]
                record = cache.load(item)
                todo = [m for m in wanted if record is None or m not in record["methods"]
                        or (m in files and record["methods"][m].get("file") != str(files[m]))]
                needs_images = item.key in figure_keys and not (cache.image_dir(item) / "done").is_file()
                if todo or needs_images:
                    if item.pair.name not in sources_of:  # the clean pair and its label, once per pair
                        sources_of.clear()
                        clean = load_sources(item.pair, task, settings.max_side, settings.resize)
                        sources_of[item.pair.name] = (clean, label_of(*clean, task))
                    clean, reference = sources_of[item.pair.name]
                    run = wanted if needs_images else todo
                    fields, images, given = evaluator.run(item, run, clean, reference, files)
                    for name, path in files.items():
                        if name in fields["methods"]:
                            fields["methods"][name]["file"] = str(path)
                    if record is not None:
                        fields["methods"] = {**record["methods"], **fields["methods"]}
                    record = fields
                    cache.save(item, record)
                    if needs_images:
                        save_images(cache.image_dir(item), given, clean, reference, images)
                record = {**record, "methods": {m: record["methods"][m] for m in wanted}}
                records.append(record)
            bar.close()
            report["tasks"].setdefault(task, {})[protocol] = protocol_report(records, methods, settings)
            report["tasks"][task][protocol]["figure_pairs"] = [
                str(cache.image_dir(it).relative_to(settings.out)) for it in items[:settings.figures]]
    return report


def protocol_report(records: list[dict], methods: Sequence[str], settings: EvalSettings) -> dict:
    metrics = BASE_METRICS + tuple(settings.metrics)
    out = {"n": len(records), "methods": summarize(records, methods, metrics), "families": {}}
    families = sorted({d for r in records for d in r["degradations"]})
    for family in families:
        subset = [r for r in records if family in r["degradations"]]
        out["families"][family] = {"n": len(subset), "methods": summarize(subset, methods, metrics)}
    out["pairs"] = records
    return out


def save_images(folder: Path, given: dict, clean: tuple, reference: np.ndarray, images: dict) -> None:
    """The figure panels of one sample (8-bit PNG): the model's inputs, the reference and every method."""
    from latentfuse.model.image_io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    for name, img in {"A": given["a"], "B": given["b"], "reference": reference, **images}.items():
        write_image(folder / f"{name}.png", np.clip(np.asarray(img, np.float32), 0, 1))
    (folder / "done").write_text(json.dumps(["A", "B", "reference", *images]))


def _settings_json(settings: EvalSettings) -> dict:
    d = asdict(settings)
    d["data"], d["out"] = str(settings.data), str(settings.out)
    d["baselines"] = {k: str(v) for k, v in settings.baselines.items()}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """report.json and report.md into ``out``, each atomically."""
    from latentfuse.bench.quality_report import markdown

    with atomic_file(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    with atomic_file(out / "report.md") as tmp:
        tmp.write_text(markdown(report))
    return out / "report.json", out / "report.md"


__all__ = ["EvalSettings", "Evaluator", "evaluate", "find_pairs", "score", "bootstrap_ci", "summarize",
           "write_report", "parse_degradations", "METHODS", "PROTOCOLS"]
