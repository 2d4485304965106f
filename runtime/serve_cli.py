"""``latentfuse serve``: the model behind NVIDIA Triton Inference Server (HTTP, gRPC, metrics), see
:mod:`latentfuse.runtime.serve`.

    latentfuse serve [--bundle DIR | --checkpoint DIR] [--backend onnxruntime|tensorrt|torch]
                     [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002] [--max-batch 8]
                     [--max-pixels N] [--instances K]
    latentfuse serve --prepare      # only set up Triton's Python-backend environment (make install does)

Runs until SIGINT / SIGTERM, then stops tritonserver and its stub. Needs ``pip install 'latentfuse[serve]'``.
"""

from __future__ import annotations

import argparse
import sys

from latentfuse.runtime.fuse_cli import BACKEND_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    from latentfuse.runtime.serve import (DEFAULT_BATCH_DELAY_MS, DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS,
                                          MODEL_NAME)

    p = subparsers.add_parser("serve", help="serve the model on Triton Inference Server (HTTP / gRPC, dynamic "
                                            "batching); needs latentfuse[serve]")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="deployment bundle directory (onnxruntime / tensorrt)")
    src.add_argument("--checkpoint", help="model directory (default: the bundled default model)")
    p.add_argument("--backend", choices=BACKEND_CHOICES,
                   help="inference backend (default: onnxruntime; torch with --checkpoint)")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), help="ONNX Runtime execution provider")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads per graph (default: all cores)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0; 127.0.0.1: this "
                                                     "machine only)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"most pairs Triton hands the model at once; pairs of one size and settings are fused in "
                        f"one pass (default {DEFAULT_MAX_BATCH}; 1: no dynamic batching)")
    p.add_argument("--batch-delay-ms", type=float, default=DEFAULT_BATCH_DELAY_MS,
                   help=f"how long a request may wait for others to batch with (default {DEFAULT_BATCH_DELAY_MS:g})")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest H x W a request may send; larger ones are refused (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--instances", type=int, default=1, metavar="K",
                   help="model instances, each with its own pipeline (default 1; more for a GPU or many cores)")
    p.add_argument("--verbose", action="store_true", help="print tritonserver's log")
    p.add_argument("--prepare", action="store_true",
                   help="only set up the environment Triton's Python-backend stub runs in, then exit")
    p.set_defaults(func=run_serve, model_name=MODEL_NAME)


def _build_pipelines(args: argparse.Namespace, count: int) -> list:
    from latentfuse.runtime.fuse_cli import build_pipeline

    if not args.bundle and not args.checkpoint and not args.backend:
        args.backend = "onnxruntime"  # a server: the deployed graphs, exported once from the default model
    args.compile = False  # build_pipeline's torch option, which serve does not offer
    return [build_pipeline(args) for _ in range(count)]


def run_serve(args: argparse.Namespace) -> int:
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.runtime.serve import BatchFuser, FusionServer, ServeOptions, check_options, import_pytriton
    from latentfuse.runtime.serve import prepare_stub_env

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    import_pytriton()  # a missing extra is one line, before any model loads
    if args.prepare:
        print(f"Triton's Python-backend environment: {prepare_stub_env(log)}")
        return 0
    opts = ServeOptions(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                        metrics_port=args.metrics_port, max_batch=args.max_batch, batch_delay_ms=args.batch_delay_ms,
                        max_pixels=args.max_pixels, verbose=args.verbose)
    check_options(opts)
    if not 1 <= args.instances <= 16:
        raise LatentfuseError(f"--instances must be in [1, 16], got {args.instances}")
    pipes = _build_pipelines(args, args.instances)
    fusers = [BatchFuser(p, max_pixels=opts.max_pixels, max_group=opts.max_batch, log=log) for p in pipes]
    log(f"latentfuse serve: {pipes[0].backend.describe()}, {args.instances} instance(s), max batch {opts.max_batch}")
    server = FusionServer(fusers, opts, log=log).start()
    host = "localhost" if opts.host in ("0.0.0.0", "") else opts.host
    print(f"latentfuse serve: ready, model '{args.model_name}' at http://{host}:{opts.http_port} and "
          f"grpc://{host}:{opts.grpc_port}, metrics at http://{host}:{opts.metrics_port}/metrics "
          f"(Ctrl+C or SIGTERM stops it)", flush=True)
    return server.serve_until_signal()
