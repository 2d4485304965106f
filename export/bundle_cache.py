"""Deployment bundles exported on demand into the user's cache, one per model content.

``latentfuse fuse a b --backend onnxruntime`` (or ``tensorrt``) with no ``--bundle``, and ``latentfuse
demo``, need a bundle of the model directory they run (by default the bundled default model). The
first such call exports one (``export.bundle.export_bundle``, verified) into

    $XDG_CACHE_HOME/latentfuse/bundles/<key>/      (~/.cache/... when XDG_CACHE_HOME is unset)

where ``<key>`` hashes every file of the model directory, so a changed model gets a new bundle and an
unchanged one is reused by every later call. For ``tensorrt`` the engines are built into the same
bundle (``export.engines.build_bundle_engines``, which itself skips engines already built for this
TensorRT version and GPU). The export is atomic (a temporary folder renamed into place), so an
interrupted first call leaves nothing half-written.

It exports, so it lives in export; the runtime CLI (the top layer) imports it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from latentfuse.export.bundle import export_bundle
from latentfuse.model.components import read_index
from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.manifest import MANIFEST_NAME

CACHE_ENV = "XDG_CACHE_HOME"
KEY_LENGTH = 16  # hex digits of the model hash in the folder name


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/latentfuse`` (or ``~/.cache/latentfuse``)."""
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache")
    return Path(base) / "latentfuse"


def model_key(model_dir: str | os.PathLike) -> str:
    """sha256 over the relative path and content of every file in ``model_dir`` (the model's identity)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise LatentfuseError(f"model directory {root} does not exist")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cached_bundle(model_dir: str | os.PathLike, backend: str = "onnxruntime", progress: bool = True) -> Path:
    """The cached bundle of ``model_dir`` (exported now if missing; engines built for ``tensorrt``)."""
    model_dir = Path(model_dir)
    read_index(model_dir)  # a model directory, checked before its files are hashed or anything is said
    bundle = cache_root() / "bundles" / model_key(model_dir)[:KEY_LENGTH]
    if not (bundle / MANIFEST_NAME).is_file():
        print(f"exporting {model_dir} to a deployment bundle in {bundle} (once; later calls reuse it) ...",
              flush=True)
        export_bundle(model_dir, bundle, force=bundle.exists(), progress=progress, on_report=lambda report: None)
    if backend == "tensorrt":
        from latentfuse.export.engines import build_bundle_engines  # needs nothing until engines are built

        build_bundle_engines(bundle, progress=progress)
    return bundle
