"""End to end: the C++ host (runtime/cpp, AOTInductor backend) against the Python pipeline.

A tiny random-weight model (1-block DiTs, working scale 2 like the bundled default) is compiled once
per session into an AOTInductor bundle (:func:`latentfuse.export.aoti.export_aoti_bundle`); the host fuses a non-square pair (an 8-bit RGB visible
image, a 16-bit gray infrared one) and its 16-bit PNG must equal :class:`latentfuse.runtime.pipeline.Pipeline`
on the same model and seed to PSNR >= 40 dB, in flow mode (the default sampler, canonical prompt from
the prompt cache) and regression mode (free text through the tokenizer and the text-encoder graph).
Windows and tiles as in Python (runtime.backends.tiled): a pair over the model's window runs its DiT
in batched windows with the VAE on the whole pair; ``--tile PX`` tiles the VAE; a pair over the
bundle's 1024 px maximum fuses without flags (VAE tiles of 768 px, DiT windows of 1024 px).
Then the one-line errors: tampered bundle, bad --tile, prompt too long, missing backend.

Skipped when the host is not built: run ``runtime/cpp/build.sh``.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST = Path(os.environ.get("LATENTFUSE_HOST", ROOT / "runtime" / "cpp" / "build" / "latentfuse-host"))
pytestmark = pytest.mark.slow  # one AOTInductor compile of five graphs per session

SIZE = (40, 72)  # H x W: non-square; enlarged to 80 x 144 by the working scale
SEED = 3


def _built_backends() -> list[str]:
    if not HOST.is_file():
        pytest.skip(f"the C++ host is not built ({HOST} missing): run runtime/cpp/build.sh")
    out = subprocess.run([str(HOST), "--help"], capture_output=True, text=True, timeout=60).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("backends built:")), "")
    return line.split(":", 1)[1].split()


def host(*args, check=True):
    proc = subprocess.run([str(HOST), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="module")
def components():
    """The tiny preset with 1-block DiTs (the AOTInductor compile time grows with the DiT depth) at
    working scale 2, so the host's resampling (runtime/cpp/src/image.cpp) is compared too, and a flow DiT
    that declares a source prior, so the host must take its prior from the manifest."""
    import torch

    from latentfuse.model.components import FusionComponents
    from latentfuse.model.dit import MoEDiT
    from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings

    comp = FusionComponents.from_preset("tiny", seed=0)
    comp.work_scale = 2
    torch.manual_seed(1)
    for head, dit in list(comp.dits.items()):
        prior = {"prior": "source_mean", "prior_sigma": 0.4} if head == "flow" else {}
        comp.dits[head] = MoEDiT(dit.config.replace(depth=1, **prior)).eval()
    # a detail path, so the host runs the stage and picks its parameters from the prompt as Python does
    # (clean: on every RGB channel, as the bundled default's; safe: on the luma)
    comp.detail = DetailSettings.for_configs(DetailConfig(sigma=3.0, radius=2, fused_candidate=False, noise_k=0.0,
                                                          channels="rgb"),
                                             DetailConfig(sigma=1.5, radius=1))
    return comp


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, components):
    if "aoti" not in _built_backends():
        pytest.skip("the C++ host was built without the AOTInductor backend (torch not found by CMake): "
                    "rerun runtime/cpp/build.sh with the project venv")
    from latentfuse.export.aoti import export_aoti_bundle

    start = time.perf_counter()
    out = export_aoti_bundle(components, tmp_path_factory.mktemp("aoti") / "bundle", progress=False)
    print(f"\nAOTInductor compile of the tiny bundle: {time.perf_counter() - start:.1f} s")
    return out


def _write_pair(d: Path, h: int, w: int):
    """An 8-bit RGB visible image and a 16-bit gray infrared one, h x w, smooth with a little noise."""
    from latentfuse.model.image_io import write_image

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    vis = np.clip(np.stack([xx, yy, 0.5 * (xx + yy)], -1) + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)
    ir = np.clip(np.exp(-((xx - 0.5) ** 2 + (yy - 0.3) ** 2) * 20) + 0.02 * rng.standard_normal((h, w)), 0, 1)
    return write_image(d / "vis.png", vis.astype(np.float32)), write_image(d / "ir.png", ir.astype(np.float32), 16)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _write_pair(tmp_path_factory.mktemp("pair"), *SIZE)


def _compare(components, bundle, pair, tmp_path, mode, extra, size=SIZE, **py_kwargs):
    from latentfuse.model.image_io import read_image
    from latentfuse.runtime.pipeline import Pipeline

    out = tmp_path / f"{mode}.png"
    start = time.perf_counter()
    proc = host(*pair, "--task", "vif", "--bundle", bundle, "--backend", "aoti", "--mode", mode, "--seed", SEED,
                "--bit-depth", 16, "-o", out, *extra)
    print(f"\nC++ host ({mode}, {time.perf_counter() - start:.1f} s wall incl. package loading):\n{proc.stdout}")
    got = read_image(out)
    ref = Pipeline.from_components(components)(*pair, task="vif", mode=mode, seed=SEED, **py_kwargs)
    assert got.shape == ref.image.shape == (*size, 3)
    value = psnr(got, ref.image)
    print(f"PSNR C++ vs Python ({mode}): {value:.1f} dB")
    assert value >= 40.0
    return proc


def test_flow_mode_matches_the_python_pipeline(components, bundle, pair, tmp_path):
    proc = _compare(components, bundle, pair, tmp_path, "flow", ["--steps", 3], steps=3)
    assert "NFE 3" in proc.stdout and "midpoint_reuse_sde" in proc.stdout
    assert "T5 (cache)" in proc.stdout  # the canonical vif prompt comes from the prompt cache
    assert "detail clean" in proc.stdout


def test_regression_mode_with_free_text_matches_the_python_pipeline(components, bundle, pair, tmp_path):
    prompt = "remove the haze   and the noise"
    proc = _compare(components, bundle, pair, tmp_path, "regression", ["--prompt", prompt], prompt=prompt)
    assert "NFE 1" in proc.stdout and "T5 (cache)" not in proc.stdout
    assert "detail safe" in proc.stdout


def _error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentfuse-host: error: "), proc.stderr
    return lines[0]


def test_tampered_or_missing_bundle_file_is_a_one_line_error(bundle, pair, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "spiece.model").read_bytes())
    data[100] ^= 0xFF
    (copy / "spiece.model").write_bytes(bytes(data))
    args = [*pair, "--task", "vif", "--bundle", copy, "-o", tmp_path / "x.png"]
    assert "spiece.model was modified after export" in _error(host(*args, check=False))
    (copy / "spiece.model").unlink()
    assert "spiece.model is missing" in _error(host(*args, check=False))
    assert "no manifest.json" in _error(host(*pair, "--task", "vif", "--bundle", tmp_path, "-o", "x.png", check=False))


def test_bad_tile_long_prompt_and_bad_arguments_are_one_line_errors(bundle, pair, tmp_path):
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "--tile", 16, "-o", tmp_path / "x.png", check=False))
    assert "--tile needs at least 32 px, got 16" in line
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "--tile", "big", "-o", tmp_path / "x.png",
                       check=False))
    assert "argument --tile: invalid integer 'big'" in line
    long_prompt = " ".join(["remove the rain and the haze"] * 40)
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "--prompt", long_prompt, "-o", tmp_path / "x.png",
                       check=False))
    assert "over the text graph's limit of 128" in line
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "--mode", "flow", "--sampler", "heun", "-o",
                       tmp_path / "x.png", check=False))
    assert "unknown sampler 'heun'" in line
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "--sampler", "euler", "--steps", "3",
                       "-o", tmp_path / "x.png", check=False))  # the default mode, regression
    assert "takes no --sampler euler, --steps 3" in line and "add --mode flow" in line
    assert "--task" in _error(host(*pair, "--bundle", bundle, "-o", tmp_path / "x.png", check=False))
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "--max-memory", "lots", "-o", tmp_path / "x.png",
                       check=False))
    assert "--max-memory takes a size such as 3G" in line
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "--max-memory", "100M", "-o", tmp_path / "x.png",
                       check=False))
    assert "--max-memory 100 MB cannot be met: a 72x40 pair needs at least" in line


def test_missing_backend_is_a_one_line_error(bundle, pair, tmp_path):
    if "tensorrt" in _built_backends():
        pytest.skip("this host has the TensorRT backend; see test_tensorrt_backend")
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "--backend", "tensorrt", "-o", tmp_path / "x.png",
                       check=False))
    assert "backend 'tensorrt' is not available" in line


def test_tensorrt_backend(bundle, pair, tmp_path):
    if "tensorrt" not in _built_backends():
        pytest.skip("the C++ host was built without TensorRT (CMake found no TensorRT / CUDA toolkit here)")
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "--backend", "tensorrt", "-o", tmp_path / "x.png",
                       check=False))
    assert "no TensorRT engines" in line  # an AOTInductor bundle has none; engines come from build-engines


def test_a_pair_over_the_model_window_runs_in_windows_as_in_python(components, bundle, pair, tmp_path):
    import dataclasses
    import json

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["latent"]["window"] = 64  # the 72x40 pair works at 144x80: 2 x 4 windows of 64 px
    (copy / "manifest.json").write_text(json.dumps(manifest))
    windowed = dataclasses.replace(components, window=64)
    proc = _compare(windowed, copy, pair, tmp_path, "flow", ["--steps", 2], steps=2)
    # the VAE once on the whole pair (1 + 1 calls), each of the 2 DiT calls on all 8 windows as one batch
    assert "DiT in 8 windows of 64x64 px (up to 8 per call), 4 network calls" in proc.stdout
    assert "VAE tiled" not in proc.stdout


def test_a_flow_started_from_the_regression_estimate_matches_python(components, bundle, pair, tmp_path):
    """The start the manifest declares (model_index.json "sampler"), in windows: the regression DiT's estimate
    blended over the windows, noised to t0, then the flow's steps over [t0, 1], as Python; --start overrides it."""
    import dataclasses
    import json

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["latent"]["window"] = 64
    manifest["sampler"]["start"] = 0.4
    (copy / "manifest.json").write_text(json.dumps(manifest))
    declared = dataclasses.replace(components, window=64, sampler={"start": 0.4})
    proc = _compare(declared, copy, pair, tmp_path, "flow", ["--steps", 2], steps=2)
    assert "NFE 3" in proc.stdout
    proc = _compare(declared, copy, pair, tmp_path, "flow", ["--steps", 2, "--start", 0], steps=2, start=0.0)
    assert "NFE 2" in proc.stdout
    line = _error(host(*pair, "--task", "vif", "--bundle", copy, "--mode", "flow", "--start", 1, "-o",
                       tmp_path / "x.png", check=False))
    assert "--start must be a number in [0, 1)" in line


