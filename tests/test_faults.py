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
    r = cli("--quiet", "export", "demo:digits", "-o", mine, "--force")  # --force keeps the user's file
    assert r.code == 0 and sorted(p.name for p in mine.iterdir()) == ["model.onnx", "notes.txt", "vitedge.json"]
    assert (mine / "notes.txt").read_text() == "my notes"


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


# -- one meaning of --force: vitedge replaces only what it wrote ----------------------------------

def _user_files(folder: Path) -> dict[str, bytes]:
    """Put the user's own files in FOLDER (one at the top, one in a subfolder); return their bytes."""
    files = {"notes.txt": b"my notes\n", "sub/keep.csv": b"a,b\n1,2\n"}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def _survived(folder: Path, files: dict[str, bytes]) -> bool:
    return all((folder / name).read_bytes() == data for name, data in files.items())


def _small_recipe(folder: Path, digits_val: Path) -> Path:
    import yaml

    recipe = {"version": 1, "name": "small", "model": {"spec": "demo:digits"},
              "targets": [{"target": "onnxruntime", "precision": "fp32"}],
              "bench": {"data": str(digits_val), "batches": [1], "warmup": 0, "iters": 2, "max_images": 24},
              "gates": ["top1_agreement >= 0.99"]}
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("command", ["export", "compile", "bench", "run", "tune"])
def test_force_replaces_only_what_vitedge_wrote(cli, tmp_path: Path, demo_export: Path, digits_val: Path,
                                                command: str) -> None:
    """Every command's --force: the user's files in the output survive byte-identical; without
    --force the folder is refused and nothing changes."""
    out = tmp_path / "out"
    out.mkdir()
    files = _user_files(out)
    args = {"export": ["export", "demo:digits", "-o", out],
            "compile": ["compile", demo_export, "--target", "onnxruntime", "-o", out],
            "bench": ["bench", demo_export, "--reference", demo_export, "--data", digits_val, "--report", out,
                      *FAST],
            "run": ["run", _small_recipe(tmp_path, digits_val), "-o", out],
            "tune": ["tune", demo_export, "--data", digits_val, "-o", out, "--targets", "onnxruntime",
                     "--precisions", "fp32", "--knobs", "none", "--batch", "1"]}[command]
    r = cli(*args)
    assert r.code == 2 and "--force" in _one_error_line(r.err) and _survived(out, files)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(files)
    r = cli(*args, "--force")
    assert r.code == 0, r.text
    assert _survived(out, files)
    assert "--force:" in r.err and "notes.txt" in " ".join(r.err.split())
    if command in ("export", "compile"):  # a second forced write still keeps them, and says what it replaced
        r = cli(*args, "--force")
        assert r.code == 0 and _survived(out, files)
        assert "replaced 2 file(s) (model.onnx, vitedge.json)" in " ".join(r.err.split())
    assert _vitedge_leftovers(tmp_path) == []


def test_force_replaces_a_user_file_of_a_name_vitedge_writes(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"not a model")
    files = _user_files(out)
    r = cli("export", "demo:digits", "-o", out, "--force")
    assert r.code == 0 and _survived(out, files)
    text = " ".join(r.err.split())
    assert "--force:" in text and "replaced 1 file(s) (model.onnx)" in text and "kept 2 file(s)" in text
    assert (out / "model.onnx").read_bytes() != b"not a model"
    r = cli("--quiet", "export", "demo:digits", "-o", out, "--force")  # --quiet: nothing printed
    assert r.code == 0 and r.err == "" and _survived(out, files)


