"""Accuracy and CPU speed of INT8 / FP8 bundles against the FP32 bundle of the same model (README "INT8 / FP8").

    python scripts/quant_report.py --fp32 B32 --quantized B8 [--quantized B8FP8] \\
        --held-out vif=../shared/datasets/vif/TNO --held-out mef=../shared/datasets/mef/input \\
        --held-out mff=../shared/datasets/mff/input --pairs 4 --crop 128 --out docs/quant/report
    python scripts/quant_report.py --fp32 B32 --quantized B8FIDELITY --samples --split train \
        --held-out vif=../shared/datasets/vif/RoadScene --pairs 3 --crop 480 --fidelity-size 640x480 --out ...

For each quantized bundle:

* per graph, the recorded calibration numbers (sensitivity, exclusions, error of ModelOpt's fake-quant
  model and of ONNX Runtime against FP32, ONNX Runtime vs fake quant at the verify shapes) and the
  integer kernels ONNX Runtime's CPU provider runs after its graph optimisation;
* per task and head, on ``--pairs`` held-out pairs per task (crops of ``--crop`` input pixels of pairs
  the calibration did not use, seeded; ``--split train|heldout``: only the pairs of that side of
  ``model.data.split``): fused-image PSNR of the quantized bundle against the FP32 bundle (both on ONNX
  Runtime, same seeds) and both Q^AB/F (:func:`latentfuse.export.quantize.fusion_accuracy`); ``--samples``:
  the same on the shipped sample pairs, whole, with their own prompts;
* latency on ONNX Runtime (CPU, ``--threads``) of each quantized int8 graph against its FP32 graph, in
  one process, interleaved: a DiT at the shapes the pipeline feeds it (a batch of ``--windows`` windows
  of the model's window size, and one window), the fidelity decoder at ``--fidelity-size`` working
  pixels; median of ``--repeat`` calls each, median of ``--rounds`` rounds.

Writes ``report.json`` and ``report.md`` into ``--out`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dit_latency(fp32_bundle: Path, quant_bundle: Path, graph: str, *, windows: int, repeat: int, rounds: int,
                 threads: int) -> dict:
    """Median seconds per call of the FP32 and the quantized DiT graph, interleaved, on recorded-like inputs."""
    from latentfuse.runtime.manifest import Bundle

    side = int(Bundle.open(fp32_bundle).latent.get("window") or 256) // 8
    cases = [(f"batch{batch}", f"{batch}x16x{side}x{side} latent ({batch} window(s) of {side * 8} px)", batch,
              side * 8, side * 8) for batch in sorted({1, windows})]
    return _latency(fp32_bundle, quant_bundle, graph, cases, repeat=repeat, rounds=rounds, threads=threads)


def _image_latency(fp32_bundle: Path, quant_bundle: Path, graph: str, *, size: tuple[int, int], repeat: int,
                   rounds: int, threads: int) -> dict:
    """The same for an image graph (the fidelity decoder): one image of ``size`` (W, H) working pixels."""
    w, h = size
    case = (f"{w}x{h}", f"1x3x{h}x{w} image ({w}x{h} working px)", 1, h, w)
    return _latency(fp32_bundle, quant_bundle, graph, [case], repeat=repeat, rounds=rounds, threads=threads)


def _latency(fp32_bundle: Path, quant_bundle: Path, graph: str, cases, *, repeat: int, rounds: int,
             threads: int) -> dict:
    """Per case (key, label, batch, height, width): the FP32 and the quantized graph in one process, one
    ONNX Runtime session each (``threads`` intra-op threads), a warm-up call each, then ``rounds`` rounds
    in turn of ``repeat`` calls; the median of a round's calls, the median over rounds."""
    from latentfuse.export.graphs import bundle_spec
    from latentfuse.export.quantize import ort_session
    from latentfuse.runtime.manifest import Bundle

    b32, bq = Bundle.open(fp32_bundle), Bundle.open(quant_bundle)
    spec = bundle_spec(b32, graph)
    sessions = {"fp32": ort_session(b32.graph_path(graph), threads=threads),
                "quantized": ort_session(bq.graph_path(graph), threads=threads)}
    out = {}
    for key, label, batch, height, width in cases:
        inputs = spec.sample_inputs(batch, height, width, 12, seed=0)
        feed = {k: v.numpy() for k, v in inputs.items()}
        for s in sessions.values():
            s.run(None, feed)
        times = {k: [] for k in sessions}
        for _ in range(rounds):
            for name, s in sessions.items():
                calls = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    s.run(None, feed)
                    calls.append(time.perf_counter() - t0)
                times[name].append(statistics.median(calls))
        f32, q = statistics.median(times["fp32"]), statistics.median(times["quantized"])
        out[key] = {"shape": label, "fp32_s": f32, "quantized_s": q, "speedup": f32 / q,
                    "rounds_fp32_s": times["fp32"], "rounds_quantized_s": times["quantized"]}
    return out


