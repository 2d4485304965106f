"""`latentfuse serve` on a real tritonserver (PyTriton), loopback only, on the tiny preset: HTTP and gRPC answers
equal the in-process pipeline byte for byte, concurrent requests of three sizes are batched and still exact,
bad requests are refused by name while the server keeps serving, the `--server` client path, clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

SKIP = "the serve extra is not installed (pip install 'latentfuse[serve]')"
pytest.importorskip("pytriton.triton", reason=SKIP)
pytest.importorskip("tritonclient.http", reason=SKIP)
pytest.importorskip("tritonclient.grpc", reason=SKIP)

import tritonclient.grpc as tgrpc  # noqa: E402
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from latentfuse.bench.serve_bench import free_ports  # noqa: E402
from latentfuse.model.errors import LatentfuseError  # noqa: E402
from latentfuse.model.image_io import read_image, write_image  # noqa: E402
from latentfuse.runtime.cli import main  # noqa: E402
from latentfuse.runtime.gathering import GatheringBackend  # noqa: E402
from latentfuse.runtime.serve import BatchFuser, FusionServer, ServeOptions, to_uint8  # noqa: E402
from latentfuse.runtime.serve_client import FusionClient  # noqa: E402

MAX_PIXELS = 96 * 96  # small, so the over-limit request is cheap to send


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc), e.g. tritonserver and its Python-backend stub."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo.extend(kids)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def outliving(pids, grace: float = 10.0) -> list[int]:
    """Those of ``pids`` still alive ``grace`` seconds on: a stopped server's children exit asynchronously (the
    stub after tritonserver), so a loaded CI machine may need more than an instant to see them gone."""
    deadline = time.monotonic() + grace
    while (left := [k for k in pids if alive(k)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def triton_children(pid: int) -> set[int]:
    kids = set()
    for c in descendants(pid):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes()
        except OSError:
            continue
        if b"tritonserver" in cmd or b"triton_python_backend_stub" in cmd:
            kids.add(c)
    return kids


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from latentfuse.export.bundle import export_bundle
    from latentfuse.model.components import FusionComponents

    root = tmp_path_factory.mktemp("serve")
    components = FusionComponents.from_preset("tiny", seed=0)
    components.window = 64  # a 64 px DiT window: the larger test pairs run batched windows
    model_dir = components.save_pretrained(root / "model")
    # TorchScript exporter, no re-verification: export parity is tests/export's job
    export_bundle(model_dir, root / "bundle", exporter="torchscript", verify=False, lint=False, progress=False)
    return root / "bundle"


@pytest.fixture(scope="module")
def reference(bundle):
    """The in-process pipeline the server's answers must equal."""
    from latentfuse.runtime.pipeline import Pipeline

    return Pipeline.from_bundle(bundle, backend="onnxruntime", threads=1)


@pytest.fixture(scope="module")
def server(bundle):
    from latentfuse.runtime.pipeline import Pipeline

    http, grpc, metrics = free_ports(3)
    fuser = BatchFuser(Pipeline.from_bundle(bundle, backend="onnxruntime", threads=1), max_pixels=MAX_PIXELS,
                       max_group=8)
    # a 50 ms batching window: concurrent test requests reliably share a batch
    opts = ServeOptions(host="127.0.0.1", http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch=8,
                        batch_delay_ms=50, max_pixels=MAX_PIXELS)
    srv = FusionServer([fuser], opts, log=lambda line: None).start()
    yield {"server": srv, "fuser": fuser, "http": f"http://127.0.0.1:{http}", "grpc": f"grpc://127.0.0.1:{grpc}",
           "metrics": f"http://127.0.0.1:{metrics}/metrics", "http_port": http}
    srv.stop()


def pair(h: int, w: int, seed: int, gray_b: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (h, w, 1) if gray_b else (h, w, 3), dtype=np.uint8)
    return a, b


def fresh(reference):
    """A pipeline over the reference's backend for a BatchFuser to wrap (the reference stays as it is)."""
    from latentfuse.runtime.pipeline import Pipeline

    return Pipeline(reference.backend, prompt_cache=reference.prompt_cache)


def in_process(pipe, a, b, **kw) -> np.ndarray:
    squeeze = lambda x: x[..., 0] if x.shape[-1] == 1 else x  # noqa: E731
    return to_uint8(pipe(squeeze(a), squeeze(b), **kw).image)


