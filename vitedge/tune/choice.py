"""The choice: each candidate's numbers and gate results read from the bench report, gates that
cannot be checked (they name a candidate that was not built), the score, the fastest candidate
that passes, why, and OUT/best/ plus the HTML report's tune section."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from vitedge.fsutil import (
    atomic_dir,
    write_text_atomic,
)
from vitedge.manifest import Manifest
from vitedge.tune.candidates import Candidate
from vitedge.tune.files import BEST_DIR, CANDIDATES_DIR


def read_outcomes(report: dict[str, Any], candidates: list[Candidate]) -> None:
    """Copy each candidate's numbers and gate results from the bench report (the one place
    that reads the report's layout)."""
    entries = {Path(a["source"]).name: a for a in report["artifacts"]}
    for candidate in candidates:
        entry = entries[candidate.name]
        checks = [g for g in report["gates"] if g["artifact"] == entry["name"]]
        failed = [g["message"] for g in checks if g.get("outcome", "pass" if g["passed"] else "fail") == "fail"]
        unreliable = [g["message"] for g in checks if g.get("outcome") == "unreliable"]
        rows = [r for r in entry["latency"] if r["measured"]]
        drift = entry.get("drift", {})
        candidate.status = "benched"
        run = entry.get("runtime", {}).get("precision_run") or candidate.precision_run
        candidate.precision_run = f"int8, float parts {run}" if candidate.precision == "int8" and run != "int8" else run
        candidate.result = {
            "passed": not failed and not unreliable, "failed_gates": failed, "unreliable": unreliable,
            "p50_ms": {str(r["batch"]): r["p50_ms"] for r in rows},
            "reference_p50_ms": {str(r["batch"]): r["p50_ms"] for r in report["reference"]["latency"]
                                 if r["measured"]},
            "speedup_p50": {str(r["batch"]): r.get("speedup_p50") for r in rows},
            "throughput": {str(r["batch"]): r.get("throughput") for r in rows},
            "acc_drop": drift.get("acc_drop"), "top1_agreement": drift.get("top1_agreement"),
            "size_mb": entry.get("size_mb"),
        }
        candidate.reason = ("passes every gate" if not failed and not unreliable
                            else f"fails {len(failed)} gate check(s): {failed[0]}" if failed
                            else f"{len(unreliable)} speed check(s) undecided (unreliable): {unreliable[0]}")


def split_gates(gates: list[str], parsed: list[Any], candidates: list[Candidate],
                ) -> tuple[list[str], list[dict[str, Any]]]:
    """The gates bench can check, and those naming a candidate that was not built (budget spent,
    build failed, a skipped duplicate), each with why and the built candidates it was about."""
    from vitedge.validate.gates import REFERENCE, Operand

    by_name = {c.name: c for c in candidates}
    checkable, unchecked = [], []
    for text, gate in zip(gates, parsed, strict=True):
        operands = [o for o in (gate.left, gate.right) if isinstance(o, Operand) and o.subject is not None]
        missing = [o.subject for o in operands if o.subject not in (REFERENCE, "pytorch")
                   and (by_name.get(o.subject) is None or by_name[o.subject].status != "planned")]
        if not missing:
            checkable.append(text)
            continue
        reason = "; ".join(f"{name} was not benched ({by_name[name].status}: {by_name[name].reason})"
                           if name in by_name else f"{name} was not benched" for name in missing)
        about = [o.subject for o in operands if o.subject not in missing and o.subject not in (REFERENCE, "pytorch")]
        unchecked.append({"gate": text, "reason": reason, "blocks": about})
    return checkable, unchecked


def fail_uncheckable(unchecked: list[dict[str, Any]], built: list[Candidate]) -> None:
    """A built candidate whose gate compares it with one that was not built cannot pass that gate."""
    for entry in unchecked:
        for candidate in built:
            if candidate.name in entry["blocks"]:
                message = f"{entry['gate']}: not checked, {entry['reason']}"
                candidate.result["passed"] = False
                candidate.result.setdefault("failed_gates", []).append(message)
                candidate.reason = f"cannot pass gate {message}"


def score(candidate: Candidate | dict[str, Any]) -> float:
    """Geometric mean over the batch sizes of the p50 speedup over the reference (same run)."""
    result = candidate.result if isinstance(candidate, Candidate) else candidate.get("result", {})
    speedups = [v for v in result.get("speedup_p50", {}).values() if v]
    return math.exp(sum(math.log(v) for v in speedups) / len(speedups)) if speedups else 0.0


def choose(candidates: list[Candidate]) -> Candidate | None:
    """The fastest candidate that passes every gate (ties: the smaller artifact)."""
    passing = [c for c in candidates if c.status == "benched" and c.result.get("passed")]
    if not passing:
        return None
    return max(passing, key=lambda c: (score(c), -(c.result.get("size_mb") or 0.0)))


def why_chosen(chosen: Candidate | None, built: list[Candidate]) -> str:
    if chosen is None:
        return "no candidate passes every gate"
    passing = sorted((c for c in built if c.result.get("passed")), key=score, reverse=True)
    faster = [c for c in built if score(c) > score(chosen) and not c.result.get("passed")]
    text = (f"{chosen.name} is the fastest of {len(passing)} candidate(s) that pass every gate: "
            f"{score(chosen):.2f}x the PyTorch FP32 p50 (geometric mean over batches)")
    if len(passing) > 1:
        text += f"; next {passing[1].name} at {score(passing[1]):.2f}x"
    if faster:
        text += "; faster but failing: " + ", ".join(f"{c.name} ({score(c):.2f}x)" for c in faster)
    return text


def vs_yardsticks(report: dict[str, Any], chosen: Candidate | None) -> list[dict[str, Any]]:
    """The chosen artifact's speed as a ratio to each yardstick at each batch, with its interval."""
    if chosen is None:
        return []
    entry = next((a for a in report["artifacts"] if Path(a["source"]).name == chosen.name), {})
    return list(entry.get("vs_yardsticks", []))


def write_best(out: Path, chosen: Candidate, result: dict[str, Any]) -> None:
    """OUT/best/: a copy of the chosen artifact whose manifest says why it was chosen."""
    source = out / CANDIDATES_DIR / chosen.name
    with atomic_dir(out / BEST_DIR, kind="compiled", force=True) as tmp:  # keeps files vitedge did not write
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        manifest = Manifest.load(tmp)
        manifest["tune"] = {"chosen": chosen.name, "why": result["why"], "gates": result["gates"],
                            "created": result["created"], **{k: chosen.result[k] for k in (
                                "p50_ms", "speedup_p50", "acc_drop", "top1_agreement")}}
        manifest.save(tmp)


def write_html(report: dict[str, Any], result: dict[str, Any], report_dir: Path) -> None:
    """report.html again, with the tune section (Pareto plot per batch) after the summary."""
    from vitedge.validate.pareto import tune_section
    from vitedge.validate.report_html import render_html

    write_text_atomic(report_dir / "report.html", render_html(report, sections=[tune_section(report, result)]))
