"""The README's examples as written: the Python API block runs, and every `latentfuse` line of its shell
blocks names a real subcommand with flags that subcommand takes."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _command_lines() -> list[str]:
    """Every `latentfuse ...` command of the bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in _blocks("bash"):
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = command.split("  #")[0].strip()
            if command.startswith("latentfuse "):
                lines.append(command)
    return lines


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_cli_example_uses_a_real_subcommand_and_its_flags():
    from latentfuse.runtime.cli import build_parser

    commands = _subparsers(build_parser())
    lines = _command_lines()
    assert len(lines) >= 20  # the README's command-line section
    wrong = []
    for line in lines:
        words = shlex.split(line.replace("[", " ").replace("]", " "))[1:]
        parser = commands.get(words[0])
        if parser is None:
            wrong.append(f"{line}: no subcommand {words[0]!r}")
            continue
        nested = _subparsers(parser)
        if nested and len(words) > 1 and words[1] in nested:  # `latentfuse data build ...`
            parser = nested[words[1]]
        known = {option for action in parser._actions for option in action.option_strings}
        wrong += [f"{line}: {words[0]} has no {flag}" for flag in (w.split("=")[0] for w in words if w.startswith("--"))
                  if flag not in known]
    assert wrong == []


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, with BUNDLE a bundle of the tiny preset and ir.png / vis.png two small images."""
    from latentfuse.export.bundle import export_bundle
    from latentfuse.model.components import FusionComponents
    from latentfuse.model.image_io import read_image, write_image

    (block,) = [b for b in _blocks("python") if "Pipeline" in b]
    model = tmp_path / "tiny"
    FusionComponents.from_preset("tiny", seed=0).save_pretrained(model)
    export_bundle(model, tmp_path / "BUNDLE", exporter="torchscript", verify=False, lint=False)
    rng = np.random.default_rng(0)
    write_image(tmp_path / "ir.png", rng.random((40, 56)))
    write_image(tmp_path / "vis.png", rng.random((40, 56, 3)))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert read_image(tmp_path / "fused.png").shape == (40, 56, 3)
