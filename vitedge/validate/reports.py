"""Bench reports: report.json (schema-versioned), report.xml (JUnit), report.md (PR comment),
report.html (self-contained, inline SVG plots), and the summary table on the terminal.

Every format opens with the verdicts (accurate? faster than FP32? faster than the reference?)
and the notes (random weights, CPU without INT8 instructions, bf16, outside load...), and
shows each gate check as pass, fail, unreliable or skipped.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from vitedge.validate.verdicts import QUESTIONS, outcome, verdicts

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def load_schema() -> dict[str, Any]:
    """The JSON Schema report.json follows."""
    return json.loads(SCHEMA_PATH.read_text())


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
    return [report["reference"], *report["artifacts"], *report.get("yardsticks", [])]


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
    counts = {name: sum(outcome(g) == name for g in gates) for name in ("fail", "unreliable", "skipped")}
    skipped = f" ({counts['skipped']} skipped)" if counts["skipped"] else ""
    if not gates:
        return "no gates"
    if counts["fail"]:
        unsure = f", {counts['unreliable']} unreliable" if counts["unreliable"] else ""
        return f"{counts['fail']} of {len(gates)} gate checks failed{unsure}{skipped}"
    if counts["unreliable"]:
        return f"{counts['unreliable']} of {len(gates)} gate checks unreliable, none failed{skipped}"
    if counts["skipped"] == len(gates):
        return f"all {len(gates)} gate checks skipped"
    return f"all {len(gates) - counts['skipped']} gate checks passed{skipped}"


def status(report: dict[str, Any]) -> str:
    """passed / failed / unreliable, from the gates."""
    outcomes = {outcome(g) for g in report["gates"]}
    return "failed" if "fail" in outcomes else "unreliable" if "unreliable" in outcomes else "passed"


def verdict_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per artifact: the three answers, each with the numbers behind it."""
    rows = []
    for verdict in report.get("verdicts") or verdicts(report):
        row = {"artifact": verdict["artifact"]}
        for key, question in QUESTIONS.items():
            row[question] = f"{verdict[key]['answer']} ({verdict[key]['detail']})"
        rows.append(row)
    return rows


def notes(report: dict[str, Any]) -> list[str]:
    """The platform and provenance notes, one line each."""
    return [n["text"] for n in report.get("notes", [])]


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


# -- JUnit ------------------------------------------------------------------------------------

def render_junit(report: dict[str, Any]) -> str:
    """One testcase per gate check: a failing check carries a <failure>, an unreliable one an
    <error type="GateUnreliable"> (not decided: retry), a skipped one <skipped> with the reason.
    Status, verdicts and notes are properties and the suite's system-out."""
    gates = report["gates"]
    counts = {name: sum(outcome(g) == name for g in gates) for name in ("fail", "unreliable", "skipped")}
    seconds = f"{report['settings']['seconds']:.3f}"
    root = ET.Element("testsuites", name="vitedge bench", tests=str(len(gates)), failures=str(counts["fail"]),
                      errors=str(counts["unreliable"]), time=seconds)
    suite = ET.SubElement(root, "testsuite", name="vitedge.bench.gates", tests=str(len(gates)),
                          failures=str(counts["fail"]), errors=str(counts["unreliable"]),
                          skipped=str(counts["skipped"]), time=seconds, timestamp=report["created"])
    props = ET.SubElement(suite, "properties")
    for name, value in (("status", status(report)), ("reference", report["reference"]["source"]),
                        ("data", report["data"]["source"]), ("samples", report["data"]["samples"]),
                        ("batches", ",".join(map(str, report["settings"]["batches"]))),
                        ("device", report["settings"]["device"]), ("threads", report["settings"]["threads"]),
                        ("vitedge_version", report["vitedge_version"])):
        ET.SubElement(props, "property", name=name, value=str(value))
    for verdict in report.get("verdicts") or verdicts(report):
        ET.SubElement(props, "property", name=f"verdict {verdict['artifact']}",
                      value="; ".join(f"{q} {verdict[k]['answer']}" for k, q in QUESTIONS.items()))
    for line in notes(report):
        ET.SubElement(props, "property", name="note", value=line)
    for gate in gates:
        where = gate["artifact"] + (f" @b{gate['batch']}" if gate["batch"] is not None else "")
        case = ET.SubElement(suite, "testcase", classname=f"vitedge.bench.{gate['artifact']}",
                             name=f"{gate['gate']} [{where}]", time="0")
        result = outcome(gate)
        if result == "fail":
            failure = ET.SubElement(case, "failure", message=gate["message"], type="GateFailed")
            failure.text = f"gate {gate['gate']}: {gate['message']}"
        elif result == "unreliable":
            error = ET.SubElement(case, "error", message=gate["message"], type="GateUnreliable")
            error.text = f"gate {gate['gate']} could not be decided (exit code 5, retry): {gate['message']}"
        elif result == "skipped":
            ET.SubElement(case, "skipped", message=gate.get("reason") or gate["message"])
    out = ET.SubElement(suite, "system-out")
    out.text = "\n".join([f"status: {status(report)}", *(f"note: {line}" for line in notes(report)),
                          *(" | ".join(row.values()) for row in verdict_rows(report))])
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


