"""Faults a user meets: interrupts, full disks, read-only and foreign outputs, concurrent runs,
hostile manifests and recipes. Real `vitedge` processes where the fault is a process-level one
(signals, file-size limits, locks held by another process); every case asserts the exit code,
the one-line message and what is left on disk.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FAST = ("--batch", "1", "--iters", "2", "--warmup", "0", "--max-images", "24")


# -- helpers ----------------------------------------------------------------------------------

def _spawn(*args: object, cwd: Path, home: Path | None = None,
           preexec: Callable[[], None] | None = None) -> subprocess.Popen:
    """`python -m vitedge ARGS` as a separate process (HOME redirected to see what it writes).

    SIGINT is put back to its default in the child: a test run started in the background by a
    non-interactive shell (`pytest &`, `nohup ... &`) ignores SIGINT, as POSIX asks, and its
    children inherit that, so SIGINT did nothing and the interrupted run finished with exit 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home or cwd)}
    env.pop("VITEDGE_TELEMETRY", None)

    def child_setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec is not None:
            preexec()

    return subprocess.Popen([sys.executable, "-m", "vitedge", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=child_setup)


def _interrupt(start: Callable[[int], subprocess.Popen], point: Callable[[int], object],
               sig: int = signal.SIGINT, attempts: int = 3, timeout: float = 180) -> subprocess.Popen:
    """Start a run (`START(attempt)`) and send SIG once `POINT(attempt)` holds. The process is
    stopped (SIGSTOP) while POINT is checked again, so the signal lands mid-work even when a loaded
    machine delays this poller; it is delivered on SIGCONT. A run that got past the point first
    (it finished between two polls, or POINT no longer held once it was stopped) is let finish
    and started again, ATTEMPTS times at most (a failed run fails the test at once)."""
    for attempt in range(attempts):
        proc = start(attempt)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if point(attempt):
                proc.send_signal(signal.SIGSTOP)
                if point(attempt):
                    proc.send_signal(sig)
                    proc.send_signal(signal.SIGCONT)
                    return proc
                proc.send_signal(signal.SIGCONT)
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("timed out waiting for the point to interrupt")
            time.sleep(0.02)
        code, err = _finish(proc)
        assert code == 0, f"the run failed (rc {code}) before the point to interrupt: {err}"
    raise AssertionError(f"all {attempts} runs got past the point to interrupt before the signal")


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _vitedge_leftovers(folder: Path) -> list[str]:
    """Hidden temp dirs/files and lock files vitedge may leave next to its outputs."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".vitedge-" in p.name)


def _temp_dirs(folder: Path, name: str) -> list[Path]:
    return list(folder.glob(f".{name}.vitedge-tmp-*"))


def _one_error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    assert "Traceback" not in text and "internal error" not in text
    return " ".join(text.split())


def _edit_manifest(artifact: Path, edit: Callable[[dict], None]) -> None:
    path = artifact / "vitedge.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def openvino_fp32(compiled_demo) -> Path:
    return compiled_demo("openvino", "fp32")


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(size, readonly) -> a small tmpfs under tmp_path (skips where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(size: str = "4m", readonly: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


@pytest.fixture()
def readonly_dir(tmp_path: Path, tmpfs) -> Path:
    """A directory this process cannot write (chmod for users, a read-only tmpfs for root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return tmpfs("1m", readonly=True)


# -- interrupts: SIGINT / SIGTERM / SIGKILL at several points ----------------------------------

def test_sigint_during_export_leaves_nothing_and_a_rerun_succeeds(cli, tmp_path: Path) -> None:
    proc = _interrupt(lambda i: _spawn("export", "demo:digits", "-o", tmp_path / f"export{i}", cwd=tmp_path),
                      lambda i: _temp_dirs(tmp_path, f"export{i}"))  # the ONNX export is being written
    out = Path(proc.args[proc.args.index("-o") + 1])
    code, err = _finish(proc)
    assert code == 130, err
    assert "aborted, nothing written" in err and "Traceback" not in err
    assert not out.exists() and _vitedge_leftovers(tmp_path) == []
    rerun = cli("--quiet", "export", "demo:digits", "-o", out)
    assert rerun.code == 0, rerun.text
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "vitedge.json"]


def test_sigterm_during_compile_keeps_the_previous_artifact(tmp_path: Path, demo_export: Path,
                                                            openvino_fp32: Path) -> None:
    """A compile over a previous artifact, terminated mid-build: the old artifact is intact,
    no temp dir remains, and OpenVINO/NNCF telemetry wrote nothing to HOME."""
    before = (openvino_fp32 / "vitedge.json").read_text()
    home = tmp_path / "home"
    home.mkdir()

    def start(i: int) -> subprocess.Popen:
        shutil.copytree(openvino_fp32, tmp_path / f"ov{i}")
        return _spawn("compile", demo_export, "--target", "openvino", "-o", tmp_path / f"ov{i}", cwd=tmp_path,
                      home=home)

    proc = _interrupt(start, lambda i: _temp_dirs(tmp_path, f"ov{i}"), signal.SIGTERM)
    out = Path(proc.args[proc.args.index("-o") + 1])
    code, err = _finish(proc)
    assert code == 130, err
    assert "terminated, nothing written" in err and "Traceback" not in err
    assert (out / "vitedge.json").read_text() == before
    assert _vitedge_leftovers(tmp_path) == []
    assert list(home.iterdir()) == []  # no ~/intel/openvino_ga_cid: telemetry is off
    import vitedge

    with vitedge.load(out) as model:  # the previous artifact still verifies and runs
        h, w = model.preprocessing.input_size
        assert model.predict(np.zeros((1, 3, h, w), np.float32)).shape == (1, 10)


def test_sigkill_leftovers_are_removed_by_the_next_run(cli, tmp_path: Path, demo_export: Path) -> None:
    proc = _interrupt(lambda i: _spawn("compile", demo_export, "--target", "openvino", "-o", tmp_path / f"ov{i}",
                                       cwd=tmp_path),
                      lambda i: _temp_dirs(tmp_path, f"ov{i}"), signal.SIGKILL)
    out = Path(proc.args[proc.args.index("-o") + 1])
    proc.communicate(timeout=60)
    assert _temp_dirs(tmp_path, out.name) and not out.exists()  # what a SIGKILL leaves
    rerun = cli("compile", demo_export, "--target", "openvino", "-o", out)
    assert rerun.code == 0, rerun.text
    assert "left by an interrupted run" in rerun.err
    assert _vitedge_leftovers(tmp_path) == [] and (out / "vitedge.json").is_file()


def test_sigint_during_a_recipe_run(tmp_path: Path, digits_val: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {{spec: 'demo:digits'}}\n"
                      f"targets: [{{target: onnxruntime, precision: fp32}}]\n"
                      f"bench: {{data: {digits_val}, batches: [1], iters: 2, warmup: 0}}\n")
    proc = _interrupt(lambda i: _spawn("run", recipe, "-o", tmp_path / f"run{i}", cwd=tmp_path),
                      lambda i: _temp_dirs(tmp_path / f"run{i}", "export"))
    out = Path(proc.args[proc.args.index("-o") + 1])
    code, err = _finish(proc)
    assert code == 130, err
    assert "aborted, nothing written (steps finished before are kept)" in err and "Traceback" not in err
    assert not (out / "export").exists() and _vitedge_leftovers(tmp_path) == []


# -- disk full, read-only outputs ---------------------------------------------------------------

def test_file_size_limit_during_openvino_compile(tmp_path: Path, demo_export: Path) -> None:
    """The write of model.bin fails mid-compile (RLIMIT_FSIZE, as on a full disk): one line,
    exit 3, nothing left (it used to be `internal error: RuntimeError: basic_ios::clear`)."""
    out = tmp_path / "ov"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (512 << 10, 512 << 10))

    proc = _spawn("compile", demo_export, "--target", "openvino", "-o", out, cwd=tmp_path, preexec=limit)
    code, err = _finish(proc)
    assert code == 3, err
    text = _one_error_line(err)
    assert f"ran out of room writing {out}" in text and "file-size limit" in text
    assert not out.exists() and _vitedge_leftovers(tmp_path) == []


