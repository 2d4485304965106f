import pytest

from latentfuse.runtime.cli import build_parser, main


def test_bench_is_registered_with_its_options():
    args = build_parser().parse_args(["bench", "--resolutions", "256,512", "--aspect", "1:1,16:9",
                                      "--backends", "torch,onnxruntime", "--precision", "fp32,fp16",
                                      "--preset", "tiny", "--repeat", "2", "--warmup", "1", "--out", "x"])
    assert args.resolutions == (256, 512) and args.aspect == ("1:1", "16:9")
    assert args.backends == ("torch", "onnxruntime") and args.precision == ("fp32", "fp16")


def test_bench_rejects_bad_settings_with_one_line(capsys):
    assert main(["bench", "--precision", "fp8", "--no-progress"]) == 2
    assert "precision" in capsys.readouterr().err
    assert main(["bench", "--aspect", "wide", "--no-progress"]) == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--resolutions", "big"])


def test_bench_presets_and_time_budget_options():
    args = build_parser().parse_args(["bench", "--preset", "tiny,paper", "--time-budget", "20", "--threads", "2"])
    assert args.preset == ("tiny", "paper") and args.time_budget == 20.0
    assert build_parser().parse_args(["bench"]).time_budget is None


def test_bench_rejects_bad_budget_and_preset_combinations(capsys):
    assert main(["bench", "--time-budget", "0", "--no-progress"]) == 2
    assert "time budget" in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny,paper", "--checkpoint", "somewhere", "--no-progress"]) == 2
    assert "several presets" in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny,tiny", "--no-progress"]) == 2
