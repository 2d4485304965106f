"""The deployment bundle: graphs + tokenizer + prompt cache + ``manifest.json``, written atomically.

A bundle is what ``latentfuse export --checkpoint DIR --out BUNDLE`` writes and what the Python runtime,
the engine builder and the C++ host read (docs/design.md "The manifest"). One export walks
:mod:`latentfuse.export.graphs` (specs) -> :mod:`latentfuse.export.onnx` -> :mod:`latentfuse.export.verify` -> this module. Everything
is written to a temporary sibling directory and renamed into place (:func:`latentfuse.model.atomic.atomic_dir`):
an interrupted or failed export (including a failed verification) leaves no bundle behind.

Layout::

    BUNDLE/manifest.json
    BUNDLE/<graph>.onnx, <graph>.onnx.data     text_encoder, vae_encoder, vae_decoder, dit_flow, dit_regression,
                                               fidelity (a model with a fidelity decoder only, model.fidelity)
    BUNDLE/spiece.model                        the prompt tokenizer (sentencepiece; T5 ids: pad 0, eos 1)
    BUNDLE/prompt_cache.safetensors            "<id>.embeds" [1, L_id, d_t] float32, "<id>.mask" [1, L_id] int64

``manifest.json`` (format ``latentfuse-bundle``, ``format_version`` 1, ``format_minor`` 1; read by
:mod:`latentfuse.runtime.manifest`, which also reads minor 0: bundles without ``format_minor`` nor tensor roles)::

    {"format": "latentfuse-bundle", "format_version": 1, "format_minor": 1,
     "graphs": {"<name>": {
         "kind": "vae_encoder|vae_decoder|text_encoder|dit|fidelity", "head": "flow|regression" (dit only),
         "moe_dispatch": "dense|grouped" (dit only: the MoE form in the graph, model.moe),
         "halo": N (fidelity only: rows of context, px on the 16-px grid, a strip needs on each side),
         "file": "<name>.onnx", "external_data": ["<name>.onnx.data"], "precision": "fp32|fp16|int8|fp8",
         "quantization": {...} (int8 / fp8 graphs: export.quantize's plan, errors and ONNX Runtime kernels),
         "exporter": "dynamo|torchscript", "exporter_fallback_reason": "..." (torchscript only), "opset": N,
         "inputs":  [{"name": "image", "role": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}, ...],
         "outputs": [{"name": "latent", "role": "latent", "dtype": "float32",
                      "shape": ["batch", 16, "latent_height", "latent_width"]}],
         "profile": {"min": {"<input>": [dims]}, "opt": {...}, "max": {...}},
         "tolerance": {"atol": a, "rtol": r}, "export_seconds": s}},
     "files": {"<relative path>": {"sha256": "<hex>", "bytes": N}},        every file but manifest.json
     "latent": {"channels": 16, "downsample": 8, "patch": 2, "scaling_factor": s, "shift_factor": f,
                "work_scale": k, "window": w},
     "resolution": {"min": 64, "max": 1024, "multiple": 16, "opt": 512,
                    "aspect_ratios": ["1:1", "4:3", "3:4", "16:9", "9:16"],
                    "min_height": 64, "min_width": 64, "max_height": 1024, "max_width": 1024},
     "text": {"tokenizer": "spiece.model", "max_length": L, "pad_id": 0, "eos_id": 1, "hidden_size": d,
              "vocab_size": V},
     "prompt_cache": {"file": "prompt_cache.safetensors", "prompts": {"<id>": "<text>"}},
     "sampler": {"name": ..., "steps": 5, "g": g, "prior": "gaussian|source_a|source_b|source_mean",
                 "prior_sigma": s (source priors only),        the prior the flow DiT was trained from
                 "start": t0 (where the model declares one)},  flow from the regression estimate (model.flow)
     "versions": {"latentfuse": ..., "torch": ..., "onnx": ..., "onnxruntime": ..., "opset": N},
     "source_checkpoint": "<abs path>", "engines": {},
     "quantization": {"precision": "int8|fp8", "level": ..., "target": "tensorrt|onnxruntime",
                      "graphs": [kinds], "modelopt": version,
                      "calibration": {sources, pairs, samples, crop, seed, prompts, sampler, flow_timesteps,
                                      feeds}},                  int8 / fp8 bundles only (export.quantize)
     "detail": {"clean": {sigma, radius, fused_candidate, gain, noise_k}, "safe": {...},
                "clean_prompts": [...], "off_prefixes": [...]}}   models with a detail path only (model.detail)

Tensor roles (``runtime.manifest.ROLE_NAMES``): hosts find a graph's tensors by ``role`` (image, latent,
token_ids, attention_mask, prompt_embeds, prompt_mask, noisy_latent, timestep, source_latent_a,
source_latent_b, velocity, fused_latent), falling back to the names of that table when a bundle has no roles.

Symbolic dims: ``batch``, ``height``/``width`` (pixels, multiples of 16), ``latent_height`` =
height/8, ``latent_width`` = width/8, ``text_length`` (tokens incl. EOS, <= ``text.max_length``).
Latents are normalised: ``z = (mean(E(x)) - shift_factor) · scaling_factor``. Prompt-cache embeddings
are zero at padding, so a host may zero-pad them to any prompt length. ``work_scale`` k is the model's
working scale (``model.work_scale``): a host enlarges the pair k times (bicubic) before ``vae_encoder``
and shrinks the decoded image back (k x k box means); the profiles are in enlarged pixels. ``window``
w > 0: the model's networks run on at most w x w enlarged pixels, a larger pair in overlapping windows
(``runtime.backends.tiled``); 0: whole images. ``detail``: after shrinking back, a host runs the pixel-space
detail path (``model.detail.restore_detail``) with the parameters ``DetailSettings.mode_for(prompt)`` picks,
before any gray conversion. ``engines`` is filled by the
engine builder (its files are added to ``files``, see :func:`record_files`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from latentfuse.model.flow import DEFAULT_G, DEFAULT_SAMPLER, DEFAULT_STEPS
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.geometry import HEADS, LATENT_FACTOR, PATCH
from latentfuse.runtime.manifest import (FORMAT, FORMAT_MINOR, FORMAT_VERSION, MANIFEST_NAME, PRECISIONS,
                                         PROMPT_CACHE_NAME, QUANTIZED_PRECISIONS, TOKENIZER_NAME, file_entry,
                                         write_json)


# ---------------------------------------------------------------------- manifest writing
def record_files(bundle_dir: str | os.PathLike, manifest: dict, relpaths: Sequence[str]) -> dict:
    """Hash ``relpaths`` (relative to the bundle) into ``manifest["files"]``; returns the manifest."""
    root = Path(bundle_dir)
    files = manifest.setdefault("files", {})
    for rel in relpaths:
        path = root / rel
        if not path.is_file():
            raise LatentfuseError(f"{root}: cannot record {rel}: no such file")
        files[Path(rel).as_posix()] = file_entry(path)
    return manifest


def save_manifest(bundle_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (the writers: export, the engine builder, aoti)."""
    return write_json(Path(bundle_dir) / MANIFEST_NAME, manifest)