# ------------------------------------------------------------------------------ answers


def test_http_and_grpc_answers_equal_the_in_process_pipeline(server, reference):
    a, b = pair(40, 56, seed=0)
    want = in_process(reference, a, b, task="vif", seed=3)
    for url in (server["http"], server["grpc"]):
        with FusionClient(url) as client:
            assert client.ready()
            got = client.fuse(a, b, task="vif", seed=3)
        assert got.dtype == np.uint8 and got.shape == (40, 56, 3)
        assert np.array_equal(got, want), url
    # regression head, a prompt of its own, both sources gray: a one-channel answer
    ga, gb = a[..., :1].copy(), b
    want = in_process(reference, ga, gb, task="mef", mode="regression", prompt="remove the noise")
    with FusionClient(server["grpc"]) as client:
        got = client.fuse(ga, gb, task="mef", mode="regression", prompt="remove the noise")
    assert got.shape == (40, 56, 1) and np.array_equal(got, want)


def test_sixteen_concurrent_requests_of_three_sizes_are_batched_and_exact(server, reference):
    fuser = server["fuser"]
    sizes = [(40, 56), (64, 64), (48, 112)]  # 48x112 runs several DiT windows per pair
    jobs = [(*pair(*sizes[i % 3], seed=10 + i), i) for i in range(16)]
    want = [in_process(reference, a, b, task="vif", mode="flow", seed=seed) for a, b, seed in jobs]
    # whether requests queue into one batch depends on their timing on a loaded CI machine: up to three rounds
    # of 16, every answer exact in each, and at least one round batched
    for _ in range(3):
        merged_before, groups_before = fuser.backend.merged_calls, len(fuser.group_sizes)
        with FusionClient(server["http"]) as client, ThreadPoolExecutor(16) as pool:
            # the flow head: 5 DiT calls a pair keep the server busy, so requests queue into batches
            answers = list(pool.map(lambda j: client.fuse(j[0], j[1], task="vif", mode="flow", seed=j[2]), jobs))
        for (a, b, seed), got, expected in zip(jobs, answers, want):
            assert np.array_equal(got, expected), (a.shape, seed)
        groups = fuser.group_sizes[groups_before:]
        assert sum(groups) == 16, groups
        if max(groups) > 1:  # dynamic batching fused pairs together
            assert fuser.backend.merged_calls > merged_before
            break
    else:
        pytest.fail(f"no batch of more than one pair in three rounds of 16 concurrent requests: {groups}")


def _raw(url: str, inputs: list[tuple[str, np.ndarray, str]]):
    client = thttp.InferenceServerClient(url.removeprefix("http://"))
    try:
        tensors = []
        for name, value, dtype in inputs:
            t = thttp.InferInput(name, list(value.shape), dtype)
            t.set_data_from_numpy(value)
            tensors.append(t)
        return client.infer("latentfuse", tensors)
    finally:
        client.close()


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


def _request(a, b, task="vif", mode=None, a_dtype="UINT8"):
    out = [("image_a", a, a_dtype), ("image_b", b, "UINT8"), ("task", _text(task), "BYTES")]
    return out + ([("mode", _text(mode), "BYTES")] if mode else [])


U8 = lambda *shape: np.full(shape, 128, np.uint8)  # noqa: E731