# -- memory: checked before the work, and allocation failures named -----------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["bench", "EXPORT", "--reference", "EXPORT", "--data", "VAL", "--batch", "1000000"],
     "not enough memory for bench at batch 1000000"),
    (["export", "demo:digits", "-o", "OUT", "--batch", "100000000"], "not enough memory for the export at batch"),
    (["tune", "EXPORT", "--data", "VAL", "-o", "OUT", "--batch", "1000000"], "not enough memory for bench"),
])
def test_memory_preflight_refuses_in_one_line(cli, tmp_path: Path, demo_export: Path, digits_val: Path,
                                              monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str) -> None:
    """A batch of a million on the 360-image demo once grew to 23 GB until the kernel killed it."""
    monkeypatch.setenv("VITEDGE_MEMORY_LIMIT", "8G")
    names = {"EXPORT": demo_export, "VAL": digits_val, "OUT": tmp_path / "out"}
    for debug in ((), ("--debug",)):
        r = cli(*debug, *[names.get(a, a) for a in args])
        assert r.code == 3, r.text
        line = r.err.strip().splitlines()[-1]
        assert line.startswith("error: ") and needle in line and "lower --batch" in line
        if not debug:
            _one_error_line(r.err)
    assert not (tmp_path / "out").exists() and _vitedge_leftovers(tmp_path) == []


