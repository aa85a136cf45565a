"""Every rich rendering for the terminal (stdout): export, compile, bench and tune summaries,
manifests, doctor. The library computes and returns; the CLI and recipes print through here."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vitedge import ui
from vitedge.backends import all_backends
from vitedge.manifest import RANDOM_WEIGHTS_NOTE, Manifest
from vitedge.validate.reports import headline, notes, settings_line, summary_rows
from vitedge.validate.verdicts import QUESTIONS, outcome, verdicts

out = Console(highlight=False)
LOG_WIDTH = 200  # a log (CI, a pipe) gets wide tables rather than ones squeezed to 80 columns


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_export_summary(manifest: Manifest, out_dir: Path) -> None:
    if ui.is_quiet():
        return
    par = manifest["parity"]
    onnx = manifest["onnx"]
    out.print(f"[green]exported[/green] {manifest['source']['spec']} -> {out_dir / onnx['file']}")
    out.print(f"  opset {onnx['opset']}, {onnx['nodes']} nodes, fused LayerNorm x{onnx['layernorm_fused']}, "
              f"batch {'dynamic' if onnx['dynamic_batch'] else onnx['batch']}, exporter {onnx['exporter']}")
    for name in ("random", "images"):
        if name in par:
            r = par[name]
            out.print(f"  parity ({name}, {r['samples']} samples): top-1 agreement {r['top1_agreement']:.4f}, "
                      f"max abs err {r['max_abs_err']:.2e}, cosine {r['cosine_min']:.6f}"
                      + (f", accuracy {r['top1_acc']:.4f}" if "top1_acc" in r else ""))


def print_manifest(manifest: Manifest) -> None:
    table = Table(title=f"vitedge artifact ({manifest.get('kind')})", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    src = manifest.get("source", {})
    table.add_row("source", f"{src.get('spec')} ({src.get('source')})")
    if src.get("weights_sha256"):
        table.add_row("weights sha256", src["weights_sha256"][:16] + "…")
    if src.get("weights_origin") == "random-init":

        seed = src.get("random_init_seed")
        table.add_row("weights", f"[yellow]{RANDOM_WEIGHTS_NOTE}[/yellow] (--random-init {seed})")
    table.add_row("target / precision", f"{manifest.get('target')} / {manifest.get('precision')}")
    pre = manifest.get("preprocessing", {})
    table.add_row("preprocessing",
                  f"{pre.get('input_size')} {pre.get('interpolation')} resize {pre.get('resize_size')} "
                  f"crop {pre.get('crop_mode')} mean {pre.get('mean')} std {pre.get('std')}")
    labels = manifest.get("labels")
    table.add_row("labels", f"{len(labels)}: {', '.join(labels[:5])}{'…' if len(labels) > 5 else ''}"
                  if labels else "none")
    for kind in ("inputs", "outputs"):
        for t in manifest.get("io", {}).get(kind, []):
            table.add_row(kind[:-1], f"{t['name']} {t['shape']} {t['dtype']}")
    if "onnx" in manifest:
        o = manifest["onnx"]
        table.add_row("onnx", f"opset {o.get('opset')}, {o.get('nodes')} nodes, exporter {o.get('exporter')}")
    for name, r in manifest.get("parity", {}).items():
        if isinstance(r, dict) and "top1_agreement" in r:
            table.add_row(f"parity ({name})", f"top-1 {r['top1_agreement']:.4f}, max abs {r['max_abs_err']:.2e}, "
                          f"cosine {r['cosine_min']:.6f}")
    for key in ("runtime", "calibration", "precision_summary", "validation"):
        if manifest.get(key):
            table.add_row(key, ", ".join(f"{k}={_fmt(v)}" for k, v in manifest[key].items()
                                         if not isinstance(v, (dict, list))))
    tools = manifest.get("tools", {})
    table.add_row("tools", ", ".join(f"{k} {v}" for k, v in tools.items() if v))
    files = manifest.get("files", {})
    table.add_row("files", ", ".join(f"{k} ({v[:8]})" for k, v in files.items()))
    out.print(table)


def print_doctor(report: dict[str, Any]) -> None:
    table = Table(title="backends")
    for col in ("backend", "status", "version", "precisions"):
        table.add_column(col)
    for name, b in report["backends"].items():
        status = "[green]usable[/green]" if b["usable"] else "[red]missing[/red]"
        table.add_row(name, status, b["version"] or "-", ",".join(b["precisions"]))
    out.print(table)
    for name, b in report["backends"].items():
        if not b["usable"]:
            out.print(f"{name}: {escape(b['reason'])}\n  how to get it: {escape(b['install'])}", soft_wrap=True)
    for name, b in report["backends"].items():
        for lib, info in (b.get("engine_libraries") or {}).items():
            state = (f"{info['version']}, builds here: {'yes' if info['builds_here'] else 'no'}, this GPU runs its "
                     f"engines: {'yes' if info['runs_engines_here'] else 'no'}" if info["version"] else "not installed")
            uses = " (compile --engine-lib auto uses it)" if info["compile_uses"] else ""
            why = f"\n    {escape(info['reason'])}" if info["reason"] and info["version"] else ""
            out.print(f"{name} engine library {lib}: {escape(state)}{uses}{why}", soft_wrap=True)
        if "driver_gpus" in b and not b["driver_gpus"]:
            out.print(f"{name}: no NVIDIA GPU seen by the CUDA driver (libcuda) or nvidia-smi")
    cpu = report["hardware"]["cpu"]
    out.print(f"CPU: {cpu['model']} ({cpu['cores']} cores, {cpu['arch']})")
    out.print(f"  ISA: {', '.join(cpu['isa']) or 'none of AVX2/AVX-512/VNNI/BF16/AMX'}")
    if cpu.get("bf16_native"):
        out.print("  note: OpenVINO runs bf16 by default on this CPU; vitedge pins f32 for FP32 artifacts")
    if cpu.get("int8_vnni") is False:
        out.print("  note: no INT8 dot-product instructions (VNNI/AMX): OpenVINO INT8 is often slower than "
                  "FP32 on this CPU; bench before you ship it")
    gpus = report["hardware"]["gpus"]
    if gpus:
        for g in gpus:
            out.print(f"GPU {g['index']}: {g['name']} (compute {g['compute_capability']}, {g['memory_gib']} GiB)")
    else:
        out.print("GPU: none visible to PyTorch (CUDA)")
    for g in report["backends"].get("tensorrt", {}).get("driver_gpus", []):
        out.print(f"NVIDIA driver: GPU {g['index']}: {g['name']} (compute {g['compute_capability']}, driver "
                  f"{g.get('driver') or '?'}, CUDA {g.get('cuda_driver') or '?'}; via {g['source']})")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_compile_summary(manifest: Manifest, out_dir: str | Path) -> None:
    """One screen: what was built, what really runs in which precision, and how it was checked."""
    if ui.is_quiet():
        return
    build = manifest.get("compile", {})
    art = manifest.get("artifact", {})
    state = "[yellow]incomplete[/yellow]" if "incomplete" in manifest else "[green]compiled[/green]"
    where = escape(str(Path(out_dir) / art.get("model", "")))
    out.print(f"{state} {escape(str(manifest['source'].get('spec')))} -> {where} "
              f"({manifest['target']} {manifest['precision']}, {_size(build.get('artifact_bytes', 0))}, "
              f"{build.get('seconds', 0):.1f} s)")
    backends = all_backends()
    runs = backends[manifest.target].summary_line(manifest) if manifest.target in backends else None
    if runs:
        out.print(f"  {escape(runs)}")
    cal = manifest.get("calibration")
    if cal:
        out.print(f"  calibration: {cal['size']} images from {escape(cal['source'])} ({cal['method']}, "
                  f"seed {cal['seed']}, hash {cal['content_hash'][:12]}"
                  + (f", {cal['skipped']} skipped" if cal.get("skipped") else "") + ")")
    summary = manifest.get("precision_summary", {})
    out.print("  precision: " + ", ".join(f"{v} {k}" for k, v in summary.items()))
    plan = manifest.get("precision_plan", [])
    if plan:
        table = Table(show_header=True, box=None, padding=(0, 2))
        for col in ("nodes", "dtype", "why"):
            table.add_column(col)
        for (dtype, reason), count in Counter((e["dtype"], e["reason"]) for e in plan).most_common(8):
            table.add_row(str(count), dtype, escape(reason))
        out.print(table)
    val = manifest.get("validation")
    if val and "skipped" in val:
        out.print(f"  validation: not run here ({escape(val['skipped'])})", soft_wrap=True)
    elif val:
        line = (f"  validation ({val['samples']} images vs FP32 ONNX): top-1 agreement {val['top1_agreement']:.4f}, "
                f"max abs err {val['max_abs_err']:.3g}")
        if "top1_acc" in val:
            line += f", accuracy {val['top1_acc']:.4f} (fp32 {val['ref_top1_acc']:.4f}, drop {val['acc_drop']:+.4f})"
        out.print(line)
    if "incomplete" in manifest:
        out.print(f"  [yellow]next step:[/yellow] {escape(manifest['incomplete']['next_step'])}",
                  soft_wrap=True)  # a command to copy: never wrapped


# -- bench and tune ---------------------------------------------------------------------------

_MARKS = {"pass": "[green]PASS[/green]", "fail": "[red]FAIL[/red]",
          "unreliable": "[yellow]UNRELIABLE[/yellow]", "skipped": "[dim]SKIPPED[/dim]"}
_ANSWER_STYLE = {"yes": "green", "no": "red", "unreliable": "yellow"}


def print_result(result: dict[str, Any] | None) -> None:
    """The summary of what a bench, recipe or tune returned (or attached to its gate error)."""
    if result is None or ui.is_quiet():
        return
    from vitedge.tune import TUNE_SCHEMA

    if result.get("schema") == TUNE_SCHEMA:
        print_tune_summary(result)
    else:
        print_bench_summary(result)


def _wide() -> Console:
    return out if out.is_terminal else Console(highlight=False, width=LOG_WIDTH)


def print_bench_summary(report: dict[str, Any]) -> None:
    """The verdicts and notes first, then the measurement table, gate and report-file lines."""
    console = _wide()
    verdict_table = Table(title=f"vitedge bench: {headline(report)}")
    verdict_table.add_column("artifact", no_wrap=True)
    for question in QUESTIONS.values():
        verdict_table.add_column(question)
    for verdict in report.get("verdicts") or verdicts(report):
        cells = []
        for key in QUESTIONS:
            answer = verdict[key]["answer"]
            style = _ANSWER_STYLE.get(answer)
            word = f"[{style}]{answer}[/{style}]" if style else answer
            cells.append(f"{word} {escape(verdict[key]['detail'])}")
        verdict_table.add_row(escape(verdict["artifact"]), *cells)
    console.print(verdict_table)
    for line in notes(report):
        console.print(f"[yellow]note:[/yellow] {escape(line)}", soft_wrap=True)
    rows = summary_rows(report)
    table = Table(title="measurements")
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("artifact", "target", "precision") else "right",
                         no_wrap=True)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    console.print(escape(settings_line(report)), soft_wrap=True)
    for gate in report["gates"]:
        text = escape(f"[{gate['gate']}] {gate['message']}")
        console.print(f"  {_MARKS[outcome(gate)]} {text}", soft_wrap=True)
    if report.get("files"):
        console.print(escape(f"reports: {', '.join(report['files'].values())}"), soft_wrap=True)


def print_tune_summary(result: dict[str, Any]) -> None:
    """One table: every candidate, what happened to it, its numbers; then the choice."""
    from vitedge.tune import score

    console = _wide()
    table = Table(show_header=True, box=None, padding=(0, 2))
    batches = [str(b) for b in result["batches"]]
    for col in ("candidate", "runs", *[f"p50 b{b} ms" for b in batches], "speedup", "acc drop", "outcome"):
        table.add_column(col)
    for c in result["candidates"]:
        res = c["result"]
        mark = "[green]chosen[/green] " if c["name"] == result["chosen"] else ""
        drop = res.get("acc_drop")
        table.add_row(escape(c["name"]), c.get("precision_run") or "-",
                      *[f"{res['p50_ms'][b]:.2f}" if b in res.get("p50_ms", {}) else "-" for b in batches],
                      f"{score(c):.2f}x" if res else "-",
                      "-" if drop is None else f"{drop:+.4f}",
                      mark + escape(c["reason"] if c["status"] == "benched" else c["status"]))
    console.print(table)
    for c in (c for c in result["candidates"] if c.get("knob")):  # what each knob variant changes
        outcome = "" if c["status"] == "benched" else f" [{c['status']}: {c['reason']}]"
        console.print(f"  {escape(c['name'])}: {escape(c['knob'] + outcome)}")
    console.print(f"[bold]{escape(result['why'])}[/bold]")
    if result["best_dir"]:
        console.print(f"best artifact: {escape(result['best_dir'])}; report: "
                         f"{escape(str(Path(result['report_dir']) / 'report.html'))}")


def unreliable_epilogue(report: dict[str, Any] | None, out_dir: str | Path | None = None) -> str:
    """What a run whose only undecided gates are speed gates still delivered, for the lines that
    end its output (the exit code stays 5): the accuracy gates passed, where the artifacts and
    reports are, and how to measure speed again. Empty when a gate failed or an accuracy gate
    is itself undecided."""
    from vitedge.validate.gates import METRICS, PER_BATCH

    if not report or not report.get("gates") or not all(isinstance(g, dict) for g in report["gates"]):
        return ""

    def speed(gate: dict[str, Any]) -> bool:
        metrics = [gate.get("metric"), (gate.get("other") or {}).get("metric")]
        return any(m in METRICS and METRICS[m].group in PER_BATCH for m in metrics)

    gates = report["gates"]
    if any(outcome(g) == "fail" or (outcome(g) == "unreliable" and not speed(g)) for g in gates):
        return ""
    accuracy = [g for g in gates if not speed(g) and outcome(g) != "skipped"]
    passed = sum(outcome(g) == "pass" for g in accuracy)
    lines = [f"accuracy gates: {passed} of {len(accuracy)} passed; only speed was undecided (this machine "
             "was busy or the runs too few), so the artifacts are usable"]
    files = report.get("files") or {}
    if out_dir is not None:
        lines.append(f"artifacts: {Path(out_dir) / 'artifacts'}/ (export: {Path(out_dir) / 'export'}/)")
    if files:
        lines.append(f"reports: {', '.join(files.values())}")
    lines.append("to measure speed again: re-run this command on a quiet machine (nothing else running; "
                 "a recipe reuses its finished steps), or with more timed runs (--iters, or "
                 "`--set bench.iters=100` for a recipe)")
    return "\n".join(lines)