_MD_MARKS = {"pass": "✅", "fail": "❌", "unreliable": "⚠️ unreliable", "skipped": "⏭️ skipped"}


def render_markdown(report: dict[str, Any]) -> str:
    """A summary for a pull-request comment: status, verdicts, notes, table, gates, details folded."""
    failed = [g for g in report["gates"] if outcome(g) == "fail"]
    unreliable = [g for g in report["gates"] if outcome(g) == "unreliable"]
    icon = "❌" if failed else "⚠️" if unreliable else "✅"
    lines = [f"## {icon} vitedge bench: {headline(report)}", ""]
    lines += _md_table(verdict_rows(report))
    lines += [""] + [f"> **Note:** {line}  " for line in notes(report)] + ([""] if notes(report) else [])
    lines += [settings_line(report) + ".", ""]
    lines += _md_table(summary_rows(report))
    if report.get("yardsticks"):
        lines += ["", "### Against what you get without vitedge (yardstick p50 / artifact p50, > 1 is faster)", ""]
        lines += _md_table(yardstick_rows(report))
        lines += [""] + [f"- **{y['name']}**: {y['note']} (ran {y['runtime'].get('precision_run')})"
                         for y in report["yardsticks"]]
    if failed:
        lines += ["", "### Failed gates", ""]
        lines += [f"- `{g['gate']}`: {g['message']}" for g in failed]
    if unreliable:
        lines += ["", "### Unreliable gates (exit code 5: retry on a quiet machine)", ""]
        lines += [f"- `{g['gate']}`: {g['message']}" for g in unreliable]
    if report["gates"]:
        lines += ["", f"<details><summary>All gate checks ({len(report['gates'])})</summary>", ""]
        lines += _md_table([{"": _MD_MARKS[outcome(g)], "gate": f"`{g['gate']}`",
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


def yardstick_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per artifact and batch: its speed as a ratio to each yardstick, with the 95% interval."""
    rows = []
    for entry in report["artifacts"]:
        by_batch: dict[int, dict[str, str]] = {}
        for r in entry.get("vs_yardsticks", []):
            low, high = r["ratio_p50_ci"]
            by_batch.setdefault(r["batch"], {"artifact": entry["name"], "batch": str(r["batch"])})[
                r["yardstick"]] = f"{r['ratio_p50']:.2f}x [{low:.2f}, {high:.2f}]"
        rows += [by_batch[b] for b in sorted(by_batch)]
    return rows


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
            ci = lat.get("speedup_p50_ci")
            rows.append({"artifact": entry["name"], "batch": str(b),
                         **{k: fmt(lat[k], 3) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms")},
                         "p90/p50": fmt(lat.get("p90_p50"), 3), "CV": fmt(lat.get("cv"), 3),
                         "images/s": fmt(lat["throughput"], 4),
                         "speedup p50": fmt(lat.get("speedup_p50"), 3),
                         "95% CI": f"{ci[0]:.3g}–{ci[1]:.3g}" if ci and None not in ci else "-",
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
    load = report.get("load")
    loaded = (f" Other processes used {load['share']:.0%} of the CPU while bench timed."
              if load is not None else "")
    return (f"<sub>CPU {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['isa']) or 'no AVX2+'}); "
            f"GPU {gpus}; {tools}. {report['reference']['note']}{loaded}</sub>")