def test_full_disk_is_found_before_the_work(cli, tmpfs, demo_export: Path, digits_val: Path) -> None:
    small = tmpfs("2m")
    r = cli("compile", demo_export, "--target", "onnxruntime", "-o", small / "ort")
    assert r.code == 3
    assert "not enough disk space for compiling" in _one_error_line(r.err)
    r = cli("bench", demo_export, "--reference", demo_export, "--data", digits_val, "--report", small / "r", *FAST)
    assert r.code == 3 and "not enough disk space for the bench reports" in _one_error_line(r.err)
    assert list(small.iterdir()) == []


def test_read_only_outputs_are_refused_before_loading(cli, readonly_dir: Path, demo_export: Path,
                                                      digits_val: Path) -> None:
    r = cli("export", "timm:no_such_model", "-o", readonly_dir / "e")  # the output is checked first
    assert r.code == 2 and "is not writable" in _one_error_line(r.err)
    r = cli("bench", demo_export, "--reference", demo_export, "--data", digits_val, "--report",
            readonly_dir / "r", *FAST)
    assert r.code == 2 and "is not writable" in _one_error_line(r.err)


def test_reports_are_written_as_a_set(tmp_path: Path) -> None:
    from vitedge.errors import BadInput
    from vitedge.fsutil import write_files_atomic

    (tmp_path / "report.json").write_text("old")
    with pytest.raises(BadInput, match="cannot write"):
        write_files_atomic({tmp_path / "report.json": "new", tmp_path / "gone" / "report.md": "x"})
    assert (tmp_path / "report.json").read_text() == "old" and _vitedge_leftovers(tmp_path) == []


