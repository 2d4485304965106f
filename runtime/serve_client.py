"""The client side of ``latentfuse serve``: ``latentfuse fuse / fuse-dir --server URL``, through tritonclient.

    client = FusionClient("http://localhost:8000")          # or grpc://localhost:8001
    fused = client.fuse(a_uint8, b_uint8, task="vif")        # HxWx3 (or HxWx1) uint8, what the server fused

Images travel as the 8-bit pixels of the files (a 16-bit file is rounded to 8 bits first, and said so);
the result is the 8-bit image ``latentfuse fuse`` would write with the server's model.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from latentfuse.model.errors import LatentfuseError, MissingDependencyError

MODEL_NAME = "latentfuse"  # runtime.serve.MODEL_NAME; not imported, so a client needs no server modules
TIMEOUT_S = 900.0  # one request under load on a CPU server can take minutes

# flags of fuse / fuse-dir that choose the model or its settings on the server side: refused with --server
SERVER_SIDE = {"bundle": None, "checkpoint": None, "backend": None, "provider": None, "compile": False,
               "sampler": None, "g": None, "prior": None, "tile": None, "threads": None, "detail": "auto",
               "fidelity": None, "bit_depth": 8, "warmup": 0, "max_memory": None}


def parse_url(url: str) -> tuple[str, str]:
    """(protocol 'http' | 'grpc', 'host:port') from ``http://HOST:8000``, ``grpc://HOST:8001`` or ``HOST:PORT``."""
    text = str(url).strip()
    parsed = urlparse(text if "://" in text else f"http://{text}")
    if parsed.scheme not in ("http", "grpc"):
        raise LatentfuseError(f"--server {url!r}: use http://HOST:PORT or grpc://HOST:PORT")
    if not parsed.hostname:
        raise LatentfuseError(f"--server {url!r} names no host: use http://HOST:PORT or grpc://HOST:PORT")
    try:
        port = parsed.port or (8000 if parsed.scheme == "http" else 8001)
    except ValueError:
        raise LatentfuseError(f"--server {url!r}: the port is not a number") from None
    if parsed.path not in ("", "/"):
        raise LatentfuseError(f"--server {url!r}: give the server's address only, without a path")
    return parsed.scheme, f"{parsed.hostname}:{port}"


def to_wire(image: np.ndarray) -> np.ndarray:
    """A float [0, 1] image (HxW or HxWx3, as ``load_image`` gives) as HxWxC uint8, rounded like an 8-bit write."""
    arr = np.round(np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


class FusionClient:
    """One connection to a ``latentfuse serve`` server (HTTP or gRPC); safe to share between threads."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S):
        self.url = url
        self.protocol, self.address = parse_url(url)
        self.timeout_s = float(timeout_s)
        try:
            if self.protocol == "http":
                import tritonclient.http as tc
            else:
                import tritonclient.grpc as tc
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise MissingDependencyError("tritonclient", extra="serve", purpose="--server") from None
        self._tc, self._exc = tc, InferenceServerException
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list = []

    @property
    def _client(self):
        """This thread's tritonclient client: the HTTP one runs on gevent, whose connections belong to
        the thread that made them, so each thread gets its own."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self._tc.InferenceServerClient(self.address, connection_timeout=min(60.0, self.timeout_s),
                                                        network_timeout=self.timeout_s)
            else:
                client = self._tc.InferenceServerClient(self.address)
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._all = self._all, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a client of another thread's hub may complain
                pass

    def __enter__(self) -> "FusionClient":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _error(self, err: Exception) -> LatentfuseError:
        text = " ".join(str(getattr(err, "message", lambda: str(err))() or err).split())
        if any(s in text.lower() for s in ("connection refused", "failed to connect", "unavailable",
                                           "name or service not known", "connect call failed")):
            return LatentfuseError(f"cannot reach the server at {self.url} ({text}); is `latentfuse serve` running?")
        return LatentfuseError(f"server {self.url}: {text}")

    def ready(self) -> bool:
        """True when the server is up and the model ``latentfuse`` is loaded."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(MODEL_NAME))
        except Exception:  # noqa: BLE001 - not ready is the answer, whatever went wrong
            return False

    def fuse(self, a: np.ndarray, b: np.ndarray, task: str, prompt: str | None = None, mode: str | None = None,
             steps: int | None = None, seed: int | None = None) -> np.ndarray:
        """Fuse one pair of HxWxC uint8 images on the server; returns the fused HxWxC uint8 image."""
        tc = self._tc
        a, b = (np.ascontiguousarray(x[..., None] if x.ndim == 2 else x, dtype=np.uint8)[None] for x in (a, b))
        inputs = []

        def add(name: str, value: np.ndarray, dtype: str) -> None:
            tensor = tc.InferInput(name, list(value.shape), dtype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)

        add("image_a", a, "UINT8")
        add("image_b", b, "UINT8")
        add("task", np.array([[task.encode()]], dtype=np.object_), "BYTES")
        if prompt is not None:
            add("prompt", np.array([[prompt.encode()]], dtype=np.object_), "BYTES")
        if mode is not None:
            add("mode", np.array([[mode.encode()]], dtype=np.object_), "BYTES")
        if steps is not None:
            add("steps", np.array([[int(steps)]], dtype=np.int32), "INT32")
        if seed is not None:
            add("seed", np.array([[int(seed)]], dtype=np.int64), "INT64")
        outputs = [tc.InferRequestedOutput("fused")]
        try:
            if self.protocol == "http":
                result = self._client.infer(MODEL_NAME, inputs, outputs=outputs)
            else:
                result = self._client.infer(MODEL_NAME, inputs, outputs=outputs, client_timeout=self.timeout_s)
        except self._exc as err:
            raise self._error(err) from None
        except OSError as err:  # connection refused / reset below tritonclient's own error type
            raise self._error(err) from None
        fused = result.as_numpy("fused")
        if fused is None or fused.ndim != 4 or fused.shape[0] != 1:
            raise LatentfuseError(f"server {self.url}: the response has no fused image of shape [1, H, W, C]")
        return fused[0]


# ------------------------------------------------------------------------------ the CLI's --server path


def check_remote_args(args: argparse.Namespace) -> None:
    """Flags that choose the model or its settings belong to the server: refuse them with --server."""
    given = [name for name, default in SERVER_SIDE.items() if getattr(args, name, default) != default]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise LatentfuseError(f"{flags}: chosen by the server (latentfuse serve) with --server; drop "
                              f"{'it' if len(given) == 1 else 'them'}, or fuse locally without --server")


def _read_pair(path_a, path_b, resize: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """Both images as 8-bit HxWxC, B resampled to A's size with ``resize``; True when a file had more bits."""
    from latentfuse.model.image_io import read_image
    from latentfuse.runtime.pipeline import match_pair

    a, b = match_pair(read_image(path_a), read_image(path_b), resize, names=(str(path_a), str(path_b)))
    wire_a, wire_b = to_wire(a), to_wire(b)
    # an 8-bit file comes back exactly (within float32 rounding); a 16-bit one by up to half an 8-bit step
    rounded = any(np.abs(w / 255.0 - (x[..., None] if x.ndim == 2 else x)).max() > 1e-6
                  for w, x in ((wire_a, a), (wire_b, b)))
    return wire_a, wire_b, rounded


