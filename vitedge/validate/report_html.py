"""report.html: one self-contained page with inline SVG plots drawn here (no JS, no CDN).

Plots: latency distribution per batch (samples, box, p50 and p99 per runner), accuracy (or
top-1 agreement) against speedup, and per-class drift. Hover titles give exact numbers.
A Content-Security-Policy forbids every external load and every script.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np

from vitedge.validate.reports import (
    drift_table,
    environment_line,
    fmt,
    headline,
    latency_row,
    latency_table,
    notes,
    settings_line,
    status,
    subjects,
    summary_rows,
    verdict_rows,
    yardstick_rows,
)
from vitedge.validate.verdicts import outcome

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#17becf")
REFERENCE_COLOR = "#606060"
WIDTH = 760
MAX_CLASSES = 24  # per-class plot: the classes that drift most

_NUMERIC = re.compile(r"[+-]?[0-9.]+(e[+-]?[0-9]+)?x?")
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;
color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #ddd;padding:3px 8px}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.pass{background:#2e7d32}.fail{background:#c62828}.none{background:#757575}.unreliable{background:#b26a00}
.note{background:#fff8e1;border-left:4px solid #b26a00;padding:4px 10px;margin:6px 0}
.unreliable-text{color:#b26a00;font-weight:600}.skipped-text{color:#666}
figure.plot{margin:12px 0}figcaption{color:#555;font-size:12px}
svg.chart text{font:11px system-ui,sans-serif;fill:#333}svg.chart .axis{stroke:#999}
svg.chart .grid{stroke:#eee}.scroll{overflow-x:auto}.pass-text{color:#2e7d32;font-weight:600}
.fail-text{color:#c62828;font-weight:600}.muted{color:#666;font-size:12px}code{background:#f4f4f4;padding:0 3px}
"""


def render_html(report: dict[str, Any], sections: Sequence[str] = ()) -> str:
    """The whole page as a string; SECTIONS (HTML, e.g. tune's Pareto plots) follow the summary."""
    gates = report["gates"]
    state = "none" if not gates else {"failed": "fail", "unreliable": "unreliable", "passed": "pass"}[status(report)]
    colors = _colors(report)
    body = [
        f"<h1>vitedge bench <span class='badge {state}'>{escape(headline(report))}</span></h1>",
        "<h2>Verdicts</h2>", _table(verdict_rows(report)),
        *(f"<p class='note'><b>Note:</b> {escape(line)}</p>" for line in notes(report)),
        f"<p class='muted'>{escape(settings_line(report))}. Created {escape(report['created'])}.</p>",
        "<h2>Summary</h2>", _table(summary_rows(report)),
        *(["<h2>Against what you get without vitedge</h2>",
           "<p class='muted'>yardstick p50 / artifact p50 (&gt; 1: the artifact is faster), 95% interval</p>",
           _table(yardstick_rows(report))] if report.get("yardsticks") else []),
    ]
    if gates:
        body += ["<h2>Gates</h2>", _table([{"result": outcome(g).upper(), "gate": g["gate"],
                                             "check": g["message"]} for g in gates])]
    body += list(sections)
    body.append("<h2>Latency distribution</h2>")
    body += [_figure(f"latency-b{b}", latency_plot(report, b, colors),
                     f"Batch {b}: every timed run (dots), inter-quartile box, p50 (thick line), "
                     "min to p99 (whisker); runs beyond the axis are drawn at its edge.")
             for b in report["settings"]["batches"]]
    y_name = "Top-1 accuracy" if report["data"]["labelled"] else "Top-1 agreement with the reference"
    body += ["<h2>Accuracy vs speed</h2>",
             _figure("accuracy-speed", accuracy_speed_plot(report, colors),
                     f"{y_name} against p50 speedup over the PyTorch reference (log scale), "
                     "one point per batch size.")]
    body.append("<h2>Per-class drift</h2>")
    for entry in report["artifacts"]:
        plot = per_class_plot(report, entry, colors[entry["name"]])
        body.append(_figure(f"per-class-{entry['name']}", plot, _per_class_caption(report, entry)))
    body.append("<h2>Worst disagreements</h2>")
    for entry in report["artifacts"]:
        rows = [{"file": w["file"], "label": w["label"] or "-",
                 "reference": f"{w['ref_pred']} ({w['ref_prob']:.3f})",
                 "candidate": f"{w['pred']} ({w['prob']:.3f})", "KL": fmt(w["kl"], 3)}
                for w in entry["worst"]]
        body.append(f"<h3>{escape(entry['name'])}</h3>"
                    + (_table(rows) if rows else "<p class='muted'>no top-1 disagreements</p>"))
    body += ["<h2>Drift</h2>", _table(drift_table(report)),
             "<h2>Latency and resources</h2>", _table(latency_table(report)),
             f"<p class='muted'>{environment_line(report).removeprefix('<sub>').removesuffix('</sub>')}</p>"]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>vitedge bench: {escape(headline(report))}</title><style>{CSS}</style></head>\n"
            f"<body data-status='{state}'>\n" + "\n".join(body) + "\n</body></html>\n")