def test_a_swap_cut_by_sigkill_is_put_back(tmp_path: Path) -> None:
    """Killed between moving the old output aside and moving the new one in: the next run
    restores the old one (pid 4194305 is above Linux's pid limit, so never alive)."""
    from vitedge.fsutil import clean_stale

    aside = tmp_path / ".art.vitedge-old-4194305-abc"
    aside.mkdir()
    (aside / "vitedge.json").write_text("{}")
    (tmp_path / ".art.vitedge-tmp-4194305-xyz").mkdir()
    done = clean_stale(tmp_path / "art")
    assert len(done) == 2 and (tmp_path / "art" / "vitedge.json").is_file()
    assert _vitedge_leftovers(tmp_path) == []


# -- two processes on one output ----------------------------------------------------------------

def test_second_process_on_a_locked_output_exits_2_until_the_holder_dies(
        cli, tmp_path: Path, demo_export: Path, digits_val: Path) -> None:
    report = tmp_path / "report"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vitedge.fsutil import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n", str(report)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        r = cli("bench", demo_export, "--reference", demo_export, "--data", digits_val, "--report", report, *FAST)
        assert r.code == 2
        assert f"being written by another vitedge process (pid {holder.pid})" in _one_error_line(r.err)
        assert not report.exists()
    finally:
        holder.kill()  # a killed holder releases its lock
        holder.communicate(timeout=30)
    r = cli("--quiet", "bench", demo_export, "--reference", demo_export, "--data", digits_val, "--report", report,
            *FAST)
    assert r.code == 0, r.text
    assert sorted(p.name for p in report.iterdir()) == ["report.html", "report.json", "report.md", "report.xml"]
    assert _vitedge_leftovers(tmp_path) == []


# -- the output-dir policy ----------------------------------------------------------------------