BAD_REQUESTS = {
    "dtype": (_request(np.zeros((1, 32, 32, 3), np.float32), U8(1, 32, 32, 3), a_dtype="FP32"), "FP32"),
    "rank": (_request(U8(1, 32, 32), U8(1, 32, 32)), "unexpected shape for input 'image_"),
    "sizes differ": (_request(U8(1, 32, 32, 3), U8(1, 32, 48, 3)), "differs in size"),
    "unknown task": (_request(U8(1, 32, 32, 3), U8(1, 32, 32, 3), task="dehaze"), "unknown task 'dehaze'"),
    "unknown mode": (_request(U8(1, 32, 32, 3), U8(1, 32, 32, 3), mode="fast"), "unknown mode 'fast'"),
    "empty image": (_request(U8(1, 0, 32, 3), U8(1, 0, 32, 3)), "image_a is empty"),
    "channels": (_request(U8(1, 32, 32, 4), U8(1, 32, 32, 4)), "4 channels"),
    "over --max-pixels": (_request(U8(1, 100, 100, 1), U8(1, 100, 100, 1)), "--max-pixels"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_is_refused_by_name_and_the_server_keeps_serving(server, case):
    inputs, named = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as err:
        _raw(server["http"], inputs)
    message = err.value.message()
    assert named in message, message
    assert "Traceback" not in message, message
    good = _raw(server["http"], _request(U8(1, 32, 32, 3), U8(1, 32, 32, 1), mode="regression"))
    assert good.as_numpy("fused").shape == (1, 32, 32, 3)


def test_a_bad_pair_in_a_batch_fails_alone(reference):
    """Requests that Triton batches together: the bad one gets its error, the others their images."""
    fuser = BatchFuser(fresh(reference), max_pixels=MAX_PIXELS)
    a, b = pair(32, 48, seed=5, gray_b=False)
    good = {"image_a": a[None], "image_b": b[None], "task": _text("mff")}
    bad = dict(good, task=_text("xyz"))
    out = fuser([good, bad, dict(good, seed=np.array([[7]], np.int64))])
    assert np.array_equal(out[0]["fused"][0], in_process(reference, a, b, task="mff"))
    assert list(out[1]) == ["__latentfuse_error__"] and b"unknown task 'xyz'" in out[1]["__latentfuse_error__"][0]
    assert np.array_equal(out[2]["fused"][0], in_process(reference, a, b, task="mff", seed=7))
    assert fuser.group_sizes == [2]


def test_a_pair_that_fails_inside_a_group_leaves_the_others_their_results(reference):
    backend = GatheringBackend(reference.backend)

    def ok(k):
        return lambda: backend.decode(np.full((1, 16, 2, 2), k, np.float32)).shape

    def broken():
        raise LatentfuseError("this pair is broken")

    results = backend.run_group([ok(0.1), broken, ok(0.2)])
    assert [r[0] for r in results] == [(1, 3, 16, 16), None, (1, 3, 16, 16)]
    assert str(results[1][1]) == "this pair is broken"


def test_health_and_metrics_endpoints(server):
    import urllib.request

    with urllib.request.urlopen(f"{server['http']}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{server['http']}/v2/models/latentfuse/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(server["metrics"], timeout=10) as r:
        text = r.read().decode()
    assert 'nv_inference_request_success{model="latentfuse"' in text


# ------------------------------------------------------------------------------ the --server client path


def test_fuse_and_fuse_dir_with_server_write_what_fuse_writes(server, bundle, tmp_path, capsys):
    for i, (h, w) in enumerate([(40, 56), (48, 48), (40, 56)]):
        a, b = pair(h, w, seed=20 + i)
        write_image(tmp_path / "A" / f"p{i}.png", a.astype(np.float32) / 255)
        write_image(tmp_path / "B" / f"p{i}.png", b[..., 0].astype(np.float32) / 255)
    a_path, b_path = tmp_path / "A/p0.png", tmp_path / "B/p0.png"
    assert main(["fuse", str(a_path), str(b_path), "--task", "vif", "--bundle", str(bundle), "--threads", "1",
                 "--seed", "4", "-o", str(tmp_path / "local.png")]) == 0
    assert main(["fuse", str(a_path), str(b_path), "--task", "vif", "--seed", "4", "--server", server["grpc"],
                 "-o", str(tmp_path / "remote.png")]) == 0
    assert np.array_equal(read_image(tmp_path / "remote.png"), read_image(tmp_path / "local.png"))
    assert main(["fuse-dir", str(tmp_path / "A"), str(tmp_path / "B"), "--task", "vif", "--bundle", str(bundle),
                 "--threads", "1", "--out", str(tmp_path / "local")]) == 0
    assert main(["fuse-dir", str(tmp_path / "A"), str(tmp_path / "B"), "--task", "vif", "--server", server["http"],
                 "--out", str(tmp_path / "remote")]) == 0
    assert "fused 3, skipped 0" in capsys.readouterr().out
    for i in range(3):
        assert np.array_equal(read_image(tmp_path / f"remote/p{i}.png"), read_image(tmp_path / f"local/p{i}.png"))


def test_server_side_flags_and_an_unreachable_server_are_one_line_errors(server, tmp_path, capsys):
    a, b = pair(32, 32, seed=1)
    write_image(tmp_path / "a.png", a.astype(np.float32) / 255)
    write_image(tmp_path / "b.png", b[..., 0].astype(np.float32) / 255)
    args = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--task", "vif", "-o", str(tmp_path / "o.png")]
    assert main(args + ["--server", server["http"], "--sampler", "euler"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--sampler" in err and "chosen by the server" in err
    (closed,) = free_ports(1)
    assert main(args + ["--server", f"http://127.0.0.1:{closed}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot reach the server" in err, err
    assert main(args + ["--server", "ftp://host:1"]) == 2
    assert "http://HOST:PORT" in capsys.readouterr().err
    # 8-bit files travel as they are; a 16-bit one is rounded to 8 bits, and the user is told
    assert main(args + ["--server", server["http"]]) == 0
    assert "rounded" not in capsys.readouterr().err
    write_image(tmp_path / "b.png", b[..., 0].astype(np.float32) / 255 + 0.001, bit_depth=16)
    assert main(args + ["--server", server["http"]]) == 0
    assert "rounded to 8 bits" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the command, start to stop


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_command_answers_then_stops_cleanly_on_a_signal(bundle, tmp_path, sig):
    http, grpc, metrics = free_ports(3)
    cmd = [str(Path(sys.executable).parent / "latentfuse"), "serve", "--bundle", str(bundle), "--threads", "1",
           "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("ready, model 'latentfuse'" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "no ready line:\n" + "".join(lines)
            time.sleep(0.2)
        children = triton_children(proc.pid)
        assert children, "no tritonserver child"
        a, b = pair(32, 40, seed=2)
        with FusionClient(f"http://127.0.0.1:{http}") as client:
            assert client.fuse(a, b, task="vif", mode="regression").shape == (32, 40, 3)
        t0 = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, "".join(lines)
        assert time.monotonic() - t0 < 20
        assert not outliving(children), "tritonserver or its stub outlived latentfuse serve"
        reader.join(timeout=5)
        assert any("latentfuse serve: stopped" in line for line in lines), "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_instances_answer_and_stop_ends_tritonserver_and_its_stub(server, reference):
    before = triton_children(os.getpid())  # the module's server
    http, grpc, metrics = free_ports(3)
    fusers = [BatchFuser(fresh(reference)), BatchFuser(fresh(reference))]  # --instances 2
    srv = FusionServer(fusers, ServeOptions(host="127.0.0.1", http_port=http, grpc_port=grpc, metrics_port=metrics),
                       log=lambda line: None).start()
    ours = triton_children(os.getpid()) - before
    assert ours and srv.is_alive()
    a, b = pair(32, 32, seed=9)
    with FusionClient(f"http://127.0.0.1:{http}") as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda s: client.fuse(a, b, task="mef", mode="regression", seed=s), range(4)))
    assert all(np.array_equal(x, in_process(reference, a, b, task="mef", mode="regression")) for x in answers)
    assert sum(sum(f.group_sizes) for f in fusers) == 4
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 20
    assert not outliving(ours)
    assert all(alive(k) for k in before)  # the other server is untouched


def test_port_in_use_and_bad_options_are_clear_errors(reference):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        http, grpc = free_ports(2)
        opts = ServeOptions(host="127.0.0.1", http_port=taken, grpc_port=http, metrics_port=grpc)
        with pytest.raises(LatentfuseError, match=f"port {taken} \\(--http-port\\) is not free"):
            FusionServer([BatchFuser(fresh(reference))], opts).start()
    with pytest.raises(LatentfuseError, match="must differ"):
        FusionServer([], ServeOptions(http_port=9000, grpc_port=9000, metrics_port=9002))
    with pytest.raises(LatentfuseError, match="--max-batch"):
        FusionServer([], ServeOptions(max_batch=0))


HANDSHAKE_REFUSED = ("[400] load failed for model 'latentfuse': Model initialize error: Traceback: in "
                     "get_config_from_handshake_server: ConnectionRefusedError: [Errno 111] Connection refused")


@pytest.mark.parametrize("failures, started", [(1, True), (2, False)])
def test_a_refused_stub_handshake_starts_tritonserver_once_more(monkeypatch, failures, started):
    """PyTriton's stub is sometimes refused its handshake on a loaded machine (a start-up race): start tries a
    fresh tritonserver once more; any other failure, or a second refusal, is the one-line error."""
    import latentfuse.runtime.serve as serve

    runs, stopped, logs = [], [], []

    class FakeTriton:
        def __init__(self, config):
            self._triton_server = None

        def _initialize_server(self):
            pass

        def bind(self, **kw):
            pass

        def run(self):
            runs.append(1)
            if len(runs) <= failures:
                raise RuntimeError(HANDSHAKE_REFUSED)

        def stop(self):
            stopped.append(1)

    class Config:
        def __init__(self, **kw):
            pass

    triton_mod = type("m", (), {"Triton": FakeTriton, "TritonConfig": Config})
    model_config = type("m", (), {"Tensor": Config, "ModelConfig": Config, "DynamicBatcher": Config})
    monkeypatch.setattr(serve, "import_pytriton", lambda: (triton_mod, model_config, None, type("m", (), {})))
    monkeypatch.setattr(serve, "check_port_free", lambda *a: None)
    monkeypatch.setattr(serve, "prepare_stub_env", lambda log: Path("/stub"))
    monkeypatch.setattr(serve, "_patch_proxy_model", lambda models: None)
    monkeypatch.setattr(serve, "stub_environment", lambda: {})
    server = FusionServer([object()], ServeOptions(http_port=9100, grpc_port=9101, metrics_port=9102), log=logs.append)
    if started:
        assert server.start() is server and server.triton is not None
    else:
        with pytest.raises(LatentfuseError, match="tritonserver did not start: RuntimeError: .*handshake"):
            server.start()
        assert server.triton is None
    assert len(runs) == 2 and len(stopped) == failures
    assert sum("handshake with tritonserver was refused" in m for m in logs) == 1
    assert serve.is_handshake_race(RuntimeError(HANDSHAKE_REFUSED))
    assert not serve.is_handshake_race(RuntimeError("port 8000 is not free"))


def test_serve_without_the_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytriton.triton", None)  # import fails as if not installed
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'latentfuse[serve]'" in err and err.strip().count("\n") == 0


# ------------------------------------------------------------------------------ bench --serve


def test_serve_bench_rows_and_batching(bundle, tmp_path):
    """bench.serve_bench on one small size: the in-process rows and the server's with batching off and on,
    every answer checked against the in-process image inside the bench."""
    from latentfuse.bench.serve_bench import format_serve_table, run_serve_bench, write_serve_bench

    rows = run_serve_bench(bundle, sizes=((32, 48),), concurrency=(1, 4), max_batches=(1, 4), threads=1,
                           mode="regression", min_requests=4, log=lambda line: None)
    assert [(r.where, r.concurrency) for r in rows] == [
        ("in-process", 1), ("in-process", 4), ("server, batching off", 1), ("server, batching off", 4),
        ("server, max batch 4", 1), ("server, max batch 4", 4)]
    assert all(r.size == "48x32" and r.pairs_per_s > 0 and 0 < r.p50_ms <= r.p95_ms for r in rows)
    assert [r.mismatched for r in rows] == [0] * 6  # every answer is the in-process image
    assert [r.requests for r in rows] == [4, 8] * 3
    off = [r for r in rows if r.where == "server, batching off"]
    assert all(r.mean_batch == pytest.approx(1.0) for r in off)  # max batch 1: one pair per execution
    on = [r for r in rows if r.where == "server, max batch 4"]
    assert on[0].mean_batch == pytest.approx(1.0) and 1.0 <= on[1].mean_batch <= 4.0
    table = write_serve_bench(rows, tmp_path / "out", {"bundle": str(bundle)})
    assert table == format_serve_table(rows) and (tmp_path / "out/serve_bench.json").is_file()
    assert table.count("\n") == len(rows) + 1


def test_the_documented_tritonclient_example_runs(server):
    """docs/serving.md's plain-tritonclient block, pointed at the test server and at a smaller pair (the test
    server's --max-pixels is small)."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", readme, flags=re.S | re.M) if "tritonclient" in b]
    assert "localhost:8000" in block and "480, 640" in block
    code = block.replace("localhost:8000", f"127.0.0.1:{server['http_port']}").replace("480, 640", "48, 64")
    namespace: dict = {}
    exec(compile(code, "docs/serving.md", "exec"), namespace)
    assert namespace["fused"].dtype == np.uint8 and namespace["fused"].shape == (48, 64, 3)
