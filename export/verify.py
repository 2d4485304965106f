"""Verify exported graphs: ONNX Runtime vs PyTorch at new shapes, plus static ONNX checks.

Parity: every graph runs on ONNX Runtime (CPUExecutionProvider) and in PyTorch on the same seeded
inputs (:meth:`latentfuse.export.graphs.GraphSpec.sample_inputs`) at shapes that differ from the export example
(batch 2, 96x128 px, 9 tokens): a square, a 16:9 and a portrait image, the last with batch 2, each
with a different prompt length. ``max_abs`` and ``rel = max_abs / max|torch|`` are printed per graph
and shape and checked against the spec's tolerance (``max_abs <= atol + rtol · max|torch|``).

Static checks per graph: ``onnx.checker.check_model(path, full_check=True)`` (with the path, so the
external weights and strict shape inference are covered), the symbolic-dims check, the
data-dependent-shape check and the TensorRT op table (:mod:`latentfuse.export.checks`), and polygraphy's
``check lint`` when its dependency onnx-graphsurgeon is installed (skipped with that reason otherwise).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from latentfuse.export import checks
from latentfuse.export.graphs import DEFAULT_SHAPES, GraphSpec, Tolerance, VerifyShape
from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.manifest import QUANTIZED_PRECISIONS, TEXT_LENGTH


FP16_TOLERANCE = Tolerance(2e-2, 5e-2)      # FP16 graph on ORT CPU vs FP32 PyTorch


@dataclass
class ParityRow:
    graph: str
    shape: VerifyShape
    max_abs: float
    rel: float
    bound: float
    passed: bool
    note: str = ""
    text: bool = True       # the graph takes a text_length dim (the L column applies)


@dataclass
class CheckRow:
    graph: str
    check: str
    status: str            # "pass" | "fail" | "skipped"
    detail: str = ""


@dataclass
class VerifyReport:
    bundle: Path | None
    parity: list[ParityRow] = field(default_factory=list)
    checks: list[CheckRow] = field(default_factory=list)
    parity_skipped: str | None = None
    accuracy: list = field(default_factory=list)       # export.quantize.AccuracyRow (int8 / fp8 graphs)
    fusion: list = field(default_factory=list)         # export.quantize.FusionRow
    accuracy_skipped: str | None = None

    @property
    def ok(self) -> bool:
        return (all(r.passed for r in self.parity) and not any(c.status == "fail" for c in self.checks)
                and all(r.passed for r in self.accuracy))

    def failures(self) -> list[str]:
        out = [f"{r.graph} @ {r.shape.label} ({r.shape.describe()}): max_abs {r.max_abs:.3g} > bound {r.bound:.3g}"
               f"{' ' + r.note if r.note else ''}" for r in self.parity if not r.passed]
        out += [f"{c.graph}: {c.check}: {c.detail}" for c in self.checks if c.status == "fail"]
        out += [f"{r.graph}: {r.precision} error against FP32 on calibration inputs {r.rel_rms:.3g} > bound {r.bound:.3g}"
                for r in self.accuracy if not r.passed]
        return out

    def format(self) -> str:
        lines = []
        if self.parity:
            lines.append(f"{'graph':<16}{'shape':<10}{'B x H x W  text':<20}{'max_abs':>10}{'rel':>10}{'bound':>10}  ok")
            for r in self.parity:
                lines.append(f"{r.graph:<16}{r.shape.label:<10}{r.shape.describe(r.text):<20}{r.max_abs:>10.2e}"
                             f"{r.rel:>10.2e}{r.bound:>10.2e}  {'pass' if r.passed else 'FAIL'}"
                             f"{'  ' + r.note if r.note else ''}")
        if self.parity_skipped:
            lines.append(f"parity (ONNX Runtime vs PyTorch) skipped: {self.parity_skipped}")
        if self.checks:
            lines.append(f"{'graph':<16}{'check':<22}status")
            for c in self.checks:
                lines.append(f"{c.graph:<16}{c.check:<22}{c.status}{': ' + c.detail if c.detail else ''}")
        if self.accuracy or self.fusion:
            from latentfuse.export.quantize import format_accuracy

            lines.append(format_accuracy(self.accuracy, self.fusion))
        if self.accuracy_skipped:
            lines.append(f"quantization accuracy skipped: {self.accuracy_skipped}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- parity
def ort_session(path: str | os.PathLike):
    from latentfuse.runtime.backends.onnxruntime_backend import ort_session as session

    return session(path, purpose="verifying exported graphs")


def parity(spec: GraphSpec, module: torch.nn.Module, onnx_path: str | os.PathLike,
           shapes: Sequence[VerifyShape] = DEFAULT_SHAPES, tolerance: Tolerance | None = None,
           seed: int = 1) -> list[ParityRow]:
    """ONNX Runtime vs PyTorch on ``spec``'s graph at each shape (first output)."""
    session = ort_session(onnx_path)
    feeds_dtypes = {i.name: i.type for i in session.get_inputs()}
    tol = tolerance or spec.tolerance
    uses_text = any(TEXT_LENGTH in t.shape for t in spec.inputs)
    rows = []
    for shape in shapes:
        inputs = spec.sample_inputs(shape.batch, shape.height, shape.width, shape.text_length, seed=seed)
        with torch.no_grad():
            ref = module.eval()(*inputs.values())
        ref = ref.detach().float().cpu().numpy()
        feeds = {}
        for name, value in inputs.items():
            array = value.numpy()
            if feeds_dtypes.get(name) == "tensor(float16)":
                array = array.astype(np.float16)
            feeds[name] = array
        out = np.asarray(session.run([spec.output_names[0]], feeds)[0], dtype=np.float32)
        ref_max = float(np.abs(ref).max()) if ref.size else 0.0
        if out.shape != ref.shape:
            rows.append(ParityRow(spec.name, shape, math.inf, math.inf, tol.bound(ref_max), False,
                                  f"shape {out.shape} != torch {ref.shape}", uses_text))
            continue
        max_abs = float(np.abs(out - ref).max()) if ref.size else 0.0
        finite = bool(np.isfinite(out).all())
        rel = max_abs / max(ref_max, 1e-12)
        note = "" if finite else "non-finite values in the ONNX output"
        if ref_max == 0.0:
            note = note or "reference output is all zeros (untrained zero-init head?)"
        rows.append(ParityRow(spec.name, shape, max_abs, rel, tol.bound(ref_max),
                              finite and max_abs <= tol.bound(ref_max), note, uses_text))
    return rows


