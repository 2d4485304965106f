"""``Pipeline.from_pretrained(path, backend=...)``: a model directory or a bundle, the backend's default, and the
exporter the runtime finds through an entry point (it never imports export, which sits above it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime import pipeline as pipeline_module
from latentfuse.runtime.pipeline import EXPORTERS, Pipeline

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from latentfuse.model.components import FusionComponents

    return FusionComponents.from_preset("tiny", seed=0).save_pretrained(tmp_path_factory.mktemp("fp") / "model")


def test_the_exporter_entry_point_is_declared_and_installed():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][EXPORTERS]
    assert declared == {"bundle_cache": "latentfuse.export.bundle_cache:cached_bundle"}
    from importlib.metadata import entry_points

    installed = {ep.name: ep.value for ep in entry_points(group=EXPORTERS)}
    assert installed.get("bundle_cache") == declared["bundle_cache"], "reinstall: pip install --no-deps -e ."


def test_a_model_directory_runs_on_torch_by_default(model_dir):
    pipe = Pipeline.from_pretrained(model_dir, device="cpu")
    assert pipe.backend.name == "torch" and pipe.info.heads == ("flow", "regression")


def test_a_model_directory_on_a_bundle_backend_runs_the_exporters_bundle(model_dir, monkeypatch, tmp_path):
    calls = []

    class FakeEntryPoint:
        name = "fake"

        def load(self):
            def export(directory, backend):
                calls.append((Path(directory), backend))
                return tmp_path / "no-bundle-here"
            return export

    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [FakeEntryPoint()] if group == EXPORTERS else [])
    with pytest.raises(LatentfuseError, match="no-bundle-here"):  # the exporter's bundle is what gets opened
        Pipeline.from_pretrained(model_dir, backend="onnxruntime")
    assert calls == [(Path(model_dir), "onnxruntime")]


def test_no_exporter_installed_is_one_clear_error(model_dir, monkeypatch):
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [])
    with pytest.raises(LatentfuseError, match=r"no exporter is installed.*latentfuse export --checkpoint"):
        pipeline_module.cached_export(model_dir, "onnxruntime")


def test_a_bundle_refuses_the_torch_backend(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(LatentfuseError, match="the torch backend runs a model directory"):
        Pipeline.from_pretrained(tmp_path, backend="torch")


def test_a_folder_that_is_neither_names_it_before_any_export(tmp_path, monkeypatch, capsys):
    """Neither manifest.json nor model_index.json: one error naming the folder, and the real exporter (found
    through the entry point) neither announces an export nor writes to the cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"not a model")
    with pytest.raises(LatentfuseError, match=r"photos is not a latentfuse model directory \(no model_index.json\)"):
        Pipeline.from_pretrained(tmp_path / "photos", backend="onnxruntime")
    assert not cache.exists() and "exporting" not in capsys.readouterr().out
