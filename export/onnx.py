"""Export one graph spec to ONNX with dynamic batch, H, W and text length.

``torch.onnx.export(dynamo=True, dynamic_shapes=spec.dynamic_shapes())`` first (the default exporter
of torch >= 2.9: ``torch.export`` then onnxscript, whose optimizer folds the shape arithmetic), traced
at the spec's example (batch 2, 96x128 px, 9 tokens: no dim of size 1, so nothing specialises). If
that fails, the graph falls back to the TorchScript exporter (``dynamo=False``) with ``dynamic_axes``;
which exporter produced each graph is returned and recorded in the manifest.

After export the graph's I/O dim names are renamed to the spec's symbols (``batch``, ``height``,
``latent_height``, ``text_length``, ...; the dynamo exporter names derived dims ``2*grid_height``),
the weights are stored as external data next to the graph (``<name>.onnx.data``, so graphs of any size
stay under protobuf's 2 GB limit and the checker runs in the same mode for all), and
:func:`latentfuse.export.checks.check_symbolic_dims` confirms the declared dims stayed symbolic.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from latentfuse.export.checks import check_symbolic_dims
from latentfuse.export.graphs import GraphSpec
from latentfuse.model.errors import LatentfuseError

# TensorRT 10.0-10.3 (JetPack 6) parse opsets 9-20; newer 10.x and 11.x go to 24.
DEFAULT_OPSET = 20
EXPORTERS = ("auto", "dynamo", "torchscript")
TORCHSCRIPT_MAX_OPSET = 20


@dataclass
class ExportedGraph:
    name: str
    path: Path
    files: list[str]                       # graph + external data, relative to the output directory
    exporter: str                          # "dynamo" | "torchscript"
    opset: int
    seconds: float
    fallback_reason: str | None = None


def _first_line(err: BaseException) -> str:
    """One line naming the failure (for torch.onnx's multi-page errors: their exception summary)."""
    text = str(err)
    marker = "## Exception summary"
    if marker in text:
        lines = [ln.strip() for ln in text[text.index(marker) + len(marker):].splitlines() if ln.strip()]
        if lines:
            return lines[0][:400]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:400]


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints and tracer warnings (the CLI shows its own progress)."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        import logging

        loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export",
                                                  "torch.fx.experimental.symbolic_shapes")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _export_dynamo(spec: GraphSpec, module, args, path: Path, opset: int, dynamic: bool) -> None:
    torch.onnx.export(
        module, args, str(path), dynamo=True, external_data=True, optimize=True, verbose=False,
        dynamic_shapes=spec.dynamic_shapes() if dynamic else None,
        input_names=spec.input_names, output_names=spec.output_names, opset_version=opset,
    )


def _export_torchscript(spec: GraphSpec, module, args, path: Path, opset: int, dynamic: bool) -> None:
    torch.onnx.export(
        module, args, str(path), dynamo=False, input_names=spec.input_names,
        output_names=spec.output_names, opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
        dynamic_axes=spec.dynamic_axes() if dynamic else None, do_constant_folding=True,
    )


def rename_io_dims(model, spec: GraphSpec) -> dict[str, str]:
    """Rename the exporter's dim symbols to the spec's (``2*grid_height`` -> ``latent_height``) on the
    graph I/O and every value_info; returns the mapping applied."""
    mapping: dict[str, str] = {}
    for declared, actual in ((spec.inputs, model.graph.input), (spec.outputs, model.graph.output)):
        by_name = {v.name: v for v in actual}
        for tensor in declared:
            value = by_name.get(tensor.name)
            if value is None:
                continue
            for want, dim in zip(tensor.shape, value.type.tensor_type.shape.dim):
                if isinstance(want, str) and dim.dim_param and dim.dim_param != want:
                    if mapping.get(dim.dim_param, want) != want:
                        raise LatentfuseError(f"graph {spec.name!r}: the exporter gave one symbol "
                                              f"{dim.dim_param!r} to both {mapping[dim.dim_param]!r} and {want!r}")
                    mapping[dim.dim_param] = want
    if mapping:
        values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
        for value in values:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in mapping:
                    dim.dim_param = mapping[dim.dim_param]
    return mapping


def save_with_external_data(model, path: Path) -> list[str]:
    """Write ``path`` + ``path.name + '.data'`` (all weights > 1 kB external); returns the file names."""
    import onnx

    data_name = path.name + ".data"
    (path.parent / data_name).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024, convert_attribute=False)
    files = [path.name]
    if (path.parent / data_name).is_file():
        files.append(data_name)
    return files


def export_graph(spec: GraphSpec, module: torch.nn.Module, out_dir: str | os.PathLike, *,
                 opset: int = DEFAULT_OPSET, exporter: str = "auto", dynamic: bool = True,
                 check: bool = True, seed: int = 0) -> ExportedGraph:
    """Export ``module`` (from ``spec.module(components)``) to ``out_dir/<spec.name>.onnx``.

    ``exporter``: ``auto`` (dynamo, TorchScript on failure), ``dynamo`` or ``torchscript``.
    ``dynamic=False`` exports at the example shape only (used by tests of the symbolic-dims check).
    """
    import onnx

    if exporter not in EXPORTERS:
        raise LatentfuseError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not 7 <= opset <= 24:
        raise LatentfuseError(f"opset {opset} is outside the range this exporter supports (7-24)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    args = tuple(spec.example_inputs(seed=seed).values())
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.name}.export-", dir=out_dir))
    start = time.perf_counter()
    used, reason = exporter, None
    try:
        raw = stage / "graph.onnx"
        with torch.no_grad(), _quiet():
            if exporter in ("auto", "dynamo"):
                try:
                    _export_dynamo(spec, module, args, raw, opset, dynamic)
                    used = "dynamo"
                except Exception as err:  # noqa: BLE001 - any exporter failure triggers the fallback
                    if exporter == "dynamo":
                        raise LatentfuseError(f"dynamo export of {spec.name!r} failed: {_first_line(err)}") from err
                    reason = _first_line(err)
                    for p in stage.iterdir():
                        p.unlink()
            if used != "dynamo":
                try:
                    _export_torchscript(spec, module, args, raw, opset, dynamic)
                    used = "torchscript"
                except Exception as err:  # noqa: BLE001
                    detail = f" (after dynamo failed: {reason})" if reason else ""
                    raise LatentfuseError(f"export of {spec.name!r} failed: {_first_line(err)}{detail}") from err
        model = onnx.load(str(raw))          # resolves the exporter's external data in ``stage``
        rename_io_dims(model, spec)
        final = out_dir / f"{spec.name}.onnx"
        files = save_with_external_data(model, final)
        del model
        if check and dynamic:
            check_symbolic_dims(final, spec)
        opset_used = next((i.version for i in onnx.load(str(final), load_external_data=False).opset_import
                           if i.domain in ("", "ai.onnx")), opset)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ExportedGraph(spec.name, final, files, used, int(opset_used), time.perf_counter() - start, reason)