# ---------------------------------------------------------------------- static checks
def _run_check(graph: str, name: str, fn: Callable[[], str | None]) -> CheckRow:
    try:
        detail = fn() or ""
        return CheckRow(graph, name, "pass", detail)
    except LatentfuseError as err:
        return CheckRow(graph, name, "fail", str(err))
    except Exception as err:  # noqa: BLE001 - onnx.checker raises ValidationError and friends
        return CheckRow(graph, name, "fail", f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}")


def polygraphy_lint(path: str | os.PathLike, input_shapes: dict[str, list[int]], graph: str = "graph",
                    timeout: float = 600) -> CheckRow:
    """``polygraphy check lint`` at one concrete shape; skipped (with the reason) when it cannot run."""
    missing = [m for m in ("polygraphy", "onnx_graphsurgeon") if importlib.util.find_spec(m) is None]
    if missing:
        return CheckRow(graph, "polygraphy lint", "skipped",
                        f"polygraphy check lint needs {' and '.join(missing).replace('_', '-')}, which is not "
                        f"installed (pip install {' '.join(m.replace('_', '-') for m in missing)})")
    exe = Path(sys.executable).with_name("polygraphy")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "polygraphy"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "lint.json"
        shapes = [f"{k}:[{','.join(str(d) for d in v)}]" for k, v in input_shapes.items()]
        proc = subprocess.run([*cmd, "check", "lint", str(path), "--input-shapes", *shapes, "-o", str(report)],
                              capture_output=True, text=True, timeout=timeout)
        if not report.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return CheckRow(graph, "polygraphy lint", "fail", f"polygraphy exited {proc.returncode}: {tail[0][:300]}")
        data = json.loads(report.read_text())
    errors = [e for e in data.get("lint_entries", []) if e.get("level") == "error"]
    summary = data.get("summary", {})
    if errors:
        first = errors[0]
        return CheckRow(graph, "polygraphy lint", "fail",
                        f"{len(errors)} errors, e.g. {first.get('nodes')}: {str(first.get('message'))[:200]}")
    return CheckRow(graph, "polygraphy lint", "pass", f"{len(summary.get('passing', []))} nodes pass")


