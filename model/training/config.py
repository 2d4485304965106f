"""Training configuration: nested dataclasses read from TOML (``tomllib``) or YAML.

Every hyper-parameter of MMAIF section 4.2 has a key (defaults are the paper's values):

    [optim]  lr = 2e-4, cautious = true (AdamW + cautious mask, Liang et al. 2024), warmup_steps = 1000
             (cosine schedule), batch_size = 8, steps = 200_000, grad_accum = 3
    [run]    precision = "bf16" (mixed precision), [model] gradient_checkpointing = true
    [loss]   aux_weight = λ of Eq. 10 (the paper gives no value), load_balance_weight (MoE, 3.3.2)
    [flow]   prior p0 (gaussian / source_a / source_b / source_mean, Tab. 6 j-l), timestep sampling
    [ema]    decay (0 disables the EMA of the weights)
    [continual]  FusionFM task sequence (VIF → MEF → MFF) with EWC and experience replay

Unknown keys (a typo such as ``learning_rate``) raise a LatentfuseError naming the key and the
valid ones, so a misspelt hyper-parameter never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.work_scale import check_work_scale

TRAIN_PRECISIONS = ("fp32", "bf16")  # autocast of a training step (not a bundle precision: runtime.manifest)


@dataclass
class RunSection:
    output_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"            # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    precision: str = "bf16"         # paper: BF16 mixed precision; falls back to fp32 where unsupported
    log_every: int = 1              # CSV row every N optimizer steps
    checkpoint_every: int = 5000    # 0: only at the end of the run
    keep_checkpoints: int = 3       # newest N step checkpoints are kept
    plot: bool = True               # loss_curves.png at the end (matplotlib Agg)
    progress: bool = True           # tqdm bar (rank 0 only)


@dataclass
class ModelSection:
    preset: str = "tiny"            # DiT preset (model/presets/<name>.json)
    head: str = "flow"              # "flow" (Eq. 11) or "regression" (Eq. 8)
    components: str = ""            # model directory supplying the frozen VAE + text encoder;
                                    # "" = randomly initialised components of `preset` (tests only)
    init_from: str = ""             # a MoEDiT directory to start from (fine-tuning)
    gradient_checkpointing: bool = True
    overrides: dict = field(default_factory=dict)  # DiTConfig field overrides (e.g. depth = 2)


@dataclass
class DataSection:
    root: str = ""                  # a `latentfuse data build` folder (its index.jsonl)
    tasks: list = field(default_factory=lambda: ["vif", "mef", "mff"])
    crop: int = 256                 # training crop in pixels of the enlarged images (a multiple of 16)
    work_scale: int = 1             # images enlarged k times before the VAE (model.work_scale); 1: as they are
    cache: str = ""                 # latent cache file; "" = <root>/latents_<crop>.pt
    max_samples: int = 0            # 0: all
    aux_sources: str = "clean"      # images X_i of the auxiliary loss: "clean" or "degraded" sources


@dataclass
class OptimSection:
    lr: float = 2e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01      # not given by the paper: torch's AdamW default
    cautious: bool = True
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0       # cosine decays to lr * min_lr_ratio
    batch_size: int = 8             # per optimizer micro-step, summed over all processes
    grad_accum: int = 3
    steps: int = 200_000            # optimizer steps (all tasks of a continual run together)
    grad_clip: float = 1.0          # 0 disables clipping


@dataclass
class LossSection:
    aux_weight: float = 0.1         # λ of Eq. 10; 0 disables the pixel-space auxiliary loss
    aux_min_t: float = 0.0          # flow: apply L_aux only where t >= aux_min_t (Z̃1 is poor near t=0)
    aux_samples: int = 0            # decode only the first N items of each process's batch (0: all)
    label_weight: float = 0.0       # weight of L_label (pixel-space L1 + gradient L1 to the label, not in the paper)
    load_balance_weight: float = 0.01


@dataclass
class FlowSection:
    prior: str = "gaussian"         # gaussian | source_a | source_b | source_mean
    prior_sigma: float = 0.5        # σ_p of the source priors (model.flow.DEFAULT_SOURCE_SIGMA)
    timesteps: str = "uniform"      # uniform | logit_normal
    logit_loc: float = 0.0
    logit_scale: float = 1.0


@dataclass
class EMASection:
    decay: float = 0.0              # e.g. 0.9999; 0 disables


@dataclass
class ContinualSection:
    sequence: list = field(default_factory=list)  # e.g. ["vif", "mef", "mff"]; [] = joint training
    ewc_lambda: float = 0.0         # λ of the EWC penalty λ/2·Σ F_i (θ_i - θ*_i)²
    fisher_batches: int = 8         # batches for the diagonal Fisher at the end of each task
    replay_size: int = 0            # reservoir buffer capacity (samples); 0 disables replay
    replay_ratio: float = 0.25      # fraction of each batch drawn from the buffer


SECTIONS = {
    "run": RunSection, "model": ModelSection, "data": DataSection, "optim": OptimSection,
    "loss": LossSection, "flow": FlowSection, "ema": EMASection, "continual": ContinualSection,
}


def read_config_file(path: str | Path, what: str) -> dict:
    """The mapping in a ``.toml``, ``.yaml`` / ``.yml`` or ``.json`` file; a LatentfuseError naming ``what`` and
    the file when it is missing, of another format, or not valid."""
    path = Path(path)
    if not path.is_file():
        raise LatentfuseError(f"{what} not found: {path}")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise LatentfuseError(f"{what} {path}: unsupported format {suffix!r} (use .toml, .yaml or .json)")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise LatentfuseError(f"{what} {path} is not valid {suffix[1:].upper()}: {err}") from None
    except Exception as err:  # yaml.YAMLError without importing yaml at module level
        if type(err).__module__.startswith("yaml"):
            raise LatentfuseError(f"{what} {path} is not valid YAML: {err}") from None
        raise
    if not isinstance(data, dict):
        raise LatentfuseError(f"{what} {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


@dataclass
class TrainConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    flow: FlowSection = field(default_factory=FlowSection)
    ema: EMASection = field(default_factory=EMASection)
    continual: ContinualSection = field(default_factory=ContinualSection)

    # ------------------------------------------------------------------ validation
    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        from latentfuse.model.data.tasks import TASKS
        from latentfuse.model.flow import TIMESTEP_SCHEMES, check_prior

        problems = []
        if self.run.precision not in TRAIN_PRECISIONS:
            problems.append(f"run.precision must be one of {TRAIN_PRECISIONS}, got {self.run.precision!r}")
        if self.model.head not in ("flow", "regression"):
            problems.append(f"model.head must be 'flow' or 'regression', got {self.model.head!r}")
        o = self.optim
        if not o.lr > 0:
            problems.append(f"optim.lr must be positive, got {o.lr}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            problems.append(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        for name in ("batch_size", "grad_accum", "steps"):
            if int(getattr(o, name)) < 1:
                problems.append(f"optim.{name} must be >= 1, got {getattr(o, name)}")
        if o.warmup_steps < 0:
            problems.append(f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
        if self.data.crop % 16:
            problems.append(f"data.crop must be a multiple of 16 pixels, got {self.data.crop}")
        try:
            check_work_scale(self.data.work_scale, "data.work_scale")
        except LatentfuseError as err:
            problems.append(str(err))
        if self.data.aux_sources not in ("clean", "degraded"):
            problems.append(f"data.aux_sources must be 'clean' or 'degraded', got {self.data.aux_sources!r}")
        for task in list(self.data.tasks) + list(self.continual.sequence):
            if task not in TASKS:
                problems.append(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
        try:
            check_prior(self.flow.prior, self.flow.prior_sigma)
        except LatentfuseError as err:
            problems.append(f"flow.prior: {err}")
        if self.flow.timesteps not in TIMESTEP_SCHEMES:
            problems.append(f"flow.timesteps must be one of {TIMESTEP_SCHEMES}, got {self.flow.timesteps!r}")
        if not 0 <= self.ema.decay < 1:
            problems.append(f"ema.decay must be in [0, 1), got {self.ema.decay}")
        c = self.continual
        if not 0 <= c.replay_ratio < 1:
            problems.append(f"continual.replay_ratio must be in [0, 1), got {c.replay_ratio}")
        if c.ewc_lambda < 0 or c.replay_size < 0 or c.fisher_batches < 1:
            problems.append("continual.ewc_lambda and replay_size must be >= 0, fisher_batches >= 1")
        if c.sequence and self.optim.steps < len(c.sequence):
            problems.append(f"optim.steps={self.optim.steps} is fewer than the {len(c.sequence)} continual tasks")
        if self.loss.aux_samples < 0:
            problems.append(f"loss.aux_samples must be >= 0, got {self.loss.aux_samples}")
        if self.loss.aux_weight < 0 or self.loss.load_balance_weight < 0 or self.loss.label_weight < 0:
            problems.append("loss weights must be >= 0")
        if problems:
            raise LatentfuseError("invalid training config: " + "; ".join(problems))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        if not isinstance(data, dict):
            raise LatentfuseError(f"{source}: expected a table of sections, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise LatentfuseError(f"{source}: unknown section(s) {', '.join(unknown)}; "
                                  f"valid sections: {', '.join(SECTIONS)}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = data.get(name, {}) or {}
            if not isinstance(values, dict):
                raise LatentfuseError(f"{source}: [{name}] must be a table, got {type(values).__name__}")
            known = {f.name: f for f in dataclasses.fields(section_cls)}
            bad = sorted(set(values) - set(known))
            if bad:
                raise LatentfuseError(f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in bad)}; "
                                      f"valid keys in [{name}]: {', '.join(known)}")
            values = dict(values)
            defaults = section_cls()
            for key, value in values.items():
                expected = type(getattr(defaults, key))
                if expected is float and isinstance(value, int) and not isinstance(value, bool):
                    values[key] = float(value)
                elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                    raise LatentfuseError(f"{source}: {name}.{key} must be {expected.__name__}, "
                                          f"got {value!r} ({type(value).__name__})")
            sections[name] = section_cls(**values)
        return cls(**sections)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a ``.toml`` or ``.yaml`` / ``.yml`` (or ``.json``) training config."""
        path = Path(path)
        data = read_config_file(path, "training config")
        return cls.from_dict(data, source=str(path))

    def replace(self, **sections: dict) -> "TrainConfig":
        """A copy with some keys changed: ``cfg.replace(optim={"steps": 10})``."""
        data = self.to_dict()
        for name, values in sections.items():
            if name not in SECTIONS:
                raise LatentfuseError(f"unknown config section {name!r}")
            data[name].update(values)
        return TrainConfig.from_dict(data)

    # ------------------------------------------------------------------ derived
    def task_phases(self) -> list[tuple[str | None, int]]:
        """[(task or None for joint training, optimizer steps)] in training order."""
        seq = list(self.continual.sequence)
        if not seq:
            return [(None, self.optim.steps)]
        base, extra = divmod(self.optim.steps, len(seq))
        return [(task, base + (1 if i < extra else 0)) for i, task in enumerate(seq)]
