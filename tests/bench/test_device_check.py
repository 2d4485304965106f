"""bench/device_check.sh (issue 30): the prepared GPU check, run here as ``--smoke`` on the CPU.

One smoke run per session (the shell script as a GPU machine runs it: install into a throwaway folder,
every part in its own process, the report after each); the tests read what it wrote. The schema is
docs/device-check.md's. The AOTInductor part compiles nothing under --smoke; the slow test asks it for
one graph and checks the packaged pipeline against eager torch.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "device_check.sh"
STAGES = ("VAE-Enc", "T5", "DiT", "VAE-Dec", "Fidelity", "Detail", "total")
STATUSES = {"ok", "skipped", "error", "oom", "timeout"}  # timeout: the latency part ran out under heavy load


def _env(tmp: Path) -> dict:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp)}  # the work folder lands in tmp
    env.pop("DEVICE_CHECK_AOTI_GRAPHS", None)
    env.pop("DEVICE_CHECK_BUDGET_S", None)
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device_check")
    out = tmp / "out"
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "--smoke"], env=_env(tmp), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "device_check.json").read_text()), out, tmp, proc.stdout


def test_smoke_installs_into_a_throwaway_folder_and_records_the_machine(smoke):
    report, out, tmp, log = smoke
    assert report["schema"] == "latentfuse.device_check/1" and report["smoke"] is True
    install = report["install"]
    assert install["status"] == "ok" and Path(install["site"]).is_relative_to(tmp)
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["gpu"] is None
    # the package ran from the throwaway install, torch from the interpreter's own site-packages
    assert Path(machine["latentfuse_file"]).is_relative_to(install["site"])
    assert not Path(machine["torch_file"]).is_relative_to(install["site"])
    assert report["versions"]["torch"] and report["versions"]["latentfuse"] == "0.1.0"
    assert machine["matmul_peak_tflops"]["fp32"] > 0
    assert (out / "device_check.md").is_file() and (out / "device_check.log").read_text().strip()
    assert "part latency" in log


def test_smoke_has_one_row_per_model_precision_mode_size_and_stage(smoke):
    report = smoke[0]
    rows = [r for r in report["rows"] if r["part"] == "latency"]
    got = {(r["model"], r["precision"], r["mode"], r["role"], r["stage"]) for r in rows}
    want = set(itertools.product(("default", "tiny"), ("fp32", "fp16"), ("regression", "flow"),
                                 ("demo", "camera", "table5"), STAGES))
    assert got == want and len(rows) == len(want)
    assert {r["status"] for r in rows} <= STATUSES
    assert all(r["reason"] for r in rows if r["status"] != "ok")
    ok = [r for r in rows if r["status"] == "ok"]
    # under any load the first configurations fit the budget; each is a real timing of a finite image
    first = {r["stage"]: r for r in rows if (r["model"], r["precision"], r["mode"], r["role"]) ==
             ("default", "fp32", "regression", "demo")}
    assert first["total"]["status"] == "ok" and first["total"]["median_ms"] > 0
    assert first["total"]["median_ms"] >= first["DiT"]["median_ms"] > 0 and first["VAE-Enc"]["median_ms"] > 0
    assert first["total"]["finite"] is True and first["total"]["nfe"] == 1 and first["total"]["runs"] == 1
    assert all(r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in ok)
    flow = [r for r in ok if r["mode"] == "flow" and r["stage"] == "total"]
    assert all(r["nfe"] == 5 for r in flow)
    # sizes are the demo pair's and the two reference sizes, shrunk for the CPU
    sizes = {r["role"]: (r["width"], r["height"]) for r in rows}
    assert sizes["camera"] == (80, 60) and sizes["table5"] == (64, 64)


def test_smoke_records_why_tensorrt_aoti_and_the_cpp_host_did_not_run(smoke):
    parts = smoke[0]["parts"]
    assert set(parts) == {"machine", "latency", "aoti", "tensorrt", "cpp"}
    if importlib.util.find_spec("tensorrt") is None:
        assert parts["tensorrt"]["status"] == "skipped"
        assert parts["tensorrt"]["reason"].startswith("import tensorrt failed: ModuleNotFoundError")
    assert parts["aoti"]["status"] == "skipped" and "--smoke compiles no AOTInductor package" in parts["aoti"]["reason"]
    cpp = parts["cpp"]  # this machine may lack the host's build dependencies; then the reason says which
    assert cpp["status"] == "ok" or (cpp["status"] == "skipped" and cpp["reason"])
    assert all(p["status"] in ("ok", "skipped", "timeout") for p in parts.values())


def test_smoke_markdown_puts_table5_next_to_the_paper(smoke):
    report, out = smoke[0], smoke[1]
    text = (out / "device_check.md").read_text()
    assert "## MMAIF Table 5's form: whole pipeline at 64x64" in text
    assert "MMAIF (Reg) 0.108 s" in text and "MMAIF (flow) <0.6 s" in text
    table5 = [r for r in report["rows"] if r["role"] == "table5" and r["stage"] == "total" and r["status"] == "ok"]
    for r in table5:  # every timed 1024-role row appears with its seconds and its ratio to the paper
        ratio = r["median_ms"] / 1e3 / (0.108 if r["mode"] == "regression" else 0.6)
        assert re.search(rf"\| {r['model']} \| torch \| {r['precision']} \| {r['mode']} \| "
                         rf"{r['median_ms'] / 1e3:.3f} \| [^|]+ \| {ratio:.2f}x \|", text)


def test_a_part_killed_at_its_limit_keeps_its_rows_and_says_so(tmp_path):
    from latentfuse.bench.device_check_report import assemble

    work = tmp_path / "work"
    work.mkdir()
    row = {"part": "latency", "model": "default", "weights": "bundled", "backend": "torch", "device": "cpu",
           "precision": "fp32", "mode": "regression", "size": "64x64", "role": "table5", "height": 64, "width": 64,
           "stage": "total", "status": "ok", "reason": None, "median_ms": 5.0, "min_ms": 4.0, "max_ms": 6.0,
           "runs": 3, "nfe": 1}
    pending = {**row, "mode": "flow", "status": "pending", "reason": "not reached", "median_ms": None}
    (work / "latency.json").write_text(json.dumps({"part": "latency", "status": "running", "budget_s": 30.0,
                                                   "rows": [row, pending]}))
    (work / "latency.rc").write_text("124\n")
    (work / "aoti.json").write_text(json.dumps({"part": "aoti", "status": "running", "budget_s": 30.0, "rows": []}))
    (work / "aoti.rc").write_text("1\n")
    report = assemble(work, tmp_path / "out", budget_s=60.0)
    assert report["status"] == "partial" and report["rows"][0] == row and len(report["rows"]) == 2
    assert report["rows"][1]["status"] == "timeout" and "latency part ended" in report["rows"][1]["reason"]
    assert report["parts"]["latency"]["status"] == "timeout" and "planned for 30.0 s" in report["parts"]["latency"]["reason"]
    assert report["parts"]["aoti"]["status"] == "failed" and "exit 1" in report["parts"]["aoti"]["reason"]
    assert report["parts"]["cpp"]["status"] == "not run"
    assert json.loads((tmp_path / "out" / "device_check.json").read_text()) == report
    assert "| default | torch | fp32 | regression | 0.005 | 0.108 s | 0.05x |" in (tmp_path / "out" / "device_check.md").read_text()


@pytest.mark.parametrize("args, message", [
    ([], "OUT_DIR is missing"),
    (["a", "b"], "one OUT_DIR only"),
    (["out", "--fast"], "unknown option --fast"),
])
def test_bad_arguments_fail_with_one_line(tmp_path, args, message):
    proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bad_budget_and_graph_names_fail_with_one_line(tmp_path):
    env = {**_env(tmp_path), "DEVICE_CHECK_BUDGET_S": "5m"}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "o"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "DEVICE_CHECK_BUDGET_S must be whole seconds" in proc.stderr
    env = {**_env(tmp_path), "DEVICE_CHECK_AOTI_GRAPHS": "dit_regression,unet"}
    proc = subprocess.run([sys.executable, "-m", "latentfuse.bench.device_check", "part", "aoti", "--smoke",
                           "--work", str(tmp_path), "--budget", "10"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "unknown graph(s) unet" in proc.stderr


def test_a_gpu_run_without_a_gpu_stops_at_once_and_says_why(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the GPU run would start")
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "sees no CUDA GPU here" in proc.stdout and "--smoke" in proc.stdout
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert report["status"] == "failed" and report["rows"] == [] and "sees no CUDA GPU" in report["reason"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no install was made, the work folder is gone


def test_the_wheel_list_names_pinned_wheels_and_how_to_fetch_them():
    text = (ROOT / "bench" / "device_wheels.txt").read_text()
    specs = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert specs and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", s) for s in specs)
    assert "diffusers" in {s.split("==")[0] for s in specs}  # the VAE; the GPU image has no diffusers
    assert "pip download --no-deps --only-binary=:all: --python-version 3.12" in text and "-d .device_wheels" in text
    ignored = subprocess.run(["git", "check-ignore", "-q", ".device_wheels/x.whl"], cwd=ROOT).returncode
    assert ignored == 0


@pytest.mark.slow
def test_aoti_part_runs_the_pipeline_on_a_compiled_graph(tmp_path):
    """The aoti part as on a GPU, on the CPU with one graph (about a minute of C++ compile): the package
    replaces the eager VAE encoder and the fused image matches eager torch."""
    env = {**_env(tmp_path), "DEVICE_CHECK_AOTI_GRAPHS": "vae_encoder"}
    proc = subprocess.run([sys.executable, "-m", "latentfuse.bench.device_check", "part", "aoti", "--smoke",
                           "--work", str(tmp_path), "--budget", "600"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    part = json.loads((tmp_path / "aoti.json").read_text())
    assert part["status"] == "ok"
    assert part["graphs"][0]["graph"] == "vae_encoder" and part["graphs"][0]["status"] == "ok"
    totals = [r for r in part["rows"] if r["stage"] == "total"]
    assert len(totals) == 6 and all(r["backend"] == "aoti" and r["aoti_graphs"] == "vae_encoder" for r in totals)
    ok = [r for r in totals if r["status"] == "ok"]
    assert ok and all(r["psnr_vs_eager_db"] is None or r["psnr_vs_eager_db"] > 60 for r in ok)
