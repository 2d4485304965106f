"""One prepared, unattended GPU check (issue 30): what ``bench/device_check.sh OUT_DIR [--smoke]`` runs.

The shell script installs the package into a throwaway folder (the machine's own torch untouched) and
runs each *part* below as its own process under a time limit, so a part that hangs or runs out of its
seconds loses only its own unfinished rows; after every part it assembles ``device_check.json`` and
``device_check.md`` (schema: docs/device-check.md), both written atomically.

    machine    GPU, driver, versions, where torch and latentfuse were imported from, a matmul peak
    latency    the bundled default and the ``paper`` preset (random weights) on ``--backend torch``:
               fp32 / fp16 DiT, regression / flow (5 NFE), at the demo size, 640x480 and 1024x1024,
               per-stage median (runtime.latency: synchronised stage edges) after warm-up
    aoti       AOTInductor packages of the default model's graphs (export.aoti.compile_graph) for the
               device, run through the Python pipeline: per-stage latency and PSNR against eager torch
    tensorrt   engines and latency when ``import tensorrt`` works; otherwise the reason, recorded
    cpp        the C++ host (runtime/cpp) built against the machine's libtorch and checked against the
               Python pipeline (PSNR) when the seconds left allow; otherwise why not

``--smoke`` runs the same parts on the CPU at tiny sizes (the ``tiny`` preset in place of ``paper``,
whose random init alone takes longer than a smoke run), with the same schema, so CI keeps the check
from rotting.

    python -m latentfuse.bench.device_check part NAME --work DIR --budget S [--smoke]
    python -m latentfuse.bench.device_check skip NAME --work DIR --reason TEXT
    python -m latentfuse.bench.device_check report --work DIR --out OUT_DIR

This module is the command line; the settings and records are in ``device_check_record``, the parts in
``device_check_parts``, the report in ``device_check_report``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from latentfuse.bench.device_check_parts import part_aoti, part_cpp, part_latency, part_machine, part_tensorrt
from latentfuse.bench.device_check_record import PARTS, Part, one_line, progress, settings
from latentfuse.bench.device_check_report import assemble


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentfuse.bench.device_check",
                                     description="One part of bench/device_check.sh (see the module docstring).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("part")
    p.add_argument("name", choices=PARTS)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--budget", required=True, type=float)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    s = sub.add_parser("skip")
    s.add_argument("name", choices=PARTS)
    s.add_argument("--work", required=True, type=Path)
    s.add_argument("--reason", required=True)
    s.add_argument("--smoke", action="store_true")
    r = sub.add_parser("report")
    r.add_argument("--work", required=True, type=Path)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--budget", type=float)
    r.add_argument("--started", type=float, help="the run's start, seconds since the epoch")
    args = parser.parse_args(argv)

    if args.command == "report":
        report = assemble(args.work, args.out, args.budget, args.started)
        ok = sum(1 for row in report["rows"] if row["status"] == "ok" and row["stage"] == "total")
        progress(f"report: {args.out / 'device_check.json'} ({report['status']}, {ok} timed configurations)")
        return 0
    if args.command == "skip":
        part = Part(args.name, args.work, 0.0, args.smoke)
        part.finish("skipped", args.reason)
        return 0
    if args.budget <= 0:
        parser.error(f"--budget must be positive seconds, got {args.budget:g}")
    try:
        cfg = settings(args.smoke)
    except ValueError as err:
        parser.error(str(err))
    part = Part(args.name, args.work, args.budget, args.smoke)
    progress(f"{args.name}: start ({args.budget:.0f} s budget, device {cfg.device})")
    runners: dict[str, Callable[[], None]] = {
        "machine": lambda: part_machine(part, cfg),
        "latency": lambda: part_latency(part, cfg),
        "aoti": lambda: part_aoti(part, cfg, args.work),
        "tensorrt": lambda: part_tensorrt(part, cfg, args.work),
        "cpp": lambda: part_cpp(part, cfg, args.work, args.repo),
    }
    try:
        runners[args.name]()
    except Exception as err:  # noqa: BLE001 - the part's record says why it stopped
        traceback.print_exc()
        part.finish("error", one_line(err))
        progress(f"{args.name}: error: {one_line(err)}")
        return 1
    progress(f"{args.name}: {part.data['status']} in {part.data['seconds']:.0f} s"
             + (f" ({part.data['reason']})" if part.data.get("reason") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
