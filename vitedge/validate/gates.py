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
`@bN` takes the other side's batch.
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
          "faster(NAME, NAME); METRIC may end in @bN (batch), OP is one of >= <= > < ==")


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
    compact = re.sub(r"\s+", "", text)
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

    def resolve(self, name: str, gate: str) -> str:
        if name in (REFERENCE, "pytorch"):
            return REFERENCE
        if name in self.candidates:
            return name
        if name in self.aliases:
            return self.aliases[name]
        known = ", ".join([REFERENCE, *self.candidates, *sorted(self.aliases)])
        raise BadInput(f"gate {gate!r}: no artifact named {name!r}; known names: {known}")


@dataclass(frozen=True)
class Check:
    """One comparison a gate expands to: one subject (or pair) at one batch."""

    gate: str
    left: Operand
    op: str
    right: Operand | float


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
                                        Operand(other.metric, rb, right_subject)))
            else:
                for lb, _ in _batches(left, None, subjects):
                    checks.append(Check(gate.text, Operand(left.metric, lb, subject), gate.op, right))
    return checks


Lookup = Callable[[Operand], "float | None"]


@dataclass
class GateResult:
    """The outcome of one check, with the numbers behind it."""

    check: Check
    value: float | None
    bound: float | None
    passed: bool

    @property
    def subject(self) -> str:
        return self.check.left.subject or ""

    def message(self) -> str:
        left, right = self.check.left, self.check.right
        if self.value is None:
            return f"{left.subject}: {left.label()} was not measured"
        if isinstance(right, Operand):
            if self.bound is None:
                return f"{right.subject}: {right.label()} was not measured"
            verb = "is" if self.passed else "is not"
            return (f"{left.subject} {left.label()} = {_fmt(self.value)} {verb} {self.check.op} "
                    f"{right.subject} {right.label()} = {_fmt(self.bound)}")
        verb = "meets" if self.passed else "needs"
        return f"{left.subject}: {left.label()} = {_fmt(self.value)}, {verb} {self.check.op} {_fmt(right)}"

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} [{self.check.gate}] {self.message()}"

    def to_dict(self) -> dict[str, Any]:
        left, right = self.check.left, self.check.right
        return {
            "gate": self.check.gate, "artifact": left.subject, "metric": left.metric, "batch": left.batch,
            "op": self.check.op, "value": _json_number(self.value), "bound": _json_number(self.bound),
            "other": {"artifact": right.subject, "metric": right.metric, "batch": right.batch}
            if isinstance(right, Operand) else None,
            "passed": self.passed, "message": self.message(),
        }


def evaluate(checks: list[Check], lookup: Lookup) -> list[GateResult]:
    """Compare each check's numbers; a value that was not measured fails its check."""
    results = []
    for check in checks:
        value = lookup(check.left)
        bound = lookup(check.right) if isinstance(check.right, Operand) else check.right
        passed = value is not None and bound is not None and not math.isnan(value) \
            and _OPS[check.op](value, bound)
        results.append(GateResult(check, value, bound, passed))
    return results


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
