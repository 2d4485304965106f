"""`latentfuse info`: parameter counts of the presets."""

import json

from latentfuse.runtime.cli import main


def test_paper_preset_matches_paper_size(capsys):
    assert main(["info", "--preset", "paper", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert abs(info["total_params"] / 282e6 - 1) < 0.10
    assert abs(info["active_params"] / 185e6 - 1) < 0.10
    assert info["active_params"] < info["total_params"]


def test_tiny_preset_is_a_few_million(capsys):
    assert main(["info", "--preset", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert 1e6 < info["total_params"] < 10e6


def test_unknown_preset_is_one_line_error(capsys):
    assert main(["info", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown preset 'nope'" in err
