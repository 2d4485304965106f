"""model.training.config: the one config system of ``latentfuse train --config`` (TrainConfig) and ``--recipe``
(model.training.recipe.Recipe). These tests fail if the two drift apart: every key of both is checked by
its declaration, with the same messages."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.training.config import (SECTIONS, TrainConfig, add_flags, config_fields, config_sections,
                                              flat_keys, sections_from_dict, setting, type_form)
from latentfuse.model.training.recipe import Recipe

SHIPPED_RECIPE = Path(__file__).resolve().parents[3] / "configs" / "recipes" / "default.toml"


def _base(cls) -> dict:
    """A valid mapping of sections for ``cls`` (TrainConfig: none needed; the recipe: the shipped one)."""
    return {} if cls is TrainConfig else tomllib.loads(SHIPPED_RECIPE.read_text())


def _wrong(tp):
    """A value of another type than ``tp``."""
    return 1 if tp is str or tp is bool else "x"


def _keys(cls):
    return [(section, name, tp) for section, sec_cls in config_sections(cls).items()
            for name, (_, tp) in config_fields(sec_cls).items()]


def test_both_configs_are_sections_of_one_kind():
    assert config_sections(TrainConfig) == SECTIONS
    assert list(SECTIONS) == ["run", "model", "data", "optim", "loss", "flow", "ema", "continual"]
    for cls in (TrainConfig, Recipe):
        for section_cls in config_sections(cls).values():
            for f, tp in config_fields(section_cls).values():
                assert set(f.metadata) >= {"help", "choices"}, f"{section_cls.__name__}.{f.name} not made by setting()"
                type_form(tp)  # a type the loader knows


@pytest.mark.parametrize("cls", [TrainConfig, Recipe], ids=["TrainConfig", "Recipe"])
def test_every_key_of_both_configs_is_checked_by_its_type(cls):
    keys = _keys(cls)
    assert len(keys) > 40
    for section, name, tp in keys:
        data = _base(cls)
        data.setdefault(section, {})[name] = _wrong(tp)
        with pytest.raises(LatentfuseError) as err:
            cls.from_dict(data, source="FILE")
        assert re.match(rf"FILE: {section}\.{name} must be {re.escape(type_form(tp))}, got ", str(err.value)), err.value


@pytest.mark.parametrize("cls, section, int_key, float_key", [(TrainConfig, "optim", "steps", "lr"),
                                                               (Recipe, "dit", "reg_steps", "lr")],
                         ids=["TrainConfig", "Recipe"])
def test_both_widen_an_int_to_a_float_and_refuse_a_bool_for_an_int(cls, section, int_key, float_key):
    data = _base(cls)
    data.setdefault(section, {})[float_key] = 1
    value = getattr(getattr(cls.from_dict(data), section), float_key)
    assert value == 1.0 and type(value) is float
    data[section][int_key] = True
    with pytest.raises(LatentfuseError, match=rf"^FILE: {section}\.{int_key} must be an integer, got True$"):
        cls.from_dict(data, source="FILE")


@pytest.mark.parametrize("cls, section, module", [(TrainConfig, "optim", "model/training/config.py"),
                                                   (Recipe, "dit", "model/training/recipe.py")],
                         ids=["TrainConfig", "Recipe"])
def test_both_name_an_unknown_key_or_section_with_the_valid_ones(cls, section, module):
    data = _base(cls)
    data.setdefault(section, {})["learning_rate"] = 1e-3
    data["optimiser"] = {}
    valid = ", ".join(config_fields(config_sections(cls)[section]))
    with pytest.raises(LatentfuseError) as err:
        cls.from_dict(data, source="FILE")
    assert str(err.value) == (f"FILE: unknown [optimiser], {section}.learning_rate (valid sections: "
                              f"{', '.join(config_sections(cls))}; valid keys in [{section}]: {valid}; the keys are "
                              f"declared in {module})")
    data = _base(cls)
    data[section] = 3
    with pytest.raises(LatentfuseError, match=rf"^FILE: \[{section}\] must be a section \(a table of keys\), got "
                                              rf"{section} = 3$"):
        cls.from_dict(data, source="FILE")


def test_a_key_without_a_default_is_required_and_one_with_a_default_is_not():
    with pytest.raises(LatentfuseError, match=r"^FILE: missing dit\.ema, fidelity\.fidelity_seed$"):
        data = _base(Recipe)
        del data["dit"]["ema"], data["fidelity"]["fidelity_seed"]
        Recipe.from_dict(data, source="FILE")
    assert TrainConfig.from_dict({"optim": None}).optim.steps == 200_000  # an empty YAML section: its defaults
    assert TrainConfig.from_dict({}).to_dict() == TrainConfig().to_dict()


@dataclass
class _Table:
    gain: float = setting(help="a number")
    name: str = setting(help="a string")

    def __post_init__(self):
        if self.gain < 0:
            raise LatentfuseError(f"gain must be >= 0, got {self.gain}")


@dataclass
class _Toy:
    steps: int = setting(3, "steps")
    rates: list[float] = setting(factory=list, help="rates")
    mode: str = setting("a", "a mode", choices=("a", "b"))
    on: bool = setting(False, "a switch")
    extra: dict = setting(factory=dict, help="free table")
    table: _Table = setting(factory=lambda: _Table(1.0, "t"), help="a table")


def test_the_generic_loader_on_a_config_of_its_own():
    sections = {"toy": _Toy}
    toy = sections_from_dict({"toy": {"rates": [1, 0.5], "extra": {"anything": [1]},
                                      "table": {"gain": 2, "name": "u"}}}, sections, "FILE")["toy"]
    assert toy == _Toy(3, [1.0, 0.5], "a", False, {"anything": [1]}, _Table(2.0, "u"))
    assert type(toy.rates[0]) is float and type(toy.table.gain) is float
    for value, message in (({"mode": "c"}, r"toy\.mode must be one of a, b, got 'c'"),
                           ({"rates": [1, "x"]}, r"toy\.rates must be a list of numbers, got \[1, 'x'\]"),
                           ({"table": {"gain": 1.0}}, r"toy\.table must be a table \{gain, name\}, got"),
                           ({"table": {"gain": "1", "name": "u"}}, r"toy\.table\.gain must be a number, got '1'"),
                           ({"table": {"gain": -1, "name": "u"}}, r"toy\.table: gain must be >= 0, got -1\.0")):
        with pytest.raises(LatentfuseError, match=rf"^FILE: {message}"):
            sections_from_dict({"toy": value}, sections, "FILE")


def test_flags_come_from_the_same_declaration(capsys):
    parser = argparse.ArgumentParser()
    with pytest.raises(TypeError, match="a key of type dict has no flag"):
        add_flags(parser, {"toy": _Toy}, "toy [{section}]")

    @dataclass
    class Flags:
        steps: int = setting(3, "steps")
        rates: list[float] = setting(factory=list, help="rates")
        mode: str = setting("a", "a mode", choices=("a", "b"))
        on: bool = setting(False, "a switch")
        table: _Table = setting(factory=lambda: _Table(1.0, "t"), help="a table", metavar="TBL")

    parser = argparse.ArgumentParser()
    add_flags(parser, {"flags": Flags}, "flags [{section}]")
    args = parser.parse_args(["--steps", "4", "--rates", "1,0.5", "--on", "yes", "--table", "2,u"])
    assert (args.steps, args.rates, args.mode, args.on, args.table) == (4, [1.0, 0.5], None, True,
                                                                         {"gain": 2.0, "name": "u"})
    for bad, message in ((["--steps", "4.5"], "--steps takes an integer, got '4.5'"),
                         (["--rates", "1,x"], "--rates takes numbers joined by commas, got '1,x'"),
                         (["--mode", "c"], "--mode must be one of a, b, got 'c'"),
                         (["--on", "maybe"], "--on takes true or false, got 'maybe'"),
                         (["--table", "2"], "--table takes gain,name (a number, a string), got '2'")):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
        assert message in capsys.readouterr().err
    help_text = parser.format_help()
    assert "flags [flags]" in help_text and "--table TBL" in help_text and "--rates FLOATS" in help_text


def test_key_names_are_unique_across_the_sections_of_a_flat_config():
    @dataclass
    class A:
        seed: int = setting(0)

    @dataclass
    class B:
        seed: int = setting(1)

    with pytest.raises(TypeError, match=r"key 'seed' is in \[a\] and \[b\]"):
        flat_keys({"a": A, "b": B})
    assert list(flat_keys(config_sections(Recipe)))[:3] == ["seed", "data", "real_degradations"]
    assert dataclasses.is_dataclass(Recipe)
