"""Bench reports: report.json (schema-versioned), report.xml (JUnit), report.md (PR comment),
report.html (self-contained, inline SVG plots), and the summary table on the terminal.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vitedge.errors import BadInput
from vitedge.fsutil import write_files_atomic

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
stdout = Console(highlight=False)
LOG_WIDTH = 200


def load_schema() -> dict[str, Any]:
    """The JSON Schema report.json follows."""
    return json.loads(SCHEMA_PATH.read_text())


def write_reports(report: dict[str, Any], report_dir: Path) -> dict[str, str]:
    """Write all four reports into REPORT_DIR, as a set (all or none); return {format: path}."""
    from vitedge.validate.report_html import render_html

    files = {fmt: str(report_dir / f"report.{fmt}") for fmt in ("json", "xml", "md", "html")}
    rendered = {files["json"]: json.dumps(_finite({**report, "files": files}), indent=2) + "\n",
                files["xml"]: render_junit(report), files["md"]: render_markdown(report),
                files["html"]: render_html(report)}
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create --report {report_dir}: {exc.strerror or exc}") from exc
    write_files_atomic(rendered)  # all four or none
    return files


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


# -- shared helpers ---------------------------------------------------------------------------

def subjects(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The reference followed by the candidates."""
    return [report["reference"], *report["artifacts"]]


