"""``latentfuse train --config`` end to end on a tiny `latentfuse data build` folder, then --resume."""

from pathlib import Path

import pytest

from latentfuse.runtime.cli import main


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from latentfuse.model.data.build import build_dataset
    from latentfuse.model.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("data")
    make_synthetic("mef", root / "synth", n=2, seed=0, long_side=48, gt="source")
    build_dataset(root / "synth", root / "build" / "mef", "mef", seed=0, long_side=48, progress=False)
    return root / "build"


def _write_config(path: Path, data_root: Path, out: Path, steps: int) -> Path:
    path.write_text(f"""
[run]
output_dir = "{out}"
precision = "fp32"
device = "cpu"
progress = false
checkpoint_every = 2
[model]
preset = "tiny"
head = "flow"
gradient_checkpointing = true
overrides = {{ depth = 1, hidden_size = 32, num_heads = 2, lora_rank = 8, expert_hidden = 32, pe_hidden = 16 }}
[data]
root = "{data_root}"
tasks = ["mef"]
crop = 32
[optim]
batch_size = 2
grad_accum = 2
steps = {steps}
warmup_steps = 1
[loss]
aux_weight = 0.1
""")
    return path


def test_train_command_and_resume(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    cfg = _write_config(tmp_path / "tiny.toml", data_root, out, steps=3)
    assert main(["train", "--config", str(cfg)]) == 0
    assert "trained flow DiT to step 3" in capsys.readouterr().out
    assert (out / "final" / "dit_flow" / "model.safetensors").is_file()
    assert (out / "loss_curves.png").is_file()
    assert len((out / "train_log.csv").read_text().splitlines()) == 4
    assert list((data_root).glob("latents_32.pt"))  # the latent cache was written once

    longer = _write_config(tmp_path / "longer.toml", data_root, out, steps=5)
    assert main(["train", "--config", str(longer), "--resume", str(out)]) == 2  # optim.steps differs
    assert "optim.steps" in capsys.readouterr().err


def test_train_command_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearnig_rate = 1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "optim.learnig_rate" in err and "Traceback" not in err
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