def static_checks(path: str | os.PathLike, spec: GraphSpec, lint: bool = True) -> list[CheckRow]:
    import onnx

    path = Path(path)
    name = spec.name

    def checker():
        onnx.checker.check_model(str(path), full_check=True)

    def trt_ops():
        checks.check_trt_ops(path, name)
        table = checks.load_trt_ops()
        return (f"{len(checks.op_types(path))} op types, all in TensorRT {table.get('tensorrt_version')}'s table "
                f"with their input types")

    rows = [
        _run_check(name, "onnx.checker (full)", checker),
        _run_check(name, "symbolic dims", lambda: checks.check_symbolic_dims(path, spec)),
        _run_check(name, "no data-dep. shapes", lambda: checks.check_no_data_dependent_shapes(path, name)),
        _run_check(name, "TensorRT ops", trt_ops),
    ]
    if lint:
        shape = DEFAULT_SHAPES[0]
        rows.append(polygraphy_lint(path, spec.shapes(shape.batch, shape.height, shape.width, shape.text_length),
                                    graph=name))
    return rows


# ---------------------------------------------------------------------- bundles
def _checkpoint_for(manifest: dict, checkpoint) -> tuple[Path | None, str | None]:
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_dir():
            raise LatentfuseError(f"checkpoint directory {path} does not exist")
        return path, None
    recorded = manifest.get("source_checkpoint")
    if not recorded:
        return None, "the manifest records no source checkpoint and none was given (--checkpoint DIR)"
    if not Path(recorded).is_dir():
        return None, f"the recorded source checkpoint {recorded} no longer exists (pass --checkpoint DIR)"
    return Path(recorded), None


def verify_bundle(bundle_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *,
                  components=None, shapes: Sequence[VerifyShape] = DEFAULT_SHAPES, lint: bool = True,
                  verify_hashes: bool = True, progress: bool = True, accuracy: bool = False,
                  held_out: int = 0) -> VerifyReport:
    """Check every graph of a bundle; parity needs the PyTorch model (``components``, ``checkpoint``,
    or the manifest's ``source_checkpoint``), the ONNX-only checks run regardless.

    ``accuracy`` (int8 / fp8 bundles, with the PyTorch model): each quantized graph's error against FP32
    on its calibration inputs, re-recorded (:func:`latentfuse.export.quantize.graph_accuracy`); ``held_out`` > 0
    adds, per task and head, the fused-image PSNR against the FP32 model and the Q^AB/F change on that
    many held-out pairs per task (:func:`quantization_fusion_report`)."""
    from tqdm import tqdm

    from latentfuse.runtime.manifest import load_manifest
    from latentfuse.export.graphs import graph_specs

    root = Path(bundle_dir)
    manifest = load_manifest(root, verify_hashes=verify_hashes)
    report = VerifyReport(root)
    report.checks.append(CheckRow("bundle", "file hashes", "pass" if verify_hashes else "skipped",
                                  f"{len(manifest['files'])} files match manifest.json" if verify_hashes else
                                  "not requested"))
    specs = {name: GraphSpec.from_manifest(name, entry, manifest.get("resolution"), manifest.get("text"))
             for name, entry in manifest["graphs"].items()}
    if components is None:
        ckpt, report.parity_skipped = _checkpoint_for(manifest, checkpoint)
        if ckpt is not None:
            from latentfuse.model.components import FusionComponents

            components = FusionComponents.from_pretrained(ckpt)
    torch_specs = {}
    if components is not None:
        heads = [e["head"] for e in manifest["graphs"].values() if e.get("kind") == "dit"]
        torch_specs = graph_specs(components, heads)
        for name, spec in torch_specs.items():
            entry = manifest["graphs"].get(name)
            if entry is None:
                raise LatentfuseError(f"{root}: the bundle has no {name!r} graph but the checkpoint has one")
            declared = spec.to_manifest()
            if declared["inputs"] != entry["inputs"] or declared["outputs"] != entry["outputs"]:
                raise LatentfuseError(f"{root}: graph {name!r} does not match the checkpoint's interface "
                                      f"(inputs {entry['inputs']} vs {declared['inputs']}); re-export the bundle")
    bar = tqdm(manifest["graphs"].items(), desc="verify", unit="graph", disable=not progress, leave=False)
    for name, entry in bar:
        bar.set_postfix_str(name)
        path = root / entry["file"]
        report.checks.extend(static_checks(path, specs[name], lint=lint))
        if entry.get("precision") in QUANTIZED_PRECISIONS:
            # A quantized graph's reference is ModelOpt's fake-quantized model, which exists at export only:
            # its parity at these shapes was measured then; against FP32 it is measured on the calibration
            # inputs (random inputs reach outside the calibrated ranges), see ``accuracy``.
            report.checks.append(_recorded_quant_parity(name, entry))
        elif name in torch_specs:
            spec = torch_specs[name]
            tol = FP16_TOLERANCE if entry.get("precision") == "fp16" else spec.tolerance
            report.parity.extend(parity(spec, spec.module(components), path, shapes, tolerance=tol))
    quantized = any(e.get("precision") in QUANTIZED_PRECISIONS for e in manifest["graphs"].values())
    if accuracy and quantized:
        if components is None:
            report.accuracy_skipped = f"needs the PyTorch model: {report.parity_skipped}"
        else:
            from latentfuse.export.quantize import graph_accuracy

            report.accuracy, _ = graph_accuracy(root, components, manifest=manifest, progress=progress)
            if held_out > 0:
                report.fusion = quantization_fusion_report(root, components, manifest, held_out, progress=progress)
    return report