def _size(text: str) -> tuple[int, int]:
    w, _, h = str(text).lower().partition("x")
    try:
        return int(w), int(h)
    except ValueError:
        raise SystemExit(f"--fidelity-size takes WxH (e.g. 640x480), got {text!r}") from None


def _sample_crops() -> list:
    """The shipped sample pairs, whole, with their own prompts (as calibration_inputs reads them)."""
    from latentfuse.calibration.quant_inputs import TASKS, CalibrationCrop, _read, _sample_pair_list

    crops = []
    for task in TASKS:
        for name, pair in _sample_pair_list(task):
            a, b, prompt = _read(task, pair)
            crops.append(CalibrationCrop(task, f"{name}@whole", a, b, prompt))
    return crops


def _split_exclusions(sources, split: str) -> list[str]:
    """Names (as draw_crops writes them) of the pairs of ``sources`` whose scene is not in ``split``."""
    from latentfuse.calibration.quant_inputs import _pairs_of
    from latentfuse.model.data.split import in_split

    if split == "all":
        return []
    return [name for source in sources for name, pair in _pairs_of(source) if not in_split(pair.name, split)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", required=True, help="FP32 bundle of the model")
    p.add_argument("--quantized", action="append", required=True, help="int8 / fp8 bundle of the same model")
    p.add_argument("--held-out", action="append", default=[], metavar="TASK=DIR",
                   help="folders of real pairs to evaluate on (calibration pairs excluded)")
    p.add_argument("--split", choices=("all", "train", "heldout"), default="all",
                   help="only the pairs of --held-out whose scene is in this split (model.data.split; default all)")
    p.add_argument("--samples", action="store_true",
                   help="also the shipped sample pairs, whole, with their own prompts (calibration crops of them "
                        "may have been used: a check of the graph, not a held-out score)")
    p.add_argument("--pairs", type=int, default=4, help="held-out pairs per task (default 4)")
    p.add_argument("--crop", type=int, default=128, help="input pixels per held-out crop (default 128)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--windows", type=int, default=16, help="DiT windows per timed call (default 16)")
    p.add_argument("--fidelity-size", default="640x480", metavar="WxH",
                   help="working size of the fidelity graph's timed call (default 640x480)")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-fusion", action="store_true", help="skip the fused-image accuracy (timings only)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from latentfuse.calibration.quant_inputs import draw_crops, parse_source
    from latentfuse.export.quantize import fusion_accuracy, ort_kernel_report
    from latentfuse.runtime.manifest import load_manifest
    from latentfuse.runtime.pipeline import Pipeline

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [parse_source(s) for s in args.held_out]
    fp32 = Pipeline.from_pretrained(args.fp32, backend="onnxruntime", threads=args.threads)
    report = {"machine": {"processor": platform.processor() or platform.machine(), "threads": args.threads,
                          "python": platform.python_version()},
              "fp32_bundle": str(args.fp32), "held_out": [s.describe() for s in sources], "bundles": {}}
    for qpath in args.quantized:
        manifest = load_manifest(qpath)
        section = manifest.get("quantization") or {}
        used = {p.split("@", 1)[0] for p in (section.get("calibration") or {}).get("pairs", [])}
        crops = []
        if not args.no_fusion and (sources or not args.samples):
            crops = draw_crops(sources or None, args.pairs * max(len(sources), 1), crop=args.crop, seed=args.seed,
                               exclude=used | set(_split_exclusions(sources, args.split)))
        heads = [e["head"] for e in manifest["graphs"].values() if e.get("kind") == "dit"]
        t0 = time.perf_counter()
        candidate = Pipeline.from_pretrained(qpath, backend="onnxruntime", threads=args.threads)
        fusion = fusion_accuracy(fp32, candidate, crops, heads, seed=0) if crops else []
        samples = (fusion_accuracy(fp32, candidate, _sample_crops(), heads, seed=0)
                   if args.samples and not args.no_fusion else [])
        graphs = {}
        for name, entry in manifest["graphs"].items():
            q = entry.get("quantization")
            if not q:
                continue
            g = {k: q.get(k) for k in ("precision", "level", "candidates", "error", "parity_vs_fake_quant",
                                         "exclusion_steps", "tolerance")}
            g["quantized_layers"] = len(q.get("quantized_layers", []))
            g["excluded_layers"] = q.get("excluded_layers")
            if entry["precision"] == "int8":
                g["onnxruntime_cpu"] = ort_kernel_report(Path(qpath) / entry["file"], q.get("quantized_layers", []))
                if not args.no_speed and entry.get("kind") == "fidelity":
                    g["latency"] = _image_latency(Path(args.fp32), Path(qpath), name, size=_size(args.fidelity_size),
                                                  repeat=args.repeat, rounds=args.rounds, threads=args.threads)
                elif not args.no_speed and entry.get("kind") == "dit":
                    g["latency"] = _dit_latency(Path(args.fp32), Path(qpath), name, windows=args.windows,
                                                repeat=args.repeat, rounds=args.rounds, threads=args.threads)
            graphs[name] = g
        report["bundles"][str(qpath)] = {
            "precision": section.get("precision"), "calibration": section.get("calibration"),
            "held_out_pairs": [c.name for c in crops], "split": args.split, "graphs": graphs,
            "fusion": [_fusion_row(f) for f in fusion], "samples": [_fusion_row(f) for f in samples],
            "seconds": time.perf_counter() - t0}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = markdown(report)
    (out_dir / "report.md").write_text(md)
    print(md)
    return 0


def _fusion_row(f) -> dict:
    return {"task": f.task, "head": f.head, "pairs": f.pairs, "psnr_db": f.psnr_db, "psnr_min_db": f.psnr_min_db,
            "qabf_fp32": f.qabf_fp32, "qabf_quantized": f.qabf_quant, "qabf_change": f.qabf_change}


def markdown(report: dict) -> str:
    lines = [f"# Quantized bundles against `{report['fp32_bundle']}`", "",
             f"Machine: {report['machine']['processor']}, ONNX Runtime CPU, {report['machine']['threads']} threads. "
             f"Held-out pairs: {', '.join(report['held_out']) or 'shipped samples'}.", ""]
    for path, b in report["bundles"].items():
        lines += [f"## {b['precision']}: `{path}`", "",
                  "| graph | layers quantized | excluded (measured) | fake quant vs FP32 | ORT vs FP32 | ORT vs fake quant |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, g in b["graphs"].items():
            e = g["error"] or {}
            get = lambda k: (e.get(k) or {}).get("rel_rms", "-")  # noqa: E731
            lines.append(f"| {name} | {g['quantized_layers']}/{g['candidates']} | {len(g['excluded_layers'] or {})} | "
                         f"{get('fake_quant_vs_fp32')} | {get('onnxruntime_vs_fp32')} | {get('onnxruntime_vs_fake_quant')} |")
        lines += ["", "Relative RMS error of the graph output on the calibration inputs."]
        pairs_title = f"Pairs of {', '.join(report['held_out'])} (split {b.get('split', 'all')})"
        for title, rows in ((pairs_title, b["fusion"]),
                            ("Shipped sample pairs, whole, own prompts", b.get("samples") or [])):
            if not rows:
                continue
            lines += ["", title + ":", "",
                      "| task | head | pairs | PSNR vs FP32 (dB) | min (dB) | Q^AB/F FP32 | Q^AB/F quantized "
                      "| change |",
                      "|---|---|---:|---:|---:|---:|---:|---:|"]
            for f in rows:
                lines.append(f"| {f['task']} | {f['head']} | {f['pairs']} | {f['psnr_db']:.2f} | "
                             f"{f['psnr_min_db']:.2f} | {f['qabf_fp32']:.4f} | {f['qabf_quantized']:.4f} | "
                             f"{f['qabf_change']:+.4f} |")
        for name, g in b["graphs"].items():
            lat = g.get("latency")
            k = g.get("onnxruntime_cpu")
            if k:
                lines += ["", f"{name}: ONNX Runtime integer kernels {k['integer_kernels']}; "
                              f"{len(k['integer_layers'])} layers integer, {len(k['dequantized_layers'])} dequantized "
                              f"({', '.join(sorted(k['dequantized_layers'])) or 'none'})"]
            if lat:
                for key, v in lat.items():
                    lines.append(f"- {name} {v['shape']}: FP32 {1e3 * v['fp32_s']:.1f} ms, quantized "
                                 f"{1e3 * v['quantized_s']:.1f} ms, **{v['speedup']:.2f}x**")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
