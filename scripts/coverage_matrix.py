"""Run the model-coverage matrix (tests/coverage_matrix.py) and write its result into docs/models.md.

Every case (one per model source at least) x every exporter ("auto" and each of
vitedge.export.EXPORTERS) is exported; every export that worked is compiled for every target and
precision of the compile backends, each cell checked as tests/test_coverage_matrix.py checks it.
The table goes between the coverage-matrix markers of docs/models.md (--no-write: print it only);
the raw results to --json.

    PYTHONPATH=$PWD nice -n 19 python scripts/coverage_matrix.py               # everything
    PYTHONPATH=$PWD python scripts/coverage_matrix.py --cases hf_swin torchscript --no-write
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import coverage_matrix as cm  # noqa: E402

DOC = REPO / "docs" / "models.md"
BEGIN, END = "<!-- coverage-matrix:begin -->", "<!-- coverage-matrix:end -->"
SHORT = {"onnxruntime": "ORT", "openvino": "OV", "tensorrt": "TRT"}


def run(case_names: list[str], work: Path, log: bool = True) -> dict:
    rows = []
    start = time.perf_counter()
    targets = cm.targets()
    for case in (cm.CASES_BY_NAME[n] for n in case_names):
        cwork = work / case.name
        spec, flags = cm.build_case(case, cwork)
        for exporter in cm.exporters():
            export_dir = cwork / f"export-{exporter}"
            exp = cm.export_cell(case, exporter, spec, flags, export_dir)
            row = {"case": case.name, "source": case.source, "family": case.family, "exporter": exporter,
                   "export": {"code": exp.code, "outcome": exp.outcome, "passed": exp.passed,
                              "seconds": round(exp.seconds, 1), "problems": exp.problems,
                              **({"text": exp.line()} if not exp.passed else {})},
                   "compile": {}}
            if log:
                print(f"{case.name:26s} {exporter:15s} export {exp.outcome or '-':28s} "
                      f"{'ok' if exp.passed else 'FAIL ' + exp.line()} {exp.seconds:.1f}s", flush=True)
            # the auto export is one of the others (same exporter, same graph): compiled there
            if exporter != cm.AUTO and exp.code == 0 and exp.passed:
                for target, precision in targets:
                    out = cwork / f"{exporter}-{target}-{precision}"
                    res = cm.compile_cell(case, export_dir, target, precision, out, cwork)
                    row["compile"][f"{target}/{precision}"] = {
                        "code": res.code, "outcome": res.outcome, "passed": res.passed,
                        "cosine_min": res.cosine_min, "seconds": round(res.seconds, 1), "problems": res.problems,
                        **({"text": res.line()} if not res.passed else {})}
                    if log:
                        print(f"    {target:12s} {precision:5s} {res.outcome or '-':9s} "
                              f"cos {res.cosine_min if res.cosine_min is not None else float('nan'):.5f} "
                              f"{'ok' if res.passed else 'FAIL ' + res.line()} {res.seconds:.1f}s", flush=True)
            rows.append(row)
    return {"rows": rows, "targets": [f"{t}/{p}" for t, p in targets], "seconds": round(time.perf_counter() - start),
            "date": _dt.date.today().isoformat(), "machine": f"{platform.machine()}, {_cpus()} CPUs",
            "tolerance": cm.TOLERANCE, "case_tolerance": {c.name: c.tolerance for c in cm.CASES if c.tolerance}}


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _cell(cell: dict | None) -> str:
    if cell is None:
        return ""
    if not cell["passed"]:
        return f"**FAIL** (exit {cell['code']})"
    if cell["outcome"] == "unavailable":
        return "not usable here (exit 3)"
    if cell["outcome"] == "fails":
        return "known failure (exit 4)"
    mark = {"plan": "plan", "engine": "engine", "artifact": "ok"}[cell["outcome"]]
    return f"{mark} {cell['cosine_min']:.4f}"


def markdown(result: dict) -> str:
    targets = result["targets"]
    head = ["case (source)", "exporter", "export"] + [
        f"{SHORT.get(t.split('/')[0], t.split('/')[0])} {t.split('/')[1]}" for t in targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        exp = row["export"]
        if not exp["passed"]:
            status = f"**FAIL** (exit {exp['code']})"
        elif row["exporter"] == cm.AUTO:
            status = f"takes **{exp['outcome']}**"
        else:
            status = {"n/a": "does not apply (exit 2)", "fails": "known failure (exit 4)"}.get(exp["outcome"], "ok")
        cells = [_cell(row["compile"].get(t)) for t in targets]
        lines.append(f"| {row['case']} ({row['source']}) | {row['exporter']} | {status} | " + " | ".join(cells) + " |")
    cells = [c for r in result["rows"] for c in r["compile"].values()]
    exports = [r["export"] for r in result["rows"]]
    failed = sum(not c["passed"] for c in cells) + sum(not e["passed"] for e in exports)
    minutes = (sum(c["seconds"] for c in cells) + sum(e["seconds"] for e in exports)) / 60
    tol = ", ".join(f"{p} {v}" for p, v in result["tolerance"].items())
    per_case = "; ".join(f"{n}: {', '.join(f'{p} {v}' for p, v in t.items())}"
                         for n, t in result["case_tolerance"].items())
    return "\n".join([
        f"Measured {result['date']} ({result['machine']}, shared with other work; {minutes:.0f} min for "
        f"{len(exports)} exports and {len(cells)} compiles; {failed} failed) by "
        "`PYTHONPATH=$PWD nice -n 19 python scripts/coverage_matrix.py`. A cell is the compile's result and "
        "the smallest per-image cosine of its logits vs the export's FP32 ONNX on 16 digit images: `ok` "
        "(exit 0, the artifact's own runner), `plan` (exit 3: TensorRT is not installed here, the "
        "TensorRT-ready ONNX is written and its drift is the plan run on CPU with FP16 storage emulated), "
        "`engine` (exit 0 with a TensorRT engine; without a GPU, TensorRT-RTX builds it ahead of time "
        "and its drift is the plan's, as for `plan`), `known failure` (the error the case declares, exit 4). "
        "An `auto` row says which exporter the fallback chain "
        "takes (its graph is the one compiled in that exporter's row). Tolerance (cosine_min): "
        f"{tol}{'; ' + per_case if per_case else ''}.",
        "",
        *lines,
    ])


def write_doc(table: str) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", choices=list(cm.CASES_BY_NAME),
                        help="run these cases only (default: all; with --from-json: none)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--from-json", type=Path,
                        help="start from a previous --json: its rows, with those of --cases run again")
    parser.add_argument("--no-write", action="store_true", help=f"print the table, leave {DOC.name} alone")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    previous = json.loads(args.from_json.read_text()) if args.from_json else None
    cases = args.cases if args.cases is not None else ([] if previous else [c.name for c in cm.CASES])
    with tempfile.TemporaryDirectory(prefix="vitedge-matrix-") as tmp:
        result = run(cases, Path(tmp))
    if previous:  # the previous rows in case order, those run now replaced
        fresh = {r["case"] for r in result["rows"]}
        rows = [r for r in previous["rows"] if r["case"] not in fresh] + result["rows"]
        order = {c.name: i for i, c in enumerate(cm.CASES)}
        rows.sort(key=lambda r: order.get(r["case"], len(order)))  # stable: exporters keep their order
        result = {**previous, "rows": rows, "tolerance": cm.TOLERANCE, "case_tolerance": result["case_tolerance"]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    table = markdown(result)
    print(table)
    if not args.no_write:
        write_doc(table)
        print(f"written into {DOC}")


if __name__ == "__main__":
    main()
