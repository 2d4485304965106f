"""The committed C++ test vectors are exactly what the Python runtime produces today.

runtime/cpp's ctest suite compares the C++ samplers, padding, tokenizer, tiling and detail path with tests/vectors/*.json;
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


@pytest.mark.parametrize("name", ["samplers.json", "tokenizer.json", "padding.json", "tiling.json", "detail.json"])
def test_committed_vectors_match_the_python_runtime(name):
    mv = _make_vectors()
    fresh = mv.all_vectors()[name]
    committed = json.loads((mv.VECTORS / name).read_text())
    assert committed == json.loads(mv.dumps(fresh)), (
        f"tests/vectors/{name} is stale: run `.venv/bin/python tests/cpp/make_vectors.py` and rebuild the C++ tests")


def test_sampler_vectors_cover_every_sampler_and_both_prior_kinds():
    data = json.loads((_make_vectors().VECTORS / "samplers.json").read_text())
    from latentfuse.runtime.samplers import SAMPLERS

    covered = {c["sampler"] for c in data["cases"]}
    assert covered == set(SAMPLERS) - {"regression"}
    assert {c["prior"] for c in data["cases"]} == {"gaussian", "source_mean"}
    # the SDE cases really are stochastic: different seeds give different latents
    sde = [c for c in data["cases"] if c["sampler"] == "midpoint_reuse_sde" and c["steps"] == 3
           and c["prior"] == "gaussian" and "start" not in c]
    assert len(sde) == 2 and sde[0]["latent"] != sde[1]["latent"]
    # every sampler also started from an estimate (model.flow.DEFAULT_START), on both prior kinds
    started = [c for c in data["cases"] if c.get("start", 0) > 0]
    assert {(c["sampler"], c["prior"]) for c in started} == {(s, p) for s in covered for p in ("gaussian", "source_mean")}


def test_detail_vectors_cover_the_configs_and_prompts_the_brief_names():
    data = json.loads((_make_vectors().VECTORS / "detail.json").read_text())
    shapes = {n: tuple(img["shape"]) for n, img in data["images"].items()}
    configs = [c["config"] for c in data["cases"]]
    assert any(c["sigma"] != int(c["sigma"]) for c in configs)
    assert any(int(4 * c["sigma"] + 0.5) >= min(shapes[k["fused"]][:2]) for c, k in zip(configs, data["cases"]))
    assert {c["radius"] for c in configs} >= {0, 4} and {c["fused_candidate"] for c in configs} == {True, False}
    assert any(c["noise_k"] == 0 for c in configs) and any(c["noise_k"] > 0 for c in configs)
    assert any(c["gain"] != 1 for c in configs)
    kinds = {(len(shapes[c["fused"]]), len(shapes[c["a"]]), len(shapes[c["b"]])) for c in data["cases"]}
    assert {(3, 3, 3), (3, 3, 2), (2, 2, 2)} <= kinds  # RGB, VIF (A RGB, B gray), all gray
    assert any(c["a"] == c["b"] for c in data["cases"])  # ties in the selection go to the first layer
    modes = {p["prompt"]: p["mode"] for p in data["settings"][0]["prompts"]}
    assert modes["remove the grain"] == "safe" and modes["derain the images"] == "off"
    assert modes["destripe the infrared image"] == "off" and modes["brighten the dark image"] == "safe"
    assert modes["  Fuse  the Infrared AND visible   images\n"] == "clean"
    assert len((_make_vectors().VECTORS / "detail.json").read_bytes()) < 300_000
