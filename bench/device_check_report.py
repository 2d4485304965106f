"""The device check's report (:mod:`latentfuse.bench.device_check`): the parts' records merged into
``device_check.json`` and ``device_check.md``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from latentfuse.bench.device_check_record import PAPER, PARTS, SCHEMA, STAGE_NAMES, now_iso, write_json
from latentfuse.model.atomic import atomic_file


def assemble(work: Path, out: Path, budget_s: float | None = None, started: float | None = None) -> dict:
    """Merge the parts' records (and the shell's exit codes / install record) into
    ``device_check.json`` and ``device_check.md`` under ``out``, atomically."""
    parts, rows = {}, []
    smoke = False
    for name in PARTS:
        path = work / f"{name}.json"
        if not path.is_file():
            parts[name] = {"status": "not run", "reason": "the run ended before this part"}
            continue
        data = json.loads(path.read_text())
        smoke = smoke or bool(data.get("smoke"))
        rc_file = work / f"{name}.rc"
        rc = int(rc_file.read_text().strip()) if rc_file.is_file() and rc_file.read_text().strip() else None
        if data.get("status") == "running":
            data["status"] = "timeout" if rc in (124, 137) else "failed"
            data["reason"] = (f"killed at its time limit (it planned for {data.get('budget_s')} s); rows up to "
                              f"then are kept"
                              if rc in (124, 137) else f"the part's process ended (exit {rc}) before finishing; "
                                                       f"see device_check.log")
        for row in data.get("rows", []):
            if row.get("status") == "pending":  # planned, never reached
                row["status"] = data["status"] if data["status"] in ("timeout", "failed") else "not run"
                row["reason"] = f"the {name} part ended ({data['status']}) before this configuration"
        rows += data.pop("rows", [])
        parts[name] = data
    install = json.loads((work / "install.json").read_text()) if (work / "install.json").is_file() else None
    machine = parts.get("machine", {})
    report = {
        "schema": SCHEMA, "created": now_iso(), "smoke": smoke,
        "status": "complete" if all(p.get("status") in ("ok", "skipped") for p in parts.values()) else "partial",
        "budget_s": budget_s, "elapsed_s": round(time.time() - started, 1) if started else None,
        "machine": machine.get("machine"), "versions": machine.get("versions"), "install": install,
        "paper": PAPER,
        "parts": {n: {k: v for k, v in p.items() if k not in ("machine", "versions")} for n, p in parts.items()},
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "device_check.json", report)
    with atomic_file(out / "device_check.md") as tmp:
        tmp.write_text(markdown(report))
    return report


def _ms(v) -> str:
    return "—" if v is None else (f"{v:.1f}" if v < 1000 else f"{v:,.0f}")


def markdown(report: dict) -> str:
    m = report.get("machine") or {}
    gpu = m.get("gpu") or {}
    v = report.get("versions") or {}
    lines = [f"# latentfuse device check{' (smoke, CPU)' if report['smoke'] else ''}", "",
             f"{report['created']}, status **{report['status']}**, {report.get('elapsed_s')} s of a "
             f"{report.get('budget_s')} s budget.", "",
             f"- machine: {gpu.get('name') or 'no GPU'}"
             + (f" (SM {gpu.get('capability')}, {gpu.get('memory_gib')} GiB, driver {gpu.get('driver', '?')})" if gpu else "")
             + f", {m.get('cpu_count', '?')} CPU cores, {m.get('platform', '?')}",
             f"- torch {v.get('torch')} (CUDA {v.get('cuda')}, cuDNN {v.get('cudnn')}) from {m.get('torch_file', '?')}; "
             f"latentfuse {v.get('latentfuse')} from {m.get('latentfuse_file', '?')} (commit {m.get('commit', '?')})",
             f"- matmul peak: " + ", ".join(f"{k} {t} TFLOP/s" for k, t in (m.get("matmul_peak_tflops") or {}).items()),
             "", "## Parts", "", "| part | status | seconds | note |", "|---|---|---:|---|"]
    for name, p in report["parts"].items():
        lines.append(f"| {name} | {p.get('status')} | {p.get('seconds', '—')} | {p.get('reason') or ''} |")
    rows = report["rows"]
    totals = [r for r in rows if r["stage"] == "total"]
    table5 = [r for r in totals if r.get("role") == "table5"]
    if table5:
        paper = {p["mode"]: p for p in report["paper"]["rows"] if p["mode"]}
        lines += ["", f"## MMAIF Table 5's form: whole pipeline at {table5[0]['size']}", "",
                  f"Paper ({report['paper']['source']}, GPU {report['paper']['gpu']}): "
                  + ", ".join(f"{p['method']} {p['bound'] if p['bound'] != '=' else ''}{p['seconds']:.3g} s"
                              for p in report["paper"]["rows"]) + ".", "",
                  "| model | backend | precision | mode | s / image | paper | measured / paper |", "|---|---|---|---|---:|---:|---:|"]
        for r in table5:
            p = paper.get(r["mode"])
            s = None if r["median_ms"] is None else r["median_ms"] / 1e3
            ref = f"{p['bound'] if p['bound'] != '=' else ''}{p['seconds']:.3g} s" if p else "—"
            ratio = f"{s / p['seconds']:.2f}x" if p and s else (r["status"] if s is None else "—")
            lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['mode']} | "
                         f"{'—' if s is None else f'{s:.3f}'} | {ref} | {ratio} |")
    if rows:
        lines += ["", "## Per-stage medians (ms)", "",
                  "| model | backend | precision | mode | size | " + " | ".join(STAGE_NAMES) + " | peak MiB | note |",
                  "|---|---|---|---|---|" + "---:|" * (len(STAGE_NAMES) + 1) + "---|"]
        groups: dict[tuple, dict] = {}
        for r in rows:
            key = (r["part"], r["model"], r["backend"], r["precision"], r["mode"], r["size"])
            groups.setdefault(key, {})[r["stage"]] = r
        for (_, model, backend, precision, mode, size), g in groups.items():
            any_row = next(iter(g.values()))
            note = any_row["status"] if any_row["status"] != "ok" else ""
            if any_row.get("reason"):
                note += f": {any_row['reason']}"
            if any_row.get("psnr_vs_eager_db") is not None:
                note += f"PSNR vs eager {any_row['psnr_vs_eager_db']} dB"
            if any_row.get("finite") is False:
                note += " non-finite output"
            lines.append(f"| {model} | {backend} | {precision} | {mode} | {size} | "
                         + " | ".join(_ms(g.get(s, {}).get("median_ms")) for s in STAGE_NAMES)
                         + f" | {_ms(any_row.get('peak_mem_mib'))} | {note.strip()} |")
    aoti = report["parts"].get("aoti", {})
    if aoti.get("graphs"):
        lines += ["", "## AOTInductor packages", "", "| graph | status | compile s | note |", "|---|---|---:|---|"]
        lines += [f"| {g['graph']} | {g['status']} | {g.get('compile_seconds', '—')} | {g.get('reason') or ''} |"
                  for g in aoti["graphs"]]
    return "\n".join(lines) + "\n"
