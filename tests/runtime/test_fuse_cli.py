"""`latentfuse fuse`, `fuse-dir` and `demo` on the tiny preset (random weights, tiny images)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from latentfuse.model.image_io import read_image, write_image
from latentfuse.runtime.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from latentfuse.model.components import FusionComponents

    path = tmp_path_factory.mktemp("cli") / "tiny_model"
    FusionComponents.from_preset("tiny", seed=0).save_pretrained(path)
    return path


def _pair(folder, name, h=24, w=40, seed=0):
    rng = np.random.default_rng(seed)
    write_image(folder / "a" / f"{name}.png", rng.random((h, w, 3)))
    write_image(folder / "b" / f"{name}.png", rng.random((h, w)))


def test_fuse_writes_the_image_at_the_input_size(tmp_path, checkpoint, capsys):
    _pair(tmp_path, "x", h=21, w=37)
    out = tmp_path / "fused.png"
    code = main(["fuse", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "--task", "vif",
                 "--checkpoint", str(checkpoint), "--mode", "regression", "-o", str(out)])
    assert code == 0
    assert read_image(out).shape == (21, 37, 3)
    assert "NFE 1" in capsys.readouterr().out


def test_fuse_mismatched_sizes_is_one_line_error(tmp_path, checkpoint, capsys):
    rng = np.random.default_rng(1)
    write_image(tmp_path / "a.png", rng.random((24, 40, 3)))
    write_image(tmp_path / "b.png", rng.random((24, 48)))
    code = main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--task", "mef",
                 "--checkpoint", str(checkpoint), "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--resize" in err and "40x24" in err


def test_fuse_without_a_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from latentfuse.model import components

    monkeypatch.setattr(components, "DEFAULT_MODEL_DIR", tmp_path / "no-default-model")
    _pair(tmp_path, "x")
    code = main(["fuse", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "--task", "vif", "-o", "o.png"])
    assert code == 2 and "--bundle DIR" in capsys.readouterr().err


def test_fuse_without_a_model_uses_the_bundled_default(tmp_path, capsys):
    from latentfuse.model.components import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        pytest.skip(f"no bundled default model at {DEFAULT_MODEL_DIR}")
    _pair(tmp_path, "x")
    out = tmp_path / "fused.png"
    code = main(["fuse", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "--task", "mef", "--mode", "regression",
                 "-o", str(out)])
    assert code == 0 and out.is_file()
    assert str(DEFAULT_MODEL_DIR) in capsys.readouterr().out


def test_fuse_dir_skips_finished_outputs_and_continues_past_a_bad_file(tmp_path, checkpoint, capsys):
    for k, name in enumerate(("p1", "p2", "p3")):
        _pair(tmp_path, name, seed=k)
    (tmp_path / "b" / "p2.png").write_bytes(b"corrupt")  # unreadable B image
    out = tmp_path / "out"
    out.mkdir()
    write_image(out / "p3.png", np.zeros((24, 40)))  # finished earlier: must not be redone
    before = os.stat(out / "p3.png").st_mtime_ns
    code = main(["fuse-dir", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--task", "vif",
                 "--checkpoint", str(checkpoint), "--mode", "regression"])
    captured = capsys.readouterr()
    assert code == 1
    assert read_image(out / "p1.png").shape == (24, 40, 3)
    assert not (out / "p2.png").exists()
    assert os.stat(out / "p3.png").st_mtime_ns == before
    assert "fused 1, skipped 1" in captured.out
    assert "p2.png" in captured.err and "failed" in captured.err


def test_side_by_side_puts_a_b_and_fused_in_a_row():
    from latentfuse.runtime.fuse_cli import side_by_side

    a, b, f = np.zeros((10, 12, 3)), np.ones((10, 12)), np.full((10, 12, 3), 0.5)
    row = side_by_side([a, b, f], gap=2)
    assert row.shape == (10, 12 * 3 + 4, 3)
    assert row[0, 0, 0] == 0 and row[0, 15, 0] == 1 and row[0, 30, 0] == 0.5


def test_demo_on_random_weights_says_so_loudly_and_writes_every_task(tmp_path, monkeypatch, capsys):
    from latentfuse.model import components
    from latentfuse.model.data import samples
    from latentfuse.model.data.samples import SamplePair

    monkeypatch.setattr(components, "DEFAULT_MODEL_DIR", tmp_path / "no_default_model")
    pairs = {}
    for k, task in enumerate(("vif", "mef", "mff")):
        _pair(tmp_path / task, "s", h=24, w=40, seed=k)
        pairs[task] = [SamplePair("s", task, tmp_path / task / "a/s.png", tmp_path / task / "b/s.png",
                                  "remove the noise", ("noise",))]
    monkeypatch.setattr(samples, "sample_pairs", lambda task: pairs[task])
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--backend", "torch", "--mode", "regression",
                 "--warmup", "0", "--runs", "1"])
    captured = capsys.readouterr()
    assert code == 0
    assert "RANDOM, UNTRAINED weights" in captured.err
    for task in ("vif", "mef", "mff"):
        assert read_image(out / f"{task}_s_fused.png").shape == (24, 40, 3)
        assert read_image(out / f"{task}_s_side_by_side.png").shape[1] > 3 * 40
    for stage in ("VAE-Enc", "T5", "DiT x 1", "VAE-Dec", "Pipeline", "Images/s", "vif 40x24"):
        assert stage in captured.out


def test_onnxruntime_without_a_bundle_exports_once_into_the_user_cache(tmp_path, checkpoint, capsys, monkeypatch):
    import shutil

    from latentfuse.export import bundle, bundle_cache
    from latentfuse.export.bundle_cache import cache_root, model_key

    exports = []
    real_export = bundle.export_bundle

    def quick_export(model_dir, out, **kw):  # the fast exporter: this test is about the cache, not export
        exports.append(out)
        return real_export(model_dir, out, **{**kw, "exporter": "torchscript", "verify": False, "lint": False})

    monkeypatch.setattr(bundle_cache, "export_bundle", quick_export)
    _pair(tmp_path, "x")
    args = ["fuse", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "--task", "vif", "--mode", "regression",
            "--backend", "onnxruntime", "--threads", "1", "-o", str(tmp_path / "o.png")]
    assert main(args + ["--checkpoint", str(checkpoint)]) == 0
    assert main(args + ["--checkpoint", str(checkpoint)]) == 0  # reused: no second export
    assert len(exports) == 1 and exports[0].parent == cache_root() / "bundles"
    assert "onnxruntime" in capsys.readouterr().out and (exports[0] / "manifest.json").is_file()
    # a changed model is a new bundle
    changed = tmp_path / "changed"
    shutil.copytree(checkpoint, changed)
    (changed / "model_index.json").write_text((changed / "model_index.json").read_text() + "\n")
    assert model_key(changed) != model_key(checkpoint)
    assert main(args + ["--checkpoint", str(changed)]) == 0
    assert len(exports) == 2 and exports[1] != exports[0]


def test_threads_must_be_positive(tmp_path, checkpoint, capsys):
    _pair(tmp_path, "x")
    code = main(["fuse", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "--task", "vif",
                 "--checkpoint", str(checkpoint), "--threads", "0", "-o", str(tmp_path / "o.png")])
    assert code == 2 and "--threads must be at least 1" in capsys.readouterr().err


def test_max_memory_is_read_before_any_work_and_one_that_cannot_be_met_says_what_it_needs(tmp_path, checkpoint, capsys):
    _pair(tmp_path, "x")
    args = ["fuse", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "--task", "vif", "--checkpoint",
            str(checkpoint), "--mode", "regression", "-o", str(tmp_path / "o.png")]
    code = main(args + ["--max-memory", "lots"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--max-memory takes a size such as 3G" in err
    code = main(args + ["--max-memory", "100M"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--max-memory 100 MB cannot be met: a 40x24 pair needs at least" in err
    assert not (tmp_path / "o.png").exists()
    assert main(args + ["--max-memory", "2G"]) == 0 and read_image(tmp_path / "o.png").shape == (24, 40, 3)


def test_regression_is_the_default_mode_and_refuses_the_flow_heads_settings(tmp_path, checkpoint, capsys):
    _pair(tmp_path, "x")
    args = ["fuse", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "--task", "vif", "--checkpoint",
            str(checkpoint), "-o", str(tmp_path / "o.png")]
    assert main(args) == 0 and "regression" in capsys.readouterr().out
    for extra, named in ((["--steps", "3"], "--steps 3"), (["--sampler", "euler", "--g", "0.5"], "--sampler euler, --g 0.5"),
                         (["--prior", "source_a"], "--prior source_a")):
        (tmp_path / "o.png").unlink(missing_ok=True)
        code = main(args + extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and f"takes no {named}" in err and "add --mode flow" in err, err
        assert not (tmp_path / "o.png").exists()
    assert main(args + ["--mode", "flow", "--steps", "3"]) == 0


def test_an_image_under_the_minimum_size_is_named_at_input(tmp_path, checkpoint, capsys):
    write_image(tmp_path / "dot.png", np.zeros((1, 1, 3), np.float32))
    write_image(tmp_path / "small.png", np.zeros((3, 5, 3), np.float32))
    code = main(["fuse", str(tmp_path / "small.png"), str(tmp_path / "dot.png"), "--task", "vif", "--checkpoint",
                 str(checkpoint), "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "dot.png is 1x1 (W x H)" in err and "at least 2x2" in err, err
    code = main(["fuse", str(tmp_path / "small.png"), str(tmp_path / "small.png"), "--task", "vif", "--checkpoint",
                 str(checkpoint), "-o", str(tmp_path / "o.png")])
    assert code == 0 and read_image(tmp_path / "o.png").shape == (3, 5, 3)  # under one 16 px tile: padded, cropped back


@pytest.fixture(scope="module")
def fidelity_checkpoint(tmp_path_factory, fidelity_perturbed):
    from latentfuse.model.components import FusionComponents

    path = tmp_path_factory.mktemp("cli") / "tiny_fidelity"
    fidelity_perturbed(FusionComponents.from_preset("tiny", heads=("regression",), seed=0, fidelity=True)).save_pretrained(path)
    return path


def test_fidelity_flag_weights_the_decoder_and_its_errors_are_one_line(tmp_path, checkpoint, fidelity_checkpoint,
                                                                       capsys):
    _pair(tmp_path, "x")
    _pair(tmp_path, "y", seed=1)

    def fuse(model, *extra, out="o.png"):
        return main(["fuse", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "--task", "vif", "--checkpoint",
                     str(model), "-o", str(tmp_path / out), *extra])

    outs = {}
    for w in (None, "0", "0.5"):
        name = f"w{w}.png"
        assert fuse(fidelity_checkpoint, *(() if w is None else ("--fidelity", w)), out=name) == 0
        said = capsys.readouterr().out
        assert (", fidelity " in said) == (w != "0")
        outs[w] = read_image(tmp_path / name)
    assert np.abs(outs[None] - outs["0"]).max() > 0.02 and np.abs(outs["0.5"] - outs[None]).max() > 0.005
    for bad in ("1.5", "-0.5", "nan"):
        assert fuse(fidelity_checkpoint, "--fidelity", bad, out="bad.png") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--fidelity takes a number in [0, 1]" in err
    assert fuse(checkpoint, "--fidelity", "0.5", out="bad.png") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no fidelity decoder" in err and not (tmp_path / "bad.png").exists()
    assert fuse(checkpoint, "--fidelity", "0", out="plain.png") == 0
    # fuse-dir checks the weight once, before any pair
    code = main(["fuse-dir", str(tmp_path / "a"), str(tmp_path / "b"), "--task", "vif", "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "dir"), "--fidelity", "1"])
    assert code == 2 and "no fidelity decoder" in capsys.readouterr().err and not list((tmp_path / "dir").glob("*"))
    assert main(["fuse-dir", str(tmp_path / "a"), str(tmp_path / "b"), "--task", "vif", "--checkpoint",
                 str(fidelity_checkpoint), "--out", str(tmp_path / "dir"), "--fidelity", "0.25"]) == 0
    assert len(list((tmp_path / "dir").glob("*.png"))) == 2


def test_fidelity_is_in_the_help_of_fuse_fuse_dir_and_demo(capsys):
    for command in ("fuse", "fuse-dir", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--fidelity W" in capsys.readouterr().out
