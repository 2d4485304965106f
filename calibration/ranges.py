"""Measured activation ranges of an FP32 ONNX graph: per-tensor max |x|, non-finite counts, fp16 underflow.

The FP16 precision plan (:mod:`latentfuse.calibration.plan`) is decided from these numbers, not guessed: a tensor
whose magnitude approaches the FP16 maximum (65504) overflows to inf in an FP16 engine, and a tensor whose
non-zero values fall below the FP16 subnormal range is flushed to zero.

Method (the same one ModelOpt AutoCast's reference runner and polygraphy's ``--onnx-outputs mark all``
use): on a copy of the model, every node output is also declared a graph output; ONNX Runtime runs the
copy on each calibration feed and the values are reduced to a few statistics at once. Memory stays
bounded: outputs are exposed a chunk at a time (one session per chunk, every feed runs through it), the
chunk sized so that one feed's tensors fit ``memory_budget``, and only that chunk is alive at any moment.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.backends.onnxruntime_backend import ort_session

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14      # below this fp16 is subnormal: fewer mantissa bits, lost precision
FP16_FLUSH = 2.0 ** -25            # below half the smallest subnormal (2^-24) a value rounds to 0 in fp16

_FLOAT_DTYPES = (np.float32, np.float64, np.float16)


def load_model(model) -> "onnx.ModelProto":
    """A ModelProto from a path (external data resolved next to it) or a ModelProto (returned as is)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise LatentfuseError(f"ONNX graph {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as err:  # protobuf / external-data errors carry no file name
        raise LatentfuseError(f"cannot read ONNX graph {path}: {err}") from None


@dataclass
class TensorRange:
    """Running statistics of one tensor over all calibration feeds."""

    name: str
    max_abs: float = 0.0            # over finite values
    nonfinite: int = 0              # inf / nan count (already in FP32)
    count: int = 0                  # values seen
    nonzero: int = 0                # finite non-zero values seen
    subnormal: int = 0              # finite, non-zero, |x| < 2^-14
    flushed: int = 0                # finite, non-zero, |x| < 2^-25 (become exactly 0 in fp16)
    numel: int = 0                  # largest element count seen in one feed
    shape: list = field(default_factory=list)   # shape in the last feed

    def update(self, value: np.ndarray) -> None:
        a = np.abs(np.asarray(value, dtype=np.float32)).ravel()
        finite = np.isfinite(a)
        n_finite = int(finite.sum())
        self.count += a.size
        self.nonfinite += a.size - n_finite
        if n_finite != a.size:
            a = a[finite]
        if a.size:
            self.max_abs = max(self.max_abs, float(a.max()))
            nz = a[a > 0]
            self.nonzero += nz.size
            self.subnormal += int((nz < FP16_MIN_NORMAL).sum())
            self.flushed += int((nz < FP16_FLUSH).sum())
        self.numel = max(self.numel, int(np.size(value)))
        self.shape = [int(d) for d in np.shape(value)]

    @property
    def subnormal_fraction(self) -> float:
        """Fraction of finite non-zero values that land in fp16's subnormal range (precision loss)."""
        return self.subnormal / self.nonzero if self.nonzero else 0.0

    @property
    def flush_fraction(self) -> float:
        """Fraction of finite non-zero values that fp16 rounds to zero."""
        return self.flushed / self.nonzero if self.nonzero else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["subnormal_fraction"] = self.subnormal_fraction
        d["flush_fraction"] = self.flush_fraction
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorRange":
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in keys})


def initializer_ranges(model) -> dict[str, TensorRange]:
    """Statistics of float initializers and Constant-node values (static: no run needed)."""
    import onnx
    from onnx import numpy_helper

    out: dict[str, TensorRange] = {}
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            r = TensorRange(init.name)
            r.update(numpy_helper.to_array(init))
            out[init.name] = r
    return out


def _session(model, providers, workdir: str) -> "onnxruntime.InferenceSession":
    """An ONNX Runtime session; models over protobuf's 2 GB limit go through ``workdir`` on disk."""
    # Basic optimisations only: constant folding is harmless, but fusions (e.g. LayerNorm, GELU) would
    # hide the intermediate tensors we want to observe - and exposed outputs block them anyway.
    if model.ByteSize() < 1_800_000_000:
        return ort_session(model, providers, optimization="basic", purpose="calibration")
    import onnx

    path = os.path.join(workdir, "model.onnx")
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data")
    return ort_session(path, providers, optimization="basic", purpose="calibration")


