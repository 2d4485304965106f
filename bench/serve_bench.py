"""Throughput through ``latentfuse serve`` against the in-process pipeline, in one run (``latentfuse bench --serve``).

For each pair size (the demo's, 256x144, and 640x480: the shipped VIF sample resampled, as ``--user-pair``
does) and each concurrency (1, 4, 16 requests in flight), it times the same requests

* **in process**: one :class:`~latentfuse.runtime.pipeline.Pipeline` (ONNX Runtime) called from that many threads;
* **through the server**: a ``latentfuse serve`` subprocess on loopback with the same bundle and threads, once
  with dynamic batching off (``--max-batch 1``) and once on (``--max-batch 8``), the requests sent over HTTP
  by as many client threads.

and reports pairs/s (requests / wall time of the level), p50 / p95 latency per request, and for the server
the mean pairs per model execution (Triton's ``nv_inference_count`` / ``nv_inference_exec_count``).
Every answer is compared with the in-process image; the table counts the byte-identical ones, so a fast
wrong server shows.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.modes import DEFAULT_MODE

DEMO_SIZE = (144, 256)  # (H, W) of the demo's timed VIF pair (model.data.samples: vif "moto")
USER_SIZE = (480, 640)
CONCURRENCY = (1, 4, 16)
MAX_BATCHES = (1, 8)  # 1: dynamic batching off


@dataclass
class ThroughputRow:
    size: str            # "256x144"
    where: str           # "in-process", "server, batching off", "server, max batch 8"
    concurrency: int
    requests: int
    pairs_per_s: float
    p50_ms: float
    p95_ms: float
    mean_batch: float | None = None  # pairs per model execution (server rows)
    mismatched: int = 0  # answers that differ from the in-process image (0 expected: the table says otherwise)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _requests_for(concurrency: int, minimum: int) -> int:
    return max(minimum, 2 * concurrency)


def _timed(call: Callable[[int], np.ndarray], n: int, concurrency: int) -> tuple[float, list[float], list]:
    """Run ``call(i)`` for i < n with ``concurrency`` threads: (wall seconds, per-call seconds, outputs)."""
    lat = [0.0] * n
    outs: list = [None] * n

    def one(i: int) -> None:
        t0 = time.perf_counter()
        outs[i] = call(i)
        lat[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - t0, lat, outs


def _row(size, where, concurrency, wall, lat, outs, want, mean_batch=None) -> ThroughputRow:
    ms = np.asarray(lat) * 1e3
    return ThroughputRow(size=f"{size[1]}x{size[0]}", where=where, concurrency=concurrency, requests=len(lat),
                         pairs_per_s=len(lat) / wall, p50_ms=float(np.percentile(ms, 50)),
                         p95_ms=float(np.percentile(ms, 95)), mean_batch=mean_batch,
                         mismatched=sum(not np.array_equal(o, want) for o in outs))


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    values = re.findall(rf'^{name}\{{[^}}]*model="latentfuse"[^}}]*\}} ([0-9.e+]+)$', text, flags=re.M)
    return float(sum(float(v) for v in values))


def _settled_counts(url: str, pairs: int, timeout_s: float = 10.0) -> tuple[float, float]:
    """(pairs inferred, model executions) once Triton has counted all ``pairs`` answered so far: a response
    can reach the client before the server's statistics take in its execution."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = _metric(url, "nv_inference_count")
        if count >= pairs or time.monotonic() > deadline:
            return count, _metric(url, "nv_inference_exec_count")
        time.sleep(0.05)


