"""Serving on NVIDIA Triton Inference Server: the model ``latentfuse`` behind HTTP / gRPC (``latentfuse serve``).

    latentfuse serve --bundle BUNDLE --http-port 8000 --grpc-port 8001 --metrics-port 8002 --max-batch 8
    latentfuse fuse a.png b.png --task vif --server http://HOST:8000 -o fused.png

Triton comes from PyTriton (``pip install 'latentfuse[serve]'``): its wheel bundles a ``tritonserver`` binary
with the Python backend only, so the model runs in *this* process through the project's own backends
(:class:`latentfuse.runtime.pipeline.Pipeline`), on ONNX Runtime, TensorRT or torch, and Triton's Python-backend
stub relays each batch of requests to it. One Triton model, ``latentfuse``, batch dimension first:

    image_a  UINT8 [n, H, W, C]  C = 3 (RGB) or 1 (gray)     image_b  UINT8 [n, H, W, C]  (same H, W)
    task     BYTES [n, 1]  vif | mef | mff                    prompt   BYTES [n, 1]  optional (task's canonical)
    mode     BYTES [n, 1]  optional, flow | regression         steps    INT32 [n, 1]  optional (model default)
    seed     INT64 [n, 1]  optional (0)
    fused    UINT8 [n, H, W, 3], or [n, H, W, 1] when both sources are gray

``fused`` holds the pixels ``latentfuse fuse`` writes for the same model, backend, mode and seed.

**Dynamic batching.** Triton's dynamic batcher hands the model the requests that queued while it was busy
(up to ``--max-batch`` pairs); :class:`BatchFuser` groups them by padded size and settings and fuses each group
in one pass: every pair runs the ordinary :class:`Pipeline` call in a thread of its own, and
:class:`~latentfuse.runtime.gathering.GatheringBackend` merges the group's graph calls (VAE encode, each DiT
step, VAE decode) into one batched backend call. Each pair keeps its own seeded noise, sampler and detail stage, so a batched pair is
the pair fused alone; pairs of other sizes are never padded into each other.

**Errors.** A bad request (unknown task or mode, sizes that differ, an empty image, more pixels than
``--max-pixels``, a channel count other than 1 / 3) gets an error response naming the problem, one line; the
other requests of its batch are fused as usual. Triton itself refuses a wrong dtype or rank. PyTriton
answers errors per batch only, so the proxy model it runs in the stub is given a short addition
(:data:`PER_REQUEST_ERRORS`) that turns our per-request error marker into a Triton error response.

**The stub's Python.** The stub embeds the interpreter's libpython and imports numpy; it needs the *same*
libpython as this process (``LD_LIBRARY_PATH`` starts with ``sysconfig LIBDIR``: else it can pick up an older
system libpython and fail in ``threading``) and a numpy 1.x, since it converts tensors with a pybind11
build that predates numpy 2's ABI (under numpy 2 every tensor arrives and leaves empty). The project needs
numpy 2, so :func:`prepare_stub_env` makes a small environment for the stub alone: numpy 1.x (installed once
with pip) in front of this interpreter's site-packages (:data:`STUB_NUMPY`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError, MissingDependencyError
from latentfuse.runtime.modes import DEFAULT_MODE, MODES
from latentfuse.runtime.gathering import GatheringBackend

MODEL_NAME = "latentfuse"
PYTRITON_VERSION = "0.7.0"  # the proxy model PER_REQUEST_ERRORS extends is this release's (Makefile pins it)
STUB_NUMPY = "numpy>=1.21,<2"  # what the Python-backend stub's tensor conversion works with
TASKS = ("vif", "mef", "mff")
MAX_STEPS = 200  # a bound on the work one request may ask for
DEFAULT_MAX_PIXELS = 2048 * 2048
DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_DELAY_MS = 5.0  # how long Triton holds a request for others to join its batch
# PyTriton's Python-backend stub connects to the handshake socket of this process while it comes up; on a loaded
# machine the connection is sometimes refused and the model fails to load. A fresh tritonserver then starts.
START_ATTEMPTS = 2
EXIT_TIMEOUT_S = 3  # tritonserver's wait for in-flight requests on shutdown (keep-alive clients count as such)
ERROR_KEY = "__latentfuse_error__"  # a response holding only this output becomes a Triton error response

INPUTS = (  # (name, dtype, per-pair shape, optional)
    ("image_a", np.uint8, (-1, -1, -1), False),
    ("image_b", np.uint8, (-1, -1, -1), False),
    ("task", bytes, (1,), False),
    ("prompt", bytes, (1,), True),
    ("mode", bytes, (1,), True),
    ("steps", np.int32, (1,), True),
    ("seed", np.int64, (1,), True),
)
OUTPUT = ("fused", np.uint8, (-1, -1, -1))

# Appended to PyTriton's proxy model (the model.py the stub runs): PyTriton fails a whole batch on an
# exception and has no per-request error, so a response holding only ERROR_KEY becomes an error response
# for its request alone (`_wrap_response` is looked up at call time by the proxy's response handler), and a
# request with an empty tensor, which PyTriton cannot copy, is refused before the batch goes on.
PER_REQUEST_ERRORS = f'''

# --- latentfuse.runtime.serve: per-request error responses (written for PyTriton {PYTRITON_VERSION}) ---
_latentfuse_wrap_response = _wrap_response


def _latentfuse_wrap_response_or_error(response, requested_outputs_names, model_outputs_dict):
    if response.data is not None and {ERROR_KEY!r} in response.data:
        message = bytes(response.data[{ERROR_KEY!r}].reshape(-1)[0]).decode("utf-8", "replace")
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
    return _latentfuse_wrap_response(response, requested_outputs_names, model_outputs_dict)


_wrap_response = _latentfuse_wrap_response_or_error
_latentfuse_execute = TritonPythonModel.execute


def _latentfuse_execute_checked(self, requests):
    # an empty tensor breaks PyTriton's shared-memory copy (a traceback for the whole batch): answer it here
    refused = {{}}
    for i, request in enumerate(requests):
        for tensor in request.inputs():
            shape = [int(d) for d in tensor.shape()]
            if 0 in shape:
                refused.setdefault(i, f"{{tensor.name()}} is empty (shape {{shape}})")
    if not refused:
        return _latentfuse_execute(self, requests)
    kept = [r for i, r in enumerate(requests) if i not in refused]
    answers = iter(_latentfuse_execute(self, kept) if kept else [])
    return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(refused[i]))
            if i in refused else next(answers) for i in range(len(requests))]


TritonPythonModel.execute = _latentfuse_execute_checked
'''


def import_pytriton():
    """The ``pytriton`` modules serve needs, or one clear line saying how to install them."""
    try:
        import pytriton.model_config as model_config
        import pytriton.models.model as models
        import pytriton.server.triton_server as triton_server
        import pytriton.triton as triton
    except ImportError:
        raise PyTritonMissing() from None
    from importlib.metadata import version

    found = version("nvidia-pytriton")
    proxy = Path(models.__file__).parent.parent / "proxy" / "model.py"
    if found != PYTRITON_VERSION and not all(name in proxy.read_text() for name in
                                              ("def _wrap_response", "class TritonPythonModel", "def execute")):
        raise LatentfuseError(f"latentfuse serve extends PyTriton {PYTRITON_VERSION}'s proxy model, and PyTriton "
                              f"{found} has another: pip install --no-deps nvidia-pytriton=={PYTRITON_VERSION}")
    return triton, model_config, models, triton_server


class PyTritonMissing(MissingDependencyError):
    """PyTriton is installed in a second step (pyproject.toml, the serve extra), so the hint names both."""

    def __init__(self):
        LatentfuseError.__init__(self, "nvidia-pytriton is required for latentfuse serve but is not installed: pip "
                                 f"install 'latentfuse[serve]' && pip install --no-deps nvidia-pytriton=={PYTRITON_VERSION}")
        self.package = "nvidia-pytriton"


# ------------------------------------------------------------------------------ the stub's environment


def libpython_dir() -> str:
    """Where this interpreter's shared libpython lives (the stub must load this one, not a system copy)."""
    return str(sysconfig.get_config_var("LIBDIR") or "")


