"""model.training.recipe: the default's recipe file, read and checked before any work."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.training.recipe import DEFAULT_RECIPE_KEYS, add_recipe_overrides, load_recipe, resolve_recipe

SHIPPED = Path(__file__).resolve().parents[3] / "configs" / "recipes" / "default.toml"


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def _shipped_text(**replace: str) -> str:
    text = SHIPPED.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_the_shipped_recipe_has_every_key_of_its_kind():
    recipe = load_recipe(SHIPPED)
    assert list(recipe) == [k.name for k in DEFAULT_RECIPE_KEYS]
    assert recipe["data"] == "real" and recipe["real_degradations"] == [0, 1, 2, 3] and recipe["work_scale"] == 1
    assert recipe["detail_clean"] == {"sigma": 16.0, "radius": 8, "fused_candidate": False, "noise_k": 0.0, "channels": "rgb"}
    assert isinstance(recipe["vae_lr"], float) and recipe["lr"] == 1e-3


@pytest.mark.parametrize("old, new, message", [
    ("reg_steps = 10000", "reg_step = 10000", r"unknown dit.reg_step .*model/training/recipe.py"),
    ("[flow]", "[flows]", r"unknown \[flows\]"),
    ("reg_steps = 10000", "reg_steps = 1e4", "reg_steps must be an integer, got 10000.0"),
    ("detail = true ", "detail = 1 ", "detail must be true or false, got 1"),
    ('data = "real"', 'data = "photos"', "data must be one of real, synthetic, got 'photos'"),
    ("real_degradations = [0, 1, 2, 3]", "real_degradations = []", "real_degradations must be a list of integers"),
    ('fused_candidate = true, noise_k = 3.0, channels = "rgb" }', "fused_candidate = true }",
     r"detail_safe must be a table \{sigma, radius, fused_candidate, noise_k, channels\}"),
    ('fused_candidate = true, noise_k = 3.0, channels = "rgb" }', 'fused_candidate = true, noise_k = 3.0, channels = "lab" }',
     "detail_safe: detail channels must be one of luma, rgb, got 'lab'"),
    ("ema = 0.99\n", "", "missing dit.ema"),
    ("[vae]", "[vae", "is not valid TOML"),
    ("[data]\nseed = 0\n", "data = 1\n[data_]\nseed = 0\n", r"\[data\] must be a section"),
])
def test_a_bad_recipe_names_the_file_and_the_key(tmp_path, old, new, message):
    path = _write(tmp_path, _shipped_text(**{old: new}))
    with pytest.raises(LatentfuseError, match=message) as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_flags_override_the_file_for_one_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_recipe_overrides(parser)
    args = parser.parse_args(["--reg-steps", "8000", "--lr", "5e-4", "--real-degradations", "0,2",
                              "--detail-clean", "3,2,1,0,rgb", "--detail", "false"])
    overrides = resolve_recipe(args, SHIPPED)
    assert overrides == {"reg_steps": 8000, "lr": 5e-4, "real_degradations": [0, 2], "detail": False,
                         "detail_clean": {"sigma": 3.0, "radius": 2, "fused_candidate": True, "noise_k": 0.0,
                                          "channels": "rgb"}}
    assert args.reg_steps == 8000 and args.flow_steps == 10000 and args.detail is False
    for bad, message in ((["--reg-steps", "many"], "--reg-steps takes an integer, got 'many'"),
                         (["--flow-prior", "uniform"], "--flow-prior must be one of gaussian"),
                         (["--detail", "maybe"], "--detail takes true or false"),
                         (["--detail-safe", "3,2,1"], "--detail-safe takes sigma,radius,fused_candidate,noise_k,channels")):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
        assert message in capsys.readouterr().err