class ServeProcess:
    """``latentfuse serve`` as a subprocess on loopback ports; ``stop`` sends SIGINT and waits."""

    def __init__(self, bundle: Path, max_batch: int, threads: int | None, timeout_s: float = 300.0):
        self.http, grpc, self.metrics_port = free_ports(3)
        cmd = [str(Path(sys.executable).parent / "latentfuse"), "serve", "--bundle", str(bundle), "--host", "127.0.0.1",
               "--http-port", str(self.http), "--grpc-port", str(grpc), "--metrics-port", str(self.metrics_port),
               "--max-batch", str(max_batch)]
        if threads:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not any("ready, model" in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LatentfuseError("latentfuse serve did not start:\n" + "".join(self.lines[-20:]))
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_serve_bench(bundle: str | os.PathLike, sizes: Sequence[tuple[int, int]] = (DEMO_SIZE, USER_SIZE),
                    concurrency: Sequence[int] = CONCURRENCY, max_batches: Sequence[int] = MAX_BATCHES,
                    threads: int | None = None, mode: str = DEFAULT_MODE, min_requests: int = 8,
                    log: Callable[[str], None] = print) -> list[ThroughputRow]:
    """The throughput table (module docstring) for a deployment bundle on ONNX Runtime."""
    from latentfuse.bench.user_pair import sample_pair
    from latentfuse.runtime.pipeline import Pipeline
    from latentfuse.runtime.serve import to_uint8
    from latentfuse.runtime.serve_client import FusionClient, to_wire

    if any(c < 1 for c in concurrency):
        raise LatentfuseError(f"concurrency must be at least 1, got {list(concurrency)}")
    bundle = Path(bundle)
    options = {"threads": threads} if threads else {}
    pipe = Pipeline.from_pretrained(bundle, backend="onnxruntime", providers="cpu", **options)
    squeeze = lambda x: x[..., 0] if x.shape[-1] == 1 else x  # noqa: E731 - the wire's HxWx1 gray as HxW
    pairs = {size: tuple(to_wire(x) for x in sample_pair(size)) for size in sizes}

    def local(size) -> np.ndarray:
        a, b = pairs[size]
        return to_uint8(pipe(squeeze(a), squeeze(b), task="vif", mode=mode).image)

    expected = {size: local(size) for size in sizes}  # also the warm-up
    rows: list[ThroughputRow] = []
    for size in sizes:
        for c in concurrency:
            wall, lat, outs = _timed(lambda i: local(size), _requests_for(c, min_requests), c)
            rows.append(_row(size, "in-process", c, wall, lat, outs, expected[size]))
            log(_line(rows[-1]))
    for max_batch in max_batches:
        where = "server, batching off" if max_batch == 1 else f"server, max batch {max_batch}"
        server = ServeProcess(bundle, max_batch, threads)
        answered = 0  # pairs this server has answered
        try:
            with FusionClient(server.url) as client:
                for size in sizes:
                    a, b = pairs[size]
                    client.fuse(a, b, task="vif", mode=mode)  # warm-up
                    answered += 1
                    for c in concurrency:
                        n = _requests_for(c, min_requests)
                        count0, exec0 = _settled_counts(server.metrics_url, answered)
                        wall, lat, outs = _timed(lambda i: client.fuse(a, b, task="vif", mode=mode), n, c)
                        answered += n
                        count, execs = _settled_counts(server.metrics_url, answered)
                        count, execs = count - count0, execs - exec0
                        rows.append(_row(size, where, c, wall, lat, outs, expected[size],
                                         mean_batch=count / execs if execs else None))
                        log(_line(rows[-1]))
        finally:
            server.stop()
    return rows


def _line(r: ThroughputRow) -> str:
    batch = f", {r.mean_batch:.2f} pairs/execution" if r.mean_batch is not None else ""
    wrong = f", {r.mismatched} ANSWERS DIFFER from the in-process image" if r.mismatched else ""
    return (f"{r.size} {r.where:22s} c={r.concurrency:<3d} {r.requests:3d} requests: {r.pairs_per_s:6.2f} pairs/s, "
            f"p50 {r.p50_ms:7.0f} ms, p95 {r.p95_ms:7.0f} ms{batch}{wrong}")


def format_serve_table(rows: Sequence[ThroughputRow]) -> str:
    lines = ["| pair | where | concurrency | requests | pairs/s | p50 | p95 | pairs per execution | "
             "= in-process image |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        batch = f"{r.mean_batch:.2f}" if r.mean_batch is not None else "—"
        lines.append(f"| {r.size} | {r.where} | {r.concurrency} | {r.requests} | {r.pairs_per_s:.2f} | "
                     f"{r.p50_ms:.0f} ms | {r.p95_ms:.0f} ms | {batch} | {r.requests - r.mismatched}/{r.requests} |")
    return "\n".join(lines)


def write_serve_bench(rows: Sequence[ThroughputRow], out: str | os.PathLike, meta: dict) -> str:
    """serve_bench.json and serve_bench.md in ``out``; returns the markdown table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_serve_table(rows)
    (out / "serve_bench.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    (out / "serve_bench.md").write_text(table + "\n")
    return table


__all__ = ["ThroughputRow", "format_serve_table", "run_serve_bench", "write_serve_bench"]
