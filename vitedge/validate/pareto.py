"""The tune section of report.html: accuracy drop against p50 latency, one inline SVG per batch.

Every benched candidate is a point (filled when it passes every gate, hollow when not), the
PyTorch reference a grey square at zero drop, the Pareto front (no other candidate is both
faster and more accurate) a dashed line, the gate thresholds that apply to every candidate
red dashed lines, and the chosen artifact a ring labelled "chosen". The SVG needs no script.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from vitedge.validate.report_html import nice_ticks

WIDTH, HEIGHT = 900, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 250, 20, 48  # the legend (number -> candidate) sits in the right margin
PASS_COLOR, FAIL_COLOR, REFERENCE_COLOR, GATE_COLOR, FRONT_COLOR = "#2e7d32", "#c62828", "#606060", "#d32f2f", "#555"


@dataclass(frozen=True)
class Point:
    name: str
    latency_ms: float
    drop: float
    passed: bool
    chosen: bool = False
    reference: bool = False
    number: int = 0  # the candidate's label on the plot and in the legend (same in every batch's plot)


@dataclass(frozen=True)
class Threshold:
    """A gate drawn as a line: axis "x" (latency, ms) or "y" (drop)."""

    gate: str
    axis: str
    value: float


def drop_metric(labelled: bool) -> str:
    return "top-1 accuracy drop" if labelled else "top-1 disagreement with the reference"


def points(result: dict[str, Any], batch: int, labelled: bool) -> list[Point]:
    """The reference and every benched candidate measured at BATCH."""
    key = str(batch)
    out: list[Point] = []
    benched = [c for c in result["candidates"] if c["status"] == "benched"]
    for number, c in enumerate(benched, 1):
        res = c.get("result") or {}
        if res.get("p50_ms", {}).get(key) is None:
            continue
        if not out and res.get("reference_p50_ms", {}).get(key) is not None:
            out.append(Point("reference (PyTorch FP32)", res["reference_p50_ms"][key], 0.0, True, reference=True))
        drop = res.get("acc_drop") if labelled else 1.0 - (res.get("top1_agreement") or 0.0)
        out.append(Point(c["name"], res["p50_ms"][key], float(drop or 0.0), bool(res.get("passed")),
                         c["name"] == result.get("chosen"), number=number))
    return out


def thresholds(gates: list[str], batch: int, labelled: bool, reference_ms: float | None) -> tuple[
        list[Threshold], list[str]]:
    """(the gates drawn as lines at BATCH, the gates that have no line on these axes)."""
    from vitedge.validate.gates import Operand, parse_gate

    drawn, other = [], []
    for text in gates:
        gate = parse_gate(text)
        left, bound = gate.left, gate.right
        line = None
        if isinstance(bound, Operand) or left.subject is not None:
            pass  # ordering gates and gates on one named candidate: not a line for every point
        elif left.batch not in (None, batch):
            continue  # a gate on another batch size: nothing to draw on this plot
        elif labelled and left.metric == "acc_drop":
            line = Threshold(text, "y", bound)
        elif labelled and left.metric == "acc_delta":
            line = Threshold(text, "y", -bound)
        elif not labelled and left.metric == "top1_agreement":
            line = Threshold(text, "y", 1.0 - bound)
        elif left.metric == "p50_ms":
            line = Threshold(text, "x", bound)
        elif left.metric == "speedup_p50" and reference_ms and bound > 0:
            line = Threshold(text, "x", reference_ms / bound)
        if line is None:
            other.append(text)
        else:
            drawn.append(line)
    return drawn, other


def pareto_front(pts: list[Point]) -> list[Point]:
    """Candidates no other candidate beats on both latency and drop, fastest first."""
    front: list[Point] = []
    for p in sorted((p for p in pts if not p.reference), key=lambda p: (p.latency_ms, p.drop)):
        if not front or p.drop < front[-1].drop:
            front.append(p)
    return front


def pareto_plot(pts: list[Point], lines: list[Threshold], batch: int, labelled: bool) -> str:
    """One SVG: drop (y) against p50 latency (x) at BATCH."""
    xs = [p.latency_ms for p in pts] + [t.value for t in lines if t.axis == "x"]
    ys = [p.drop for p in pts] + [t.value for t in lines if t.axis == "y"]
    x_high = max(xs) * 1.12 if xs else 1.0
    y_low, y_high = min([*ys, 0.0]), max([*ys, 0.0])
    pad = max((y_high - y_low) * 0.12, 0.005)
    y_low, y_high = y_low - pad, y_high + pad

    def px(v: float) -> float:
        return LEFT + v / x_high * (WIDTH - LEFT - RIGHT)

    def py(v: float) -> float:
        return HEIGHT - BOTTOM - (v - y_low) / (y_high - y_low) * (HEIGHT - TOP - BOTTOM)

    out = []
    for tick in nice_ticks(0.0, x_high):
        out.append(_line(px(tick), TOP, px(tick), HEIGHT - BOTTOM, "grid"))
        out.append(_text(px(tick), HEIGHT - BOTTOM + 16, f"{tick:g}", "middle"))
    for tick in nice_ticks(y_low, y_high):
        out.append(_line(LEFT, py(tick), WIDTH - RIGHT, py(tick), "grid"))
        out.append(_text(LEFT - 6, py(tick) + 4, f"{tick:+.3g}" if tick else "0", "end"))
    out.append(_line(LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, HEIGHT - BOTTOM, "axis"))
    out.append(_line(LEFT, TOP, LEFT, HEIGHT - BOTTOM, "axis"))
    out.append(_text((LEFT + WIDTH - RIGHT) / 2, HEIGHT - 10, f"p50 latency, ms (batch {batch})", "middle"))
    mid = (TOP + HEIGHT - BOTTOM) / 2
    out.append(_text(16, mid, drop_metric(labelled), "middle", f"transform='rotate(-90 16 {mid:.1f})'"))
    for t in lines:
        x1, y1, x2, y2 = ((px(t.value), TOP, px(t.value), HEIGHT - BOTTOM) if t.axis == "x"
                          else (LEFT, py(t.value), WIDTH - RIGHT, py(t.value)))
        label = _text(x1 + 4, TOP + 10, f"gate {t.gate}") if t.axis == "x" else \
            _text(WIDTH - RIGHT - 4, y1 - 4, f"gate {t.gate}", "end")
        out.append(f"<g class='gate' data-gate='{escape(t.gate)}' data-axis='{t.axis}'>"
                   + _line(x1, y1, x2, y2, style=f"stroke:{GATE_COLOR};stroke-dasharray:6 4;stroke-width:1.5")
                   + label + "</g>")
    front = pareto_front(pts)
    if len(front) > 1:
        coords = " ".join(f"{px(p.latency_ms):.1f},{py(p.drop):.1f}" for p in front)
        out.append(f"<polyline class='front' points='{coords}' style='fill:none;stroke:{FRONT_COLOR};"
                   "stroke-dasharray:3 3'/>")
    for p in pts:
        x, y = px(p.latency_ms), py(p.drop)
        tip = f"{p.name}: p50 {p.latency_ms:.3f} ms at batch {batch}, {drop_metric(labelled)} {p.drop:+.4f}" + (
            "" if p.reference else (", passes every gate" if p.passed else ", fails a gate"))
        if p.reference:
            mark = (f"<rect x='{x - 5:.1f}' y='{y - 5:.1f}' width='10' height='10' "
                    f"style='fill:{REFERENCE_COLOR}'/>")
        else:
            color = PASS_COLOR if p.passed else FAIL_COLOR
            fill = color if p.passed else "#fff"
            mark = (f"<circle class='dot' cx='{x:.1f}' cy='{y:.1f}' r='5' "
                    f"style='fill:{fill};stroke:{color};stroke-width:2'/>")
        if p.chosen:
            mark += (f"<circle class='chosen-ring' cx='{x:.1f}' cy='{y:.1f}' r='10' "
                     f"style='fill:none;stroke:#1565c0;stroke-width:2.5'/>")
        label = "" if p.reference else _text(x + 7, y - 8, str(p.number))
        out.append(f"<g class='point' data-name='{escape(p.name)}' data-passed='{str(p.passed).lower()}' "
                   f"data-chosen='{str(p.chosen).lower()}' data-reference='{str(p.reference).lower()}'>"
                   f"<title>{escape(tip)}</title>{mark}{label}</g>")
    out += _legend(pts)
    return (f"<svg class='chart pareto' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
            f"viewBox='0 0 {WIDTH} {HEIGHT}' role='img' aria-label='accuracy drop against latency, batch {batch}'>"
            + "".join(out) + "</svg>")


def _legend(pts: list[Point]) -> list[str]:
    """Number, marker and name of every point, in the right margin."""
    out = []
    x = WIDTH - RIGHT + 16
    for i, p in enumerate(sorted(pts, key=lambda p: (not p.reference, p.number))):
        y = TOP + 8 + i * 17
        if p.reference:
            mark = f"<rect x='{x - 4:.1f}' y='{y - 8:.1f}' width='8' height='8' style='fill:{REFERENCE_COLOR}'/>"
            text = "reference (PyTorch FP32)"
        else:
            color = PASS_COLOR if p.passed else FAIL_COLOR
            mark = (f"<circle cx='{x:.1f}' cy='{y - 4:.1f}' r='4' style='fill:{color if p.passed else '#fff'};"
                    f"stroke:{color};stroke-width:1.5'/>")
            text = f"{p.number} {p.name}" + (" (chosen)" if p.chosen else "")
        out.append(f"<g class='legend'>{mark}{_text(x + 10, y, text)}</g>")
    return out


def tune_section(report: dict[str, Any], result: dict[str, Any]) -> str:
    """The HTML of the tune section: what was chosen and why, and one Pareto plot per batch."""
    labelled = bool(report["data"]["labelled"])
    parts = ["<h2>Tune: accuracy drop vs latency</h2>",
             f"<p class='tune-choice'>{escape(result['why'])}</p>"]
    skipped = [c for c in result["candidates"] if c["status"] != "benched"]
    if skipped:
        parts.append("<ul class='muted'>" + "".join(
            f"<li>{escape(c['name'])}: {escape(c['status'])}: {escape(c['reason'])}</li>" for c in skipped) + "</ul>")
    for batch in result["batches"]:
        pts = points(result, batch, labelled)
        if not pts:
            continue
        ref = next((p.latency_ms for p in pts if p.reference), None)
        lines, other = thresholds(result["gates"], batch, labelled, ref)
        caption = (f"Batch {batch}: {drop_metric(labelled)} against p50 latency; filled: passes every gate, "
                   "hollow: fails one; dashed grey: Pareto front; red: gate thresholds; blue ring: the choice "
                   "(highest geometric-mean speedup over all batch sizes among those that pass).")
        if other:
            caption += " Gates not drawn on these axes: " + ", ".join(other) + "."
        parts.append(f"<figure class='plot' data-plot='pareto-b{batch}'>"
                     f"{pareto_plot(pts, lines, batch, labelled)}<figcaption>{escape(caption)}</figcaption></figure>")
    return "\n".join(parts)


def _line(x1: float, y1: float, x2: float, y2: float, cls: str = "", style: str = "") -> str:
    attrs = (f" class='{cls}'" if cls else "") + (f" style='{style}'" if style else "")
    return f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}'{attrs}/>"


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' {extra}>{escape(text)}</text>"