def _colors(report: dict[str, Any]) -> dict[str, str]:
    colors = {report["reference"]["name"]: REFERENCE_COLOR}
    for i, entry in enumerate([*report["artifacts"], *report.get("yardsticks", [])]):
        colors[entry["name"]] = PALETTE[i % len(PALETTE)]
    return colors


def _table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(str(r[c])) for c in cols) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _cell(text: str) -> str:
    if text in ("PASS", "FAIL", "UNRELIABLE", "SKIPPED"):
        return f"<td class='{text.lower()}-text'>{text}</td>"
    answer = text.split(" ", 1)[0]
    if answer in ("yes", "no", "unreliable"):
        cls = {"yes": "pass-text", "no": "fail-text", "unreliable": "unreliable-text"}[answer]
        return f"<td><span class='{cls}'>{answer}</span>{escape(text[len(answer):])}</td>"
    numeric = _NUMERIC.fullmatch(text) is not None
    return f"<td class='num'>{escape(text)}</td>" if numeric else f"<td>{escape(text)}</td>"


def _figure(key: str, svg: str, caption: str) -> str:
    return (f"<figure class='plot' data-plot='{escape(key)}'>{svg}"
            f"<figcaption>{escape(caption)}</figcaption></figure>")


# -- SVG primitives ---------------------------------------------------------------------------

def _svg(width: int, height: int, label: str, content: list[str]) -> str:
    return (f"<svg class='chart' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label='{escape(label)}'>"
            + "".join(content) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' {extra}>{escape(text)}</text>"


def _line(x1: float, y1: float, x2: float, y2: float, cls: str = "", style: str = "") -> str:
    attrs = (f" class='{cls}'" if cls else "") + (f" style='{style}'" if style else "")
    return f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}'{attrs}/>"


def _title(text: str) -> str:
    return f"<title>{escape(text)}</title>"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


class _Scale:
    """Linear or log map from data values to pixels."""

    def __init__(self, low: float, high: float, start: float, end: float, log: bool = False) -> None:
        self.log = log
        self.low, self.high = (math.log(low), math.log(high)) if log else (low, high)
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        v = math.log(value) if self.log else value
        span = self.high - self.low or 1.0
        return self.start + (v - self.low) / span * (self.end - self.start)


# -- plots ------------------------------------------------------------------------------------

