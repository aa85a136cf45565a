"""Bench gates: small expressions over the report's metrics that decide the exit code.

Grammar (whitespace is ignored; docs/bench.md has examples)::

    gate     := operand OP NUMBER             threshold: `top1_agreement>=0.995`
              | operand OP operand            ordering:  `p50_ms[ov-int8] < p50_ms[ov-fp16]`
              | "faster(" NAME "," NAME ")" [@bN]     sugar for p50_ms[A] < p50_ms[B]
    operand  := METRIC [@bN] ["[" NAME "]"]  |  NAME ":" METRIC [@bN]
    OP       := >= | <= | > | < | ==

An operand without NAME means every candidate (threshold gates only); NAME is an
artifact's directory name, its `target-precision` alias, or `reference`. Latency metrics
without `@bN` are checked at every measured batch size; in an ordering gate a side without
`@bN` takes the other side's batch. A gate may end in `if CONDITION` (`vnni`, `cuda`): where
the condition does not hold, its checks are `skipped` and the report says why.

Every check has one of four outcomes: pass, fail, skipped, or `unreliable` — a speed check
(latency or speedup) whose bootstrap confidence interval straddles the bound, or that was
timed while other processes took a share of the CPU. Unreliable is neither pass nor fail:
bench exits 5 so CI can retry on a quieter machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitedge.errors import BadInput
from vitedge.validate.latency import SPEEDUP_KEYS, STAT_KEYS

REFERENCE = "reference"


@dataclass(frozen=True)
class Metric:
    name: str
    group: str  # drift | accuracy | resource | latency | speedup
    help: str
    unit: str = ""


def _metrics() -> dict[str, Metric]:
    rows = [
        ("top1_agreement", "drift", "fraction of images whose top-1 class matches the reference"),
        ("top5_overlap", "drift", "mean fraction of shared top-5 classes"),
        ("max_abs_err", "drift", "largest absolute logit difference"),
        ("mean_abs_err", "drift", "mean absolute logit difference"),
        ("cosine_min", "drift", "smallest per-image cosine similarity of the logits"),
        ("cosine_mean", "drift", "mean per-image cosine similarity of the logits"),
        ("kl_mean", "drift", "mean KL(reference || candidate) of the softmax, nats"),
        ("kl_max", "drift", "largest per-image KL(reference || candidate), nats"),
        ("top1_acc", "accuracy", "top-1 accuracy on the labelled data"),
        ("top5_acc", "accuracy", "top-5 accuracy on the labelled data"),
        ("acc_delta", "accuracy", "top-1 accuracy minus the reference's (negative: worse)"),
        ("acc_drop", "accuracy", "reference top-1 accuracy minus this one's (positive: worse)"),
        ("top5_acc_drop", "accuracy", "reference top-5 accuracy minus this one's"),
        ("size_mb", "resource", "artifact size on disk (reference: FP32 parameters)", "MB"),
        ("load_s", "resource", "time to load and verify the artifact", "s"),
        ("rss_mb", "resource", "resident memory added by loading and warming up", "MB"),
        ("gpu_mb", "resource", "GPU memory added by loading and warming up (runners on --device cuda)", "MB"),
    ]
    metrics = {name: Metric(name, group, text, *unit) for name, group, text, *unit in rows}
    for key in STAT_KEYS:
        unit = "images/s" if key == "throughput" else "ms"
        text = "images per second (batch / mean)" if key == "throughput" else f"{key[:-3]} latency"
        metrics[key] = Metric(key, "latency", text, unit)
    for key, stat in SPEEDUP_KEYS.items():
        metrics[key] = Metric(key, "speedup", f"reference {stat} / this {stat} (same run)", "x")
    return metrics


METRICS = _metrics()
PER_BATCH = {"latency", "speedup"}
# Latency statistics that get a bootstrap confidence interval (stdev has none).
BOOTSTRAPPED = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"}
CANDIDATE_ONLY = {"drift", "speedup"}
LABELLED = {"accuracy"}
# Accuracy metrics relative to the reference (the reference has top1_acc and top5_acc only).
LABELLED_RELATIVE = {"acc_delta", "acc_drop", "top5_acc_drop"}

_OP = re.compile(r"(>=|<=|==|>|<)")
_NAME = r"[^\s:\[\]()<>=,@]+"
_METRIC = r"[A-Za-z_][A-Za-z0-9_]*"
_OPERAND_BRACKET = re.compile(rf"^(?P<metric>{_METRIC})(?:@b(?P<batch>\d+))?(?:\[(?P<name>{_NAME})\])?$")
_OPERAND_PREFIX = re.compile(rf"^(?P<name>{_NAME}):(?P<metric>{_METRIC})(?:@b(?P<batch>\d+))?$")
_FASTER = re.compile(rf"^faster\((?P<a>{_NAME}),(?P<b>{_NAME})\)(?:@b(?P<batch>\d+))?$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    "<": lambda a, b: a < b, "==": lambda a, b: a == b,
}
SYNTAX = ("METRIC OP NUMBER, NAME:METRIC OP NUMBER, METRIC[NAME] OP METRIC[NAME] or "
          "faster(NAME, NAME); METRIC may end in @bN (batch), OP is one of >= <= > < ==; "
          "optionally followed by 'if CONDITION'")
# Platform conditions a gate can be limited to, with the reason shown when one does not hold.
CONDITIONS = {
    "vnni": "this CPU has no VNNI/AMX INT8 instructions, so INT8 is not expected to be faster than FP32 here",
    "cuda": "bench did not run on a CUDA device",
    "amx": "this CPU has no AMX (AMX-INT8 and AMX-BF16), the units the AMX INT8 variant is built for",
}
_CONDITION = re.compile(r"^(?P<gate>.*?)\s+if\s+(?P<condition>[A-Za-z0-9_-]+)\s*$", re.DOTALL)
OUTCOMES = ("pass", "fail", "unreliable", "skipped")


@dataclass(frozen=True)
class Operand:
    """A metric of one subject (or of every candidate when subject is None) at a batch."""

    metric: str
    batch: int | None = None
    subject: str | None = None

    def label(self) -> str:
        return self.metric + (f"@b{self.batch}" if self.batch is not None else "")


@dataclass(frozen=True)
class Gate:
    """One parsed gate expression."""

    text: str
    left: Operand
    op: str
    right: Operand | float
    condition: str | None = None


def valid_metrics_text() -> str:
    groups: dict[str, list[str]] = {}
    for metric in METRICS.values():
        groups.setdefault(metric.group, []).append(metric.name)
    return "; ".join(f"{group}: {', '.join(names)}" for group, names in groups.items())


def _operand(text: str, gate: str) -> Operand:
    match = _OPERAND_PREFIX.match(text) or _OPERAND_BRACKET.match(text)
    if match is None:
        raise BadInput(f"gate {gate!r}: cannot read {text!r}; write {SYNTAX}")
    metric = match["metric"]
    if metric not in METRICS:
        raise BadInput(f"gate {gate!r}: unknown metric {metric!r}; valid metrics are {valid_metrics_text()}")
    batch = int(match["batch"]) if match["batch"] else None
    if batch is not None and METRICS[metric].group not in PER_BATCH:
        raise BadInput(f"gate {gate!r}: {metric} is not measured per batch, drop '@b{batch}'")
    if batch is not None and batch < 1:
        raise BadInput(f"gate {gate!r}: batch must be positive")
    return Operand(metric, batch, match["name"])


def parse_gate(text: str) -> Gate:
    """Parse one gate (syntax and metric names only; names and batches are checked in `plan`)."""
    conditional = _CONDITION.match(text.strip())
    condition = conditional["condition"] if conditional else None
    if condition is not None and condition not in CONDITIONS:
        raise BadInput(f"gate {text!r}: unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    gate = _parse_expression(text, conditional["gate"] if conditional else text)
    return Gate(gate.text, gate.left, gate.op, gate.right, condition)


def _parse_expression(text: str, expression: str) -> Gate:
    compact = re.sub(r"\s+", "", expression)
    if not compact:
        raise BadInput("empty gate expression")
    faster = _FASTER.match(compact)
    if faster:
        batch = int(faster["batch"]) if faster["batch"] else None
        return Gate(text, Operand("p50_ms", batch, faster["a"]), "<", Operand("p50_ms", batch, faster["b"]))
    parts = _OP.split(compact, maxsplit=1)
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise BadInput(f"gate {text!r} has no comparison; write {SYNTAX}")
    left_text, op, right_text = parts
    left = _operand(left_text, text)
    try:
        bound = float(right_text)
    except ValueError:
        if ":" not in right_text and "[" not in right_text:
            raise BadInput(f"gate {text!r}: cannot read {right_text!r} as a number; compare with a number, "
                           f"or with another artifact's metric as METRIC[NAME]") from None
        right = _operand(right_text, text)
        if left.subject is None or right.subject is None:
            raise BadInput(f"gate {text!r}: an ordering gate names an artifact on both sides, "
                           f"like p50_ms[openvino-int8] < p50_ms[openvino-fp16]") from None
        return Gate(text, left, op, right)
    if math.isnan(bound):
        raise BadInput(f"gate {text!r}: the bound is not a number")
    return Gate(text, left, op, bound)


@dataclass
class Subjects:
    """What a gate can name: the reference, the candidates and their aliases, the batches."""

    candidates: list[str]
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> candidate name
    batches: list[int] = field(default_factory=list)
    labelled: bool = False
    yardsticks: list[str] = field(default_factory=list)  # named only, never expanded over

    def resolve(self, name: str, gate: str) -> str:
        if name in (REFERENCE, "pytorch"):
            return REFERENCE
        if name in self.candidates or name in self.yardsticks:
            return name
        if name in self.aliases:
            return self.aliases[name]
        known = ", ".join([REFERENCE, *self.candidates, *sorted(self.aliases), *self.yardsticks])
        raise BadInput(f"gate {gate!r}: no artifact named {name!r}; known names: {known}")


@dataclass(frozen=True)
class Check:
    """One comparison a gate expands to: one subject (or pair) at one batch."""

    gate: str
    left: Operand
    op: str
    right: Operand | float
    condition: str | None = None

    @property
    def is_speed(self) -> bool:
        """A latency or speedup comparison: the checks that timing noise can decide."""
        right = self.right.metric if isinstance(self.right, Operand) else None
        return any(m is not None and METRICS[m].group in PER_BATCH for m in (self.left.metric, right))


def _check_metric(operand: Operand, subjects: Subjects, gate: str) -> None:
    metric = METRICS[operand.metric]
    if metric.group in LABELLED and not subjects.labelled:
        raise BadInput(f"gate {gate!r}: {operand.metric} needs labels, and the validation data has none "
                       "(give an image folder with one sub-folder per class)")
    relative = metric.group in CANDIDATE_ONLY or metric.name in LABELLED_RELATIVE
    if operand.subject == REFERENCE and relative:
        raise BadInput(f"gate {gate!r}: {operand.metric} compares against the reference, "
                       "so the reference has none")
    if operand.batch is not None and operand.batch not in subjects.batches:
        raise BadInput(f"gate {gate!r}: batch {operand.batch} is not measured "
                       f"(--batch {','.join(map(str, subjects.batches))})")


def _batches(left: Operand, right: Operand | None, subjects: Subjects) -> list[tuple[int | None, int | None]]:
    """(left batch, right batch) pairs a gate expands to."""
    per_left = METRICS[left.metric].group in PER_BATCH
    per_right = right is not None and METRICS[right.metric].group in PER_BATCH
    if not per_left and not per_right:
        return [(None, None)]
    fixed = left.batch if left.batch is not None else (right.batch if right is not None else None)
    batches = [fixed] if fixed is not None else subjects.batches
    return [((left.batch or b) if per_left else None, ((right.batch or b) if per_right else None))
            for b in batches]


def plan(gates: list[Gate], subjects: Subjects) -> list[Check]:
    """Resolve names and expand each gate over candidates and batches; BadInput on any mismatch."""
    checks: list[Check] = []
    for gate in gates:
        left_subjects = ([subjects.resolve(gate.left.subject, gate.text)] if gate.left.subject is not None
                         else list(subjects.candidates))
        right = gate.right
        right_subject = subjects.resolve(right.subject, gate.text) if isinstance(right, Operand) and \
            right.subject is not None else None
        for subject in left_subjects:
            left = Operand(gate.left.metric, gate.left.batch, subject)
            _check_metric(left, subjects, gate.text)
            if isinstance(right, Operand):
                other = Operand(right.metric, right.batch, right_subject)
                _check_metric(other, subjects, gate.text)
                for lb, rb in _batches(left, other, subjects):
                    checks.append(Check(gate.text, Operand(left.metric, lb, subject), gate.op,
                                        Operand(other.metric, rb, right_subject), gate.condition))
            else:
                for lb, _ in _batches(left, None, subjects):
                    checks.append(Check(gate.text, Operand(left.metric, lb, subject), gate.op, right,
                                        gate.condition))
    return checks


Lookup = Callable[[Operand], "float | None"]
# The confidence interval of a speed check's compared quantity: the left value for a threshold
# gate, left / right for an ordering gate. None: no interval (the point value decides).
IntervalLookup = Callable[[Check], "tuple[float, float] | None"]


@dataclass
class GateResult:
    """The outcome of one check, with the numbers behind it."""

    check: Check
    value: float | None
    bound: float | None
    outcome: str  # pass | fail | unreliable | skipped
    interval: tuple[float, float] | None = None  # CI of value (threshold) or value / bound (ordering)
    reason: str = ""  # why a check is unreliable or skipped

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def subject(self) -> str:
        return self.check.left.subject or ""

    def message(self) -> str:
        left, right = self.check.left, self.check.right
        if self.outcome == "skipped":
            return f"{left.subject}: skipped, {self.reason}"
        if self.value is None:
            return f"{left.subject}: {left.label()} was not measured"
        if isinstance(right, Operand):
            if self.bound is None:
                return f"{right.subject}: {right.label()} was not measured"
            verb = {"pass": "is", "fail": "is not"}.get(self.outcome, "may or may not be")
            text = (f"{left.subject} {left.label()} = {_fmt(self.value)} {verb} {self.check.op} "
                    f"{right.subject} {right.label()} = {_fmt(self.bound)}")
            if self.interval is not None:
                text += f" (ratio {_fmt(self.value / self.bound)}, 95% CI {_interval(self.interval)})"
        else:
            verb = {"pass": "meets", "fail": "needs"}.get(self.outcome, "unsure whether it meets")
            ci = f" (95% CI {_interval(self.interval)})" if self.interval is not None else ""
            text = f"{left.subject}: {left.label()} = {_fmt(self.value)}{ci}, {verb} {self.check.op} {_fmt(right)}"
        return f"{text}; unreliable: {self.reason}" if self.outcome == "unreliable" else text

    def line(self) -> str:
        return f"{self.outcome.upper()} [{self.check.gate}] {self.message()}"

    def to_dict(self) -> dict[str, Any]:
        left, right = self.check.left, self.check.right
        return {
            "gate": self.check.gate, "artifact": left.subject, "metric": left.metric, "batch": left.batch,
            "op": self.check.op, "value": _json_number(self.value), "bound": _json_number(self.bound),
            "other": {"artifact": right.subject, "metric": right.metric, "batch": right.batch}
            if isinstance(right, Operand) else None,
            "passed": self.passed, "outcome": self.outcome,
            "interval": [_json_number(v) for v in self.interval] if self.interval is not None else None,
            "reason": self.reason, "message": self.message(),
        }


def _decide(op: str, value: float, bound: float, interval: tuple[float, float] | None) -> tuple[str, str]:
    """pass / fail from the point value, or from the interval when there is one."""
    if interval is None or op == "==":
        return ("pass" if _OPS[op](value, bound) else "fail"), ""
    low, high = interval
    if _OPS[op](low, bound) and _OPS[op](high, bound):
        return "pass", ""
    if not _OPS[op](low, bound) and not _OPS[op](high, bound):
        return "fail", ""
    return "unreliable", f"the 95% confidence interval {_interval(interval)} straddles {_fmt(bound)}"


def evaluate(checks: list[Check], lookup: Lookup, interval: IntervalLookup | None = None,
             outside_load: str | None = None, unmet: dict[str, str] | None = None) -> list[GateResult]:
    """Decide each check: pass, fail, unreliable or skipped.

    A value that was not measured fails its check. A speed check is decided on its confidence
    interval (`interval`), and is unreliable when OUTSIDE_LOAD says why the timing cannot be
    trusted. UNMET maps the conditions that do not hold here to the reason their checks are skipped.
    """
    results = []
    for check in checks:
        value = lookup(check.left)
        bound = lookup(check.right) if isinstance(check.right, Operand) else check.right
        if check.condition is not None and check.condition in (unmet or {}):
            results.append(GateResult(check, value, bound, "skipped", reason=(unmet or {})[check.condition]))
            continue
        if value is None or bound is None or math.isnan(value) or math.isnan(bound):
            results.append(GateResult(check, value, bound, "fail"))
            continue
        ci = interval(check) if interval is not None and check.is_speed else None
        if isinstance(check.right, Operand):  # an ordering gate: the ratio left / right against 1
            outcome, reason = _decide(check.op, value / bound if bound else math.inf, 1.0, ci)
        else:
            outcome, reason = _decide(check.op, value, bound, ci)
        if check.is_speed and outside_load:  # both reasons when the interval straddles too
            outcome, reason = "unreliable", "; ".join(r for r in (outside_load, reason) if r)
        results.append(GateResult(check, value, bound, outcome, ci, reason))
    return results


def status(results: list[GateResult]) -> str:
    """The run's status: failed if any check failed, else unreliable if any is, else passed."""
    return status_of([r.outcome for r in results])


def status_of(outcomes: list[str]) -> str:
    """failed / unreliable / passed from check outcomes (skipped checks count as neither)."""
    return "failed" if "fail" in outcomes else "unreliable" if "unreliable" in outcomes else "passed"


def _interval(interval: tuple[float, float]) -> str:
    return f"[{_fmt(interval[0])}, {_fmt(interval[1])}]"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