def stub_env_dir() -> Path:
    """The stub's environment: beside this interpreter (a venv's share/), else the user cache."""
    tag = f"triton-stub-py{sys.version_info.major}{sys.version_info.minor}"
    local = Path(sys.prefix) / "share" / "latentfuse" / tag
    if os.access(Path(sys.prefix), os.W_OK) or local.exists():
        return local
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "latentfuse" / tag


def _site_dirs() -> list[str]:
    import site

    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def prepare_stub_env(log: Callable[[str], None] = print) -> Path:
    """Make (once) and return the Python environment Triton's Python-backend stub runs in: a venv whose own
    site-packages hold numpy 1.x, followed by this interpreter's site-packages (PyTriton, pyzmq, ...)."""
    import venv

    root = stub_env_dir()
    want = {"python": sys.version.split()[0], "numpy": STUB_NUMPY, "sites": _site_dirs()}
    stamp = root / "latentfuse-stub.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == want:
                return root
        except ValueError:
            pass
    log(f"latentfuse serve: one-time setup of Triton's Python-backend environment in {root} "
        f"({STUB_NUMPY} for the stub, from the package index)")
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt", clear=True).create(root)
    site_dir = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(site_dir), STUB_NUMPY]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise LatentfuseError(f"could not install {STUB_NUMPY} for Triton's Python-backend stub ({last}); "
                              f"run `{' '.join(cmd)}` by hand, then `latentfuse serve` again")
    # .pth lines are appended to sys.path after the stub's own site-packages: its numpy 1.x comes first
    (site_dir / "latentfuse_host_site.pth").write_text("\n".join(want["sites"]) + "\n")
    stamp.write_text(json.dumps(want, indent=1))
    return root


