"""`vitedge tune` on the demo: candidate pruning, gate filtering, choice, resumability, Pareto plot.

The end-to-end runs use real ONNX Runtime, OpenVINO and NNCF builds of demo:digits (a trained
model, so accuracy gates mean something), a small validation subset and few timed runs.
"""

from __future__ import annotations

import json
import os
import platform
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import vitedge
from vitedge.errors import BadInput
from vitedge.tune import (
    Candidate,
    DeviceFacts,
    block_sensitivity,
    choose,
    keep_float_variants,
    knob_set,
    plan_candidates,
    repeats_its_base,
    repeats_its_base_at_runtime,
    score,
    skip_duplicates,
    smoothquant_alpha_variants,
    throughput_variants,
    tune,
)
from vitedge.validate.pareto import Point, Threshold, pareto_front, pareto_plot, thresholds

AVX2_ONLY = DeviceFacts("AVX2 CPU", ("AVX2",), bf16=False, fp16=False, cuda=False,
                        unavailable={"tensorrt": "TensorRT is not installed"})
AMX_XEON = DeviceFacts("Xeon", ("AVX2", "AVX-512", "AMX"), bf16=True, fp16=False, cuda=True,
                       unavailable={"tensorrt": "TensorRT is not installed"})
SMALL = dict(max_images=60, warmup=1, iters=5, batches=[1, 4])


def _by_name(candidates: list[Candidate]) -> dict[str, Candidate]:
    return {c.name: c for c in candidates}


# -- candidate pruning ------------------------------------------------------------------------

def test_pruning_says_why_each_candidate_is_skipped_on_an_avx2_cpu() -> None:
    plan = _by_name(plan_candidates(["onnxruntime", "openvino", "tensorrt"], None, calib=False, device=AVX2_ONLY))

    assert [c.name for c in plan.values() if c.status == "planned"] == ["onnxruntime-fp32", "openvino-fp32"]
    assert "needs --calib" in plan["onnxruntime-int8"].reason and "needs --calib" in plan["openvino-int8"].reason
    assert "no bf16 arithmetic" in plan["openvino-bf16"].reason and "like openvino-fp32" in plan["openvino-bf16"].reason
    assert "only store the weights in FP16" in plan["openvino-fp16"].reason
    assert plan["tensorrt-fp16"].reason == "tensorrt cannot run here: TensorRT is not installed"
    # fp32 first per target: the baseline is built before any budget runs out
    assert list(plan)[:4] == ["onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-bf16"]


def test_pruning_on_a_bf16_cpu_keeps_bf16_and_names_what_fp16_would_repeat() -> None:
    plan = _by_name(plan_candidates(["openvino", "onnxruntime"], ["fp32", "fp16", "bf16", "int8"], calib=True,
                                    device=AMX_XEON))

    assert {n for n, c in plan.items() if c.status == "planned"} == {
        "openvino-fp32", "openvino-bf16", "openvino-int8", "onnxruntime-fp32", "onnxruntime-int8"}
    assert "openvino-bf16 is that candidate" in plan["openvino-fp16"].reason
    assert plan["onnxruntime-bf16"].reason == "onnxruntime has no bf16 (it offers fp32, int8)"
    with_fp16 = DeviceFacts("Xeon 6", ("AMX",), bf16=True, fp16=True, cuda=False)
    assert _by_name(plan_candidates(["openvino"], ["fp16"], calib=False, device=with_fp16))[
        "openvino-fp16"].status == "planned"


def test_keep_float_variants_take_the_most_sensitive_blocks() -> None:
    sensitivity = [{"block": f"blocks.{i}", "modules": [f"blocks.{i}.attn.qkv", f"blocks.{i}.mlp.fc1"],
                    "kl_mean": kl} for i, kl in [(7, 0.3), (2, 0.2), (0, 0.1)] + [(i, 0.01) for i in (1, 3, 4, 5, 6, 8,
                                                                                            9, 10, 11)]]
    base = plan_candidates(["openvino", "onnxruntime"], ["fp32", "int8"], calib=True, device=AVX2_ONLY)
    variants = keep_float_variants(base, sensitivity)

    assert [v.name for v in variants] == ["openvino-int8-float-blocks7-blocks2",
                                          "onnxruntime-int8-float-blocks7-blocks2"]
    assert variants[0].extra["ignored_scope"] == ["blocks.2.attn.qkv", "blocks.2.mlp.fc1", "blocks.7.attn.qkv",
                                                  "blocks.7.mlp.fc1"]
    assert keep_float_variants(base, sensitivity[:1]) == []  # one block: nothing to choose between


