"""Bench reports: report.json against its JSON Schema, JUnit through an XML parser, Markdown, HTML."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from vitedge.errors import GateFailed
from vitedge.validate.bench import run_bench
from vitedge.validate.metrics import per_class_drift, worst_disagreements
from vitedge.validate.reports import load_schema

GATES = ["top1_agreement>=0.99", "export:max_abs_err<=1e-4", "faster(export, reference)@b1",
         "reference:top1_acc>=0.5"]


def biased_copy(export: Path, dst: Path, bias: float) -> Path:
    """A copy of the export whose classifier favours class 0: a broken artifact bench must catch."""
    import onnx
    from onnx import numpy_helper

    from vitedge.manifest import Manifest

    shutil.copytree(export, dst)
    model = onnx.load(str(dst / "model.onnx"))
    init = next(i for i in model.graph.initializer if i.name == "head.bias")
    values = numpy_helper.to_array(init).copy()
    values[0] += bias
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(dst / "model.onnx"))
    Manifest.load(dst).save(dst)  # re-hash: it is a valid artifact, just a worse one
    return dst


@pytest.fixture(scope="module")
def bench_run(demo_export: Path, digits_val: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[dict[str, Any], Path, str]:
    """One bench of the export and a biased copy, with one gate that passes and some that fail."""
    root = tmp_path_factory.mktemp("reports")
    broken = biased_copy(demo_export, root / "biased", bias=4.0)
    report_dir = root / "report"
    with pytest.raises(GateFailed) as info:
        run_bench([demo_export, broken], reference=demo_export, data=digits_val, batches=[1, 4],
                  gates=GATES, report_dir=report_dir, max_images=120, warmup=1, iters=4, worst=5)
    return json.loads((report_dir / "report.json").read_text()), report_dir, str(info.value)


def test_report_json_validates_against_its_schema(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    report, report_dir, _ = bench_run
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(report, schema, format_checker=jsonschema.FormatChecker())
    assert report["schema_version"] == 1 and report["status"] == "failed"
    broken = next(a for a in report["artifacts"] if a["name"] == "biased")
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict enough to catch drift
        jsonschema.validate({**report, "artifacts": [{**broken, "drift": {}}]}, schema)
    assert report["files"]["json"] == str(report_dir / "report.json")


def test_broken_artifact_shows_up_in_drift(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    report, _, message = bench_run
    export, broken = report["artifacts"]
    assert export["drift"]["top1_agreement"] == 1.0 and broken["drift"]["top1_agreement"] < 0.99
    assert broken["drift"]["acc_delta"] < 0 and broken["drift"]["kl_mean"] > 0
    wrong = 120 * (1 - broken["drift"]["top1_agreement"])
    assert len(broken["worst"]) == min(5, round(wrong))
    assert all(w["pred"] == "0" and w["ref_pred"] != "0" for w in broken["worst"])
    kls = [w["kl"] for w in broken["worst"]]
    assert kls == sorted(kls, reverse=True)
    assert broken["worst"][0]["file"].count("/") == 1  # relative to the data folder: class/file.png
    class0 = next(r for r in broken["per_class"] if r["class"] == 0)
    assert class0["delta"] >= 0 and min(r["delta"] for r in broken["per_class"]) < 0
    assert "biased: top1_agreement = " in message and "needs >= 0.99" in message


def test_gate_results_in_report(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    report, _, _ = bench_run
    by_gate: dict[str, list[dict[str, Any]]] = {}
    for gate in report["gates"]:
        by_gate.setdefault(gate["gate"], []).append(gate)
    assert [g["artifact"] for g in by_gate["top1_agreement>=0.99"]] == ["export", "biased"]
    assert [g["passed"] for g in by_gate["top1_agreement>=0.99"]] == [True, False]
    (order,) = by_gate["faster(export, reference)@b1"]
    assert order["other"] == {"artifact": "reference", "metric": "p50_ms", "batch": 1}
    assert order["value"] is not None and order["bound"] is not None
    (ref,) = by_gate["reference:top1_acc>=0.5"]
    assert ref["passed"] and ref["value"] == report["reference"]["accuracy"]["top1_acc"]


def test_junit_has_one_testcase_per_gate_check(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    report, report_dir, _ = bench_run
    root = ET.parse(report_dir / "report.xml").getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    failed = [g for g in report["gates"] if g["outcome"] == "fail"]
    unreliable = [g for g in report["gates"] if g["outcome"] == "unreliable"]  # the speed gate, on a busy machine
    assert len(cases) == len(report["gates"]) == int(suite.get("tests"))
    assert int(suite.get("failures")) == len(failed) == int(root.get("failures"))
    assert int(suite.get("errors")) == len(unreliable) == len([c for c in cases if c.find("error") is not None])
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(failures) == len(failed)
    first = failures[0]
    assert first.get("classname") == f"vitedge.bench.{failed[0]['artifact']}"
    assert first.find("failure").get("message") == failed[0]["message"]
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["batches"] == "1,4" and props["samples"] == "120"


def test_markdown_summary_for_a_pr_comment(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    report, report_dir, _ = bench_run
    md = (report_dir / "report.md").read_text()
    failed = sum(g["outcome"] == "fail" for g in report["gates"])
    assert md.startswith(f"## ❌ vitedge bench: {failed} of {len(report['gates'])} gate checks failed")
    header = next(line for line in md.splitlines() if line.startswith("| artifact | target"))
    assert header.split("|")[1:-1] == [f" {c} " for c in (
        "artifact", "target", "precision", "top-1 agree", "acc Δ", "p50 ms b1", "p50 ms b4",
        "speedup b1", "speedup b4", "size MB")]
    assert "### Failed gates" in md and "- `top1_agreement>=0.99`: biased: top1_agreement = " in md
    assert "<details><summary>Worst disagreements</summary>" in md
    assert "ran on the CPU" not in md  # only said when the reference ran on a GPU


def test_cpu_candidates_of_a_gpu_bench_are_called_out(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    from vitedge.validate.reports import settings_line

    report, _, _ = bench_run
    as_if_gpu = {**report, "settings": {**report["settings"], "device": "cuda"}}
    names = ", ".join(a["name"] for a in report["artifacts"])
    assert settings_line(as_if_gpu).endswith(f"; {names} ran on the CPU, so their speedups compare a CPU "
                                             "runtime with the GPU reference")


def test_html_is_self_contained(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    _, report_dir, _ = bench_run
    html = (report_dir / "report.html").read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "Content-Security-Policy" in html
    assert html.count("<figure class='plot'") == 2 + 1 + 2  # latency b1, b4; accuracy-speed; per class x2
    assert html.count("<svg") == 5 and "data-status='fail'" in html


def test_worst_disagreements_and_per_class_drift_on_known_logits() -> None:
    ref = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]])
    cand = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 3.0], [0.0, 4.0, 0.0]])
    labels = np.array([0, 1, 2, 1])
    worst = worst_disagreements(ref, cand, ["a", "b", "c", "d"], labels, ["x", "y", "z"], k=5)
    assert [(w["file"], w["ref_pred"], w["pred"], w["label"]) for w in worst] == [
        ("d", "x", "y", "y"), ("b", "y", "z", "y")]
    rows = per_class_drift(ref, cand, labels, ["x", "y", "z"])
    assert [(r["name"], r["count"], r["agreement"], r["ref_acc"], r["acc"], r["delta"]) for r in rows] == [
        ("x", 1, 1.0, 1.0, 1.0, 0.0), ("y", 2, 0.0, 0.5, 0.5, 0.0), ("z", 1, 1.0, 1.0, 1.0, 0.0)]
    unlabelled = per_class_drift(ref, cand, None, ["x", "y", "z"])
    assert [(r["name"], r["count"], r["agreement"]) for r in unlabelled] == [
        ("x", 2, 0.5), ("y", 1, 0.0), ("z", 1, 1.0)]


def _with_int8(report: dict[str, Any], factor: float, load: bool = False) -> dict[str, Any]:
    """The bench report plus a synthetic INT8 twin of the export whose every timed run took
    FACTOR times the export's (same rounds), for the verdict logic; `load` marks outside load."""
    import copy

    out = copy.deepcopy(report)
    export = next(a for a in out["artifacts"] if a["name"] == "export")
    int8 = {**copy.deepcopy(export), "name": "export-int8", "precision": "int8"}
    for row in int8["latency"]:
        row["samples_ms"] = [v * factor for v in row["samples_ms"]]
        row["p50_ms"] *= factor
    out["artifacts"].append(int8)
    out["load"] = {**out["load"], "detected": load}
    out.pop("verdicts", None)
    return out