def stub_environment(base: dict | None = None) -> dict:
    """``base`` (os.environ) with this interpreter's libpython directory first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    libdir = libpython_dir()
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(([libdir] if libdir else []) + rest)
    return env


# ------------------------------------------------------------------------------ requests


@dataclass
class PairJob:
    """One pair of one request, checked: uint8 HxWxC images and the fuse call's settings."""

    request: int
    a: np.ndarray
    b: np.ndarray
    task: str
    prompt: str | None
    mode: str
    steps: int | None
    seed: int

    @property
    def gray(self) -> bool:
        return self.a.shape[-1] == 1 and self.b.shape[-1] == 1

    def key(self) -> tuple:
        """Pairs with equal keys make the same sequence of graph calls of the same shapes (seeds may differ)."""
        return (self.a.shape[:2], self.task, self.prompt, self.mode, self.steps)


def _text(value: Any, name: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise LatentfuseError(f"{name} is not UTF-8 text") from None
    if isinstance(value, str):
        return value
    raise LatentfuseError(f"{name} must be BYTES (text), got {type(value).__name__}")


def _per_row(request, name: str, rows: int) -> list | None:
    """Input ``name`` as one value per pair (shape [n, 1]), or None when the request leaves it out."""
    if name not in request.keys():
        return None
    arr = np.asarray(request[name])
    if arr.ndim == 0 or arr.shape[0] != rows or arr.size != rows:
        raise LatentfuseError(f"{name} must hold one value per pair, shape [{rows}, 1]; got {list(arr.shape)}")
    return list(arr.reshape(rows))


def parse_request(request, index: int, max_pixels: int) -> list[PairJob]:
    """The pairs of one Triton request, checked; a LatentfuseError names the first problem."""
    images = {}
    for name in ("image_a", "image_b"):
        arr = np.asarray(request[name])
        if arr.dtype != np.uint8:  # Triton checks this against the model config; a direct call may not
            raise LatentfuseError(f"{name} must be UINT8, got {arr.dtype}")
        if arr.ndim != 4:
            raise LatentfuseError(f"{name} must be [n, H, W, C] (batch first), got shape {list(arr.shape)}")
        n, h, w, c = arr.shape
        if c not in (1, 3):
            raise LatentfuseError(f"{name} has {c} channels: send 3 (RGB) or 1 (gray)")
        if h == 0 or w == 0:
            raise LatentfuseError(f"{name} is empty ({w}x{h} pixels)")
        if h * w > max_pixels:
            raise LatentfuseError(f"{name} is {w}x{h} = {h * w} pixels, over this server's limit of {max_pixels} "
                                  "(latentfuse serve --max-pixels)")
        images[name] = arr
    a, b = images["image_a"], images["image_b"]
    if a.shape[0] != b.shape[0]:
        raise LatentfuseError(f"image_a holds {a.shape[0]} pairs and image_b {b.shape[0]}")
    if a.shape[1:3] != b.shape[1:3]:
        raise LatentfuseError(f"the pair differs in size: image_a is {a.shape[2]}x{a.shape[1]}, image_b is "
                              f"{b.shape[2]}x{b.shape[1]} (W x H); send a registered pair of one size")
    rows = a.shape[0]
    tasks = _per_row(request, "task", rows)
    if tasks is None:
        raise LatentfuseError("the request has no task: send task = vif, mef or mff")
    prompts = _per_row(request, "prompt", rows) or [None] * rows
    modes = _per_row(request, "mode", rows) or [DEFAULT_MODE.encode()] * rows
    steps = _per_row(request, "steps", rows) or [None] * rows
    seeds = _per_row(request, "seed", rows) or [0] * rows
    jobs = []
    for i in range(rows):
        task = _text(tasks[i], "task").strip().lower()
        if task not in TASKS:
            raise LatentfuseError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
        mode = _text(modes[i], "mode").strip().lower()
        if mode not in MODES:
            raise LatentfuseError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        prompt = None if prompts[i] is None else _text(prompts[i], "prompt")
        if prompt is not None and not prompt.strip():
            raise LatentfuseError("the prompt is empty: leave it out for the task's canonical prompt")
        step = None if steps[i] is None else int(steps[i])
        if step is not None and not 1 <= step <= MAX_STEPS:
            raise LatentfuseError(f"steps must be in [1, {MAX_STEPS}], got {step}")
        seed = int(seeds[i])
        if seed < 0:
            raise LatentfuseError(f"seed must be >= 0, got {seed}")
        jobs.append(PairJob(index, a[i], b[i], task, prompt, mode, None if mode == "regression" else step, seed))
    return jobs


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A fused float [0, 1] image as HxWxC uint8, rounded as ``write_image`` writes an 8-bit file."""
    arr = np.round(np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _one_line(err: BaseException) -> str:
    if isinstance(err, LatentfuseError):
        text = str(err)
    else:  # a bug, not the request's fault: name it without a traceback
        text = f"internal error: {type(err).__name__}: {err}"
    return " ".join(text.split()) or type(err).__name__


class BatchFuser:
    """The Triton inference callable: a batch of requests in, one response (or error) per request out."""

    def __init__(self, pipeline, max_pixels: int = DEFAULT_MAX_PIXELS, max_group: int = DEFAULT_MAX_BATCH,
                 log: Callable[[str], None] | None = None):
        self.pipeline = pipeline
        if not isinstance(pipeline.backend, GatheringBackend):
            pipeline.backend = GatheringBackend(pipeline.backend)
        self.backend: GatheringBackend = pipeline.backend
        self.max_pixels = int(max_pixels)
        self.max_group = max(1, int(max_group))
        self.log = log
        self.group_sizes: list[int] = []  # pairs per fused group, in order (bench and tests read it)

    def _fuse(self, job: PairJob) -> np.ndarray:
        a = job.a[..., 0] if job.a.shape[-1] == 1 else job.a
        b = job.b[..., 0] if job.b.shape[-1] == 1 else job.b
        result = self.pipeline(a, b, task=job.task, prompt=job.prompt, mode=job.mode, steps=job.steps,
                               seed=job.seed)
        return to_uint8(result.image)

    def __call__(self, requests: Sequence) -> list[dict]:
        errors: dict[int, str] = {}
        jobs: list[PairJob] = []
        for index, request in enumerate(requests):
            try:
                jobs.extend(parse_request(request, index, self.max_pixels))
            except Exception as err:  # noqa: BLE001 - answered to that request alone
                errors[index] = _one_line(err)
        groups: dict[tuple, list[PairJob]] = {}
        for job in jobs:
            groups.setdefault(job.key(), []).append(job)
        fused: dict[int, list[tuple[int, np.ndarray]]] = {}
        order = {id(job): k for k, job in enumerate(jobs)}
        for members in groups.values():
            for start in range(0, len(members), self.max_group):
                chunk = members[start:start + self.max_group]
                if chunk[0].prompt is not None:
                    self._warm_prompt(chunk[0])
                self.group_sizes.append(len(chunk))
                results = self.backend.run_group([lambda job=job: self._fuse(job) for job in chunk])
                for job, (image, err) in zip(chunk, results):
                    if err is not None:
                        errors.setdefault(job.request, _one_line(err))
                    else:
                        fused.setdefault(job.request, []).append((order[id(job)], image))
        responses = []
        for index in range(len(requests)):
            if index in errors:
                if self.log:
                    self.log(f"request refused: {errors[index]}")
                responses.append({ERROR_KEY: np.array([errors[index].encode("utf-8")], dtype=np.object_)})
            else:
                images = [img for _, img in sorted(fused[index], key=lambda t: t[0])]
                responses.append({"fused": np.ascontiguousarray(np.stack(images))})
        return responses

    def _warm_prompt(self, job: PairJob) -> None:
        """Encode a group's prompt once before its threads start (the pipeline memoises it), so the
        text encoder is not called once per pair."""
        try:
            self.pipeline.encode_prompt(job.prompt)
        except Exception:  # noqa: BLE001 - each pair reports the problem itself
            pass


# ------------------------------------------------------------------------------ the server


def check_port_free(port: int, host: str, flag: str) -> None:
    """A clear error when ``port`` is taken (tritonserver would only log it and exit)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("" if host in ("0.0.0.0", "") else host, int(port)))
        except OSError as err:
            raise LatentfuseError(f"port {port} ({flag}) is not free on {host or '0.0.0.0'}: {err.strerror}") from None


