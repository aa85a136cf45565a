"""Write a bench report in all four formats (above `reports` and `report_html`, which it calls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitedge.fsutil import write_text_atomic
from vitedge.validate.report_html import render_html
from vitedge.validate.reports import _finite, render_junit, render_markdown


def write_reports(report: dict[str, Any], report_dir: Path) -> dict[str, str]:
    """Write report.json/.xml/.md/.html into REPORT_DIR; return {format: path}."""
    report_dir.mkdir(parents=True, exist_ok=True)
    files = {fmt: str(report_dir / f"report.{fmt}") for fmt in ("json", "xml", "md", "html")}
    write_text_atomic(files["json"], json.dumps(_finite({**report, "files": files}), indent=2) + "\n")
    write_text_atomic(files["xml"], render_junit(report))
    write_text_atomic(files["md"], render_markdown(report))
    write_text_atomic(files["html"], render_html(report))
    return files