def test_alpha_and_throughput_variants_have_distinct_names_and_duplicates_are_skipped() -> None:
    base = plan_candidates(["openvino", "onnxruntime"], ["fp32", "int8"], calib=True, device=AVX2_ONLY)
    alphas = smoothquant_alpha_variants(base)
    assert [(v.name, v.base, v.extra) for v in alphas] == [
        ("openvino-int8-alpha075", "openvino-int8", {"smoothquant_alpha": 0.75}),
        ("onnxruntime-int8-alpha075", "onnxruntime-int8", {"smoothquant_alpha": 0.75})]
    assert "0.75 instead of 0.5" in alphas[1].knob and "NNCF's SmoothQuant runs" in alphas[0].knob
    fast = throughput_variants(base, [1, 8])
    assert [(v.name, v.status, v.extra) for v in fast] == [
        ("openvino-fp32-throughput", "planned", {"hint": "throughput"}),
        ("openvino-int8-throughput", "planned", {"hint": "throughput"})]
    only_b1 = throughput_variants(base, [1])
    assert all(v.status == "skipped" and "every benched batch is 1" in v.reason for v in only_b1)
    assert throughput_variants(fast, [8]) == []  # already in throughput mode
    floats = keep_float_variants(base, [{"block": f"blocks.{i}", "modules": [f"blocks.{i}.mlp.fc1"]} for i in (1, 0)])
    everything = base + floats + alphas + fast
    names = [c.name for c in everything]
    assert len(set(names)) == len(names)

    again = Candidate("openvino-int8-tput", "openvino", "int8", {"hint": "throughput"})
    skip_duplicates([*everything, again])
    assert again.status == "skipped" and again.reason == ("the same target, precision and options as "
                                                          "openvino-int8-throughput")
    assert all(c.status == "planned" for c in everything if c.precision == "int8")
    assert knob_set(True) == {"keep_float", "smoothquant_alpha", "throughput", "amx"} and knob_set(False) == set()
    with pytest.raises(BadInput, match="unknown knob"):
        knob_set(["streams"])


def test_knob_variants_that_would_run_like_their_base_are_named() -> None:
    from vitedge.manifest import Manifest

    alpha = smoothquant_alpha_variants(plan_candidates(["onnxruntime"], ["int8"], calib=True, device=AVX2_ONLY))[0]
    no_outliers = Manifest(artifact={"smoothquant": {"alpha": 0.5, "outlier_ratio": 16.0, "migrated": []}})
    assert "migrated none" in repeats_its_base(alpha, no_outliers) and "exactly onnxruntime-int8" in \
        repeats_its_base(alpha, no_outliers)
    migrated = Manifest(artifact={"smoothquant": {"alpha": 0.5, "outlier_ratio": 16.0,
                                                  "migrated": [{"layernorm": "ln1"}]}})
    assert repeats_its_base(alpha, migrated) == ""
    nncf = Manifest(artifact={**no_outliers["artifact"], "int8_scheme": {"model_type": "TRANSFORMER"}})
    assert repeats_its_base(alpha, nncf) == ""  # the alpha turns NNCF's SmoothQuant on there

    (fast,) = throughput_variants(plan_candidates(["openvino"], ["fp32"], calib=False, device=AVX2_ONLY), [1, 8])

    def runs(streams: int) -> Manifest:
        return Manifest(runtime={"resolved_at_build": {"streams": streams, "threads": 2}})
    assert "1 stream(s) of 2 thread(s)" in repeats_its_base_at_runtime(fast, runs(1), runs(1))
    assert repeats_its_base_at_runtime(fast, runs(2), runs(1)) == ""


