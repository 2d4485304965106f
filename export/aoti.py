"""AOTInductor packages (``.pt2``) of the deployed graphs, for the C++ host's libtorch backend.

``latentfuse export --aoti`` calls :func:`add_aoti_packages` after the ONNX bundle is written: each
graph of :mod:`latentfuse.export.graphs` is captured with ``torch.export.export`` using the same dynamic shapes
as its ONNX export (:meth:`latentfuse.export.graphs.GraphSpec.dynamic_shapes`: batch, a 16-px grid symbol per
spatial axis, text length), compiled ahead of time by Inductor and packaged with
``torch._inductor.aoti_compile_and_package`` (PyTorch "AOTInductor" docs). The C++ host loads them with
``torch::inductor::AOTIModelPackageLoader`` (runtime/cpp/src/backend_aoti.cpp), feeding the inputs in
the graph spec's input order.

Manifest additions (the ``.pt2`` files are also hashed into ``files``)::

    "aoti": {"<graph>": {"file": "<graph>.pt2", "device": "cpu", "torch": "<version>", "compile_seconds": s}}
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.geometry import HEADS

AOTI_SUFFIX = ".pt2"
# Batch bound of the packages: Inductor's guards cap some graphs (the VAE decoder) below
# export.graphs.EXPORT_MAX_BATCH; hosts run batch 1 (DiT, decoder) and 2 (encoder).
AOTI_MAX_BATCH = 32


def dynamic_shapes(spec) -> tuple[dict, ...]:
    """The spec's ``torch.export`` dynamic shapes (16-px grid symbols, text length) with the batch
    symbol bounded by :data:`AOTI_MAX_BATCH`."""
    from torch.export import Dim

    from latentfuse.runtime.manifest import BATCH

    batch = Dim(BATCH, min=1, max=AOTI_MAX_BATCH)
    return tuple({axis: (batch if getattr(dim, "__name__", None) == BATCH else dim) for axis, dim in shapes.items()}
                 for shapes in spec.dynamic_shapes())


def compile_graph(spec, module, out_path: str | os.PathLike, device: str = "cpu") -> float:
    """``torch.export`` + AOTInductor-compile one graph to ``out_path``; returns the seconds taken.

    Exported at the spec's example (batch >= 2, unequal sides) with the spec's dynamic shapes, so the
    package accepts every batch, size and prompt length the ONNX graph does.
    """
    import torch

    start = time.perf_counter()
    inputs = tuple(t.to(device) for t in spec.example_inputs().values())
    module = module.to(device).eval()
    try:
        with torch.no_grad():
            program = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes(spec), strict=False)
            # O0 for the generated wrapper: it only sequences kernel calls, and its C++ compile is a
            # large part of the packaging time; the kernels themselves keep Inductor's -O3.
            path = torch._inductor.aoti_compile_and_package(
                program, package_path=str(out_path),
                inductor_configs={"aot_inductor.compile_wrapper_opt_level": "O0"})
    except Exception as err:  # noqa: BLE001 - export / inductor raise many error types
        raise LatentfuseError(f"AOTInductor compile of graph {spec.name!r} failed: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if Path(path) != Path(out_path) or not Path(out_path).is_file():
        raise LatentfuseError(f"AOTInductor did not write {out_path}")
    return time.perf_counter() - start


def add_aoti_packages(bundle_dir: str | os.PathLike, components, graphs: Sequence[str] | None = None,
                      device: str = "cpu", progress: bool = True) -> dict:
    """Compile the bundle's graphs (all, or ``graphs``) to ``<graph>.pt2`` and record them in the
    manifest (``aoti`` table and ``files`` hashes). ``components`` is the model the bundle was
    exported from (``model.components.FusionComponents``). Returns the ``aoti`` table.

    Each package is written to a temporary name and renamed, and the manifest is saved atomically,
    so an interrupted compile leaves the bundle as it was.
    """
    import torch
    from tqdm import tqdm

    from latentfuse.export.bundle import record_files, save_manifest
    from latentfuse.runtime.manifest import load_manifest
    from latentfuse.export.graphs import graph_specs

    root = Path(bundle_dir)
    manifest = load_manifest(root, verify_hashes=False)
    names = list(graphs) if graphs else list(manifest["graphs"])
    heads = [manifest["graphs"][n]["head"] for n in manifest["graphs"] if manifest["graphs"][n].get("kind") == "dit"]
    specs = graph_specs(components, heads)
    missing = [n for n in names if n not in specs or n not in manifest["graphs"]]
    if missing:
        raise LatentfuseError(f"{root}: cannot AOT-compile {', '.join(missing)}: not a graph of this bundle/model "
                              f"(graphs: {', '.join(manifest['graphs'])})")
    table = dict(manifest.get("aoti") or {})
    written = []
    threads = torch.get_num_threads()
    for name in tqdm(names, desc="aoti", unit="graph", disable=not progress):
        spec = specs[name]
        final = root / f"{name}{AOTI_SUFFIX}"
        tmp = root / f".{name}.tmp{AOTI_SUFFIX}"
        try:
            seconds = compile_graph(spec, spec.module(components), tmp, device=device)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        torch.set_num_threads(threads)
        table[name] = {"file": final.name, "device": device, "torch": torch.__version__,
                       "compile_seconds": round(seconds, 2)}
        written.append(final.name)
    manifest["aoti"] = table
    record_files(root, manifest, written)
    save_manifest(root, manifest)
    return table




def export_aoti_bundle(components, out: str | os.PathLike, heads: Sequence[str] | None = None, *,
                       force: bool = False, device: str = "cpu", checkpoint: str | os.PathLike | None = None,
                       progress: bool = True) -> Path:
    """A bundle of AOTInductor packages only (no ONNX graphs), for C++ hosts on libtorch.

    Same layout and manifest as :func:`latentfuse.export.bundle.export_bundle` (tokenizer, prompt cache, latent,
    resolution, text and sampler sections), with each graph's ``file`` the ``<graph>.pt2`` package
    and ``"precision": "fp32"``. Written atomically (:func:`latentfuse.model.atomic.atomic_dir`).
    """
    import torch
    from tqdm import tqdm

    from latentfuse.export.bundle import bundle_manifest, record_files, save_manifest, write_text_assets
    from latentfuse.export.graphs import graph_specs
    from latentfuse.model.atomic import atomic_dir
    from latentfuse.model.data.prompts import canonical_prompts

    out = Path(out)
    if out.exists() and not force:
        raise LatentfuseError(f"{out} already exists (pass --force to replace it)")
    heads = list(heads) if heads else [h for h in HEADS if h in components.dits]
    specs = graph_specs(components, heads)
    prompts = canonical_prompts()
    threads = torch.get_num_threads()
    with atomic_dir(out, overwrite=force) as tmp:
        graphs, table = {}, {}
        for name, spec in tqdm(specs.items(), desc="aoti", unit="graph", disable=not progress):
            seconds = compile_graph(spec, spec.module(components), tmp / f"{name}{AOTI_SUFFIX}", device=device)
            torch.set_num_threads(threads)
            entry = spec.to_manifest()
            entry.update({"file": f"{name}{AOTI_SUFFIX}", "external_data": [], "precision": "fp32",
                          "exporter": "aoti"})
            graphs[name] = entry
            table[name] = {"file": f"{name}{AOTI_SUFFIX}", "device": device, "torch": torch.__version__,
                           "compile_seconds": round(seconds, 2)}
        write_text_assets(tmp, components, prompts)
        manifest = bundle_manifest(components, specs, graphs, prompts, versions={"torch": torch.__version__},
                                   source_checkpoint=str(checkpoint) if checkpoint else None, engines={},
                                   aoti=table)
        record_files(tmp, manifest, sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()))
        save_manifest(tmp, manifest)
    return out


__all__ = ["AOTI_SUFFIX", "add_aoti_packages", "compile_graph", "export_aoti_bundle"]
