"""The deployment bundle: graphs + tokenizer + prompt cache + ``manifest.json``, written atomically.

A bundle is what ``latentfuse export --checkpoint DIR --out BUNDLE`` writes and what the Python runtime,
the engine builder and the C++ host read (docs/design.md "The manifest"). One export walks
:mod:`export.graphs` (specs) -> :mod:`export.onnx` -> :mod:`export.verify` -> this module. Everything
is written to a temporary sibling directory and renamed into place (:func:`model.atomic.atomic_dir`):
an interrupted or failed export (including a failed verification) leaves no bundle behind.

Layout::

    BUNDLE/manifest.json
    BUNDLE/<graph>.onnx, <graph>.onnx.data     text_encoder, vae_encoder, vae_decoder, dit_flow, dit_regression
    BUNDLE/spiece.model                        the prompt tokenizer (sentencepiece; T5 ids: pad 0, eos 1)
    BUNDLE/prompt_cache.safetensors            "<id>.embeds" [1, L_id, d_t] float32, "<id>.mask" [1, L_id] int64

``manifest.json`` (format ``latentfuse-bundle``, ``format_version`` 1)::

    {"format": "latentfuse-bundle", "format_version": 1,
     "graphs": {"<name>": {
         "kind": "vae_encoder|vae_decoder|text_encoder|dit", "head": "flow|regression" (dit only),
         "moe_dispatch": "dense|grouped" (dit only: the MoE form in the graph, model.moe),
         "file": "<name>.onnx", "external_data": ["<name>.onnx.data"], "precision": "fp32|fp16|int8|fp8",
         "quantization": {...} (int8 / fp8 graphs: export.quantize's plan, errors and ONNX Runtime kernels),
         "exporter": "dynamo|torchscript", "exporter_fallback_reason": "..." (torchscript only), "opset": N,
         "inputs":  [{"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}, ...],
         "outputs": [{"name": "latent", "dtype": "float32", "shape": ["batch", 16, "latent_height", "latent_width"]}],
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
                 "prior_sigma": s (source priors only)},       the prior the flow DiT was trained from
     "versions": {"latentfuse": ..., "torch": ..., "onnx": ..., "onnxruntime": ..., "opset": N},
     "source_checkpoint": "<abs path>", "engines": {},
     "quantization": {"precision": "int8|fp8", "level": ..., "target": "tensorrt|onnxruntime",
                      "graphs": [kinds], "modelopt": version,
                      "calibration": {sources, pairs, samples, crop, seed, prompts, sampler, flow_timesteps,
                                      feeds}},                  int8 / fp8 bundles only (export.quantize)
     "detail": {"clean": {sigma, radius, fused_candidate, gain, noise_k}, "safe": {...},
                "clean_prompts": [...], "off_prefixes": [...]}}   models with a detail path only (model.detail)

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

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from model.errors import LatentfuseError

FORMAT = "latentfuse-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "spiece.model"
PROMPT_CACHE_NAME = "prompt_cache.safetensors"
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
QUANTIZED = ("int8", "fp8")           # export.quantize: explicit Q/DQ graphs


# ---------------------------------------------------------------------- hashes and manifest I/O
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


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


def dumps(obj, indent: int = 2, _level: int = 0) -> str:
    """JSON with nested objects indented and lists of scalars (shapes, dims) kept on one line."""
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in obj):
        items = [inner + dumps(v, indent, _level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def save_manifest(bundle_dir: str | os.PathLike, manifest: dict) -> Path:
    from model.atomic import atomic_file

    path = Path(bundle_dir) / MANIFEST_NAME
    with atomic_file(path) as tmp:
        tmp.write_text(dumps(manifest) + "\n")
    return path


def load_manifest(bundle_dir: str | os.PathLike, verify_hashes: bool = True) -> dict:
    """Read ``manifest.json``; every listed file must exist with its recorded size and (when
    ``verify_hashes``) sha256, so a missing or tampered file is a clear error naming it."""
    root = Path(bundle_dir)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise LatentfuseError(f"bundle directory {root} does not exist")
    if not path.is_file():
        raise LatentfuseError(f"{root} is not a deployment bundle (no {MANIFEST_NAME}); "
                              f"make one with `latentfuse export --checkpoint DIR --out BUNDLE`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LatentfuseError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LatentfuseError(f"{path} is not a latentfuse bundle manifest (format {manifest.get('format')!r})"
                              if isinstance(manifest, dict) else f"{path} is not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LatentfuseError(f"{path} has format_version {version!r}; this latentfuse reads up to {FORMAT_VERSION}")
    files = manifest.get("files")
    graphs = manifest.get("graphs")
    if not isinstance(files, dict) or not isinstance(graphs, dict) or not graphs:
        raise LatentfuseError(f"{path} lacks its 'files' / 'graphs' tables")
    for name, entry in graphs.items():
        for rel in [entry.get("file"), *entry.get("external_data", [])]:
            if rel not in files:
                raise LatentfuseError(f"{path}: graph {name!r} file {rel!r} is not listed in 'files'")
    for rel, entry in files.items():
        target = root / rel
        if not target.is_file():
            raise LatentfuseError(f"{root}: {rel} is missing (listed in {MANIFEST_NAME})")
        size = target.stat().st_size
        if size != entry.get("bytes"):
            raise LatentfuseError(f"{root}: {rel} was modified after export "
                                  f"({size} bytes, the manifest records {entry.get('bytes')})")
        if verify_hashes:
            digest = sha256_file(target)
            if digest != entry.get("sha256"):
                raise LatentfuseError(f"{root}: {rel} was modified after export (sha256 {digest[:16]}... "
                                      f"!= manifest {str(entry.get('sha256'))[:16]}...)")
    return manifest


# ---------------------------------------------------------------------- reading a bundle
class Bundle:
    """Read access for hosts: graph paths and interfaces, tokenizer, prompt cache, defaults."""

    def __init__(self, root: str | os.PathLike, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | os.PathLike, verify_hashes: bool = True) -> "Bundle":
        return cls(root, load_manifest(root, verify_hashes=verify_hashes))

    # graphs
    @property
    def graph_names(self) -> list[str]:
        return list(self.manifest["graphs"])

    @property
    def heads(self) -> list[str]:
        return [e["head"] for e in self.manifest["graphs"].values() if e.get("kind") == "dit"]

    def graph(self, name: str) -> dict:
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise LatentfuseError(f"{self.root}: the bundle has no {name!r} graph (it has {', '.join(graphs)})")
        return graphs[name]

    def graph_path(self, name: str) -> Path:
        return self.root / self.graph(name)["file"]

    def dit_graph(self, head: str) -> str:
        for name, entry in self.manifest["graphs"].items():
            if entry.get("kind") == "dit" and entry.get("head") == head:
                return name
        raise LatentfuseError(f"{self.root}: the bundle has no {head!r} DiT (heads: {', '.join(self.heads) or 'none'})")

    def spec(self, name: str):
        from export.graphs import GraphSpec

        return GraphSpec.from_manifest(name, self.graph(name), self.manifest.get("resolution"),
                                       self.manifest.get("text"))

    def input_names(self, name: str) -> list[str]:
        return [t["name"] for t in self.graph(name)["inputs"]]

    def output_names(self, name: str) -> list[str]:
        return [t["name"] for t in self.graph(name)["outputs"]]

    def profile(self, name: str) -> dict:
        return self.graph(name)["profile"]

    # text
    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest["text"]["tokenizer"]

    @property
    def prompts(self) -> dict[str, str]:
        return dict((self.manifest.get("prompt_cache") or {}).get("prompts", {}))

    def prompt_cache(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """prompt id -> (embeds [1, L, d] float32, mask [1, L] int64)."""
        from safetensors.numpy import load_file

        entry = self.manifest.get("prompt_cache")
        if not entry:
            return {}
        path = self.root / entry["file"]
        try:
            tensors = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error type
            raise LatentfuseError(f"cannot read the prompt cache {path}: {err}") from None
        out = {}
        for key in entry.get("prompts", {}):
            if f"{key}.embeds" not in tensors or f"{key}.mask" not in tensors:
                raise LatentfuseError(f"{path} has no embedding for prompt id {key!r}")
            out[key] = (tensors[f"{key}.embeds"], tensors[f"{key}.mask"].astype(np.int64))
        return out

    def prompt_embedding(self, key_or_text: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Cached (embeds, mask) of a canonical prompt, by id or by its exact text; None if not cached."""
        prompts = self.prompts
        key = key_or_text if key_or_text in prompts else next(
            (k for k, text in prompts.items() if text == key_or_text), None)
        return None if key is None else self.prompt_cache()[key]

    # defaults
    @property
    def latent(self) -> dict:
        return dict(self.manifest["latent"])

    @property
    def resolution(self) -> dict:
        return dict(self.manifest["resolution"])

    @property
    def sampler(self) -> dict:
        return dict(self.manifest.get("sampler") or {})


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
    from export.graphs import DOWNSAMPLE, PATCH

    vae = components.vae
    return {"channels": int(vae.latent_channels), "downsample": DOWNSAMPLE, "patch": PATCH,
            "scaling_factor": float(vae.scaling_factor), "shift_factor": float(vae.shift_factor),
            "work_scale": int(components.work_scale), "window": int(components.window)}