def test_tile_px_runs_the_vae_in_tiles_as_in_python(components, bundle, pair, tmp_path):
    # the pair works at 144x80: VAE tiles of 64 px (overlap clamped to 32): 2 x 4 tiles, one image per call
    # (2 x 8 encoder calls, 8 decoder calls), the DiT whole (no model window, under the 1024 px limit) for its
    # 2 calls
    proc = _compare(components, bundle, pair, tmp_path, "flow", ["--steps", 2, "--tile", 64], steps=2, tile=64)
    assert "VAE tiled over 64x64 px, 26 network calls" in proc.stdout and "DiT in" not in proc.stdout


def test_a_pair_over_the_bundle_limit_fuses_without_flags_as_in_python(components, bundle, tmp_path):
    # 1040 x 24 works at 2080 x 48, over the bundle's 1024 px: VAE tiles within 768 px (64 px overlap),
    # DiT windows of 1024 px (3 per call, batched), no error
    size = (24, 1040)
    big = _write_pair(tmp_path, *size)
    proc = _compare(components, bundle, big, tmp_path, "regression", [], size=size)
    assert "DiT in 3 windows of 1024x1024 px (up to 3 per call)" in proc.stdout
    assert "VAE tiled over 768x768 px" in proc.stdout


def test_fidelity_weight_on_a_bundle_without_the_graph_is_one_line_error(bundle, pair, tmp_path):
    line = _error(host(*pair, "--task", "vif", "--bundle", bundle, "-o", tmp_path / "o.png", "--fidelity", "0.5",
                       check=False))
    assert "no fidelity decoder" in line and not (tmp_path / "o.png").exists()
    assert host(*pair, "--task", "vif", "--bundle", bundle, "-o", tmp_path / "o.png", "--fidelity", "0").returncode == 0