def test_foreign_output_dirs_are_refused_unless_forced(cli, tmp_path: Path, demo_export: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    r = cli("export", "demo:digits", "-o", mine)
    assert r.code == 2 and "not empty and not a vitedge artifact" in _one_error_line(r.err)
    r = cli("compile", demo_export, "--target", "onnxruntime", "-o", mine)
    assert r.code == 2 and "--force" in _one_error_line(r.err)
    assert (mine / "notes.txt").read_text() == "my notes" and _vitedge_leftovers(tmp_path) == []
    # a previous export with a user file added is not replaced either (the file would be lost)
    previous = tmp_path / "previous"
    shutil.copytree(demo_export, previous)
    (previous / "README.txt").write_text("keep me")
    r = cli("compile", previous, "--target", "onnxruntime", "-o", tmp_path / "ort")  # its input is fine
    assert r.code == 0, r.text
    r = cli("export", "demo:digits", "-o", previous)
    assert r.code == 2 and "also holds files vitedge did not write (README.txt)" in _one_error_line(r.err)
    r = cli("--quiet", "export", "demo:digits", "-o", mine, "--force")
    assert r.code == 0 and sorted(p.name for p in mine.iterdir()) == ["model.onnx", "vitedge.json"]


def test_output_that_holds_the_input_is_refused_even_with_force(cli, tmp_path: Path, demo_export: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(demo_export, proj / "export")
    for extra in ((), ("--force",)):
        r = cli("compile", proj / "export", "--target", "onnxruntime", "-o", proj, *extra)
        assert r.code == 2 and "holds the input" in _one_error_line(r.err)
    r = cli("compile", proj / "export", "--target", "onnxruntime", "-o", proj / "export" / "ort")
    assert r.code == 2 and "is inside the input" in _one_error_line(r.err)
    assert sorted(p.name for p in (proj / "export").iterdir()) == ["model.onnx", "vitedge.json"]


def test_output_dot_and_nested_paths(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    r = cli("export", "demo:digits", "-o", ".")
    assert r.code == 2 and "is the current directory" in _one_error_line(r.err)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no hidden half-written dir
    r = cli("--quiet", "export", "demo:digits", "-o", "a/b/c")
    assert r.code == 0 and (tmp_path / "a/b/c/vitedge.json").is_file()


def test_run_refuses_a_dir_with_user_files(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`vitedge run -o .` used to wipe an existing export/ holding the user's notes."""
    work = tmp_path / "work"
    (work / "export").mkdir(parents=True)
    (work / "export" / "notes.md").write_text("mine")
    monkeypatch.chdir(work)
    r = cli("run", REPO / "recipes" / "quickstart.yaml", "-o", ".")
    assert r.code == 2 and "not a previous `vitedge run` output" in _one_error_line(r.err)
    (work / "vitedge-run.json").write_text("{}")  # even inside a run dir, export/ is not vitedge's
    r = cli("run", REPO / "recipes" / "quickstart.yaml", "-o", ".")
    assert r.code == 2 and "export is not empty and not a vitedge artifact" in _one_error_line(r.err)
    assert (work / "export" / "notes.md").read_text() == "mine"


# -- code execution from data -------------------------------------------------------------------

def test_bench_refuses_code_sources_named_by_a_manifest(cli, tmp_path: Path, demo_export_copy: Path,
                                                        digits_val: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "evil_factory.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                              "def make():\n    import torch\n    return torch.nn.Identity()\n")
    monkeypatch.chdir(tmp_path)
    for spec in ("evil_factory:make", "os:getpid", str(tmp_path / "model.pt2"), str(tmp_path / "m.pt")):
        _edit_manifest(demo_export_copy, lambda m, s=spec: m["source"].update(spec=s, request={"spec": s}))
        r = cli("bench", demo_export_copy, "--reference", demo_export_copy, "--data", digits_val, *FAST)
        assert r.code == 2
        assert "which runs code when loaded" in _one_error_line(r.err) and "--trust-source" in r.err
        assert not marker.exists()
    _edit_manifest(demo_export_copy, lambda m: m["source"].update(spec="evil_factory:make",
                                                                   request={"spec": "evil_factory:make"}))
    r = cli("bench", demo_export_copy, "--reference", demo_export_copy, "--data", digits_val, "--trust-source", *FAST)
    assert marker.exists()  # the flag is what lets it run (this factory's model then fails the checks)
    assert r.code == 2 and "runs code" not in _one_error_line(r.err)


def test_pt2_is_loaded_without_running_its_pickles(tmp_path: Path) -> None:
    """A .pt2 whose pickled parts run code: torch.export.load would run them (it falls back to
    weights_only=False); vitedge's loader refuses the archive and nothing runs."""
    import pickle
    import zipfile

    import torch

    from vitedge.errors import BadInput
    from vitedge.models import load_model

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    good, evil = tmp_path / "good.pt2", tmp_path / "evil.pt2"
    torch.export.save(torch.export.export(torch.nn.Flatten(), (torch.randn(2, 3, 8, 8),)), good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, pickle.dumps(Payload(), protocol=2) if item.filename.endswith("sample_inputs/model.pt")
                         else data)
    with pytest.raises(BadInput, match="holds pickled data that is not plain tensors"):
        load_model(str(evil))
    assert not marker.exists()
    opaque = tmp_path / "opaque.pt2"
    with zipfile.ZipFile(opaque, "w") as archive:  # constants torch reads with plain pickle.loads
        archive.writestr("m/data/constants/opaque_obj_0", pickle.dumps(Payload(), protocol=2))
    with pytest.raises(BadInput, match="holds pickled Python objects"):
        load_model(str(opaque))
    assert not marker.exists()


# -- manifests: schema and confinement -----------------------------------------------------------

@pytest.mark.parametrize(("case", "needle"), [
    ("absolute file", "does not follow the vitedge manifest schema: files"),
    ("dotdot model", "does not follow the vitedge manifest schema: artifact.model"),
    ("empty files", "does not follow the vitedge manifest schema: files"),
    ("uncovered model", "has no SHA-256 in `files`"),
    ("symlink out", "a symlink leading out of the artifact dir"),
    ("wrong type", "does not follow the vitedge manifest schema: kind"),
])
def test_manifest_confinement(cli, tmp_path: Path, demo_export_copy: Path, case: str, needle: str) -> None:
    art = demo_export_copy
    if case == "absolute file":
        _edit_manifest(art, lambda m: m["files"].update({"/etc/passwd": "0" * 64}))
    elif case == "dotdot model":
        _edit_manifest(art, lambda m: m.update(artifact={"model": "../other/model.onnx"}))
    elif case == "empty files":
        _edit_manifest(art, lambda m: m.update(files={}))
    elif case == "uncovered model":
        (art / "other.onnx").write_bytes((art / "model.onnx").read_bytes())
        _edit_manifest(art, lambda m: m["onnx"].update(file="other.onnx"))
    elif case == "symlink out":
        outside = tmp_path / "outside.onnx"
        shutil.move(art / "model.onnx", outside)
        (art / "model.onnx").symlink_to(outside)
    elif case == "wrong type":
        _edit_manifest(art, lambda m: m.update(kind="weird"))
    r = cli("inspect", art)
    assert r.code == 2 and needle in _one_error_line(r.err)
    r = cli("compile", art, "--target", "onnxruntime", "-o", tmp_path / "o")
    assert r.code == 2 and needle in _one_error_line(r.err) and not (tmp_path / "o").exists()
    import vitedge
    from vitedge.errors import IncompatibleArtifact

    with pytest.raises(IncompatibleArtifact):
        vitedge.load(art)


# -- fail early, in one line ----------------------------------------------------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["export", "timm:no_such_model", "--batch", "0", "-o", "OUT"], "--batch must be 'dynamic' or a positive"),
    (["export", "timm:no_such_model", "-o", "FILE"], "exists and is not a directory"),
    (["export", "demo:digits", "--img-size", "4096", "-o", "OUT"], "--img-size must be between 8 and 1024"),
    (["run", "LAUGHS"], "expands to more than 100000 values"),
    (["run", "SELFREF"], "a YAML alias refers to the value that contains it"),
])
def test_bad_input_fails_early_in_one_line(cli, tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "file").write_text("x")
    laughs = ["version: 1", "a: &a [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    (tmp_path / "laughs.yaml").write_text("\n".join(laughs) + "\n")
    (tmp_path / "selfref.yaml").write_text("version: 1\nmodel: &m {spec: 'demo:digits', extra: *m}\n")
    names = {"OUT": tmp_path / "out", "FILE": tmp_path / "file", "LAUGHS": tmp_path / "laughs.yaml",
             "SELFREF": tmp_path / "selfref.yaml"}
    r = cli(*[names.get(a, a) for a in args])
    assert r.code == 2, r.text
    assert needle in _one_error_line(r.err)
    assert not (tmp_path / "out").exists() and _vitedge_leftovers(tmp_path) == []


def test_weights_recorded_absolute_and_found_by_hash_when_moved(cli, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from vitedge.errors import IncompatibleArtifact
    from vitedge.models import demo

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(demo.DEMO_WEIGHTS, work / "w.safetensors")
    monkeypatch.chdir(work)
    r = cli("--quiet", "export", "demo:digits", "--weights", "w.safetensors", "-o", tmp_path / "e")
    assert r.code == 0, r.text
    source = json.loads((tmp_path / "e" / "vitedge.json").read_text())["source"]
    assert source["weights"] == str(work / "w.safetensors") and source["request"]["weights"] == source["weights"]
    monkeypatch.chdir(tmp_path)  # another working dir: the absolute path still works
    import vitedge

    with vitedge.load(tmp_path / "e", backend="pytorch"):
        pass
    shutil.move(work / "w.safetensors", tmp_path / "w.safetensors")  # moved next to the artifact
    with vitedge.load(tmp_path / "e", backend="pytorch"):
        pass
    (tmp_path / "w.safetensors").unlink()
    with pytest.raises(IncompatibleArtifact, match="are gone .moved or deleted."):
        vitedge.load(tmp_path / "e", backend="pytorch")


def test_vendor_telemetry_is_declined_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    from vitedge.telemetry import ENV_VAR, decline_vendor_telemetry

    assert decline_vendor_telemetry() is True
    assert OptInChecker().check(False, False) == ConsentCheckResult.DECLINED
    monkeypatch.setenv(ENV_VAR, "1")  # the user turned it back on: OpenVINO's own consent file decides
    assert decline_vendor_telemetry() is False