# ---------------------------------------------------------------------- writing a bundle
def _versions(opset: int) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("latentfuse", "torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    out["opset"] = opset
    return out


def latent_section(components) -> dict:
    """The manifest's ``latent`` section: how images map to the latents the graphs exchange."""
    vae = components.vae
    return {"channels": int(vae.latent_channels), "downsample": LATENT_FACTOR, "patch": PATCH,
            "scaling_factor": float(vae.scaling_factor), "shift_factor": float(vae.shift_factor),
            "work_scale": int(components.work_scale), "window": int(components.window)}


def detail_section(components) -> dict:
    """``{"detail": DetailSettings.to_dict()}`` for a model with a detail path (model.detail), else ``{}``."""
    return {} if components.detail is None else {"detail": components.detail.to_dict()}


def sampler_section(components) -> dict:
    """The manifest's ``sampler`` section: the runtime's defaults and the prior the flow DiT was trained from."""
    section = {"name": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS, "g": DEFAULT_G,
               "prior": "gaussian", **components.sampler}
    flow = components.dits.get("flow")
    if flow is not None and flow.config.prior != "gaussian":
        section.update(prior=flow.config.prior, prior_sigma=float(flow.config.prior_sigma))
    return section


def write_prompt_cache(text_encoder, prompts: dict[str, str], path: Path) -> None:
    """Embeddings of the canonical prompts, each at its own length (no padding)."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    with torch.no_grad():
        for key, text in prompts.items():
            embeds, mask = text_encoder.encode([text])
            tensors[f"{key}.embeds"] = embeds.float().cpu().contiguous()
            tensors[f"{key}.mask"] = mask.to(torch.int64).cpu().contiguous()
    save_file(tensors, str(path), metadata={"format": "latentfuse-prompt-cache"})


def write_text_assets(bundle_dir: Path, components, prompts: dict[str, str]) -> None:
    """The bundle's tokenizer and prompt cache (every bundle kind ships both)."""
    components.text_encoder.tokenizer.save(bundle_dir / TOKENIZER_NAME)
    write_prompt_cache(components.text_encoder, prompts, bundle_dir / PROMPT_CACHE_NAME)


def bundle_manifest(components, specs: dict, graphs: dict, prompts: dict[str, str], **extra) -> dict:
    """The manifest of a bundle of ``graphs`` (entries) exported from ``specs``: the sections every bundle
    kind shares (ONNX, AOTInductor), then ``extra`` (versions, source_checkpoint, tables), then ``detail``."""
    text = components.text_encoder
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "format_minor": FORMAT_MINOR,
        "graphs": graphs,
        "files": {},
        "latent": latent_section(components),
        "resolution": next(iter(specs.values())).resolution.to_manifest(),
        "text": {"tokenizer": TOKENIZER_NAME, "max_length": int(text.max_length),
                 "pad_id": int(text.tokenizer.pad_id), "eos_id": int(text.tokenizer.eos_id),
                 "hidden_size": int(text.hidden_size), "vocab_size": int(text.tokenizer.vocab_size)},
        "prompt_cache": {"file": PROMPT_CACHE_NAME, "prompts": dict(prompts)},
        "sampler": sampler_section(components),
    }
    manifest.update(extra)
    manifest.setdefault("engines", {})
    manifest.update(detail_section(components))
    return manifest


