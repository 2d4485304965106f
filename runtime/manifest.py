"""Reading a deployment bundle: the manifest schema, its hashes and loading, and the :class:`Bundle` view.

This is the one reader of ``manifest.json`` (the format is documented in :mod:`latentfuse.export.bundle`, its writer;
docs/design.md "The manifest"); the runtime, the engine builder, calibration and the C++ host
(runtime/cpp/src/bundle.cpp, its twin) read bundles through it. It depends on nothing above
:mod:`model` (no torch, no onnx), so anything may import it.

Tensors by role. Each graph input / output entry carries a ``role`` (format_version 1, minor 1) saying what
the tensor *is*; hosts look tensors up by role (:meth:`GraphEntry.input_for`), never by spelling the
names again. Bundles written before roles existed have none: their tensors are resolved by the names
:data:`ROLE_NAMES` gives each role (the names export.graphs has always used).

    graph          inputs (role: name)                                         outputs
    text_encoder   token_ids: input_ids, attention_mask: attention_mask          prompt_embeds: prompt_embeds
    vae_encoder    image: image                                                  latent: latent
    vae_decoder    latent: latent                                                image: image
    dit (flow)     noisy_latent: z_t, timestep: t, source_latent_a: z_a,         velocity: velocity
                   source_latent_b: z_b, prompt_embeds: prompt_embeds, prompt_mask: prompt_mask
    dit (regr.)    source_latent_a, source_latent_b, prompt_embeds, prompt_mask  fused_latent: latent
    fidelity       image: image, source_image_a: source_a, source_image_b:      fused_image: fused_image
                   source_b, prompt_embeds, prompt_mask

The fidelity graph (``model.fidelity``, optional: only a model with a fidelity decoder exports it) is local:
its entry's ``halo`` says how many rows of context (pixels, a multiple of 16) a strip of rows needs on each
side to come out as in the whole image (:meth:`Bundle.fidelity_halo`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.geometry import HEADS, LATENT_FACTOR, PIXEL_MULTIPLE

FORMAT = "latentfuse-bundle"
FORMAT_VERSION = 1          # readers accept 1; a bundle without "format_minor" is minor 0 (no tensor roles)
FORMAT_MINOR = 1            # 1: graph inputs / outputs carry "role"
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "spiece.model"
PROMPT_CACHE_NAME = "prompt_cache.safetensors"
PRECISIONS = ("fp32", "fp16", "int8", "fp8")  # a bundle graph's precision: the one vocabulary
QUANTIZED_PRECISIONS = ("int8", "fp8")  # those made by explicit Q/DQ (export.quantize)
GRAPH_KINDS = ("vae_encoder", "vae_decoder", "text_encoder", "dit", "fidelity")
FIDELITY_GRAPH = "fidelity"  # the fidelity decoder's graph name (model.fidelity)

# Symbolic dim names, as they appear in the ONNX graphs, the manifest's shapes and its profiles.
BATCH, HEIGHT, WIDTH = "batch", "height", "width"
LATENT_HEIGHT, LATENT_WIDTH = "latent_height", "latent_width"
TEXT_LENGTH = "text_length"
SYMBOLS = (BATCH, HEIGHT, WIDTH, LATENT_HEIGHT, LATENT_WIDTH, TEXT_LENGTH)

# Tensor roles -> the tensor name export.graphs gives each (the lookup of bundles written without roles).
ROLE_NAMES = {
    "image": "image",                      # vae_encoder input / vae_decoder output, [B,3,H,W] in [-1, 1]
    "latent": "latent",                    # vae_encoder output / vae_decoder input, scaled [B,z,H/8,W/8]
    "token_ids": "input_ids",              # text_encoder, int64 [B,L]
    "attention_mask": "attention_mask",    # text_encoder, int64 [B,L], 1 = real token
    "prompt_embeds": "prompt_embeds",      # text_encoder output / dit input, [B,L,d_t]
    "prompt_mask": "prompt_mask",          # dit, int64 [B,L]
    "noisy_latent": "z_t",                 # dit flow: Z_t
    "timestep": "t",                       # dit flow: t [B] in [0, 1]
    "source_latent_a": "z_a",              # dit: Z_a
    "source_latent_b": "z_b",              # dit: Z_b
    "velocity": "velocity",                # dit flow output v_θ
    "fused_latent": "latent",              # dit regression output f_θ
    "source_image_a": "source_a",          # fidelity: source A, [B,3,H,W] in [-1, 1] (input "image": the decoded one)
    "source_image_b": "source_b",          # fidelity: source B
    "fused_image": "fused_image",          # fidelity output, [B,3,H,W] about [-1, 1]
}
ROLES = tuple(ROLE_NAMES)
_ROLE_OF_NAME = {name: role for role, name in ROLE_NAMES.items() if role != "fused_latent"}


def legacy_role(name: str, kind: str | None = None, output: bool = False) -> str | None:
    """The role of a tensor in a bundle written before roles existed, from its name (None: unknown)."""
    if output and kind == "dit" and name == "latent":
        return "fused_latent"
    return _ROLE_OF_NAME.get(name)


# ---------------------------------------------------------------------- hashes and JSON
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Lower-case hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    """sha256 of a JSON value's canonical form (sorted keys, no spaces): a deterministic key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


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


