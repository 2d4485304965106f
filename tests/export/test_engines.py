"""Engine builder: profiles, overrides, cache keys and the manifest (pure Python); the TensorRT build itself."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from latentfuse.export import engines as E
from latentfuse.export.bundle import record_files, save_manifest
from latentfuse.model.errors import LatentfuseError, MissingDependencyError
from latentfuse.runtime.manifest import sha256_file

try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
NO_TRT = "TensorRT is not installed: engine build needs an NVIDIA GPU + tensorrt; install latentfuse[trt]"

GPU = {"name": "NVIDIA H200", "compute_capability": "9.0"}

DIT_INPUTS = [
    {"name": "z_a", "dtype": "float32", "shape": ["batch", 16, "latent_height", "latent_width"]},
    {"name": "prompt_embeds", "dtype": "float32", "shape": ["batch", "text_length", 128]},
    {"name": "t", "dtype": "float32", "shape": ["batch"]},
]


RESOLUTION = {"min": 64, "max": 1024, "multiple": 16, "opt": 512,
              "aspect_ratios": ["1:1", "4:3", "3:4", "16:9", "9:16"]}


def full_profile():
    extents = {"batch": E.Extent(1, 1, 4), "height": E.Extent(64, 512, 1024), "width": E.Extent(64, 512, 1024),
               "text": E.Extent(1, 32, 128)}
    return E.profile_from_extents(DIT_INPUTS, extents, latent_factor=8, graph="dit_flow")


@pytest.mark.parametrize("sides", [(64, 1024), (200, 1000), (512, 512)])
def test_aspect_shapes_are_padded_extremes_and_bound_every_image(sides):
    lo, hi = sides
    ratios = ("16:9", "4:3", "1:1")
    shapes = E.aspect_shapes(lo, hi, ratios)
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in shapes)
    assert min(min(s) for s in shapes) == E.round_up(lo) and max(max(s) for s in shapes) == E.round_up(hi)
    if hi * 9 / 16 >= lo:  # 16:9 landscape at max (sides are clamped into [lo, hi] otherwise)
        assert (E.round_up(hi), E.round_up(int(np.ceil(hi * 9 / 16)))) in shapes
    hs, ws = [s[0] for s in shapes], [s[1] for s in shapes]
    rng = np.random.default_rng(0)
    for ratio in ratios:  # random images of every ratio and orientation, padded like the runtime pads
        a, b = map(int, ratio.split(":"))
        if hi * min(a, b) / max(a, b) < lo:
            continue  # no image of this ratio fits in [lo, hi] per side
        for short in rng.uniform(lo, hi * min(a, b) / max(a, b), 10):
            long = short * max(a, b) / min(a, b)
            for hh, ww in ((long, short), (short, long)):
                h, w = E.round_up(int(np.ceil(hh))), E.round_up(int(np.ceil(ww)))
                assert min(hs) <= h <= max(hs) and min(ws) <= w <= max(ws)


def test_manifest_profile_covers_all_aspect_ratios_and_override_narrowing_is_reported():
    prof = full_profile()
    assert E.uncovered_shapes(prof, DIT_INPUTS, RESOLUTION) == []
    for h, w in E.aspect_shapes(64, 1024, RESOLUTION["aspect_ratios"]):
        assert E.covers(prof, "z_a", E.spatial_shape(DIT_INPUTS[0], h, w, prof))
    entry = {"inputs": DIT_INPUTS, "profile": prof}
    _, ext = E.parse_profile_override("dit_flow=256x256:512x512:768x768")
    narrow = E.resolve_profile("dit_flow", entry, ext)
    missing = E.uncovered_shapes(narrow, DIT_INPUTS, RESOLUTION)
    assert (1024, 576) in missing and (64, 64) in missing and (512, 512) not in missing


def test_profile_from_extents_maps_pixels_latents_batch_and_text():
    prof = full_profile()
    assert prof["min"]["z_a"] == [1, 16, 8, 8] and prof["opt"]["z_a"] == [1, 16, 64, 64]
    assert prof["max"]["z_a"] == [4, 16, 128, 128]
    assert prof["max"]["prompt_embeds"] == [4, 128, 128] and prof["min"]["t"] == [1]
    with pytest.raises(LatentfuseError, match="cannot size"):
        E.profile_from_extents([{"name": "x", "shape": ["mystery"]}], {"batch": E.Extent(1, 1, 1)})
    with pytest.raises(LatentfuseError, match="latent factor"):
        E.profile_from_extents(DIT_INPUTS, {"batch": E.Extent(1, 1, 1), "height": E.Extent(20, 24, 24),
                                            "width": E.Extent(16, 16, 16), "text": E.Extent(1, 1, 1)})


def test_parse_profile_override():
    graph, ext = E.parse_profile_override("dit=256x256:512x768:1024x1024")
    assert graph == "dit" and ext["height"] == E.Extent(256, 512, 1024) and ext["width"].opt == 768
    _, ext = E.parse_profile_override("vae_decoder=1x256x256:1x512x512:2x1024x1024")
    assert ext["batch"] == E.Extent(1, 1, 2)
    _, ext = E.parse_profile_override("text_encoder=1:64:128")
    assert ext == {"text": E.Extent(1, 64, 128)}
    for bad, msg in [("dit", "GRAPH=MIN:OPT:MAX"), ("dit=256x256:512x512", "three sizes"),
                     ("dit=250x256:512x512:1024x1024", "multiples of 16"),
                     ("dit=512x512:256x256:1024x1024", "min <= opt <= max"),
                     ("dit=256x256:512:1024x1024", "same form")]:
        with pytest.raises(LatentfuseError, match=msg):
            E.parse_profile_override(bad)


def manifest_profile():
    return {"min": {"z_a": [1, 16, 8, 8], "prompt_embeds": [1, 1, 128], "t": [1]},
            "opt": {"z_a": [1, 16, 64, 64], "prompt_embeds": [1, 32, 128], "t": [1]},
            "max": {"z_a": [2, 16, 128, 128], "prompt_embeds": [2, 128, 128], "t": [2]}}


def test_resolve_profile_override_changes_only_what_it_names():
    entry = {"inputs": DIT_INPUTS, "profile": manifest_profile()}
    assert E.resolve_profile("dit_flow", entry) == manifest_profile()
    _, ext = E.parse_profile_override("dit_flow=512x512:768x768:2048x1536")
    prof = E.resolve_profile("dit_flow", entry, ext)
    assert [prof[level]["z_a"] for level in E.LEVELS] == [[1, 16, 64, 64], [1, 16, 96, 96], [2, 16, 256, 192]]
    assert [prof[level]["prompt_embeds"] for level in E.LEVELS] == [[1, 1, 128], [1, 32, 128], [2, 128, 128]]
    with pytest.raises(LatentfuseError, match="min / opt / max"):
        E.resolve_profile("dit_flow", {"inputs": DIT_INPUTS, "profile": {"z_a": {}}})


def test_validate_profile_rejects_inconsistent_profiles():
    bad = manifest_profile()
    bad["opt"]["z_a"][2] = 200  # opt > max
    with pytest.raises(LatentfuseError, match="min <= opt <= max"):
        E.validate_profile("dit_flow", bad, DIT_INPUTS)
    bad = manifest_profile()
    bad["max"]["z_a"][1] = 32  # static channel dim changed
    with pytest.raises(LatentfuseError, match="static"):
        E.validate_profile("dit_flow", bad, DIT_INPUTS)
    bad = manifest_profile()
    for level in E.LEVELS:
        del bad[level]["t"]
    with pytest.raises(LatentfuseError, match="has no profile"):
        E.validate_profile("dit_flow", bad, DIT_INPUTS)


def test_cache_key_is_stable_and_sensitive_to_each_part():
    prof = manifest_profile()
    key = E.cache_key("abc", prof, "10.15.1", GPU)
    reordered = {level: {k: prof[level][k] for k in reversed(list(prof[level]))} for level in reversed(E.LEVELS)}
    assert E.cache_key("abc", reordered, "10.15.1", dict(reversed(list(GPU.items())))) == key
    other_profile = manifest_profile()
    other_profile["max"]["z_a"][2] = 256
    changed = [
        E.cache_key("abd", prof, "10.15.1", GPU),
        E.cache_key("abc", other_profile, "10.15.1", GPU),
        E.cache_key("abc", prof, "11.0.0", GPU),
        E.cache_key("abc", prof, "10.15.1", {**GPU, "name": "NVIDIA Jetson AGX Orin"}),
        E.cache_key("abc", prof, "10.15.1", {**GPU, "compute_capability": "8.7"}),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def toy_onnx(path, scale=1.0, external=False):
    w = numpy_helper.from_array((np.eye(16) * scale).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["t", "w"], ["y"], name="mm")], "toy",
                              [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def test_onnx_hash_follows_external_weights(tmp_path):
    a = toy_onnx(tmp_path / "a.onnx", external=True)
    h1 = E.onnx_sha256(a)
    toy_onnx(tmp_path / "a.onnx", scale=2.0, external=True)  # same graph file, new weights
    assert E.onnx_sha256(a) != h1
    (tmp_path / "a.onnx.data").unlink()
    with pytest.raises(LatentfuseError, match="missing"):
        E.onnx_sha256(a)


def make_bundle(root):
    """A minimal bundle in the export.bundle format: one toy graph, hashed into 'files'."""
    from latentfuse.runtime.manifest import FORMAT, FORMAT_VERSION

    root.mkdir()
    toy_onnx(root / "toy.onnx")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "resolution": RESOLUTION,
        "latent": {"downsample": 8},
        "graphs": {"toy": {"kind": "toy", "file": "toy.onnx", "precision": "fp32",
                           "inputs": [{"name": "t", "dtype": "float32", "shape": ["batch", 16]}],
                           "profile": {"min": {"t": [1, 16]}, "opt": {"t": [1, 16]}, "max": {"t": [4, 16]}}}},
        "files": {},
        "engines": {},
    }
    record_files(root, manifest, ["toy.onnx"])
    save_manifest(root, manifest)
    return root


def test_plan_builds_skips_a_matching_cached_engine(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    (job,) = E.plan_builds(bundle, trt_version="10.15.1", gpu=GPU)
    assert not job["cached"] and job["file"] == "engines/toy.engine"
    engine = bundle / job["file"]
    engine.parent.mkdir()
    engine.write_bytes(b"serialized engine")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["engines"]["toy"] = {"file": job["file"], "sha256": sha256_file(engine), "cache_key": job["cache_key"]}
    save_manifest(bundle, manifest)  # engine deliberately not in 'files': a corrupted engine is our check
    assert E.plan_builds(bundle, trt_version="10.15.1", gpu=GPU)[0]["cached"]
    assert not E.plan_builds(bundle, trt_version="11.0.0", gpu=GPU)[0]["cached"]  # TensorRT upgrade
    _, ext = E.parse_profile_override("nope=1:1:8")
    with pytest.raises(LatentfuseError, match="no graph 'nope'"):
        E.plan_builds(bundle, {"nope": ext}, trt_version="10.15.1", gpu=GPU)
    engine.write_bytes(b"corrupted")  # a changed engine file is not trusted
    assert not E.plan_builds(bundle, trt_version="10.15.1", gpu=GPU)[0]["cached"]


def test_network_flags_for_trt10_and_trt11():
    class Flags:
        STRONGLY_TYPED = 1  # TensorRT 10.x: EXPLICIT_BATCH = 0, STRONGLY_TYPED = 1

    class Trt10:
        NetworkDefinitionCreationFlag = Flags

    class Trt11:
        class NetworkDefinitionCreationFlag:  # the flag may be gone in a later 11.x
            pass

    assert E.network_flags(Trt10) == 2 and E.network_flags(Trt11) == 0


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_one_line_error(tmp_path, capsys):
    from latentfuse.runtime.cli import main

    bundle = make_bundle(tmp_path / "b")
    with pytest.raises(MissingDependencyError, match=r"pip install 'latentfuse\[trt\]'"):
        E.build_bundle_engines(bundle)
    assert main(["build-engines", str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'latentfuse[trt]'" in err


def test_cli_dry_run_prints_profiles(tmp_path, capsys):
    from latentfuse.runtime.cli import main

    bundle = make_bundle(tmp_path / "b")
    assert main(["build-engines", str(bundle), "--dry-run", "--profile", "toy=1x16x16:1x16x16:2x16x16"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["graph"] == "toy" and out["profile"]["max"]["t"] == [2, 16]
    assert main(["build-engines", str(tmp_path / "nothing")]) == 2


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason=NO_TRT)
def test_real_build_strongly_typed_fp16_engine(tmp_path):
    """Build the toy graph as a mixed-precision FP16 engine, then reuse it from the cache."""
    from latentfuse.calibration.fp16 import convert_model

    bundle = make_bundle(tmp_path / "b")
    fp16 = convert_model(onnx.load(str(bundle / "toy.onnx")), {"fp32_nodes": []})
    onnx.save(fp16, str(bundle / "toy_fp16.onnx"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graphs"]["toy"].update(file="toy_fp16.onnx", precision="fp16")
    record_files(bundle, manifest, ["toy_fp16.onnx"])
    save_manifest(bundle, manifest)
    (job,) = E.build_bundle_engines(bundle, progress=False)
    assert job["status"] == "built" and (bundle / job["file"]).stat().st_size > 0
    entry = json.loads((bundle / "manifest.json").read_text())["engines"]["toy"]
    assert entry["cache_key"] == job["cache_key"] and entry["trt_version"] == tensorrt.__version__
    assert json.loads((bundle / "manifest.json").read_text())["files"][job["file"]]["sha256"] == entry["sha256"]
    assert (bundle / "engines" / "timing.cache").is_file()
    (again,) = E.build_bundle_engines(bundle, progress=False)
    assert again["status"] == "cached"

    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine((bundle / job["file"]).read_bytes())
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert set(names) == {"t", "y"} and engine.get_tensor_dtype("t") == trt.float32
    import torch

    if torch.cuda.is_available():
        ctx = engine.create_execution_context()
        x = torch.randn(3, 16, device="cuda")
        y = torch.empty(3, 16, device="cuda")
        ctx.set_input_shape("t", (3, 16))
        ctx.set_tensor_address("t", x.data_ptr())
        ctx.set_tensor_address("y", y.data_ptr())
        stream = torch.cuda.current_stream()
        assert ctx.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        torch.testing.assert_close(y, x, atol=2e-3, rtol=2e-3)
