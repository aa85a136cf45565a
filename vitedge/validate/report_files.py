"""Write a bench report in all four formats (above `reports` and `report_html`, which it calls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitedge.errors import BadInput
from vitedge.fsutil import write_files_atomic
from vitedge.validate.report_html import render_html
from vitedge.validate.reports import _finite, render_junit, render_markdown


def write_reports(report: dict[str, Any], report_dir: Path) -> dict[str, str]:
    """Write report.json/.xml/.md/.html into REPORT_DIR as a set (all or none); return {format: path}."""
    files = {fmt: str(report_dir / f"report.{fmt}") for fmt in ("json", "xml", "md", "html")}
    rendered = {files["json"]: json.dumps(_finite({**report, "files": files}), indent=2) + "\n",
                files["xml"]: render_junit(report), files["md"]: render_markdown(report),
                files["html"]: render_html(report)}
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create --report {report_dir}: {exc.strerror or exc}") from exc
    write_files_atomic(rendered)  # all four or none
    return files
