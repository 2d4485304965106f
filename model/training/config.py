"""The one config system of training: a config is a dataclass of sections, each a dataclass whose fields
are its keys, read from TOML (``tomllib``), YAML or JSON and checked here, before any work.

Both ``latentfuse train`` commands use it: ``--config FILE`` reads a :class:`TrainConfig` (below), ``--recipe
FILE`` the default model's :class:`~latentfuse.model.training.recipe.Recipe`. A key is declared once, as a
field made by :func:`setting`: its annotation is its type (``int``, ``float``, ``str``, ``bool``, ``list`` /
``list[int]``, ``dict``, or a dataclass: a table of exactly that dataclass's keys), its metadata its help
text and its allowed values. From that declaration alone :func:`sections_from_dict` checks a file (an
unknown section or key, a missing key, one of the wrong type or not among its choices is a LatentfuseError
naming the file, the key and what it takes) and :func:`add_flags` makes one ``--KEY`` command-line flag per
key (the recipe's overrides). A key without a default must be in the file (every key of the recipe); a key
with one may be left out (every key of a TrainConfig). Value checks beyond the type and the choices are the
config's own (:meth:`TrainConfig.validate`).

Every hyper-parameter of MMAIF section 4.2 has a TrainConfig key (defaults are the paper's values):

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

import argparse
import dataclasses
import functools
import json
import tomllib
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.work_scale import check_work_scale

TRAIN_PRECISIONS = ("fp32", "bf16")  # autocast of a training step (not a bundle precision: runtime.manifest)


# ---------------------------------------------------------------------------------------------- declaring keys
def setting(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | Any = MISSING,
            choices: tuple = (), metavar: str = "", example: str = "") -> Any:
    """A config key: a dataclass field whose metadata carries its ``help`` text, its ``choices`` (the values
    it may take; () for any of its type) and, for a list or a table, the ``metavar`` and an ``example`` of
    its flag's text. No ``default`` and no ``factory``: the key must be in the file."""
    metadata = {"help": help, "choices": tuple(choices)}
    metadata.update({k: v for k, v in (("metavar", metavar), ("example", example)) if v})
    return field(default=default, default_factory=factory, metadata=metadata)


