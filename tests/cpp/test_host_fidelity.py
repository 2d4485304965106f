"""The C++ host's fidelity stage (runtime/cpp, AOTInductor backend) against the Python pipeline.

A tiny model (one-block regression DiT, working scale 2, a detail path) with a perturbed fidelity decoder
(tests/conftest.py: an untrained one is the identity) is compiled into an AOTInductor bundle; the host must
equal Pipeline on it to PSNR >= 40 dB with the default weight (the detail path then off in auto mode), with
--fidelity 0.5, and on a pair taller than the bundle's 1024 px, where both run the decoder in strips of rows
with the manifest's halo. Then the one-line errors. Skipped when the host is not built."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("cpp_test_host", Path(__file__).with_name("test_host.py"))
th = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(th)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def components(fidelity_perturbed):
    from latentfuse.model.components import FusionComponents
    from latentfuse.model.dit import MoEDiT
    from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings

    comp = FusionComponents.from_preset("tiny", heads=("regression",), seed=0, fidelity=True)
    comp.work_scale = 2
    comp.dits["regression"] = MoEDiT(comp.dits["regression"].config.replace(depth=1)).eval()
    comp.detail = DetailSettings.for_configs(DetailConfig(sigma=3.0, radius=2), DetailConfig(sigma=1.5, radius=1))
    return fidelity_perturbed(comp)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, components):
    if "aoti" not in th._built_backends():
        pytest.skip("the C++ host was built without the AOTInductor backend")
    from latentfuse.export.aoti import export_aoti_bundle

    return export_aoti_bundle(components, tmp_path_factory.mktemp("aoti") / "bundle", progress=False)


def _run(components, bundle, pair, tmp_path, size, extra=(), **py_kwargs):
    from latentfuse.model.image_io import read_image
    from latentfuse.runtime.pipeline import Pipeline

    out = tmp_path / "fused.png"
    proc = th.host(*pair, "--task", "vif", "--bundle", bundle, "--backend", "aoti", "--mode", "regression",
                   "--seed", th.SEED, "--bit-depth", 16, "-o", out, *extra)
    ref = Pipeline.from_components(components)(*pair, task="vif", mode="regression", seed=th.SEED, **py_kwargs)
    got = read_image(out)
    assert got.shape == ref.image.shape == (*size, 3)
    value = th.psnr(got, ref.image)
    print(f"\n{proc.stdout}PSNR C++ vs Python: {value:.1f} dB")
    assert value >= 40.0
    return proc, ref


def test_default_weight_and_a_half_match_python(components, bundle, tmp_path):
    import numpy as np

    pair = th._write_pair(tmp_path, *th.SIZE)
    proc, ref = _run(components, bundle, pair, tmp_path, th.SIZE)
    assert "fidelity 1" in proc.stdout and "detail off" in proc.stdout and "Fidelity" in proc.stdout
    assert ref.info["fidelity"] == 1.0 and ref.info["detail"] == "off"
    half, _ = _run(components, bundle, pair, tmp_path, th.SIZE, ["--fidelity", "0.5"], fidelity=0.5)
    assert "fidelity 0.5" in half.stdout
    _, off = _run(components, bundle, pair, tmp_path, th.SIZE, ["--fidelity", "0"], fidelity=0)
    assert np.abs(off.image - ref.image).max() > 0.02  # the stage changes the image


def test_a_tall_pair_runs_the_decoder_in_strips_as_python(components, bundle, tmp_path):
    size = (528, 48)  # 1056 working rows: over the bundle's 1024
    pair = th._write_pair(tmp_path, *size)
    proc, ref = _run(components, bundle, pair, tmp_path, size)
    assert ref.info["memory"]["fidelity_rows"] == 1024 - 2 * 64


def test_fidelity_errors_are_one_line(bundle, tmp_path):
    pair = th._write_pair(tmp_path, 32, 32)
    for bad in ("1.5", "-1", "x"):
        proc = th.host(*pair, "--task", "vif", "--bundle", bundle, "-o", tmp_path / "o.png", "--fidelity", bad,
                       check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--fidelity" in proc.stderr
    assert not (tmp_path / "o.png").exists()