def _patch_proxy_model(models_module) -> None:
    """Append :data:`PER_REQUEST_ERRORS` to the proxy model.py PyTriton copies into the model store
    (a local store, and the files it sends to a remote one)."""
    cls = models_module.Model
    if getattr(cls, "_latentfuse_patched", False):
        return
    generate, files = cls.generate_model, cls.get_proxy_model_files

    def generate_model(self, model_repository):
        generate(self, model_repository)
        path = Path(model_repository) / self.model_name / str(self.model_version) / "model.py"
        with open(path, "a") as f:
            f.write(PER_REQUEST_ERRORS)

    def get_proxy_model_files(self):
        out = files(self)
        key = f"file:{self.model_version}/model.py"
        if key in out:
            out[key] = out[key] + PER_REQUEST_ERRORS.encode()
        return out

    cls.generate_model, cls.get_proxy_model_files = generate_model, get_proxy_model_files
    cls._latentfuse_patched = True


@dataclass
class ServeOptions:
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = DEFAULT_MAX_BATCH
    batch_delay_ms: float = DEFAULT_BATCH_DELAY_MS
    max_pixels: int = DEFAULT_MAX_PIXELS
    verbose: bool = False


def check_options(opts: ServeOptions) -> None:
    for flag, port in (("--http-port", opts.http_port), ("--grpc-port", opts.grpc_port),
                       ("--metrics-port", opts.metrics_port)):
        if not 1 <= int(port) <= 65535:
            raise LatentfuseError(f"{flag} must be a port in [1, 65535], got {port}")
    ports = [opts.http_port, opts.grpc_port, opts.metrics_port]
    if len(set(ports)) != 3:
        raise LatentfuseError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
    if not 1 <= int(opts.max_batch) <= 64:
        raise LatentfuseError(f"--max-batch must be in [1, 64], got {opts.max_batch}")
    if int(opts.max_pixels) < 1:
        raise LatentfuseError(f"--max-pixels must be at least 1, got {opts.max_pixels}")
    if not 0 <= float(opts.batch_delay_ms) <= 1000:
        raise LatentfuseError(f"--batch-delay-ms must be in [0, 1000], got {opts.batch_delay_ms}")


