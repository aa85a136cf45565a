"""The gate grammar: parsing, name/batch resolution, evaluation and its messages."""

from __future__ import annotations

import numpy as np
import pytest

from vitedge.errors import BadInput
from vitedge.validate import gates as g
from vitedge.validate.latency import ratio_interval

SUBJECTS = g.Subjects(["ov-int8", "ov-fp16", "ort-fp32"], {"openvino-int8": "ov-int8"}, [1, 8], labelled=True)

VALUES = {
    ("ov-int8", "top1_agreement", None): 0.991, ("ov-fp16", "top1_agreement", None): 0.999,
    ("ort-fp32", "top1_agreement", None): 1.0,
    ("ov-int8", "p50_ms", 1): 2.0, ("ov-int8", "p50_ms", 8): 9.0,
    ("ov-fp16", "p50_ms", 1): 3.0, ("ov-fp16", "p50_ms", 8): 8.0,
    ("ov-int8", "speedup_p50", 8): 2.5, ("ov-fp16", "speedup_p50", 8): 1.5, ("ort-fp32", "speedup_p50", 8): 1.1,
    ("ov-int8", "speedup_p50", 1): 3.0, ("ov-fp16", "speedup_p50", 1): 2.0, ("ort-fp32", "speedup_p50", 1): 1.2,
    ("reference", "top1_acc", None): 0.97,
}


def run(*texts: str, subjects: g.Subjects = SUBJECTS) -> list[g.GateResult]:
    checks = g.plan([g.parse_gate(t) for t in texts], subjects)
    return g.evaluate(checks, lambda op: VALUES.get((op.subject, op.metric, op.batch)))


def test_threshold_applies_to_every_candidate() -> None:
    results = run("top1_agreement >= 0.995")
    assert [(r.subject, r.passed) for r in results] == [("ov-int8", False), ("ov-fp16", True), ("ort-fp32", True)]
    assert results[0].line() == "FAIL [top1_agreement >= 0.995] ov-int8: top1_agreement = 0.991, needs >= 0.995"


def test_named_threshold_by_dir_name_alias_and_reference() -> None:
    assert [r.subject for r in run("ov-fp16:top1_agreement>=0.99")] == ["ov-fp16"]
    assert [r.subject for r in run("openvino-int8:top1_agreement>=0.99")] == ["ov-int8"]
    assert [r.subject for r in run("top1_agreement[ov-int8]>=0.99")] == ["ov-int8"]
    (ref,) = run("reference:top1_acc>=0.95")
    assert ref.passed and ref.value == pytest.approx(0.97)


def test_latency_metrics_expand_over_batches_unless_pinned() -> None:
    results = run("speedup_p50>=2")
    assert [(r.subject, r.check.left.batch, r.passed) for r in results] == [
        ("ov-int8", 1, True), ("ov-int8", 8, True), ("ov-fp16", 1, True), ("ov-fp16", 8, False),
        ("ort-fp32", 1, False), ("ort-fp32", 8, False)]
    pinned = run("openvino-int8:speedup_p50@b8>=2")
    assert [(r.check.left.batch, r.value, r.passed) for r in pinned] == [(8, 2.5, True)]
    assert pinned[0].message() == "ov-int8: speedup_p50@b8 = 2.5, meets >= 2"


def test_ordering_gates_and_faster_sugar() -> None:
    results = run("p50_ms[ov-int8] < p50_ms[ov-fp16]")
    assert [(r.check.left.batch, r.passed) for r in results] == [(1, True), (8, False)]
    assert results[1].message() == "ov-int8 p50_ms@b8 = 9 is not < ov-fp16 p50_ms@b8 = 8"
    (faster,) = run("faster(openvino-int8, ov-fp16)@b8")
    assert not faster.passed and faster.check.right.subject == "ov-fp16"
    assert faster.to_dict()["other"] == {"artifact": "ov-fp16", "metric": "p50_ms", "batch": 8}


def test_unmeasured_value_fails_with_a_clear_message() -> None:
    (result,) = run("ov-int8:p99_ms@b1 <= 100")
    assert not result.passed and result.message() == "ov-int8: p99_ms@b1 was not measured"
    assert result.to_dict()["value"] is None


@pytest.mark.parametrize(("text", "needle"), [
    ("top1_agreemnt>=0.99", "unknown metric 'top1_agreemnt'; valid metrics are drift: top1_agreement"),
    ("top1_agreement@b8>=0.99", "not measured per batch"),
    ("speedup_p50@b4>=2", "batch 4 is not measured (--batch 1,8)"),
    ("nope:top1_agreement>=0.99", "no artifact named 'nope'; known names: reference, ov-int8"),
    ("reference:top1_agreement>=0.99", "compares against the reference"),
    ("top1_agreement", "has no comparison"),
    ("top1_agreement >= high", "cannot read 'high' as a number"),
    ("p50_ms[ov-int8] < p50_ms[]", "cannot read 'p50_ms[]'"),
    ("p50_ms < p50_ms[ov-fp16]", "names an artifact on both sides"),
    ("ov-int8:p50_ms < p50_ms", "cannot read 'p50_ms' as a number"),
    ("top1_agreement >= nan", "not a number"),
    ("", "empty gate"),
])
def test_bad_gates_are_bad_input(text: str, needle: str) -> None:
    with pytest.raises(BadInput) as info:
        g.plan([g.parse_gate(text)], SUBJECTS)
    assert needle in str(info.value)
    assert info.value.exit_code == 2