def write_json(path: str | os.PathLike, obj, *, compact_lists: bool = True) -> Path:
    """Write ``obj`` as JSON atomically (``model.atomic.atomic_file``), with a final newline; NaN refused."""
    from latentfuse.model.atomic import atomic_file

    path = Path(path)
    text = dumps(obj) if compact_lists else json.dumps(obj, indent=2, allow_nan=False)
    with atomic_file(path) as tmp:
        tmp.write_text(text + "\n")
    return path


# ---------------------------------------------------------------------- loading
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


# ---------------------------------------------------------------------- one graph's interface
def graph_kind(name: str, entry: Mapping) -> str:
    """The entry's ``kind``; for hand-written manifests without one, the kind its name starts with."""
    kind = entry.get("kind") or next((k for k in GRAPH_KINDS if name.startswith(k)), None)
    if kind is None:
        raise LatentfuseError(f"graph {name!r}: the manifest gives no 'kind' ({', '.join(GRAPH_KINDS)})")
    return kind


class GraphEntry:
    """One manifest graph entry, with its tensors found by role (:data:`ROLE_NAMES`)."""

    def __init__(self, name: str, entry: Mapping):
        self.name = name
        self.entry = entry
        self.kind = graph_kind(name, entry)
        self.head = entry.get("head") or (next((h for h in HEADS if h in name), None) if self.kind == "dit" else None)

    @property
    def file(self) -> str:
        return self.entry["file"]

    @property
    def inputs(self) -> list[dict]:
        """Input entries, each with its ``role`` (filled in from the name for bundles without roles)."""
        return [self._with_role(t, False) for t in self.entry.get("inputs", [])]

    @property
    def outputs(self) -> list[dict]:
        return [self._with_role(t, True) for t in self.entry.get("outputs", [])]

    @property
    def input_names(self) -> list[str]:
        return [t["name"] for t in self.entry.get("inputs", [])]

    @property
    def output_names(self) -> list[str]:
        return [t["name"] for t in self.entry.get("outputs", [])]

    def _with_role(self, tensor: Mapping, output: bool) -> dict:
        role = tensor.get("role") or legacy_role(str(tensor["name"]), self.kind, output)
        return {**tensor, "role": role}

    def _find(self, role: str, output: bool) -> str:
        tensors = self.outputs if output else self.inputs
        for t in tensors:
            if t["role"] == role:
                return str(t["name"])
        what = "output" if output else "input"
        listed = ", ".join(f"{t['name']} ({t['role']})" for t in tensors) or "none"
        raise LatentfuseError(f"graph {self.name!r} has no {what} with role {role!r} ({what}s: {listed})")

    def input_for(self, role: str) -> str:
        """The name of the input with ``role``."""
        return self._find(role, False)

    def output_for(self, role: str) -> str:
        """The name of the output with ``role``."""
        return self._find(role, True)

    def feeds(self, values: Mapping[str, object], *, strict: bool = True) -> dict[str, object]:
        """``{role: value}`` -> ``{input name: value}`` for this graph. Roles the graph does not take are
        dropped; with ``strict`` every input must get a value."""
        by_role = {t["role"]: t["name"] for t in self.inputs}
        feed = {by_role[role]: v for role, v in values.items() if role in by_role}
        if strict:
            missing = [f"{t['name']} ({t['role']})" for t in self.inputs if t["name"] not in feed]
            if missing:
                raise LatentfuseError(f"graph {self.name!r}: no value for input(s) {', '.join(missing)} "
                                      f"(given roles: {', '.join(values) or 'none'})")
        return feed


# ---------------------------------------------------------------------- reading a bundle
def check_bundle_dir(directory: str | os.PathLike) -> Path:
    """``directory``, or one error line when it holds no ``manifest.json``."""
    root = Path(directory)
    if not (root / MANIFEST_NAME).is_file():
        raise LatentfuseError(f"{root} is not a deployment bundle (no manifest.json); "
                              "make one with `latentfuse export --checkpoint DIR --out BUNDLE`")
    return root


def open_bundle(directory: str | os.PathLike) -> "Bundle":
    """Open and check a bundle (every file present with its recorded size and sha256)."""
    return Bundle.open(check_bundle_dir(directory))