@functools.cache
def config_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """``{name: (field, type)}`` of a dataclass, in declaration order, the annotations resolved."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def config_sections(cls: type) -> dict[str, type]:
    """``{section: its dataclass}`` of a config made of sections (TrainConfig, Recipe)."""
    return {name: tp for name, (_, tp) in config_fields(cls).items()}


def flat_keys(sections: dict[str, type]) -> dict[str, tuple[str, dataclasses.Field, Any]]:
    """``{key: (section, field, type)}`` over every section: the keys of a config whose key names are also
    flags and attributes of one namespace (the recipe's), so they must be unique across its sections."""
    keys: dict[str, tuple[str, dataclasses.Field, Any]] = {}
    for section, cls in sections.items():
        for name, (f, tp) in config_fields(cls).items():
            if name in keys:
                raise TypeError(f"key {name!r} is in [{keys[name][0]}] and [{section}]: a flag per key needs "
                                "unique names")
            keys[name] = (section, f, tp)
    return keys


def _required(f: dataclasses.Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


# ---------------------------------------------------------------------------------------------- the types
def _bool_word(text: str) -> bool:
    return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Scalar:
    """What a key of a scalar type takes: in a file (``fits``, described by ``form``, ``plural`` in a list)
    and as a flag's text (``parse``, shown as ``metavar``)."""

    fits: Callable[[Any], bool]
    form: str
    plural: str
    parse: Callable[[str], Any]
    metavar: str


_SCALARS: dict[type, _Scalar] = {
    int: _Scalar(_is_int, "an integer", "integers", int, "INT"),
    float: _Scalar(lambda v: _is_int(v) or isinstance(v, float), "a number", "numbers", float, "FLOAT"),
    str: _Scalar(lambda v: isinstance(v, str), "a string", "strings", str, "STR"),
    bool: _Scalar(lambda v: isinstance(v, bool), "true or false", "true or false values", _bool_word, "BOOL"),
}


def _item_type(tp: Any) -> Any:
    """The item type of ``list[X]`` (None for a bare ``list``)."""
    args = typing.get_args(tp)
    return args[0] if args else None


def _kind(tp: Any) -> str:
    """``scalar``, ``list``, ``dict`` or ``table`` (a dataclass); a TypeError for a type no key may have."""
    if tp in _SCALARS:
        return "scalar"
    origin = typing.get_origin(tp) or tp
    if origin is list and (_item_type(tp) is None or _item_type(tp) in _SCALARS):
        return "list"
    if origin is dict:
        return "dict"
    if dataclasses.is_dataclass(tp):
        return "table"
    raise TypeError(f"a config key cannot be of type {tp!r}")


def type_form(tp: Any) -> str:
    """What a value of ``tp`` must be in a file, in words (``an integer``, ``a list of integers``)."""
    kind = _kind(tp)
    if kind == "scalar":
        return _SCALARS[tp].form
    if kind == "list":
        return f"a list of {_SCALARS[_item_type(tp)].plural}" if _item_type(tp) else "a list"
    if kind == "dict":
        return "a table"
    return f"a table {{{', '.join(config_fields(tp))}}}"


def _fits(value: Any, tp: Any) -> bool:
    kind = _kind(tp)
    if kind == "scalar":
        return _SCALARS[tp].fits(value)
    if kind == "list":
        item = _item_type(tp)
        return isinstance(value, list) and (item is None or all(_SCALARS[item].fits(v) for v in value))
    if kind == "dict":
        return isinstance(value, dict)
    return isinstance(value, dict) and set(value) == set(config_fields(tp))


def _choices_text(choices: tuple) -> str:
    return ", ".join(map(str, choices))


def convert_value(value: Any, tp: Any, key: str, source: str, choices: tuple = ()) -> Any:
    """``value``, read from ``source`` for ``key``, as its type ``tp`` (an int widened to a float, a table
    to its dataclass, which checks its values); a LatentfuseError naming ``source``, ``key`` and what it
    takes when it is of another type or not among ``choices``."""
    if not _fits(value, tp):
        raise LatentfuseError(f"{source}: {key} must be {type_form(tp)}, got {value!r}")
    if choices and value not in choices:
        raise LatentfuseError(f"{source}: {key} must be one of {_choices_text(choices)}, got {value!r}")
    kind = _kind(tp)
    if tp is float:
        return float(value)
    if kind == "list":
        return [float(v) for v in value] if _item_type(tp) is float else list(value)
    if kind == "table":
        values = {name: convert_value(value[name], ftp, f"{key}.{name}", source, f.metadata.get("choices", ()))
                  for name, (f, ftp) in config_fields(tp).items()}
        try:
            return tp(**values)
        except (LatentfuseError, ValueError, TypeError) as err:
            raise LatentfuseError(f"{source}: {key}: {err}") from None
    return value


def sections_from_dict(data: Any, sections: dict[str, type], source: str) -> dict[str, Any]:
    """``{section: its dataclass}`` of ``data`` (a file's mapping of sections), every key checked against
    its declaration: a section that is not a table, an unknown section or key, a missing key (one without
    a default), or a value of the wrong type or not among its choices is a LatentfuseError naming
    ``source`` and the key. A section left out (or empty) takes its defaults."""
    if not isinstance(data, dict):
        raise LatentfuseError(f"{source}: expected a table of sections, got {type(data).__name__}")
    not_tables = [name for name in sections if data.get(name) is not None and not isinstance(data[name], dict)]
    if not_tables:
        raise LatentfuseError(f"{source}: {', '.join(f'[{n}]' for n in not_tables)} must be a section (a table "
                              f"of keys), got {', '.join(f'{n} = {data[n]!r}' for n in not_tables)}")
    tables = {name: data.get(name) or {} for name in sections}
    fields = {name: config_fields(cls) for name, cls in sections.items()}
    new_sections = [name for name in data if name not in sections]
    new_keys = {name: [k for k in tables[name] if k not in fields[name]] for name in sections}
    unknown = [f"[{name}]" for name in new_sections] + [f"{s}.{k}" for s, keys in new_keys.items() for k in keys]
    if unknown:
        hints = [f"valid sections: {', '.join(sections)}"] if new_sections else []
        hints += [f"valid keys in [{s}]: {', '.join(fields[s])}" for s, keys in new_keys.items() if keys]
        module = next(iter(sections.values())).__module__.removeprefix("latentfuse.")
        raise LatentfuseError(f"{source}: unknown {', '.join(unknown)} ({'; '.join(hints)}; the keys are declared "
                              f"in {module.replace('.', '/')}.py)")
    missing = [f"{s}.{k}" for s in sections for k, (f, _) in fields[s].items() if _required(f) and k not in tables[s]]
    if missing:
        raise LatentfuseError(f"{source}: missing {', '.join(missing)}")
    out = {}
    for name, cls in sections.items():
        values = {k: convert_value(tables[name][k], tp, f"{name}.{k}", source, f.metadata.get("choices", ()))
                  for k, (f, tp) in fields[name].items() if k in tables[name]}
        try:
            out[name] = cls(**values)
        except LatentfuseError as err:  # a section's own value checks (its __post_init__)
            raise LatentfuseError(f"{source}: {err}") from None
    return out


# ---------------------------------------------------------------------------------------------- flags
def flag_form(tp: Any, example: str = "") -> str:
    """What a ``--KEY`` flag of type ``tp`` takes, in words (with ``example``, a flag's text)."""
    kind = _kind(tp)
    if kind == "list":
        return f"{_SCALARS[_item_type(tp) or str].plural} joined by commas" + (f" (e.g. {example})" if example else "")
    if kind == "table":
        parts = config_fields(tp)
        return f"{','.join(parts)} (" + (f"e.g. {example}" if example else ", ".join(type_form(t) for _, t in
                                                                                     parts.values())) + ")"
    if kind == "dict":
        raise TypeError("a key of type dict has no flag")
    return type_form(tp)


def _parse_text(text: str, tp: Any) -> Any:
    kind = _kind(tp)
    if kind == "scalar":
        return _SCALARS[tp].parse(text)
    if kind == "list":
        return [_SCALARS[_item_type(tp) or str].parse(part) for part in text.split(",")]
    parts = text.split(",")
    fields = config_fields(tp)
    if len(parts) != len(fields):
        raise ValueError(f"{len(fields)} values, got {len(parts)}")
    # a table's form only, given as the file's values are (a dict); its values are checked where it is used
    return {name: _parse_text(part, ftp) for part, (name, (_, ftp)) in zip(parts, fields.items())}


def parse_flag(text: str, tp: Any, flag: str, choices: tuple = (), example: str = "") -> Any:
    """A ``--KEY`` flag's ``text`` as the key's type ``tp`` (a list takes ``0,1,2``, a table its values in
    order joined by commas, as a dict, a bool true/false/1/0/yes/no); an argparse error naming the flag
    otherwise. A table's values are not checked here but where they are used (the recipe's detail tables:
    ``recipe_cli.check_settings``, before any work)."""
    try:
        value = _parse_text(text, tp)
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{flag} takes {flag_form(tp, example)}, got {text!r}") from None
    if choices and value not in choices:
        raise argparse.ArgumentTypeError(f"{flag} must be one of {_choices_text(choices)}, got {text!r}")
    return value


def _metavar(f: dataclasses.Field, tp: Any) -> str:
    if "metavar" in f.metadata:
        return f.metadata["metavar"]
    if _kind(tp) == "list":
        return _SCALARS[_item_type(tp) or str].metavar + "S"
    return _SCALARS[tp].metavar if tp in _SCALARS else tp.__name__.upper()


def add_flags(parser: argparse.ArgumentParser, sections: dict[str, type], title: str = "[{section}]") -> None:
    """One ``--KEY`` flag per key of ``sections`` (``dest`` the key, default None: the file's value), its help
    the key's, grouped by section (``title`` formatted with the section's name)."""
    groups: dict[str, Any] = {}
    for name, (section, f, tp) in flat_keys(sections).items():
        if section not in groups:
            groups[section] = parser.add_argument_group(title.format(section=section))
        flag_form(tp)  # a TypeError now for a key no flag can give
        flag = "--" + name.replace("_", "-")
        groups[section].add_argument(
            flag, dest=name, default=None, metavar=_metavar(f, tp), help=f.metadata.get("help", ""),
            type=lambda text, tp=tp, flag=flag, choices=f.metadata.get("choices", ()), example=f.metadata.get(
                "example", ""): parse_flag(text, tp, flag, choices, example))


# ---------------------------------------------------------------------------------------------- files
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


# ---------------------------------------------------------------------------------------------- TrainConfig
@dataclass
class RunSection:
    output_dir: str = setting("runs/train")
    seed: int = setting(0)
    device: str = setting("auto", '"auto" (cuda if available), "cpu", "cuda", "cuda:1"')
    precision: str = setting("bf16", "paper: BF16 mixed precision; falls back to fp32 where unsupported")
    log_every: int = setting(1, "CSV row every N optimizer steps")
    checkpoint_every: int = setting(5000, "0: only at the end of the run")
    keep_checkpoints: int = setting(3, "newest N step checkpoints are kept")
    plot: bool = setting(True, "loss_curves.png at the end (matplotlib Agg)")
    progress: bool = setting(True, "tqdm bar (rank 0 only)")


@dataclass
class ModelSection:
    preset: str = setting("tiny", "DiT preset (model/presets/<name>.json)")
    head: str = setting("flow", '"flow" (Eq. 11) or "regression" (Eq. 8)')
    components: str = setting("", "model directory supplying the frozen VAE + text encoder; "
                                  '"" = randomly initialised components of `preset` (tests only)')
    init_from: str = setting("", "a MoEDiT directory to start from (fine-tuning)")
    gradient_checkpointing: bool = setting(True)
    overrides: dict = setting(factory=dict, help="DiTConfig field overrides (e.g. depth = 2)")


@dataclass
class DataSection:
    root: str = setting("", "a `latentfuse data build` folder (its index.jsonl)")
    tasks: list[str] = setting(factory=lambda: ["vif", "mef", "mff"])
    crop: int = setting(256, "training crop in pixels of the enlarged images (a multiple of 16)")
    work_scale: int = setting(1, "images enlarged k times before the VAE (model.work_scale); 1: as they are")
    cache: str = setting("", 'latent cache file; "" = <root>/latents_<crop>.pt')
    max_samples: int = setting(0, "0: all")
    aux_sources: str = setting("clean", 'images X_i of the auxiliary loss: "clean" or "degraded" sources')


@dataclass
class OptimSection:
    lr: float = setting(2e-4)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999])
    eps: float = setting(1e-8)
    weight_decay: float = setting(0.01, "not given by the paper: torch's AdamW default")
    cautious: bool = setting(True)
    warmup_steps: int = setting(1000)
    min_lr_ratio: float = setting(0.0, "cosine decays to lr * min_lr_ratio")
    batch_size: int = setting(8, "per optimizer micro-step, summed over all processes")
    grad_accum: int = setting(3)
    steps: int = setting(200_000, "optimizer steps (all tasks of a continual run together)")
    grad_clip: float = setting(1.0, "0 disables clipping")