def test_accuracy_gates_need_labels() -> None:
    unlabelled = g.Subjects(["a"], {}, [1], labelled=False)
    with pytest.raises(BadInput, match="acc_drop needs labels"):
        g.plan([g.parse_gate("acc_drop<=0.01")], unlabelled)


def test_every_metric_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "bench.md").read_text()
    missing = [name for name in g.METRICS if f"`{name}`" not in doc]
    assert not missing, f"docs/bench.md does not describe {missing}"


# -- speed gates on bootstrap confidence intervals (synthetic, paired timing samples) ----------

def _speed(samples: dict[str, np.ndarray], *texts: str, outside_load: str | None = None,
           unmet: dict[str, str] | None = None) -> list[g.GateResult]:
    """Evaluate speed gates on SAMPLES (per subject, batch 8) the way bench does: the p50 ratio,
    decided on its paired bootstrap interval."""
    subjects = g.Subjects([n for n in samples if n != "reference"], {}, [8])
    checks = g.plan([g.parse_gate(t) for t in texts], subjects)

    def lookup(op: g.Operand) -> float | None:
        p50 = float(np.median(samples[op.subject]))
        return float(np.median(samples["reference"])) / p50 if op.metric == "speedup_p50" else p50

    def interval(check: g.Check) -> tuple[float, float]:
        if isinstance(check.right, g.Operand):
            return ratio_interval(samples[check.left.subject], samples[check.right.subject])
        return ratio_interval(samples["reference"], samples[check.left.subject])

    return g.evaluate(checks, lookup, interval, outside_load, unmet)


ROUNDS = np.random.default_rng(0)
REF = 10.0 * ROUNDS.lognormal(0.0, 0.02, 40)  # 10 ms, quiet
CLEAR = {"reference": REF, "fast": REF / 2.0 * ROUNDS.lognormal(0.0, 0.02, 40)}  # 2x, tight
# Around 1x with heavy round-to-round noise (a busy neighbour): the interval spans 1.
NOISY = {"reference": REF, "noisy": REF * ROUNDS.lognormal(0.0, 0.6, 40)}


def test_clear_speedups_pass_or_fail_on_their_interval() -> None:
    passed, failed = _speed(CLEAR, "fast:speedup_p50@b8>=1.5", "fast:speedup_p50@b8>=3")
    assert passed.outcome == "pass" and failed.outcome == "fail"
    low, high = passed.interval
    assert 1.9 < low < passed.value < high < 2.1
    assert "(95% CI [" in passed.message() and passed.to_dict()["outcome"] == "pass"
    (ordering,) = _speed(CLEAR, "faster(fast, reference)")
    assert ordering.outcome == "pass" and ordering.interval[1] < 0.55  # fast / reference


def test_noisy_speedup_straddling_the_bound_is_unreliable() -> None:
    (result,) = _speed(NOISY, "noisy:speedup_p50@b8>=1")
    low, high = result.interval
    assert low < 1.0 < high and result.outcome == "unreliable" and not result.passed
    assert result.reason.startswith("the 95% confidence interval [") and "straddles 1" in result.reason
    assert result.line().startswith("UNRELIABLE [noisy:speedup_p50@b8>=1]")
    assert g.status([result]) == "unreliable"


def test_outside_load_makes_every_speed_check_unreliable_but_not_accuracy() -> None:
    results = _speed(CLEAR, "fast:speedup_p50@b8>=1.5", "fast:speedup_p50@b8>=3", outside_load="busy")
    assert [r.outcome for r in results] == ["unreliable", "unreliable"] and results[0].reason == "busy"
    accuracy = g.evaluate(g.plan([g.parse_gate("top1_agreement>=0.995")], SUBJECTS),
                          lambda op: VALUES.get((op.subject, op.metric, op.batch)), outside_load="busy")
    assert [r.outcome for r in accuracy] == ["fail", "pass", "pass"]
    assert g.status([*accuracy, *results]) == "failed"  # a real failure outranks an unreliable check


def test_conditional_gate_is_skipped_with_its_reason_where_the_condition_fails() -> None:
    gate = g.parse_gate("faster(fast, reference) if vnni")
    assert gate.condition == "vnni" and gate.text == "faster(fast, reference) if vnni"
    (skipped,) = _speed(CLEAR, "faster(fast, reference) if vnni", unmet={"vnni": g.CONDITIONS["vnni"]})
    assert skipped.outcome == "skipped" and "no VNNI/AMX" in skipped.message()
    assert g.status([skipped]) == "passed"
    (checked,) = _speed(CLEAR, "faster(fast, reference) if vnni", unmet={})
    assert checked.outcome == "pass"
    with pytest.raises(BadInput, match="unknown condition 'tpu'"):
        g.parse_gate("top1_agreement>=0.9 if tpu")
