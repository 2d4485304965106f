#!/usr/bin/env python
"""ONNX Runtime CPU latency of the whole exported DiT graph with each MoE form (``model.moe``: ``dense``
and ``grouped``), the measurement behind each preset's ``export_moe_dispatch``. Both graphs are
exported from the same random weights (zero-initialised gates perturbed), checked equal, then run
interleaved (batch 1, 32 prompt tokens) so that load on a shared machine hits both alike.

``--clock cpu`` reports the process CPU time of a run with ORT's thread spinning off: the work done,
steady on a loaded machine; ``--clock wall`` the wall-clock latency with ORT's defaults.

    python scripts/bench_moe_dispatch.py --preset paper --depth 2 --latent 64 128 --threads 2 --clock cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FORMS = ("dense", "grouped")


def bench(preset: str, depth: int | None, head: str, latents: list[int], threads: int, repeats: int,
          clock: str, out_dir: Path) -> list[dict]:
    import numpy as np
    import onnxruntime as ort
    import torch

    from latentfuse.export.graphs import DiTSpec
    from latentfuse.export.onnx import export_graph
    from latentfuse.model.config import DiTConfig
    from latentfuse.model.dit import MoEDiT

    torch.manual_seed(0)
    cfg = DiTConfig.from_preset(preset, head=head, **({"depth": depth} if depth else {}))
    dit = MoEDiT(cfg).eval()
    with torch.no_grad():
        for p in dit.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0, 0.02)
    components = types.SimpleNamespace(dit=lambda _: dit)
    sessions = {}
    for form in FORMS:
        spec = DiTSpec.create(head, cfg.latent_channels, cfg.text_dim, max_text_length=64, moe_dispatch=form)
        result = export_graph(spec, spec.module(components), out_dir / form, exporter="dynamo")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        if clock == "cpu":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[form] = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
    timer = time.process_time if clock == "cpu" else time.perf_counter
    rows = []
    for latent in latents:
        feeds = {k: v.numpy() for k, v in spec.sample_inputs(1, 8 * latent, 8 * latent, 32, seed=1).items()}
        outs = {form: s.run(None, feeds)[0] for form, s in sessions.items()}   # also the warm-up
        times = {form: [] for form in FORMS}
        for _ in range(repeats):
            for form, s in sessions.items():
                start = timer()
                s.run(None, feeds)
                times[form].append(timer() - start)
        row = {"preset": preset, "depth": cfg.depth, "hidden_size": cfg.hidden_size, "head": head,
               "latent": latent, "image": 8 * latent, "tokens": (latent // cfg.patch_size) ** 2,
               "threads": threads, "clock": clock, "repeats": repeats,
               "max_abs_diff": float(np.abs(outs["grouped"] - outs["dense"]).max())}
        for form in FORMS:
            row[f"{form}_median_ms"] = round(1e3 * statistics.median(times[form]), 1)
            row[f"{form}_min_ms"] = round(1e3 * min(times[form]), 1)
        row["grouped_over_dense"] = round(row["grouped_median_ms"] / row["dense_median_ms"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--depth", type=int, default=None, help="fewer blocks than the preset (export / run time)")
    ap.add_argument("--head", default="flow", choices=("flow", "regression"))
    ap.add_argument("--latent", type=int, nargs="+", default=[64, 128], help="latent side (image = 8x)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bench(args.preset, args.depth, args.head, args.latent, args.threads, args.repeats, args.clock, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