@dataclass
class LossSection:
    aux_weight: float = setting(0.1, "λ of Eq. 10; 0 disables the pixel-space auxiliary loss")
    aux_min_t: float = setting(0.0, "flow: apply L_aux only where t >= aux_min_t (Z̃1 is poor near t=0)")
    aux_samples: int = setting(0, "decode only the first N items of each process's batch (0: all)")
    label_weight: float = setting(0.0, "weight of L_label (pixel-space L1 + gradient L1 to the label, not in the "
                                       "paper)")
    load_balance_weight: float = setting(0.01)


@dataclass
class FlowSection:
    prior: str = setting("gaussian", "gaussian | source_a | source_b | source_mean")
    prior_sigma: float = setting(0.5, "σ_p of the source priors (model.flow.DEFAULT_SOURCE_SIGMA)")
    timesteps: str = setting("uniform", "uniform | logit_normal")
    logit_loc: float = setting(0.0)
    logit_scale: float = setting(1.0)


@dataclass
class EMASection:
    decay: float = setting(0.0, "e.g. 0.9999; 0 disables")


@dataclass
class ContinualSection:
    sequence: list[str] = setting(factory=list, help='e.g. ["vif", "mef", "mff"]; [] = joint training')
    ewc_lambda: float = setting(0.0, "λ of the EWC penalty λ/2·Σ F_i (θ_i - θ*_i)²")
    fisher_batches: int = setting(8, "batches for the diagonal Fisher at the end of each task")
    replay_size: int = setting(0, "reservoir buffer capacity (samples); 0 disables replay")
    replay_ratio: float = setting(0.25, "fraction of each batch drawn from the buffer")


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
        """The config of a file's mapping of sections (:func:`sections_from_dict`; a section or key left out
        takes its default), then :meth:`validate`."""
        return cls(**sections_from_dict(data, SECTIONS, source))

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


#: TrainConfig's sections, by name.
SECTIONS: dict[str, type] = config_sections(TrainConfig)