def latency_plot(report: dict[str, Any], batch: int, colors: dict[str, str]) -> str:
    """Rows of per-run latency samples with box, p50 and min-to-p99 whisker, one per runner."""
    rows = [(e, latency_row(e, batch)) for e in subjects(report)]
    rows = [(e, lat) for e, lat in rows if lat is not None]
    left, right, top, row_h = 190, 24, 16, 34
    height = top + row_h * len(rows) + 44
    upper = max(lat["p99_ms"] for _, lat in rows) * 1.15 if rows else 1.0
    x = _Scale(0.0, upper, left, WIDTH - right)
    out = []
    for tick in nice_ticks(0.0, upper):
        out.append(_line(x(tick), top, x(tick), height - 40, "grid"))
        out.append(_text(x(tick), height - 26, fmt(tick, 3), "middle"))
    out.append(_line(left, height - 40, WIDTH - right, height - 40, "axis"))
    out.append(_text((left + WIDTH - right) / 2, height - 8, f"latency per run, ms (batch {batch})",
                     "middle"))
    for i, (entry, lat) in enumerate(rows):
        color = colors[entry["name"]]
        mid = top + row_h * i + row_h / 2
        samples = np.asarray(lat["samples_ms"], dtype=np.float64)
        q25, q75 = np.percentile(samples, [25, 75])
        name = "reference (PyTorch)" if entry["role"] == "reference" else entry["name"]
        tip = (f"{name}, batch {batch}: p50 {lat['p50_ms']:.3f} ms, p90 {lat['p90_ms']:.3f}, "
               f"p99 {lat['p99_ms']:.3f}, mean {lat['mean_ms']:.3f} ± {lat['stdev_ms']:.3f}, "
               f"{lat['throughput']:.1f} images/s, {len(samples)} runs")
        group = [_title(tip), _text(left - 8, mid + 4, name, "end")]
        group.append(_line(x(lat["min_ms"]), mid, x(min(lat["p99_ms"], upper)), mid,
                           style=f"stroke:{color};stroke-width:1.5"))
        group.append(_line(x(min(lat["p99_ms"], upper)), mid - 6, x(min(lat["p99_ms"], upper)), mid + 6,
                           style=f"stroke:{color};stroke-width:1.5"))
        group.append(f"<rect x='{x(q25):.1f}' y='{mid - 8:.1f}' width='{max(x(q75) - x(q25), 1.0):.1f}' "
                     f"height='16' style='fill:{color};fill-opacity:0.25;stroke:{color}'/>")
        group.append(_line(x(lat["p50_ms"]), mid - 10, x(lat["p50_ms"]), mid + 10,
                           style=f"stroke:{color};stroke-width:3"))
        for j, value in enumerate(samples):
            jitter = ((j * 0.618034) % 1.0 - 0.5) * 14
            group.append(f"<circle cx='{x(min(value, upper)):.1f}' cy='{mid + jitter:.1f}' r='1.8' "
                         f"style='fill:{color};fill-opacity:0.6'/>")
        out.append(f"<g class='series' data-name='{escape(entry['name'])}'>" + "".join(group) + "</g>")
    return _svg(WIDTH, height, f"latency distribution at batch {batch}", out)


def accuracy_speed_plot(report: dict[str, Any], colors: dict[str, str]) -> str:
    """Accuracy (or agreement) vs p50 speedup; the reference sits at 1x."""
    labelled = report["data"]["labelled"]
    ref = report["reference"]
    ref_y = ref["accuracy"]["top1_acc"] if labelled else 1.0
    points = [(ref["name"], "reference (PyTorch)", 1.0, ref_y, "")]
    for entry in report["artifacts"]:
        y = entry["drift"]["top1_acc"] if labelled else entry["drift"]["top1_agreement"]
        for b in report["settings"]["batches"]:
            lat = latency_row(entry, b)
            if lat and lat.get("speedup_p50"):
                points.append((entry["name"], entry["name"], lat["speedup_p50"], y, f"b{b}"))
    xs, ys = [p[2] for p in points], [p[3] for p in points]
    left, right, top, bottom, height = 64, 180, 16, 44, 340
    x_low, x_high = min(xs) / 1.3, max(xs) * 1.3
    y_pad = max((max(ys) - min(ys)) * 0.15, 0.005)
    y_low, y_high = max(min(ys) - y_pad, 0.0), min(max(ys) + y_pad, 1.0 + y_pad)
    x = _Scale(x_low, x_high, left, WIDTH - right, log=True)
    y = _Scale(y_low, y_high, height - bottom, top)
    out = []
    for tick in _log_ticks(x_low, x_high):
        out.append(_line(x(tick), top, x(tick), height - bottom, "grid"))
        out.append(_text(x(tick), height - bottom + 16, f"{tick:g}x", "middle"))
    for tick in nice_ticks(y_low, y_high):
        out.append(_line(left, y(tick), WIDTH - right, y(tick), "grid"))
        out.append(_text(left - 6, y(tick) + 4, fmt(tick, 4), "end"))
    out.append(_line(left, height - bottom, WIDTH - right, height - bottom, "axis"))
    out.append(_line(left, top, left, height - bottom, "axis"))
    out.append(_text((left + WIDTH - right) / 2, height - 8, "p50 speedup over PyTorch FP32 (log scale)",
                     "middle"))
    y_name = "top-1 accuracy" if labelled else "top-1 agreement"
    mid_y = (top + height - bottom) / 2
    out.append(_text(14, mid_y, y_name, "middle", f"transform='rotate(-90 14 {mid_y:.1f})'"))
    for key, name, sx, sy, tag in points:
        color = colors[key]
        tip = f"{name}{' ' + tag if tag else ''}: speedup {sx:.2f}x, {y_name} {sy:.4f}"
        px, py = x(sx), y(sy)
        shape = (f"<circle cx='{px:.1f}' cy='{py:.1f}' r='5' style='fill:{color}'/>" if tag else
                 f"<rect x='{px - 5:.1f}' y='{py - 5:.1f}' width='10' height='10' style='fill:{color}'/>")
        out.append(f"<g class='point'>{_title(tip)}{shape}{_text(x(sx) + 8, y(sy) - 6, tag)}</g>")
    for i, (key, name) in enumerate(dict.fromkeys((p[0], p[1]) for p in points)):
        ly = top + 8 + i * 18
        out.append(f"<rect x='{WIDTH - right + 16}' y='{ly - 8}' width='10' height='10' "
                   f"style='fill:{colors[key]}'/>")
        out.append(_text(WIDTH - right + 32, ly + 1, name))
    return _svg(WIDTH, height, "accuracy against speedup", out)


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = [2.0 ** k for k in range(math.floor(math.log2(low)), math.ceil(math.log2(high)) + 1)]
    return [t for t in ticks if low <= t <= high] or [1.0]