def test_verdict_says_plainly_whether_int8_is_faster_than_fp32(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    """The quickstart once said "all gate checks passed" while INT8 was slower than FP32: the
    verdict table now answers that question for every artifact."""
    from vitedge.validate.verdicts import verdicts

    report, _, _ = bench_run
    slower = {v["artifact"]: v for v in verdicts(_with_int8(report, 1.3))}
    assert slower["export-int8"]["faster_than_fp32"]["answer"] == "no"
    assert [b["ratio"] for b in slower["export-int8"]["faster_than_fp32"]["batches"]] == pytest.approx([1 / 1.3] * 2)
    assert slower["export"]["faster_than_fp32"] == {"answer": "n/a", "detail": "is FP32", "batches": []}
    assert slower["export"]["accurate"]["answer"] == "yes" and slower["biased"]["accurate"]["answer"] == "no"
    faster = {v["artifact"]: v for v in verdicts(_with_int8(report, 0.5))}
    assert faster["export-int8"]["faster_than_fp32"]["answer"] == "yes"
    loaded = {v["artifact"]: v for v in verdicts(_with_int8(report, 0.5, load=True))}
    assert loaded["export-int8"]["faster_than_fp32"]["answer"] == "unreliable"
    assert "(outside load)" in loaded["export-int8"]["faster_than_fp32"]["detail"]


def test_unreliable_skipped_verdicts_and_notes_in_every_format(bench_run: tuple[dict[str, Any], Path, str],
                                                              tmp_path: Path) -> None:
    import copy

    from vitedge.validate.report_files import write_reports
    from vitedge.validate.reports import render_junit, render_markdown
    from vitedge.validate.verdicts import verdicts

    report, _, _ = bench_run
    report = _with_int8(report, 1.3)
    report["verdicts"] = verdicts(report)
    report["gates"] = copy.deepcopy(report["gates"][:1]) + [
        {**report["gates"][0], "gate": "speedup_p50>=1", "metric": "speedup_p50", "batch": 1, "outcome": "unreliable",
         "passed": False, "interval": [0.8, 1.3], "reason": "straddles", "message": "export: unsure"},
        {**report["gates"][0], "gate": "faster(a, b) if vnni", "outcome": "skipped", "passed": False,
         "reason": "this CPU has no VNNI/AMX", "message": "export: skipped, this CPU has no VNNI/AMX"}]
    report["gates"][0].update(outcome="pass", passed=True)
    report["notes"] = [{"kind": "no-int8-instructions", "text": "this CPU has no VNNI/AMX INT8 instructions"}]
    report["status"] = "unreliable"
    jsonschema.validate(report, load_schema())
    md = render_markdown(report)
    assert md.startswith("## ⚠️ vitedge bench: 1 of 3 gate checks unreliable, none failed (1 skipped)")
    assert md.index("| artifact | accurate? | faster than FP32 (same backend)? | faster than the reference? |") \
        < md.index("| artifact | target")  # the verdicts come first
    assert "| export-int8 | " in md and "| no (b1 0.77x" in md and "> **Note:** this CPU has no VNNI/AMX" in md
    assert "### Unreliable gates (exit code 5" in md and "⏭️ skipped" in md
    suite = ET.fromstring(render_junit(report)).find("testsuite")
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("0", "1", "1")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["status"] == "unreliable" and props["note"] == "this CPU has no VNNI/AMX INT8 instructions"
    assert props["verdict export-int8"].startswith("accurate? not gated; faster than FP32 (same backend)? no")
    (error,) = [c.find("error") for c in suite.findall("testcase") if c.find("error") is not None]
    assert error.get("type") == "GateUnreliable"
    files = write_reports(report, tmp_path / "r")
    html = Path(files["html"]).read_text()
    assert "data-status='unreliable'" in html and "<h2>Verdicts</h2>" in html
    assert html.index("<h2>Verdicts</h2>") < html.index("<h2>Summary</h2>")
    assert "<td class='unreliable-text'>UNRELIABLE</td>" in html and "class='note'" in html