# -- choice -----------------------------------------------------------------------------------

def _benched(name: str, speedups: dict[str, float], passed: bool, size_mb: float = 1.0) -> Candidate:
    return Candidate(name, "openvino", "int8", status="benched",
                     result={"speedup_p50": speedups, "passed": passed, "size_mb": size_mb})


def test_choice_is_the_fastest_candidate_that_passes_every_gate() -> None:
    fast_but_failing = _benched("a", {"1": 4.0, "8": 4.0}, passed=False)
    slow = _benched("b", {"1": 1.5, "8": 1.5}, passed=True)
    fast = _benched("c", {"1": 1.0, "8": 4.0}, passed=True)  # geometric mean 2.0 beats 1.5
    assert choose([fast_but_failing, slow, fast]) is fast
    assert score(fast) == pytest.approx(2.0)
    smaller = _benched("d", {"1": 2.0, "8": 2.0}, passed=True, size_mb=0.5)
    assert choose([fast, smaller]) is smaller  # same speed: the smaller artifact
    assert choose([fast_but_failing]) is None


def test_a_gate_comparing_with_an_unbuilt_candidate_cannot_pass() -> None:
    """faster(a, b) when b was not built: a cannot pass it (said why); gates about b alone are dropped."""
    from vitedge.tune import fail_uncheckable, split_gates
    from vitedge.validate.gates import parse_gate

    a = _benched("openvino-int8", {"1": 3.0}, passed=True)
    b = Candidate("openvino-fp32", "openvino", "fp32", status="budget", reason="not built: the budget was spent")
    a.status = "planned"  # built, about to be benched
    gates = ["acc_drop<=0.01", "faster(openvino-int8, openvino-fp32)@b1", "openvino-fp32:top1_agreement>=0.99"]
    checkable, unchecked = split_gates(gates, [parse_gate(g) for g in gates], [a, b])
    assert checkable == ["acc_drop<=0.01"]
    assert [u["blocks"] for u in unchecked] == [["openvino-int8"], []]
    assert all("openvino-fp32 was not benched (budget: not built" in u["reason"] for u in unchecked)
    a.status = "benched"
    fail_uncheckable(unchecked, [a])
    assert a.result["passed"] is False and choose([a]) is None
    assert a.reason.startswith("cannot pass gate faster(openvino-int8, openvino-fp32)@b1: not checked")


# -- per-block sensitivity --------------------------------------------------------------------

def test_block_sensitivity_ranks_the_demo_blocks_by_pytorch_module(demo_export: Path, demo_val_tensors) -> None:
    x = demo_val_tensors.x
    result = block_sensitivity(demo_export, x[:32], x[:64])

    assert sorted(r["block"] for r in result) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert [r["kl_mean"] for r in result] == sorted((r["kl_mean"] for r in result), reverse=True)
    assert all(r["kl_mean"] > 0 for r in result)  # INT8 rounding changes every block's output
    assert result[0]["modules"] == [f"{result[0]['block']}.{m}" for m in ("attn.qkv", "attn.proj", "mlp.fc1",
                                                                           "mlp.fc2")]


# -- end to end -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tuned(demo_export: Path, digits_val: Path, digits_calib: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two runs in one OUT: a budget that stops after the first build, then a full run that reuses it."""
    out = tmp_path_factory.mktemp("tune") / "out"
    common = dict(data=digits_val, calib=digits_calib, targets=["onnxruntime", "openvino"],
                  precisions=["fp32", "int8"], **SMALL)
    first = tune(demo_export, out, budget_minutes=1e-6, knobs=False,  # the second gate names an unbuilt one
                 gates=["acc_drop<=0.01", "openvino-int8:top1_agreement>=0.99"], **common)
    mtime = (out / "candidates" / "onnxruntime-fp32" / "model.onnx").stat().st_mtime_ns
    # size_mb<=1: the FP32 artifacts (about 1.3 MB) fail it, the INT8 ones (0.4-0.6 MB) pass
    second = tune(demo_export, out, gates=["acc_drop<=0.02", "size_mb<=1"], **common)
    return out, first, second, mtime