def _per_class_caption(report: dict[str, Any], entry: dict[str, Any]) -> str:
    shown = min(len(entry["per_class"]), MAX_CLASSES)
    what = ("top-1 accuracy minus the reference's, per true class" if report["data"]["labelled"]
            else "top-1 agreement minus 1, per class the reference predicts")
    total = len(entry["per_class"])
    more = f" ({shown} classes that drift most of {total})" if shown < total else ""
    return f"{entry['name']}: {what}{more}."


def per_class_plot(report: dict[str, Any], entry: dict[str, Any], color: str) -> str:
    """Diverging bars around zero: accuracy delta per class (or disagreement when unlabelled)."""
    labelled = report["data"]["labelled"]
    rows = [(r, r["delta"] if labelled else r["agreement"] - 1.0) for r in entry["per_class"]]
    if len(rows) > MAX_CLASSES:
        rows = sorted(sorted(rows, key=lambda rv: -abs(rv[1]))[:MAX_CLASSES], key=lambda rv: rv[0]["class"])
    left, right, top, bottom, height = 64, 24, 16, 60, 260
    extent = max([abs(v) for _, v in rows] + [0.01]) * 1.1
    y = _Scale(-extent, extent, height - bottom, top)
    band = (WIDTH - left - right) / max(len(rows), 1)
    out = []
    for tick in nice_ticks(-extent, extent):
        out.append(_line(left, y(tick), WIDTH - right, y(tick), "grid"))
        out.append(_text(left - 6, y(tick) + 4, f"{tick:+.3g}" if tick else "0", "end"))
    out.append(_line(left, y(0.0), WIDTH - right, y(0.0), "axis"))
    out.append(_line(left, top, left, height - bottom, "axis"))
    for i, (row, value) in enumerate(rows):
        cx = left + band * (i + 0.5)
        y0, y1 = sorted((y(0.0), y(value)))
        tip = (f"class {row['name']} ({row['count']} images): "
               + (f"accuracy {row['acc']:.4f} vs reference {row['ref_acc']:.4f}, delta {value:+.4f}"
                  if labelled else f"agreement {row['agreement']:.4f}"))
        out.append(f"<g class='bar'>{_title(tip)}<rect x='{cx - band * 0.35:.1f}' y='{y0:.1f}' "
                   f"width='{band * 0.7:.1f}' height='{max(y1 - y0, 0.8):.1f}' style='fill:{color}'/></g>")
        label_y = height - bottom + 14
        out.append(_text(cx, label_y, row["name"][:12], "end" if len(rows) > 12 else "middle",
                         f"transform='rotate(-45 {cx:.1f} {label_y:.1f})'" if len(rows) > 12 else ""))
    return _svg(WIDTH, height, f"per-class drift of {entry['name']}", out)