class Bundle:
    """The one reader of a bundle, for every host (runtime, engine builder, calibration, export's checks): graph
    paths and interfaces, tokenizer, prompt cache, limits, engines, sections. The model's metadata in the
    pipeline's terms is :meth:`latentfuse.runtime.model_info.ModelInfo.from_manifest`; writing a bundle is
    :mod:`latentfuse.export.bundle`'s; export's view of a graph (a ``GraphSpec``) is
    :func:`latentfuse.export.graphs.bundle_spec`."""

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

    def has_fidelity(self) -> bool:
        """Whether the bundle has the fidelity decoder's graph (``model.fidelity``)."""
        return FIDELITY_GRAPH in self.manifest["graphs"]

    def fidelity_halo(self) -> int:
        """Rows of context (pixels, a multiple of 16) a strip of the fidelity graph needs on each side to equal
        the whole image's rows: the graph entry's ``halo``, which export writes from the model
        (``model.fidelity.receptive_halo`` rounded up to 16)."""
        entry = self.graph(FIDELITY_GRAPH)
        halo = entry.get("halo")
        if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0 or halo % PIXEL_MULTIPLE:
            raise LatentfuseError(f"{self.root}/{MANIFEST_NAME}: graph 'fidelity' needs a 'halo' (rows of context, "
                                  f"a non-negative multiple of {PIXEL_MULTIPLE}), got {halo!r}")
        return halo

    @property
    def heads(self) -> list[str]:
        return [e["head"] for e in self.manifest["graphs"].values() if e.get("kind") == "dit"]

    def has_graph(self, name: str) -> bool:
        return name in self.manifest["graphs"]

    def graph(self, name: str) -> dict:
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise LatentfuseError(f"{self.root}: the bundle has no {name!r} graph (it has {', '.join(graphs)})")
        return graphs[name]

    @functools.lru_cache(maxsize=None)  # noqa: B019 - a handful of graphs per bundle
    def graph_entry(self, name: str) -> GraphEntry:
        """Graph ``name``'s interface, its tensors found by role."""
        return GraphEntry(name, self.graph(name))

    def input_for(self, graph: str, role: str) -> str:
        """The name of graph ``graph``'s input with ``role`` (by name in bundles written without roles)."""
        return self.graph_entry(graph).input_for(role)

    def output_for(self, graph: str, role: str) -> str:
        return self.graph_entry(graph).output_for(role)

    def graph_path(self, name: str) -> Path:
        return self.root / self.graph(name)["file"]

    def dit_graph(self, head: str) -> str:
        for name, entry in self.manifest["graphs"].items():
            if entry.get("kind") == "dit" and entry.get("head") == head:
                return name
        raise LatentfuseError(f"{self.root}: the bundle has no {head!r} DiT (heads: {', '.join(self.heads) or 'none'})")

    def dit_graph_or_none(self, head: str) -> str | None:
        try:
            return self.dit_graph(head)
        except LatentfuseError:
            return None

    def input_names(self, name: str) -> list[str]:
        return self.graph_entry(name).input_names

    def output_names(self, name: str) -> list[str]:
        return self.graph_entry(name).output_names

    def profile(self, name: str) -> dict:
        return self.graph(name)["profile"]

    # text
    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest["text"]["tokenizer"]

    @functools.cached_property
    def _tokenizer(self):
        """The bundle's sentencepiece model (the same file the C++ host tokenizes with)."""
        from latentfuse.model.text_encoder import SpieceTokenizer

        if not self.tokenizer_path.is_file():
            raise LatentfuseError(f"{self.root}: tokenizer file {self.tokenizer_path.name} is missing")
        return SpieceTokenizer.from_file(self.tokenizer_path)

    def tokenize(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int64 [B, L], L = the longest prompt (T5 ids + EOS, 0-padded)."""
        ids, mask = self._tokenizer(list(prompts), max_length=int(self.manifest["text"]["max_length"]))
        return ids.numpy().astype(np.int64), mask.numpy().astype(np.int64)

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

    def prompt_cache_by_text(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """prompt text -> (embeds [1, L, d], mask [1, L]) for the canonical prompts the bundle ships."""
        by_id = self.prompt_cache()
        return {" ".join(text.split()): by_id[key] for key, text in self.prompts.items() if key in by_id}

    # engines
    def engine_paths(self, trt_version: str | None = None, gpu_name: str | None = None) -> dict[str, Path]:
        """Graph -> engine file, for the engines ``latentfuse build-engines`` recorded for this TensorRT
        version and GPU (an engine only deserializes on the TensorRT version and GPU it was built for)."""
        out = {}
        for name, entry in (self.manifest.get("engines") or {}).items():
            entry = entry if isinstance(entry, dict) else {"file": entry}
            if trt_version and entry.get("trt_version") not in (None, trt_version):
                continue
            gpu = entry.get("gpu")
            built_on = gpu.get("name") if isinstance(gpu, dict) else gpu
            if gpu_name and built_on not in (None, gpu_name):
                continue
            path = self.root / entry["file"]
            if path.is_file():
                out[name] = path
        return out

    # limits and sections
    def max_image_size(self) -> tuple[int, int] | None:
        """(H, W) in pixels: the largest size the bundle's graphs were exported and verified for."""
        res = self.manifest.get("resolution") or {}
        if "max_height" in res and "max_width" in res:
            return int(res["max_height"]), int(res["max_width"])
        return None

    @property
    def latent(self) -> dict:
        return dict(self.manifest["latent"])

    @property
    def latent_factor(self) -> int:
        """Pixels per latent pixel (the VAE's f, ``latent.downsample``)."""
        return int((self.manifest.get("latent") or {}).get("downsample", LATENT_FACTOR))

    @property
    def resolution(self) -> dict:
        return dict(self.manifest["resolution"])

    @property
    def sampler(self) -> dict:
        return dict(self.manifest.get("sampler") or {})
