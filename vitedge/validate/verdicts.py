"""One verdict per artifact, the answer a reader wants first: still accurate? faster?

Computed from the report dict alone (the paired latency samples are in it), so every report
format, `vitedge tune` and old report.json files give the same answers. Each question is
answered yes / no / unreliable, or n/a / not gated with the reason:

- accurate: the accuracy and drift gates on this artifact (no such gate: "not gated").
- faster than FP32 of the same backend: the p50 ratio FP32 / this, per batch, with its paired
  bootstrap confidence interval; "yes" when the whole interval is above 1, "no" when it is
  below, "unreliable" when it straddles 1 or outside load was detected.
- faster than the reference: the same against the PyTorch FP32 reference.
"""

from __future__ import annotations

from typing import Any

from vitedge.validate.gates import METRICS, PER_BATCH
from vitedge.validate.latency import ratio_interval

ANSWERS = ("yes", "no", "unreliable", "n/a", "not gated")
QUESTIONS = {"accurate": "accurate?", "faster_than_fp32": "faster than FP32 (same backend)?",
             "faster_than_reference": "faster than the reference?"}


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per artifact: {"artifact", "accurate", "faster_than_fp32", "faster_than_reference"}, each
    {"answer", "detail"} (speed answers also carry "batches": ratio and interval per batch)."""
    loaded = bool(report.get("load", {}).get("detected"))
    out = []
    for entry in report["artifacts"]:
        fp32 = next((a for a in report["artifacts"] if a is not entry and a["backend"] == entry["backend"]
                     and a["precision"] == "fp32"), None)
        if entry["precision"] == "fp32":
            vs_fp32 = {"answer": "n/a", "detail": "is FP32", "batches": []}
        elif fp32 is None:
            vs_fp32 = {"answer": "n/a", "detail": f"no FP32 {entry['backend']} artifact benched", "batches": []}
        else:
            vs_fp32 = _faster(entry, fp32, fp32["name"], loaded)
        out.append({"artifact": entry["name"], "accurate": _accurate(report, entry),
                    "faster_than_fp32": vs_fp32,
                    "faster_than_reference": _faster(entry, report["reference"], "the reference", loaded)})
    return out


def _accurate(report: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    drift = entry["drift"]
    numbers = f"top-1 agreement {drift['top1_agreement']:.4f}"
    if "acc_drop" in drift:
        numbers += f", acc drop {drift['acc_drop']:+.4f}"
    gates = [g for g in report["gates"] if g["artifact"] == entry["name"] and outcome(g) != "skipped"
             and METRICS[g["metric"]].group not in PER_BATCH]
    if not gates:
        return {"answer": "not gated", "detail": numbers}
    failed = [g["gate"] for g in gates if outcome(g) == "fail"]
    if failed:
        return {"answer": "no", "detail": f"{numbers}; fails {', '.join(dict.fromkeys(failed))}"}
    return {"answer": "yes", "detail": f"{numbers}; meets {', '.join(dict.fromkeys(g['gate'] for g in gates))}"}


def outcome(gate: dict[str, Any]) -> str:
    """A gate result's outcome (reports written before outcomes existed have only `passed`)."""
    return gate.get("outcome") or ("pass" if gate["passed"] else "fail")


def _samples(entry: dict[str, Any]) -> dict[int, list[float]]:
    return {r["batch"]: r["samples_ms"] for r in entry["latency"] if r.get("measured") and r.get("samples_ms")}


def _faster(entry: dict[str, Any], other: dict[str, Any], other_name: str, loaded: bool) -> dict[str, Any]:
    """Is ENTRY faster than OTHER? p50 ratio other / entry per batch, on rounds they shared."""
    mine, theirs = _samples(entry), _samples(other)
    batches = []
    for batch in sorted(set(mine) & set(theirs)):
        if len(mine[batch]) != len(theirs[batch]):
            continue  # not from the same interleaved rounds
        ratio = _p50(theirs[batch]) / _p50(mine[batch])
        low, high = ratio_interval(theirs[batch], mine[batch])
        answer = "unreliable" if loaded or low <= 1.0 <= high else ("yes" if low > 1.0 else "no")
        batches.append({"batch": batch, "ratio": ratio, "interval": [low, high], "answer": answer})
    if not batches:
        return {"answer": "n/a", "detail": f"no batch timed together with {other_name}", "batches": []}
    answers = {b["answer"] for b in batches}
    answer = "no" if "no" in answers else ("yes" if answers == {"yes"} else "unreliable")
    detail = "; ".join(f"b{b['batch']} {b['ratio']:.2f}x [{b['interval'][0]:.2f}, {b['interval'][1]:.2f}]"
                       for b in batches)
    if loaded:
        detail += " (outside load)"
    return {"answer": answer, "detail": f"{detail} vs {other_name}", "batches": batches}


def _p50(samples: list[float]) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(samples, dtype=np.float64), 50))