def _save(out: Path, fused: np.ndarray) -> Path:
    from latentfuse.model.image_io import write_image

    image = fused[..., 0] if fused.shape[-1] == 1 else fused
    return write_image(out, image.astype(np.float32) / 255.0)


def fuse_remote(args: argparse.Namespace) -> int:
    """``latentfuse fuse A B --server URL -o OUT``."""
    check_remote_args(args)
    a, b, rounded = _read_pair(args.a, args.b, args.resize)
    if rounded:
        print("note: the server takes 8-bit pixels; the input was rounded to 8 bits", file=sys.stderr)
    with FusionClient(args.server) as client:
        import time

        t0 = time.perf_counter()
        fused = client.fuse(a, b, task=args.task, prompt=args.prompt, mode=args.mode, steps=args.steps,
                            seed=args.seed)
        seconds = time.perf_counter() - t0
    out = _save(Path(args.out), fused)
    print(f"{out}: {fused.shape[1]}x{fused.shape[0]}, fused by {args.server} ({args.mode}), {seconds * 1e3:.1f} ms")
    return 0


def fuse_dir_remote(args: argparse.Namespace, todo: Sequence[tuple[Path, Path, Path]]) -> tuple[int, list]:
    """The pairs of ``fuse-dir --server``, ``--concurrency`` requests in flight (so the server can batch
    them); returns (pairs fused, [(name, error)])."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    check_remote_args(args)
    workers = int(getattr(args, "concurrency", 4) or 4)
    if workers < 1:
        raise LatentfuseError(f"--concurrency must be at least 1, got {workers}")
    failed: list[tuple[str, str]] = []
    done = 0
    with FusionClient(args.server) as client:
        if todo and not client.ready():
            raise LatentfuseError(f"the server at {args.server} is not ready (or not a latentfuse server); "
                                  "is `latentfuse serve` running?")

        def one(a: Path, b: Path, out: Path) -> None:
            wa, wb, _ = _read_pair(a, b, args.resize)
            _save(out, client.fuse(wa, wb, task=args.task, prompt=args.prompt, mode=args.mode, steps=args.steps,
                                   seed=args.seed))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(one, a, b, out): a.name for a, b, out in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc="fuse-dir", unit="pair"):
                try:
                    future.result()
                    done += 1
                except (LatentfuseError, OSError) as err:
                    failed.append((futures[future], str(err)))
    return done, sorted(failed)


__all__ = ["FusionClient", "check_remote_args", "fuse_dir_remote", "fuse_remote", "parse_url", "to_wire"]
