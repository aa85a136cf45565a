"""report.html in a real headless browser: every plot is laid out and painted, the console is silent.

Needs Debian's `chromium` (apt-get install -y chromium); skipped with the reason when missing.
The page under test has no scripts of its own: a small harness page loads it in an iframe
and measures its SVGs (file:// frames are readable with --allow-file-access-from-files).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vitedge.validate.bench import run_bench

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium: apt-get install -y chromium"),
]

HARNESS = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="report" src="PAGE" width="1200" height="4000"></iframe>
<script>
document.getElementById("report").addEventListener("load", () => {
  const doc = document.getElementById("report").contentDocument;
  const plots = [...doc.querySelectorAll("figure.plot")].map(fig => {
    const svg = fig.querySelector("svg");
    const box = svg.getBoundingClientRect();
    const marks = [...svg.querySelectorAll("circle, rect, line")];
    const painted = marks.filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; });
    return {key: fig.dataset.plot, width: box.width, height: box.height, marks: marks.length,
            painted: painted.length, texts: svg.querySelectorAll("text").length};
  });
  document.getElementById("result").textContent = JSON.stringify(
    {status: doc.body.dataset.status, title: doc.title, scripts: doc.scripts.length, plots});
});
</script></body></html>
"""


def render_in_chromium(page: Path, profile: Path) -> tuple[dict, list[str]]:
    """(what the harness measured, console lines) for PAGE, from chromium --dump-dom."""
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--allow-file-access-from-files", "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert match, proc.stdout[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return json.loads(html.unescape(match.group(1))), console


def test_report_renders_in_a_real_browser(demo_export: Path, digits_val: Path, tmp_path: Path) -> None:
    report = run_bench([demo_export], reference=demo_export, data=digits_val, batches=[1, 2],
                       gates=["top1_agreement>=0.99"], report_dir=tmp_path / "report", max_images=40,
                       warmup=1, iters=5)
    (tmp_path / "report" / "harness.html").write_text(HARNESS.replace("PAGE", "report.html"))
    result, console = render_in_chromium(tmp_path / "report" / "harness.html", tmp_path / "profile")

    assert console == [], "console messages from the report:\n" + "\n".join(console)
    assert result["status"] == "pass" and result["scripts"] == 0
    assert result["title"] == "vitedge bench: all 1 gate checks passed"
    plots = {p["key"]: p for p in result["plots"]}
    assert set(plots) == {"latency-b1", "latency-b2", "accuracy-speed", "per-class-export"}
    for key, plot in plots.items():
        assert plot["width"] >= 700 and plot["height"] >= 100, key
        assert plot["painted"] > 0 and plot["texts"] > 0, key
    samples = sum(len(row["samples_ms"]) for s in (report["reference"], *report["artifacts"])
                  for row in s["latency"] if row["batch"] == 1)
    assert plots["latency-b1"]["painted"] >= samples  # a dot per timed run, plus boxes and whiskers

    # The console check is real: the same page with an external image logs a CSP violation.
    page = (tmp_path / "report" / "report.html").read_text()
    (tmp_path / "report" / "tampered.html").write_text(
        page.replace("<h2>Summary</h2>", "<h2>Summary</h2><img src='https://example.com/x.png'>"))
    (tmp_path / "report" / "harness2.html").write_text(HARNESS.replace("PAGE", "tampered.html"))
    _, console = render_in_chromium(tmp_path / "report" / "harness2.html", tmp_path / "profile2")
    assert any("Content Security Policy" in line for line in console), console
