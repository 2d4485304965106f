"""The committed C++ test vectors are exactly what the Python runtime produces today.

runtime/cpp's ctest suite compares the C++ samplers, padding and tokenizer with tests/vectors/*.json;
this test regenerates them with tests/cpp/make_vectors.py, so a change on the Python side that is not
carried over (and the vectors rewritten) fails here rather than silently drifting.
"""

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _make_vectors():
    spec = importlib.util.spec_from_file_location("make_cpp_vectors", HERE / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["samplers.json", "tokenizer.json", "padding.json", "tiling.json"])
def test_committed_vectors_match_the_python_runtime(name):
    mv = _make_vectors()
    fresh = mv.all_vectors()[name]
    committed = json.loads((mv.VECTORS / name).read_text())
    assert committed == json.loads(mv.dumps(fresh)), (
        f"tests/vectors/{name} is stale: run `.venv/bin/python tests/cpp/make_vectors.py` and rebuild the C++ tests")


def test_sampler_vectors_cover_every_sampler_and_both_prior_kinds():
    data = json.loads((_make_vectors().VECTORS / "samplers.json").read_text())
    from runtime.samplers import SAMPLERS

    covered = {c["sampler"] for c in data["cases"]}
    assert covered == set(SAMPLERS) - {"regression"}
    assert {c["prior"] for c in data["cases"]} == {"gaussian", "source_mean"}
    # the SDE cases really are stochastic: different seeds give different latents
    sde = [c for c in data["cases"] if c["sampler"] == "midpoint_reuse_sde" and c["steps"] == 3 and c["prior"] == "gaussian"]
    assert len(sde) == 2 and sde[0]["latent"] != sde[1]["latent"]