def _recorded_quant_parity(name: str, entry: dict) -> CheckRow:
    record = (entry.get("quantization") or {}).get("parity_vs_fake_quant") or {}
    rows = record.get("rows") or []
    if not rows:
        return CheckRow(name, "parity (fake quant)", "fail", "the manifest records no parity of this quantized graph "
                                                             "against its fake-quantized model; re-export it")
    worst = max(rows, key=lambda r: r["rel_rms"] if isinstance(r["rel_rms"], (int, float)) else float("inf"))
    detail = (f"at export, ONNX Runtime vs ModelOpt's fake-quantized model at {len(rows)} shapes: rel RMS <= "
              f"{worst['rel_rms']} ({worst['dims']})")
    if "onnxruntime_vs_fp32" in worst:
        detail += (f"; vs FP32 {worst['onnxruntime_vs_fp32']} (fake quant {worst['fake_quant_vs_fp32']}); rule: "
                   f"{record.get('rule', record.get('bound'))}")
    return CheckRow(name, "parity (fake quant)", "pass" if all(r.get("passed") for r in rows) else "fail", detail)


def quantization_fusion_report(bundle_dir, components, manifest: dict, pairs_per_task: int, *,
                               progress: bool = True) -> list:
    """Per task and head: the quantized bundle on ONNX Runtime against the FP32 PyTorch model (what the
    FP32 bundle computes, to its parity tolerance) on ``pairs_per_task`` held-out pairs per task: crops
    of the calibration folders' pairs that calibration did not use (the shipped sample pairs when the
    bundle was calibrated on them)."""
    from latentfuse.calibration.quant_inputs import PairSource, draw_crops
    from latentfuse.export.quantize import fusion_accuracy
    from latentfuse.runtime.pipeline import Pipeline

    prov = (manifest.get("quantization") or {}).get("calibration") or {}
    used = {str(p).split("@", 1)[0] for p in prov.get("pairs", [])}
    sources = []
    for text in prov.get("sources", []):
        task, _, path = str(text).partition("=")
        if path and Path(path).is_dir():
            sources.append(PairSource(task, Path(path)))
    tasks = sorted({s.task for s in sources}) or ["vif", "mef", "mff"]
    crop = int(prov.get("crop") or 128)
    try:
        pairs = draw_crops(sources or None, pairs_per_task * len(tasks), crop=crop, seed=int(prov.get("seed", 0)) + 1,
                           exclude=used)
    except LatentfuseError:   # every pair was used for calibration (the shipped samples): reuse, other crops
        pairs = draw_crops(sources or None, pairs_per_task * len(tasks), crop=crop, seed=int(prov.get("seed", 0)) + 1)
    heads = [e["head"] for e in manifest["graphs"].values() if e.get("kind") == "dit"]
    reference = Pipeline.from_components(components, device="cpu")
    candidate = Pipeline.from_pretrained(bundle_dir, backend="onnxruntime")
    return fusion_accuracy(reference, candidate, pairs, heads, progress=progress)