def test_budget_stops_with_the_best_so_far(tuned) -> None:
    out, first, _, _ = tuned
    status = {c["name"]: c["status"] for c in first["candidates"]}
    assert status == {"onnxruntime-fp32": "benched", "onnxruntime-int8": "budget", "openvino-fp32": "budget",
                      "openvino-int8": "budget"}
    assert first["chosen"] == "onnxruntime-fp32"
    assert first["gates"] == ["acc_drop<=0.01", "openvino-int8:top1_agreement>=0.99"]
    (unchecked,) = first["gates_not_checked"]  # its candidate was not built: said, not a bench refusal
    assert unchecked["gate"] == "openvino-int8:top1_agreement>=0.99" and unchecked["blocks"] == []
    assert unchecked["reason"].startswith("openvino-int8 was not benched (budget: not built")


def test_a_second_run_reuses_built_candidates(tuned) -> None:
    out, _, second, mtime = tuned
    assert (out / "candidates" / "onnxruntime-fp32" / "model.onnx").stat().st_mtime_ns == mtime
    steps = json.loads((out / "vitedge-run.json").read_text())["steps"]
    assert {"candidate onnxruntime-int8", "candidate openvino-int8", "sensitivity"} <= set(steps)
    assert {c["name"] for c in second["candidates"] if c["status"] == "benched"} >= {
        "onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8"}


def test_gates_filter_and_the_fastest_passing_candidate_is_chosen(tuned) -> None:
    out, _, second, _ = tuned
    benched = {c["name"]: c for c in second["candidates"] if c["status"] == "benched"}
    for name in ("onnxruntime-fp32", "openvino-fp32"):
        assert not benched[name]["result"]["passed"], name
        assert "size_mb" in benched[name]["reason"]
    passing = [c for c in benched.values() if c["result"]["passed"]]
    assert passing and all(c["precision"] == "int8" for c in passing)
    assert second["chosen"] == max(passing, key=score)["name"]
    # the keep-float variants come from the sensitivity ranking, with PyTorch module names
    variants = [c for c in second["candidates"] if "-float-" in c["name"]]
    assert len(variants) == 2 and all(m.startswith("blocks.") for m in variants[0]["extra"]["ignored_scope"])
    saved = json.loads((out / "tune.json").read_text())
    assert saved["chosen"] == second["chosen"] and saved["why"].startswith(second["chosen"])