def test_memory_preflight_names_the_flag_to_lower(cli, tmp_path: Path, demo_export: Path, digits_val: Path,
                                                  digits_calib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITEDGE_MEMORY_LIMIT", "2M")  # a faked small machine: nothing is allocated
    r = cli("bench", demo_export, "--reference", demo_export, "--data", digits_val, "--report", tmp_path / "r",
            *FAST[:-2])
    assert r.code == 3 and "lower --max-images" in _one_error_line(r.err) and not (tmp_path / "r").exists()
    r = cli("compile", demo_export, "--target", "onnxruntime", "--precision", "int8", "--calib", digits_calib,
            "-o", tmp_path / "q")
    assert r.code == 3 and "calibrating on 300 images" in _one_error_line(r.err) and "--calib-size" in r.err
    assert not (tmp_path / "q").exists() and _vitedge_leftovers(tmp_path) == []


def test_a_batch_larger_than_the_data_says_so(cli, tmp_path: Path, demo_export: Path, digits_val: Path,
                                              digits_calib: Path) -> None:
    r = cli("bench", demo_export, "--reference", demo_export, "--data", digits_val, "--batch", "32",
            "--iters", "2", "--warmup", "0", "--max-images", "24")
    assert r.code == 0, r.text
    assert "batch 32 is larger than the 24 validation images" in " ".join(r.err.split())
    few = tmp_path / "few"
    for digit in ("0", "1"):
        (few / digit).mkdir(parents=True)
        for image in sorted((digits_calib / digit).iterdir())[:6]:
            shutil.copy(image, few / digit / image.name)
    r = cli("compile", demo_export, "--target", "onnxruntime", "--precision", "int8", "--calib", few,
            "--calib-size", "1000000000", "-o", tmp_path / "q")
    assert r.code == 0, r.text
    assert "--calib-size 1000000000 is more than the 12 images" in " ".join(r.err.split())


def test_an_allocation_failure_is_exit_3_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the preflight (told there is memory), torch cannot allocate the batch under an address-space
    limit: exit 3 and one line, not `internal error`, and no lock or temp dir left."""
    out = tmp_path / "e"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    monkeypatch.setenv("VITEDGE_MEMORY_LIMIT", "100T")  # the preflight is told there is room
    proc = _spawn("export", "demo:digits", "-o", out, "--batch", "2000000", cwd=tmp_path, preexec=limit)
    code, err = _finish(proc)
    assert code == 3, err
    assert "out of memory; lower the batch (--batch)" in _one_error_line(err)
    assert not out.exists() and _vitedge_leftovers(tmp_path) == []


def test_allocator_errors_are_recognised() -> None:
    from vitedge.errors import CompileFailed
    from vitedge.limits import allocation_failure

    torch_text = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 1228800000000 bytes. Error code 12 (Cannot allocate memory)")
    assert allocation_failure(RuntimeError(torch_text)) and allocation_failure(MemoryError())
    ort_text = "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"
    try:
        try:
            raise RuntimeError(ort_text)
        except RuntimeError as exc:
            raise CompileFailed("the compiled ONNX Runtime model does not run") from exc
    except CompileFailed as wrapped:
        assert allocation_failure(wrapped.__cause__)
    assert not allocation_failure(RuntimeError("shapes do not match")) and not allocation_failure(OSError(12, "x"))


# -- exit codes: the same with and without --debug -------------------------------------------------

@pytest.mark.parametrize(("args", "code"), [
    (["export", "demo:digits", "-o", "OUT", "--batch", "0"], 2),  # BadInput
    (["export"], 2),  # a usage error (typer)
    (["compile", "EXPORT", "--target", "pytorch", "-o", "OUT"], 2),  # not a compile target
    (["inspect", "LABELS"], 2),  # a directory that is not an artifact
    (["export", "demo:digits", "-o", "OUT", "--batch", "100000000"], 3),  # EnvironmentProblem (memory)
    (["export", "demo:digits", "-o", "OUT", "--atol", "1e-30"], 4),  # ExportFailed (parity)
    (["bench", "EXPORT", "--reference", "EXPORT", "--data", "VAL", "--gate", "max_abs_err<=0", *FAST], 1),
])
def test_exit_codes_do_not_change_with_debug(cli, tmp_path: Path, demo_export: Path, digits_val: Path,
                                             monkeypatch: pytest.MonkeyPatch, args: list[str], code: int) -> None:
    """--debug used to turn every error into exit 1, the code of a failed gate."""
    monkeypatch.setenv("VITEDGE_MEMORY_LIMIT", "8G")
    names = {"OUT": tmp_path / "out", "EXPORT": demo_export, "VAL": digits_val, "LABELS": tmp_path}
    plain = cli(*[names.get(a, a) for a in args])
    debug = cli("--debug", *[names.get(a, a) for a in args])
    assert plain.code == debug.code == code, (plain.text, debug.text)
    assert "Traceback" not in plain.err
    if args != ["export"]:  # a usage error has no traceback to show
        assert "Traceback (most recent call last)" in debug.err
        assert debug.err.strip().splitlines()[-1] == plain.err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists() and _vitedge_leftovers(tmp_path) == []


# -- choices and messages that say what was given and what was expected ---------------------------

def test_compile_targets_are_the_ones_that_compile(cli, tmp_path: Path, demo_export: Path) -> None:
    r = cli("compile", demo_export, "--target", "pytorch", "-o", tmp_path / "o")
    assert r.code == 2
    text = _one_error_line(r.err)
    assert "'pytorch' runs artifacts but does not compile; compile targets are onnxruntime, openvino, tensorrt" \
        in text
    r = cli("compile", demo_export, "--target", "nosuch", "-o", tmp_path / "o")
    assert r.code == 2 and "pytorch" not in _one_error_line(r.err)
    r = cli("compile", "--help")
    assert r.code == 0 and "pytorch" not in " ".join(r.out.split()).split("--target")[1].split("--out")[0]


def test_messages_name_what_was_given_and_what_was_expected(cli, tmp_path: Path, demo_export_copy: Path) -> None:
    folder = tmp_path / "labels"
    folder.mkdir()
    (tmp_path / "text.pth").write_text("hello, I am a text file\n")
    cases = [
        (["export", "demo:digits", "-o", tmp_path / "o", "--labels", folder],
         f"labels file {folder} is a directory; a file is expected here"),
        (["run", folder], f"recipe {folder} is a directory; a file is expected here"),
        (["export", "demo:digits", "-o", tmp_path / "o", "--weights", tmp_path / "text.pth"],
         "is not a valid PyTorch checkpoint"),
        (["compile", tmp_path / "text.pth", "--target", "onnxruntime", "-o", tmp_path / "o"],
         "is a file; an artifact directory (holding vitedge.json) is expected"),
    ]
    for args, needle in cases:
        r = cli(*args)
        assert r.code == 2, r.text
        text = _one_error_line(r.err)
        assert needle in text and "pickles code" not in text and "does not exist" not in text
    _edit_manifest(demo_export_copy, lambda m: m["files"].update({"../../etc/passwd": "0" * 64}))
    r = cli("inspect", demo_export_copy)
    text = _one_error_line(r.err)
    assert r.code == 2 and "'../../etc/passwd' has a .. part, which leads out of the artifact dir" in text
    assert "(?!" not in text  # no JSON-schema regex
    assert not (tmp_path / "o").exists()


def test_a_corrupt_rehashed_onnx_is_one_line(cli, tmp_path: Path, demo_export_copy: Path) -> None:
    """Damaged bytes with a matching hash (a hand-edited manifest): OpenVINO tried each frontend and
    said 'Cannot recognize input model' after TensorFlow's parse errors; now one line, exit 2."""
    from vitedge.fsutil import sha256_file

    model = demo_export_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[:200] = b"\x07" * 200
    model.write_bytes(bytes(data))
    _edit_manifest(demo_export_copy, lambda m: m["files"].update({"model.onnx": sha256_file(model)}))
    r = cli("compile", demo_export_copy, "--target", "openvino", "-o", tmp_path / "ov")
    assert r.code == 2 and "is not a valid ONNX model (onnx could not parse it" in _one_error_line(r.err)
    assert not (tmp_path / "ov").exists() and _vitedge_leftovers(tmp_path) == []


def test_third_party_text_is_reduced_to_its_line() -> None:
    from vitedge.errors import brief

    openvino = RuntimeError("Exception from src/inference/src/cpp/core.cpp:97:\n"
                            "Check 'false' failed at src/frontends/common/src/frontend.cpp:54:\n"
                            "FrontEnd API failed with GeneralFailure:\n"
                            "onnx_model.cpp:12 Invalid model: input 'x' has no type\n")
    assert brief(openvino) == "Invalid model: input 'x' has no type"
    assert brief(RuntimeError("one plain line")) == "one plain line"


def test_disk_precheck_is_proportional(cli, tmpfs) -> None:
    """The 1.5 MB demo export fits an 8 MB disk (the check once asked for ~36 MB)."""
    small = tmpfs("8m")
    r = cli("--quiet", "export", "demo:digits", "-o", small / "e")
    assert r.code == 0, r.text
    assert (small / "e" / "model.onnx").stat().st_size < 2 << 20


# -- the quickstart's verdict when only speed is undecided ------------------------------------------

def test_only_speed_unreliable_says_what_is_usable(cli, tmp_path: Path, demo_export: Path, digits_val: Path) -> None:
    """Exit 5 stays; the last lines say the accuracy gates passed, where the reports and artifacts are,
    and how to measure speed again. The report is a real bench's; its speed gate is then made undecided
    as on a busy machine."""
    from vitedge import cli as cli_module
    from vitedge.errors import GateUnreliable

    report_dir = tmp_path / "run" / "report"
    r = cli("bench", demo_export, "--reference", demo_export, "--data", digits_val, "--report", report_dir,
            "--gate", "top1_agreement>=0.99", "--gate", "speedup_p50@b1>=0.001", *FAST)
    assert r.code in (0, 5), r.text  # 5 where this machine is busy: then the CLI already said it
    if r.code == 5:
        assert "accuracy gates: 1 of 1 passed" in r.err and "quiet machine" in r.err.strip().splitlines()[-1]
    report = json.loads((report_dir / "report.json").read_text())
    report["files"] = {k: str(report_dir / f"report.{k}") for k in ("json", "html")}
    speed = next(g for g in report["gates"] if g["metric"] == "speedup_p50")
    speed.update(outcome="unreliable", passed=False)

    def busy() -> None:
        raise GateUnreliable("1 of 2 gate checks are unreliable (none failed)", report)

    with pytest.raises(GateUnreliable) as caught:
        cli_module._shown(busy, run_dir=True)
    assert caught.value.exit_code == 5
    tail = str(caught.value).splitlines()
    assert tail[1].startswith("accuracy gates: 1 of 1 passed")
    assert tail[2].startswith(f"artifacts: {tmp_path / 'run' / 'artifacts'}/")
    assert tail[3].startswith(f"reports: {report_dir / 'report.json'}")
    assert "quiet machine" in tail[4]
    speed["outcome"] = "fail"  # a failure: no such reassurance
    with pytest.raises(GateUnreliable) as caught:
        cli_module._shown(busy, run_dir=True)
    assert "accuracy gates" not in str(caught.value)
