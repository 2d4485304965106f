"""model.training.recipe: the default's recipe file, read and checked before any work (by the one config system,
model.training.config: tests/model/training/test_config.py)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.training.config import config_sections, flat_keys
from latentfuse.model.training.recipe import (RECIPE_KEYS, DetailTable, Recipe, add_recipe_overrides, load_recipe,
                                              resolve_recipe)

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
    assert list(recipe) == list(RECIPE_KEYS)
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
    # the checks of the one config system (model.training.config), each naming the section, the key, the type
    ("reg_steps = 10000", "reg_steps = true", r"dit\.reg_steps must be an integer, got True"),
    ("reg_steps = 10000", 'reg_steps = "10000"', r"dit\.reg_steps must be an integer, got '10000'"),
    ("\nlr = 1e-3", '\nlr = "fast"', r"dit\.lr must be a number, got 'fast'"),
    ('flow_prior = "gaussian"', 'flow_prior = "uniform"', r"flow\.flow_prior must be one of gaussian, source_a, "),
    ("real_degradations = [0, 1, 2, 3]", "real_degradations = [0, 1.5]", r"data\.real_degradations must be a list of "
     r"integers, got \[0, 1\.5\]"),
    ("radius = 8, fused_candidate = false", "radius = 8.0, fused_candidate = false",
     r"detail\.detail_clean\.radius must be an integer, got 8\.0"),
    ("fused_candidate = false", "fused_candidate = 0", r"detail\.detail_clean\.fused_candidate must be true or false"),
    ("sigma = 16.0", "sigma = -1.0", r"detail\.detail_clean: detail sigma must be positive, got -1\.0"),
    ('channels = "rgb" }', 'channels = "rgb", gain = 2.0 }', r"detail_clean must be a table \{sigma, radius, "),
    ("ema = 0.99\n", "ema = 0.99\nemas = 0.9\n", r"unknown dit\.emas \(valid keys in \[dit\]: work_scale, .*, ema; "),
    ("fidelity_seed = 1000", "", r"missing fidelity\.fidelity_seed$"),
])
def test_a_bad_recipe_names_the_file_and_the_key(tmp_path, old, new, message):
    path = _write(tmp_path, _shipped_text(**{old: new}))
    with pytest.raises(LatentfuseError, match=message) as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_a_recipe_can_be_json_too(tmp_path):
    import json
    import tomllib

    raw = tomllib.loads(SHIPPED.read_text())
    (tmp_path / "recipe.json").write_text(json.dumps(raw))
    assert load_recipe(tmp_path / "recipe.json") == load_recipe(SHIPPED)


def test_the_recipe_is_a_dataclass_of_sections():
    recipe = Recipe.load(SHIPPED)
    assert [f.name for f in dataclasses.fields(Recipe)] == ["data", "vae", "dit", "flow", "detail", "fidelity"]
    assert recipe.dit.reg_steps == 10000 and recipe.flow.flow_prior == "gaussian"
    assert isinstance(recipe.detail.detail_safe, DetailTable) and recipe.detail.detail_safe.noise_k == 3.0
    assert recipe.values() == load_recipe(SHIPPED)
    # every key has its help (the --flag's) and every section of the file is one of the recipe's
    sections = config_sections(Recipe)
    assert all(f.metadata["help"] for cls in sections.values() for f in dataclasses.fields(cls))
    assert list(sections) == [line[1:-1] for line in SHIPPED.read_text().splitlines() if line.startswith("[")
                              for line in [line.split("#")[0].strip()]]


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


def test_one_flag_per_key_with_its_help_type_and_choices(capsys):
    parser = argparse.ArgumentParser()
    add_recipe_overrides(parser)
    actions = {a.dest: a for a in parser._actions if a.dest in RECIPE_KEYS}
    assert list(actions) == list(RECIPE_KEYS)
    for name, (section, f, _) in flat_keys(config_sections(Recipe)).items():
        assert actions[name].option_strings == ["--" + name.replace("_", "-")] and actions[name].help == f.metadata["help"]
    assert [actions[n].metavar for n in ("seed", "lr", "data", "detail", "real_degradations", "detail_safe")] == [
        "INT", "FLOAT", "STR", "BOOL", "INTS", "DETAIL"]
    words = {"yes": True, "no": False, "1": True, "0": False, "TRUE": True, "false": False}
    for text, value in words.items():
        assert parser.parse_args(["--fidelity", text]).fidelity is value
    # a table's form (each value of its type), as a dict; its values are checked before any work
    # (recipe_cli.check_settings: tests/model/training/test_default_model.py)
    assert parser.parse_args(["--detail-clean=-1,2,yes,0,hsv"]).detail_clean == {
        "sigma": -1.0, "radius": 2, "fused_candidate": True, "noise_k": 0.0, "channels": "hsv"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--detail-clean", "8,2.5,1,0,rgb"])
    assert "--detail-clean takes sigma,radius,fused_candidate,noise_k,channels (e.g. 8,4,0,3,luma)" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "photos"])
    assert "--data must be one of real, synthetic, got 'photos'" in capsys.readouterr().err


def test_every_value_of_the_shipped_recipe_survives_its_flag():
    """``recipe_cli._flag_text`` (the run's command line in its report) writes what the flags read back."""
    from latentfuse.model.training.recipe_cli import _flag_text

    parser = argparse.ArgumentParser()
    add_recipe_overrides(parser)
    values = load_recipe(SHIPPED)
    argv = [w for name, value in values.items() for w in ("--" + name.replace("_", "-"), _flag_text(value))]
    args = parser.parse_args(argv)
    assert {name: getattr(args, name) for name in RECIPE_KEYS} == values
    assert all(type(getattr(args, name)) is type(value) for name, value in values.items())