def is_handshake_race(err: BaseException) -> bool:
    """Whether a failed start is the stub's refused handshake (``START_ATTEMPTS``), not a lasting error."""
    text = str(err)
    return "get_config_from_handshake_server" in text and "Connection refused" in text


class FusionServer:
    """tritonserver (a child process, with its Python-backend stub) serving ``fusers`` as the model
    ``latentfuse``, one model instance per fuser. ``start`` returns once the model is ready; ``stop``
    ends the child and its stub."""

    def __init__(self, fusers: Sequence[BatchFuser], opts: ServeOptions, log: Callable[[str], None] = print):
        check_options(opts)
        self.fusers, self.opts, self.log = list(fusers), opts, log
        self.triton = None

    def start(self) -> "FusionServer":
        triton_mod, model_config, models, triton_server = import_pytriton()
        opts = self.opts
        for flag, port in (("--http-port", opts.http_port), ("--grpc-port", opts.grpc_port),
                           ("--metrics-port", opts.metrics_port)):
            check_port_free(port, opts.host, flag)
        stub = prepare_stub_env(self.log)
        # PyTriton puts this environment's bin/ first on the stub's PATH, which is how the stub finds its
        # Python: ours, with numpy 1.x first (module docstring)
        triton_server.get_triton_python_backend_python_env = lambda: stub
        _patch_proxy_model(models)
        os.environ.update(stub_environment())  # tritonserver and the stub inherit os.environ
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._run_triton(triton_mod, model_config)
                return self
            except Exception as err:
                log = self.server_log()
                self.stop()
                if attempt < START_ATTEMPTS and is_handshake_race(err):
                    self.log("latentfuse serve: the Python backend's handshake with tritonserver was refused (a "
                             "start-up race on a loaded machine); starting tritonserver again")
                    continue
                if log and not opts.verbose:
                    self.log(log)
                raise LatentfuseError(f"tritonserver did not start: {type(err).__name__}: {err}") from err

    def _run_triton(self, triton_mod, model_config) -> None:
        """One tritonserver with the model bound, run until the model is ready (raises when it is not)."""
        opts = self.opts
        config = triton_mod.TritonConfig(
            http_address=opts.host, http_port=opts.http_port, grpc_address=opts.host, grpc_port=opts.grpc_port,
            metrics_address=opts.host, metrics_port=opts.metrics_port, exit_timeout_secs=EXIT_TIMEOUT_S,
            allow_gpu_metrics=False, log_verbose=1 if opts.verbose else None)  # None: PyTriton prints no log
        self.triton = triton_mod.Triton(config=config)
        self._quiet_server_log(opts.verbose)
        Tensor = model_config.Tensor
        self.triton.bind(
            model_name=MODEL_NAME,
            infer_func=self.fusers if len(self.fusers) > 1 else self.fusers[0],
            inputs=[Tensor(name=n, dtype=d, shape=s, optional=o) for n, d, s, o in INPUTS],
            outputs=[Tensor(name=OUTPUT[0], dtype=OUTPUT[1], shape=OUTPUT[2])],
            config=model_config.ModelConfig(
                max_batch_size=opts.max_batch,
                batcher=model_config.DynamicBatcher(
                    max_queue_delay_microseconds=int(round(opts.batch_delay_ms * 1000)))),
            strict=False)
        self.triton.run()

    def _quiet_server_log(self, verbose: bool) -> None:
        """PyTriton echoes tritonserver's whole log to stdout; keep it (for errors) and print it only with
        --verbose."""
        triton, init = self.triton, self.triton._initialize_server

        def initialize() -> None:
            init()
            if getattr(triton, "_triton_server", None) is not None:
                triton._triton_server._verbose = verbose

        triton._initialize_server = initialize

    def server_log(self, lines: int = 20) -> str:
        """The last ``lines`` of tritonserver's log (for an error message)."""
        server = getattr(self.triton, "_triton_server", None)
        text = server.logs() if server is not None else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def is_alive(self) -> bool:
        return self.triton is not None and self.triton.is_alive()

    def stop(self) -> None:
        if self.triton is not None:
            triton, self.triton = self.triton, None
            triton.stop()

    def serve_until_signal(self, poll_s: float = 0.5) -> int:
        """Serve until SIGINT / SIGTERM (then stop cleanly; 0) or until tritonserver dies (1)."""
        import signal

        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(poll_s):
                if not self.is_alive():
                    self.log("latentfuse serve: tritonserver stopped unexpectedly")
                    return 1
            return 0
        finally:
            t0 = time.monotonic()
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.log(f"latentfuse serve: stopped ({time.monotonic() - t0:.1f} s)")


__all__ = ["BatchFuser", "FusionServer", "MODEL_NAME", "ServeOptions", "is_handshake_race", "parse_request",
           "prepare_stub_env", "stub_environment", "to_uint8"]