def _convert_fp16(tmp: Path, results: dict, plan_path) -> None:
    """The single FP16 call site: each FP32 graph -> mixed-precision FP16 via export.fp16 and the
    calibration precision plan (FP32 islands chosen from measured ranges, docs/design.md "Precision")."""
    if plan_path is None:
        raise LatentfuseError("fp16 export needs calibration: run `latentfuse calibrate` on an fp32 bundle "
                              "and pass its precision plan with --plan PLAN")
    try:
        from latentfuse.calibration.plan import load_plan
        from latentfuse.export.fp16 import convert_bundle_graph
    except ImportError as err:
        raise LatentfuseError(f"fp16 export needs calibration: the FP16 converter is unavailable ({err})") from None
    plan = load_plan(plan_path)
    stage = Path(tempfile.mkdtemp(prefix=".fp16-", dir=tmp))
    try:
        for name, result in results.items():
            entry = plan.get("graphs", {}).get(name)
            if entry is None:
                raise LatentfuseError(f"precision plan {plan_path} has no entry for graph {name!r} "
                                      f"(it covers {', '.join(plan.get('graphs', {})) or 'nothing'})")
            try:
                written = convert_bundle_graph(result.path, stage / result.path.name, entry)["files"]
            except LatentfuseError:
                raise
            except Exception as err:  # noqa: BLE001 - name the graph; the converter's error is the detail
                raise LatentfuseError(f"FP16 conversion of {name!r} failed: {type(err).__name__}: "
                                      f"{str(err).strip().splitlines()[0][:300]}") from err
            for f in result.files:
                (tmp / f).unlink()
            result.files = []
            for f in map(Path, written):
                os.replace(f, tmp / f.name)
                result.files.append(f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_bundle(checkpoint: str | os.PathLike, out: str | os.PathLike, *, heads: Sequence[str] | None = None,
                  precision: str = "fp32", opset: int | None = None, force: bool = False,
                  plan: str | os.PathLike | None = None, exporter: str = "auto", verify: bool = True,
                  lint: bool = True, components=None, progress: bool = True, on_report=None,
                  quantization=None) -> Path:
    """Export a model directory (``FusionComponents``) to a verified deployment bundle at ``out``.

    ``precision`` int8 / fp8: post-training quantization (:mod:`latentfuse.export.quantize`) of the graphs
    ``quantization`` (an :class:`latentfuse.export.quantize.QuantOptions`, default: the DiTs) names.

    ``heads``: DiT heads to export (default: all the checkpoint has). ``components``: an already
    loaded model (``checkpoint`` is then only recorded). Verification failures raise, so a bundle
    that exists has passed ONNX Runtime parity and the static checks; the
    :class:`~latentfuse.export.verify.VerifyReport` goes to ``on_report`` (default: printed as tables).
    """
    import onnx
    import torch
    from tqdm import tqdm

    from latentfuse.export.graphs import graph_specs
    from latentfuse.export.onnx import DEFAULT_OPSET, export_graph
    from latentfuse.model.atomic import atomic_dir

    opset = DEFAULT_OPSET if opset is None else int(opset)
    if precision not in PRECISIONS:
        raise LatentfuseError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and plan is None:
        # fail before the (slow) export rather than after it
        _convert_fp16(Path(out), {}, None)
    if precision in QUANTIZED_PRECISIONS:
        from latentfuse.export.quantize import MIN_OPSET, QuantOptions, require_modelopt

        require_modelopt(precision)  # before any slow work
        quantization = quantization or QuantOptions(precision=precision)
        if quantization.precision != precision:
            raise LatentfuseError(f"--precision {precision} but the quantization options say {quantization.precision}")
        if opset < MIN_OPSET:
            raise LatentfuseError(f"--precision {precision} needs --opset {MIN_OPSET} or newer, got {opset}")
    elif quantization is not None:
        raise LatentfuseError(f"quantization options are for --precision int8 / fp8, not {precision}")
    checkpoint = Path(checkpoint).resolve()
    out = Path(out)
    if components is None:
        if not checkpoint.is_dir():
            raise LatentfuseError(f"checkpoint directory {checkpoint} does not exist")
        from latentfuse.model.components import FusionComponents

        components = FusionComponents.from_pretrained(checkpoint)
    if out.exists() and not force:
        raise LatentfuseError(f"{out} already exists (pass --force to replace it)")
    heads = list(heads) if heads else [h for h in HEADS if h in components.dits]
    specs = graph_specs(components, heads)

    from latentfuse.model.data.prompts import canonical_prompts

    prompts = canonical_prompts()
    torch_threads = torch.get_num_threads()
    with atomic_dir(out, overwrite=force) as tmp:
        results = {}
        bar = tqdm(specs.values(), desc="export", unit="graph", disable=not progress)
        for spec in bar:
            bar.set_postfix_str(spec.name)
            results[spec.name] = result = export_graph(spec, spec.module(components), tmp, opset=opset,
                                                       exporter=exporter)
            how = result.exporter + (f" (dynamo failed: {result.fallback_reason})" if result.fallback_reason else "")
            tqdm.write(f"  {spec.name}: {how}, opset {result.opset}, {result.seconds:.1f} s", file=None)
        torch.set_num_threads(torch_threads)  # the exporters may change it
        if precision == "fp16":
            _convert_fp16(tmp, results, plan)
        quantized = {}
        if precision in QUANTIZED_PRECISIONS:
            from latentfuse.export.quantize import modelopt_version, quantize_bundle_graphs

            quantized = quantize_bundle_graphs(tmp, results, specs, components, quantization, opset=opset,
                                               progress=progress)

        write_text_assets(tmp, components, prompts)
        graphs = {}
        for name, spec in specs.items():
            result = results[name]
            entry = spec.to_manifest()
            graph_file = f"{name}.onnx"
            real_opset = next((i.version for i in onnx.load(str(tmp / graph_file), load_external_data=False)
                               .opset_import if i.domain in ("", "ai.onnx")), result.opset)
            entry.update({"file": graph_file, "external_data": [f for f in result.files if f != graph_file],
                          "precision": precision, "exporter": result.exporter, "opset": real_opset,
                          "export_seconds": round(result.seconds, 2)})
            if result.fallback_reason:
                entry["exporter_fallback_reason"] = result.fallback_reason
            if precision in QUANTIZED_PRECISIONS:
                q = quantized["graphs"].get(name)
                entry["precision"] = q["precision"] if q and q["policy"] == "quantized" else "fp32"
                if q:
                    entry["quantization"] = q
                    if "moe_dispatch" in entry:
                        entry["moe_dispatch"] = "dense"  # quantizers wrap the experts' Linear layers
            # keep the documented key order: kind, head, file, ... inputs, outputs, profile
            graphs[name] = {k: entry[k] for k in ("kind", "head", "moe_dispatch", "halo", "file", "external_data", "precision", "quantization", "exporter",
                                                  "exporter_fallback_reason", "opset", "inputs", "outputs",
                                                  "profile", "tolerance", "export_seconds") if k in entry}
        manifest = bundle_manifest(components, specs, graphs, prompts, versions=_versions(opset),
                                   source_checkpoint=str(checkpoint))
        if precision in QUANTIZED_PRECISIONS:
            manifest["quantization"] = {"precision": precision, "level": quantization.level,
                                        "target": quantization.target,
                                        "graphs": list(quantization.graphs), "modelopt": modelopt_version(),
                                        "calibration": quantized["calibration"]}
        relpaths = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        record_files(tmp, manifest, relpaths)
        save_manifest(tmp, manifest)

        if verify:
            from latentfuse.export.verify import verify_bundle

            report = verify_bundle(tmp, components=components, lint=lint, progress=progress)
            if on_report is None:
                print(report.format())
            else:
                on_report(report)
            if not report.ok:
                raise LatentfuseError("the exported bundle failed verification (nothing was written to "
                                      f"{out}): " + "; ".join(report.failures()))
    return out