def node_output_names(model) -> list[str]:
    """Every node output of the main graph, in topological (node) order, without duplicates."""
    names, seen = [], set()
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in seen and name not in graph_outputs:
                seen.add(name)
                names.append(name)
    return names


def expose(model, names: Sequence[str]) -> "onnx.ModelProto":
    """A copy of ``model`` whose outputs are exactly ``names`` (types left to ONNX Runtime)."""
    import onnx

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    typed = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    del exposed.graph.output[:]
    for name in names:
        # An untyped ValueInfoProto is accepted by ONNX Runtime; keep the inferred type where known.
        exposed.graph.output.append(typed[name] if name in typed else onnx.ValueInfoProto(name=name))
    return exposed


def run_tensors(
    model,
    feeds: Sequence[Mapping[str, np.ndarray]],
    names: Sequence[str],
    visit: Callable[[int, Mapping[str, np.ndarray]], None],
    *,
    chunk_size: int = 256,
    memory_budget: int = 2 << 30,
    providers=None,
    progress: bool | str = False,
) -> None:
    """Run ``model`` on every feed and call ``visit(feed_index, {name: value})`` per chunk of ``names``.

    The first chunk exposes ``chunk_size`` tensors; later chunks are sized from the bytes per tensor
    measured so far so that one feed's chunk stays within ``memory_budget`` bytes. Small graphs thus
    take one or two sessions, large ones at high resolution many.
    """
    from tqdm.auto import tqdm

    model = load_model(model)
    remaining = list(names)
    size = max(int(chunk_size), 1)
    desc = progress if isinstance(progress, str) else "calibration runs"
    with tqdm(total=len(remaining), desc=desc, unit="tensor", disable=not progress, leave=False) as bar, \
            tempfile.TemporaryDirectory(prefix="latentfuse-calib-") as workdir:
        while remaining:
            chunk, remaining = remaining[:size], remaining[size:]
            sess = _session(expose(model, chunk), providers, workdir)
            input_names = {i.name for i in sess.get_inputs()}
            peak = 0
            for index, feed in enumerate(feeds):
                missing = input_names - set(feed)
                if missing:
                    raise LatentfuseError(f"calibration feed {index} lacks graph inputs {sorted(missing)}")
                values = sess.run(chunk, {k: v for k, v in feed.items() if k in input_names})
                peak = max(peak, sum(getattr(v, "nbytes", 0) for v in values))
                visit(index, dict(zip(chunk, values)))
                del values
            del sess
            bar.update(len(chunk))
            per_tensor = max(peak / len(chunk), 1.0)
            size = max(int(chunk_size), int(memory_budget / per_tensor))


def measure_ranges(
    model,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    chunk_size: int = 256,
    memory_budget: int = 2 << 30,
    providers=None,
    progress: bool | str = False,
) -> dict[str, TensorRange]:
    """Per-tensor statistics of every float tensor of ``model`` over ``feeds``.

    Covers graph inputs (from the feeds), initializers (static) and every node output (run). Returns
    ``{tensor name: TensorRange}``. Integer / bool tensors are skipped: they are not converted to fp16.
    """
    model = load_model(model)
    if not feeds:
        raise LatentfuseError("calibration needs at least one feed")
    stats = initializer_ranges(model)
    graph_inputs = [i.name for i in model.graph.input]
    for feed in feeds:
        for name in graph_inputs:
            value = feed.get(name)
            if value is not None and np.asarray(value).dtype in _FLOAT_DTYPES:
                stats.setdefault(name, TensorRange(name)).update(value)

    def visit(_index, values):
        for name, value in values.items():
            if isinstance(value, np.ndarray) and value.dtype in _FLOAT_DTYPES:
                stats.setdefault(name, TensorRange(name)).update(value)

    names = node_output_names(model) + [o.name for o in model.graph.output]
    run_tensors(model, feeds, names, visit, chunk_size=chunk_size, memory_budget=memory_budget,
                providers=providers, progress=progress)
    return stats