def detail_section(components) -> dict:
    """``{"detail": DetailSettings.to_dict()}`` for a model with a detail path (model.detail), else ``{}``."""
    return {} if components.detail is None else {"detail": components.detail.to_dict()}


def sampler_section(components) -> dict:
    """The manifest's ``sampler`` section: the runtime's defaults and the prior the flow DiT was trained from."""
    from runtime import samplers

    section = {"name": samplers.DEFAULT_SAMPLER, "steps": samplers.DEFAULT_STEPS, "g": samplers.DEFAULT_G,
               "prior": "gaussian"}
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


def _convert_fp16(tmp: Path, results: dict, plan_path) -> None:
    """The single FP16 call site: each FP32 graph -> mixed-precision FP16 via export.fp16 and the
    calibration precision plan (FP32 islands chosen from measured ranges, docs/design.md "Precision")."""
    if plan_path is None:
        raise LatentfuseError("fp16 export needs calibration: run `latentfuse calibrate` on an fp32 bundle "
                              "and pass its precision plan with --plan PLAN")
    try:
        from calibration.plan import load_plan
        from export.fp16 import convert_bundle_graph
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

    ``precision`` int8 / fp8: post-training quantization (:mod:`export.quantize`) of the graphs
    ``quantization`` (an :class:`export.quantize.QuantOptions`, default: the DiTs) names.

    ``heads``: DiT heads to export (default: all the checkpoint has). ``components``: an already
    loaded model (``checkpoint`` is then only recorded). Verification failures raise, so a bundle
    that exists has passed ONNX Runtime parity and the static checks; the
    :class:`~export.verify.VerifyReport` goes to ``on_report`` (default: printed as tables).
    """
    import onnx
    import torch
    from tqdm import tqdm

    from export.graphs import graph_specs
    from export.onnx import DEFAULT_OPSET, export_graph
    from model.atomic import atomic_dir

    opset = DEFAULT_OPSET if opset is None else int(opset)
    if precision not in PRECISIONS:
        raise LatentfuseError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and plan is None:
        # fail before the (slow) export rather than after it
        _convert_fp16(Path(out), {}, None)
    if precision in QUANTIZED:
        from export.quantize import MIN_OPSET, QuantOptions, require_modelopt

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
        from model.components import FusionComponents

        components = FusionComponents.from_pretrained(checkpoint)
    if out.exists() and not force:
        raise LatentfuseError(f"{out} already exists (pass --force to replace it)")
    heads = list(heads) if heads else [h for h in ("flow", "regression") if h in components.dits]
    specs = graph_specs(components, heads)

    from model.data.prompts import canonical_prompts

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
        if precision in QUANTIZED:
            from export.quantize import modelopt_version, quantize_bundle_graphs

            quantized = quantize_bundle_graphs(tmp, results, specs, components, quantization, opset=opset,
                                               progress=progress)

        components.text_encoder.tokenizer.save(tmp / TOKENIZER_NAME)
        write_prompt_cache(components.text_encoder, prompts, tmp / PROMPT_CACHE_NAME)

        text = components.text_encoder
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
            if precision in QUANTIZED:
                q = quantized["graphs"].get(name)
                entry["precision"] = q["precision"] if q and q["policy"] == "quantized" else "fp32"
                if q:
                    entry["quantization"] = q
                    if "moe_dispatch" in entry:
                        entry["moe_dispatch"] = "dense"  # quantizers wrap the experts' Linear layers
            # keep the documented key order: kind, head, file, ... inputs, outputs, profile
            graphs[name] = {k: entry[k] for k in ("kind", "head", "moe_dispatch", "file", "external_data", "precision", "quantization", "exporter",
                                                  "exporter_fallback_reason", "opset", "inputs", "outputs",
                                                  "profile", "tolerance", "export_seconds") if k in entry}
        any_spec = next(iter(specs.values()))
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "graphs": graphs,
            "files": {},
            "latent": latent_section(components),
            "resolution": any_spec.resolution.to_manifest(),
            "text": {"tokenizer": TOKENIZER_NAME, "max_length": int(text.max_length),
                     "pad_id": int(text.tokenizer.pad_id), "eos_id": int(text.tokenizer.eos_id),
                     "hidden_size": int(text.hidden_size), "vocab_size": int(text.tokenizer.vocab_size)},
            "prompt_cache": {"file": PROMPT_CACHE_NAME, "prompts": dict(prompts)},
            "sampler": sampler_section(components),
            "versions": _versions(opset),
            "source_checkpoint": str(checkpoint),
            "engines": {},
        }
        manifest.update(detail_section(components))
        if precision in QUANTIZED:
            manifest["quantization"] = {"precision": precision, "level": quantization.level,
                                        "target": quantization.target,
                                        "graphs": list(quantization.graphs), "modelopt": modelopt_version(),
                                        "calibration": quantized["calibration"]}
        relpaths = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        record_files(tmp, manifest, relpaths)
        save_manifest(tmp, manifest)

        if verify:
            from export.verify import verify_bundle

            report = verify_bundle(tmp, components=components, lint=lint, progress=progress)
            if on_report is None:
                print(report.format())
            else:
                on_report(report)
            if not report.ok:
                raise LatentfuseError("the exported bundle failed verification (nothing was written to "
                                      f"{out}): " + "; ".join(report.failures()))
    return out