def latency_row(entry: dict[str, Any], batch: int) -> dict[str, Any] | None:
    row = next((r for r in entry["latency"] if r["batch"] == batch), None)
    return row if row and row.get("measured") else None


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers with `digits` significant digits; '-' for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def summary_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per subject: what the terminal, Markdown and HTML summaries show."""
    batches = report["settings"]["batches"]
    rows = []
    for entry in subjects(report):
        drift = entry.get("drift", {})
        is_ref = entry["role"] == "reference"
        row = {
            "artifact": "reference (PyTorch)" if is_ref else entry["name"],
            "target": entry["target"], "precision": entry["precision"],
            "top-1 agree": "1 (ref)" if is_ref else fmt(drift.get("top1_agreement")),
            "acc Δ": ("acc " + fmt(entry["accuracy"]["top1_acc"]) if is_ref and "accuracy" in entry
                      else signed(drift.get("acc_delta")) if "acc_delta" in drift else "-"),
        }
        for b in batches:
            lat = latency_row(entry, b)
            row[f"p50 ms b{b}"] = fmt(lat["p50_ms"], 3) if lat else "-"
        for b in batches:
            lat = latency_row(entry, b)
            row[f"speedup b{b}"] = "1x" if is_ref and lat else (
                f"{lat['speedup_p50']:.2f}x" if lat and lat.get("speedup_p50") is not None else "-")
        row["size MB"] = fmt(entry["size_mb"], 3)
        rows.append(row)
    return rows


def headline(report: dict[str, Any]) -> str:
    gates = report["gates"]
    failed = sum(not g["passed"] for g in gates)
    if not gates:
        return "no gates"
    if failed:
        return f"{failed} of {len(gates)} gate checks failed"
    return f"all {len(gates)} gate checks passed"


def settings_line(report: dict[str, Any]) -> str:
    s, d = report["settings"], report["data"]
    line = (f"reference PyTorch FP32 ({report['reference']['source']}); data {d['source']} "
            f"({d['samples']} images, {'labelled' if d['labelled'] else 'unlabelled'}); "
            f"batches {', '.join(map(str, s['batches']))}; device {s['device']}, {s['threads']} threads; "
            f"{s['iters']} timed runs after {s['warmup']} warm-up, interleaved")
    on_cpu = [a["name"] for a in report["artifacts"] if a["runtime"].get("timer") != "cuda-events"]
    if s["device"] == "cuda" and on_cpu:  # CPU runtimes (ORT, OpenVINO) ignore --device cuda
        line += (f"; {', '.join(on_cpu)} ran on the CPU, so {'its' if len(on_cpu) == 1 else 'their'} "
                 "speedups compare a CPU runtime with the GPU reference")
    return line


# -- terminal ---------------------------------------------------------------------------------

def print_summary(report: dict[str, Any]) -> None:
    """The final table on stdout, then gate and report-file lines."""
    rows = summary_rows(report)
    table = Table(title=f"vitedge bench: {headline(report)}")
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("artifact", "target", "precision") else "right",
                         no_wrap=True)
    for row in rows:
        table.add_row(*row.values())
    # A log (CI, a pipe) gets a wide table rather than one squeezed to 80 columns.
    console = stdout if stdout.is_terminal else Console(highlight=False, width=LOG_WIDTH)
    console.print(table)
    console.print(escape(settings_line(report)), soft_wrap=True)
    for gate in report["gates"]:
        mark = "[green]PASS[/green]" if gate["passed"] else "[red]FAIL[/red]"
        text = escape(f"[{gate['gate']}] {gate['message']}")
        console.print(f"  {mark} {text}", soft_wrap=True)
    if report.get("files"):
        console.print(escape(f"reports: {', '.join(report['files'].values())}"), soft_wrap=True)


# -- JUnit ------------------------------------------------------------------------------------

def render_junit(report: dict[str, Any]) -> str:
    """One testcase per gate check; a failing check carries a <failure>."""
    gates = report["gates"]
    failures = sum(not g["passed"] for g in gates)
    seconds = f"{report['settings']['seconds']:.3f}"
    root = ET.Element("testsuites", name="vitedge bench", tests=str(len(gates)), failures=str(failures),
                      errors="0", time=seconds)
    suite = ET.SubElement(root, "testsuite", name="vitedge.bench.gates", tests=str(len(gates)),
                          failures=str(failures), errors="0", skipped="0", time=seconds,
                          timestamp=report["created"])
    props = ET.SubElement(suite, "properties")
    for name, value in (("reference", report["reference"]["source"]), ("data", report["data"]["source"]),
                        ("samples", report["data"]["samples"]),
                        ("batches", ",".join(map(str, report["settings"]["batches"]))),
                        ("device", report["settings"]["device"]), ("threads", report["settings"]["threads"]),
                        ("vitedge_version", report["vitedge_version"])):
        ET.SubElement(props, "property", name=name, value=str(value))
    for gate in gates:
        where = gate["artifact"] + (f" @b{gate['batch']}" if gate["batch"] is not None else "")
        case = ET.SubElement(suite, "testcase", classname=f"vitedge.bench.{gate['artifact']}",
                             name=f"{gate['gate']} [{where}]", time="0")
        if not gate["passed"]:
            failure = ET.SubElement(case, "failure", message=gate["message"], type="GateFailed")
            failure.text = f"gate {gate['gate']}: {gate['message']}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# -- Markdown ---------------------------------------------------------------------------------

def _md_table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """A summary for a pull-request comment: status, table, failing gates, details folded."""
    failed = [g for g in report["gates"] if not g["passed"]]
    icon = "❌" if failed else "✅"
    lines = [f"## {icon} vitedge bench: {headline(report)}", "", settings_line(report) + ".", ""]
    lines += _md_table(summary_rows(report))
    if failed:
        lines += ["", "### Failed gates", ""]
        lines += [f"- `{g['gate']}`: {g['message']}" for g in failed]
    if report["gates"]:
        lines += ["", f"<details><summary>All gate checks ({len(report['gates'])})</summary>", ""]
        lines += _md_table([{"": "✅" if g["passed"] else "❌", "gate": f"`{g['gate']}`",
                             "check": g["message"]} for g in report["gates"]])
        lines += ["", "</details>"]
    lines += ["", "<details><summary>Drift</summary>", ""]
    lines += _md_table(drift_table(report))
    lines += ["", "</details>", "", "<details><summary>Latency (ms)</summary>", ""]
    lines += _md_table(latency_table(report))
    lines += ["", "</details>"]
    worst = [(a["name"], w) for a in report["artifacts"] for w in a["worst"]]
    if worst:
        lines += ["", "<details><summary>Worst disagreements</summary>", ""]
        lines += _md_table([{"artifact": name, "file": f"`{w['file']}`", "label": w["label"] or "-",
                             "reference": f"{w['ref_pred']} ({w['ref_prob']:.2f})",
                             "candidate": f"{w['pred']} ({w['prob']:.2f})", "KL": fmt(w["kl"], 3)}
                            for name, w in worst])
        lines += ["", "</details>"]
    lines += ["", environment_line(report), ""]
    return "\n".join(lines)


DRIFT_COLUMNS = ("top1_agreement", "top5_overlap", "max_abs_err", "mean_abs_err", "cosine_min", "kl_mean",
                 "ref_top1_acc", "top1_acc", "acc_delta", "ref_top5_acc", "top5_acc")


def drift_table(report: dict[str, Any]) -> list[dict[str, str]]:
    return [{"artifact": a["name"], **{k: fmt(a["drift"].get(k)) for k in DRIFT_COLUMNS if k in a["drift"]}}
            for a in report["artifacts"]]


def latency_table(report: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for entry in subjects(report):
        for b in report["settings"]["batches"]:
            lat = latency_row(entry, b)
            if lat is None:
                continue
            rows.append({"artifact": entry["name"], "batch": str(b),
                         **{k: fmt(lat[k], 3) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms")},
                         "images/s": fmt(lat["throughput"], 4),
                         "speedup p50": fmt(lat.get("speedup_p50"), 3),
                         "threads": fmt(entry["runtime"].get("threads")),
                         "streams": fmt(entry["runtime"].get("streams")),
                         "load s": fmt(entry["load_s"], 3), "RSS MB": fmt(entry["rss_mb"], 3),
                         "GPU MB": fmt(entry.get("gpu_mb"), 3)})
    return rows


def environment_line(report: dict[str, Any]) -> str:
    env = report["environment"]
    cpu = env["hardware"]["cpu"]
    gpus = ", ".join(g["name"] for g in env["hardware"].get("gpus", [])) or "none"
    tools = ", ".join(f"{k} {v}" for k, v in env["tools"].items() if v)
    return (f"<sub>CPU {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['isa']) or 'no AVX2+'}); "
            f"GPU {gpus}; {tools}. {report['reference']['note']}</sub>")