def test_the_pick_is_stated_against_the_yardsticks(tuned) -> None:
    """By default tune also times OpenVINO's free default (and PyTorch bf16 on bf16 CPUs) and says how
    the pick compares, at each batch, with the interval."""
    out, _, second, _ = tuned
    assert "openvino-default" in second["yardsticks"]
    rows = second["chosen_vs_yardsticks"]
    assert {(r["yardstick"], r["batch"]) for r in rows} == {(y, b) for y in second["yardsticks"] for b in (1, 4)}
    assert all(r["ratio_p50_ci"][0] <= r["ratio_p50"] <= r["ratio_p50_ci"][1] for r in rows)
    assert "against what a user gets without vitedge" in second["why"] and "openvino-default at b4" in second["why"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert {y["name"] for y in report["yardsticks"]} == set(second["yardsticks"])


def test_knob_variants_are_benched_or_skipped_with_the_reason(tuned) -> None:
    out, _, second, _ = tuned
    variants = {c["name"]: c for c in second["candidates"] if c["base"]}
    assert second["knobs"] == ["keep_float", "smoothquant_alpha", "throughput", "amx"]
    amx = variants["openvino-int8-amx"]  # built and benched on CPUs with AMX, skipped with the reason elsewhere
    assert amx["status"] == "benched" if "AMX-INT8" in second["device"]["isa"] else "no AMX-INT8" in amx["reason"]
    # the demo's LayerNorm outputs have no outliers (test_outliers): ONNX Runtime's alpha would change nothing
    ort_alpha = variants["onnxruntime-int8-alpha075"]
    assert ort_alpha["status"] == "skipped" and "exactly onnxruntime-int8" in ort_alpha["reason"]
    assert not (out / "candidates" / "onnxruntime-int8-alpha075").exists()
    # OpenVINO's turns NNCF's SmoothQuant on (the demo is a plain transformer): a different artifact
    ov_alpha = variants["openvino-int8-alpha075"]
    artifact = json.loads((out / "candidates" / "openvino-int8-alpha075" / "vitedge.json").read_text())["artifact"]
    assert ov_alpha["status"] == "benched" and ov_alpha["knob"].startswith("SmoothQuant alpha 0.75")
    assert artifact["smoothquant"]["alpha"] == 0.75 and artifact["nncf_smoothquant"] == {
        "applied": True, "alpha": 0.75, "why": "--smoothquant-alpha: every MatMul"}
    for name in ("openvino-fp32-throughput", "openvino-int8-throughput"):
        runtime = json.loads((out / "candidates" / name / "vitedge.json").read_text())["runtime"]
        assert runtime["properties"]["PERFORMANCE_HINT"] == "THROUGHPUT"
        if runtime["resolved_at_build"]["streams"] > 1:
            assert variants[name]["status"] == "benched" and variants[name]["result"]["p50_ms"].keys() == {"1", "4"}
        else:  # a CPU where OpenVINO keeps one stream: it would run like its base
            assert variants[name]["status"] == "skipped" and "runs exactly like it" in variants[name]["reason"]


def test_summary_says_what_each_knob_variant_changes(tuned, capsys: pytest.CaptureFixture[str]) -> None:
    from vitedge.report_cli import print_tune_summary

    _, _, second, _ = tuned
    print_tune_summary(second)
    text = " ".join(capsys.readouterr().out.split())
    assert "openvino-int8-alpha075: SmoothQuant alpha 0.75 instead of 0.5" in text
    assert "onnxruntime-int8-alpha075: SmoothQuant alpha 0.75 instead of 0.5" in text
    assert "[skipped: no LayerNorm" in text
    assert "openvino-fp32-throughput: OpenVINO throughput hint" in text


def test_best_is_the_chosen_artifact_and_loads(tuned, demo_val_tensors) -> None:
    out, _, second, _ = tuned
    with vitedge.load(out / "best") as best, vitedge.load(out / "candidates" / second["chosen"]) as chosen:
        assert best.manifest["tune"]["chosen"] == second["chosen"]
        x = demo_val_tensors.x[:16]
        np.testing.assert_array_equal(best.predict(x), chosen.predict(x))


def test_report_html_has_a_pareto_plot_per_batch(tuned) -> None:
    out, _, second, _ = tuned
    page = (out / "report" / "report.html").read_text()
    for batch in (1, 4):
        assert f"data-plot='pareto-b{batch}'" in page
    assert page.count("class='chosen-ring'") == 2 and "gate acc_drop&lt;=0.02" in page
    assert "Gates not drawn on these axes: size_mb&lt;=1." in page


def test_cli_bad_input_is_one_line_before_any_work(cli, demo_export: Path, digits_val: Path, tmp_path: Path) -> None:
    missing = cli("tune", demo_export, "--data", tmp_path / "nope", "-o", tmp_path / "out")
    assert missing.code == 2 and "--data" in missing.text and "Traceback" not in missing.text
    unknown = cli("tune", demo_export, "--data", digits_val, "--targets", "openvino,coreml", "-o", tmp_path / "out")
    assert unknown.code == 2 and "coreml" in unknown.text
    named = cli("tune", demo_export, "--data", digits_val, "--precisions", "fp32", "--gate",
                "faster(openvino-int8,openvino-fp32)", "-o", tmp_path / "out")
    assert named.code == 2 and "openvino-int8" in named.text
    knob = cli("tune", demo_export, "--data", digits_val, "--knobs", "keep_float,streams", "-o", tmp_path / "out")
    assert knob.code == 2 and "unknown knob(s) streams" in knob.text and "Traceback" not in knob.text
    assert not (tmp_path / "out").exists()


def test_cli_exits_1_when_no_candidate_passes(cli, demo_export: Path, digits_val: Path, tmp_path: Path) -> None:
    result = cli("--quiet", "tune", demo_export, "--data", digits_val, "--targets", "onnxruntime", "--precisions",
                 "fp32", "--gate", "size_mb<=0.001", "--batch", "1", "-o", tmp_path / "out")
    assert result.code == 1 and "no candidate passes the gates" in result.text
    saved = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert saved["chosen"] is None and not (tmp_path / "out" / "best").exists()


# -- the Pareto plot --------------------------------------------------------------------------

def _svg_points(svg: str) -> dict[str, tuple[float, float]]:
    root = ET.fromstring(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    centres = {}
    for group in root.iterfind(".//s:g[@class='point']", ns):
        mark = group.find("s:circle", ns)
        if mark is not None:
            centres[group.get("data-name")] = (float(mark.get("cx")), float(mark.get("cy")))
    return centres


def test_pareto_plot_places_points_front_gates_and_the_choice() -> None:
    pts = [Point("reference (PyTorch FP32)", 10.0, 0.0, True, reference=True),
           Point("fp32", 8.0, 0.0, True), Point("int8", 3.0, 0.004, True, chosen=True),
           Point("int8-bad", 2.0, 0.05, False), Point("slow-worse", 9.0, 0.01, True)]
    lines, other = thresholds(["acc_drop<=0.02", "speedup_p50>=2", "p50_ms@b8<=1", "size_mb<=1"], 1, True, 10.0)
    assert lines == [Threshold("acc_drop<=0.02", "y", 0.02), Threshold("speedup_p50>=2", "x", 5.0)]
    assert other == ["size_mb<=1"]
    assert [p.name for p in pareto_front(pts)] == ["int8-bad", "int8", "fp32"]

    svg = pareto_plot(pts, lines, 1, labelled=True)
    centres = _svg_points(svg)
    assert centres["int8-bad"][0] < centres["int8"][0] < centres["fp32"][0] < centres["slow-worse"][0]
    assert centres["int8-bad"][1] < centres["slow-worse"][1] < centres["int8"][1] < centres["fp32"][1]  # up: worse
    root = ET.fromstring(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    ring = root.find(".//s:circle[@class='chosen-ring']", ns)
    assert (float(ring.get("cx")), float(ring.get("cy"))) == centres["int8"]
    gate = root.find(".//s:g[@data-gate='acc_drop<=0.02']/s:line", ns)
    assert centres["int8-bad"][1] < float(gate.get("y1")) < centres["slow-worse"][1]  # 0.05 above, 0.01 below
    speed = root.find(".//s:g[@data-gate='speedup_p50>=2']/s:line", ns)
    assert centres["int8"][0] < float(speed.get("x1")) < centres["fp32"][0]  # 3 ms < 10/2 ms < 8 ms


PARETO_HARNESS = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="report" src="PAGE" width="1200" height="6000"></iframe>
<script>
document.getElementById("report").addEventListener("load", () => {
  const doc = document.getElementById("report").contentDocument;
  const centre = el => { const b = el.getBBox(); return [b.x + b.width / 2, b.y + b.height / 2, b.width]; };
  const plots = [...doc.querySelectorAll("figure.plot[data-plot^='pareto']")].map(fig => ({
    key: fig.dataset.plot, width: fig.querySelector("svg").getBoundingClientRect().width,
    points: [...fig.querySelectorAll("g.point")].map(g => ({name: g.dataset.name, passed: g.dataset.passed,
      chosen: g.dataset.chosen, at: centre(g.querySelector("circle, rect"))})),
    rings: [...fig.querySelectorAll("circle.chosen-ring")].map(centre),
    gates: [...fig.querySelectorAll("g.gate line")].map(l => { const b = l.getBBox();
      return {gate: l.parentNode.dataset.gate, x: b.x, y: b.y, w: b.width, h: b.height}; })}));
  document.getElementById("result").textContent = JSON.stringify({scripts: doc.scripts.length, plots});
});
</script></body></html>
"""


@pytest.mark.browser
def test_pareto_plot_in_a_real_browser(tuned, tmp_path: Path) -> None:
    from test_report_html import CHROMIUM, render_in_chromium

    if CHROMIUM is None:
        pytest.skip("needs a headless Chromium: apt-get install -y chromium")
    out, _, second, _ = tuned
    (out / "report" / "pareto-harness.html").write_text(PARETO_HARNESS.replace("PAGE", "report.html"))
    result, console = render_in_chromium(out / "report" / "pareto-harness.html", tmp_path / "profile")

    assert console == [] and result["scripts"] == 0
    benched = {c["name"]: c["result"] for c in second["candidates"] if c["status"] == "benched"}
    assert [p["key"] for p in result["plots"]] == ["pareto-b1", "pareto-b4"]
    for plot, batch in zip(result["plots"], ("1", "4"), strict=True):
        assert plot["width"] >= 700
        points = {p["name"]: p for p in plot["points"] if p["name"] in benched}
        assert set(points) == set(benched)
        by_latency = sorted(points, key=lambda n: benched[n]["p50_ms"][batch])
        xs = [points[n]["at"][0] for n in by_latency]
        assert xs == sorted(xs), "points are not laid out in p50 order"
        assert all(points[n]["passed"] == str(benched[n]["passed"]).lower() for n in points)
        (ring,) = plot["rings"]
        chosen = points[second["chosen"]]
        assert chosen["chosen"] == "true" and ring[0] == pytest.approx(chosen["at"][0], abs=0.5)
        (gate,) = [g for g in plot["gates"] if g["gate"] == "acc_drop<=0.02"]
        assert gate["w"] > 500  # a painted horizontal line across the plot area (900 px minus the legend)
        assert all(p["at"][1] >= gate["y"] for p in points.values() if p["passed"] == "true")


# -- the recipe section -----------------------------------------------------------------------

def test_recipe_tune_section_is_validated(tmp_path: Path) -> None:
    from test_recipe import write_recipe

    from vitedge.recipe import load_recipe

    with pytest.raises(BadInput, match="either `targets:`"):
        load_recipe(write_recipe(tmp_path / "both", tune={"targets": ["openvino"]}))
    with pytest.raises(BadInput, match=r"tune.precisions.0: 'fp8' is not one of"):
        load_recipe(write_recipe(tmp_path / "bad", tune={"precisions": ["fp8"]}), ["targets="])
    with pytest.raises(BadInput, match=r"tune.knobs.0: 'streams' is not one of"):
        load_recipe(write_recipe(tmp_path / "knob", tune={"knobs": ["streams"]}), ["targets="])


def test_recipe_with_a_tune_section_runs_tune(cli, tmp_path: Path) -> None:
    from test_recipe import write_recipe

    path = write_recipe(tmp_path / "r", tune={"targets": ["onnxruntime"], "precisions": ["fp32"]},
                        bench={"data": "val", "batches": [1], "max_images": 20, "warmup": 0, "iters": 2})
    recipe = path.read_text().replace("targets:\n- target: onnxruntime\n  precision: fp32\n", "")
    path.write_text(recipe)
    result = cli("--quiet", "run", path, "-o", tmp_path / "out")
    assert result.code == 0, result.text
    saved = json.loads((tmp_path / "out" / "tune" / "tune.json").read_text())
    assert saved["chosen"] == "onnxruntime-fp32" and saved["gates"] == ["top1_agreement>=0.99"]
    assert vitedge.load(tmp_path / "out" / "tune" / "best").backend == "onnxruntime"


# -- OpenVINO bf16 / fp16 ---------------------------------------------------------------------

def test_openvino_bf16_records_what_really_ran_and_the_cpu(compiled_demo, demo_val_tensors,
                                                           demo_reference_logits) -> None:
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    artifact = compiled_demo("openvino", "bf16")
    with vitedge.load(artifact) as model:
        manifest = model.manifest
        assert manifest["runtime"]["properties"]["INFERENCE_PRECISION_HINT"] == "bf16"
        ran = "bf16" if "BF16" in capabilities else "fp32"  # a CPU without bf16 ignores the hint
        assert manifest["precision_run"] == ran and model.runner.info["precision_run"] == ran
        assert {e["dtype"] for e in manifest["precision_plan"]} == {ran}
        assert manifest["runtime"]["cpu_isa"] and "cpu_bf16_native" in manifest["runtime"]
        agreement = np.mean(model.predict(demo_val_tensors.x).argmax(1) == demo_reference_logits.argmax(1))
    assert agreement >= 0.99


def test_half_precisions_say_what_runs_on_cpus_without_them(capsys: pytest.CaptureFixture[str]) -> None:
    from vitedge.backends.openvino import _warn_half_precision, inference_precision_hint

    assert inference_precision_hint("bf16", ["FP32", "INT8"]) == "bf16"  # pinned; OpenVINO runs f32 there
    _warn_half_precision("bf16", "bf16", ["FP32", "INT8"])
    assert "runs this artifact in f32 here" in capsys.readouterr().err
    _warn_half_precision("bf16", "bf16", ["BF16", "FP32"])
    assert capsys.readouterr().err == ""
    _warn_half_precision("fp16", inference_precision_hint("fp16", ["BF16", "FP32"]), ["BF16", "FP32"])
    assert "only stores the weights in FP16" in capsys.readouterr().err
    _warn_half_precision("fp16", inference_precision_hint("fp16", ["FP32"]), ["FP32"])
    assert "computes in f32, no faster than --precision fp32" in capsys.readouterr().err
    _warn_half_precision("fp16", inference_precision_hint("fp16", ["FP16", "BF16"]), ["FP16", "BF16"])
    slower = "was slower than f32 on a Xeon" in capsys.readouterr().err  # measured there: said on x86 CPUs
    assert slower == (platform.machine() in ("x86_64", "AMD64"))


def test_an_unseeded_random_init_export_is_refused(cli, demo_export_copy: Path, digits_val: Path,
                                                    tmp_path: Path) -> None:
    manifest = json.loads((demo_export_copy / "vitedge.json").read_text())
    manifest["source"].update(source="timm", spec="timm:vit_small_patch16_224", weights=None, weights_sha256=None,
                              weights_origin=None, random_init_seed=None)
    (demo_export_copy / "vitedge.json").write_text(json.dumps(manifest))
    result = cli("tune", demo_export_copy, "--data", digits_val, "-o", tmp_path / "out")
    assert result.code == 2 and "unseeded random init" in result.text and not (tmp_path / "out").exists()


def test_a_speed_gate_timed_next_to_a_cpu_hog_is_not_a_pass(cli, demo_export: Path, digits_val: Path,
                                                            tmp_path: Path) -> None:
    """With a busy loop on every core, bench calls the speed gate unreliable; tune must not choose
    on it: no candidate passes, nothing goes to best/, and the exit is 5 (retry), not 0 or 1."""
    import subprocess
    import sys

    hogs = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(os.cpu_count() or 1)]
    try:
        result = cli("--quiet", "tune", demo_export, "--data", digits_val, "--targets", "onnxruntime",
                     "--precisions", "fp32", "--batch", "1", "--gate", "top1_agreement>=0.99",
                     "--gate", "faster(onnxruntime-fp32, reference)@b1", "-o", tmp_path / "out")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)
    assert result.code == 5, result.text
    saved = json.loads((tmp_path / "out" / "tune.json").read_text())
    candidate = saved["candidates"][0]
    assert saved["chosen"] is None and not (tmp_path / "out" / "best").exists()
    assert candidate["result"]["unreliable"] and not candidate["result"]["failed_gates"]
    assert "unreliable" in candidate["reason"]


def test_out_dir_holding_other_files_is_refused_and_kept(cli, demo_export: Path, digits_val: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cli("tune", demo_export, "--data", digits_val, "-o", out)
    assert result.code == 2 and "--force" in result.text and "Traceback" not in result.text
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    inside = cli("tune", demo_export, "--data", digits_val, "-o", demo_export / "tuned")
    assert inside.code == 2 and not (demo_export / "tuned").exists()
