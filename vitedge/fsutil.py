"""Hashing, atomic writes, the output-dir policy and output locks.

Every file and directory vitedge writes goes through here, so that (1) nothing half-written
is ever left at the destination: files and artifact dirs are written under a hidden temp
name and renamed into place; (2) vitedge never deletes what it did not write: an existing
output dir is only replaced when it is a previous vitedge output of the same kind; (3) two
vitedge processes never write the same output at once (`output_lock`); (4) the temp dirs of
a killed run are found and removed (or restored) by the next run on the same output.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitedge.errors import BadInput, EnvironmentProblem

TMP_MARK = ".vitedge-tmp-"  # .<name>.vitedge-tmp-<pid>-<random>: being written by <pid>
OLD_MARK = ".vitedge-old-"  # .<name>.vitedge-old-<pid>-<random>: the previous output, mid-swap
LOCK_MARK = ".vitedge-lock"  # .<name>.vitedge-lock: held (flock) while a process writes <name>
MANIFEST_FILE = "vitedge.json"
RUN_STATE_FILES = ("vitedge-run.json", "recipe.resolved.yaml")
REPORT_FILES = ("report.json", "report.xml", "report.md", "report.html")
REPORT_SCHEMA = "vitedge.bench/report"
LOCK_WAIT_S = 2.0  # how long a second process waits for an output lock before giving up
_DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_LOW_DISK_BYTES = 8 << 20


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def not_found(path: str | Path, what: str, expected: str = "file") -> BadInput:
    """The one-line error for a PATH given as WHAT ("--labels", "recipe") that is not the
    EXPECTED "file" or "directory": says which it is instead, or that nothing is there."""
    path = Path(path)
    if expected == "file" and path.is_dir():
        return BadInput(f"{what} {path} is a directory; a file is expected here")
    if expected == "directory" and path.exists() and not path.is_dir():
        return BadInput(f"{what} {path} is a file; a directory is expected here")
    if path.exists() and not path.is_file() and not path.is_dir():
        return BadInput(f"{what} {path} is not a regular {expected}")
    return BadInput(f"{what} {path} does not exist")


# -- atomic files -----------------------------------------------------------------------------

def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}")


def _write_error(path: Path, exc: OSError) -> Exception:
    """The one-line error for a failed write of PATH."""
    if exc.errno in _DISK_ERRNOS:
        return EnvironmentProblem(f"cannot write {path}: {disk_problem(path.parent) or exc.strerror}; "
                                  "free some space or write elsewhere (nothing was written)")
    return BadInput(f"cannot write {path}: {exc.strerror or exc}")


def write_files_atomic(files: Mapping[str | Path, str | bytes]) -> None:
    """Write every file of FILES, all or none: each goes to a temp file first, and only when
    all are written are they renamed into place (renames need no space and do not fail)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            clean_stale(path)
            tmp = _tmp_name(path)
            staged.append((tmp, path))
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data.encode() if isinstance(data, str) else data)
            except OSError as exc:
                raise _write_error(path, exc) from exc
        with _signals_held():
            for tmp, path in staged:
                os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write PATH atomically: readers see the old file or the new one, never a partial one."""
    write_files_atomic({path: data})


def write_json_atomic(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, text)


# -- stale temp files and dirs of killed runs -------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: str | Path) -> list[str]:
    """Remove the temp files/dirs a killed vitedge left next to TARGET (their writer's pid is
    gone); put back a previous output a killed swap had moved aside. Returns what was done."""
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    done: list[str] = []
    if not parent.is_dir():
        return done
    for entry in sorted(parent.glob(f".{target.name}.vitedge-*")):
        mark = TMP_MARK if entry.name.startswith(f".{target.name}{TMP_MARK}") else \
            OLD_MARK if entry.name.startswith(f".{target.name}{OLD_MARK}") else None
        if mark is None:
            continue
        pid_text = entry.name[len(f".{target.name}{mark}"):].split("-")[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if mark == OLD_MARK and not target.exists():
            os.replace(entry, target)
            done.append(f"restored {target} (an interrupted run had moved it to {entry.name})")
        else:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            done.append(f"removed {entry}, left by an interrupted run (pid {pid_text})")
    if done:
        from vitedge import ui

        for line in done:
            ui.info(line)
    return done


# -- the output-dir policy --------------------------------------------------------------------

def _is_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _manifest_kind(directory: Path) -> tuple[str | None, set[str]]:
    """(kind, the files its manifest lists) of a vitedge artifact dir; (None, {}) otherwise."""
    try:
        data = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None, set()
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None, set()
    return data.get("kind"), set(data["files"])


def _is_report_dir(directory: Path) -> bool:
    try:
        data = json.loads((directory / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("schema") == REPORT_SCHEMA


def _foreign_files(directory: Path, own: set[str]) -> list[str]:
    """Files under DIRECTORY that vitedge did not write (not in OWN, not vitedge's hidden files)."""
    foreign = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if rel in own or rel == MANIFEST_FILE or ".vitedge-" in path.name:
            continue
        foreign.append(rel)
    return foreign


def check_output_dir(out_dir: str | Path, kind: str, *, force: bool = False,
                     inputs: Sequence[str | Path] = ()) -> None:
    """Refuse, in one line and before any work, an output dir vitedge may not write.

    KIND is what will be written: "export" or "compiled" (an artifact dir, swapped in as a
    whole), "run" (a recipe's or tune's working dir) or "report" (bench reports).
    Allowed: a new or empty dir, or a previous vitedge output of the same KIND holding nothing
    but its own files; anything else only with FORCE. The one rule of FORCE, for every kind:
    vitedge replaces only what it wrote (the files a previous manifest lists, and files of
    the names it writes) and leaves every other file where it is, byte for byte (an artifact
    dir's other files are hard-linked into the new one, see `atomic_dir`); it says what it
    replaced. Never allowed, even with FORCE: a dir that holds one of INPUTS, or the current
    directory (or one above it) for an artifact dir.
    """
    out_dir = Path(out_dir)
    check_writable_parent(out_dir, in_place=kind in ("run", "report"))
    resolved = out_dir.resolve()
    flag = "--report" if kind == "report" else "-o"
    for item in inputs:
        source = Path(item).resolve()
        if _is_inside(source, resolved):
            raise BadInput(f"{flag} {out_dir} holds the input {item}: writing there would replace it; "
                           "choose another output directory")
        if kind in ("export", "compiled") and _is_inside(resolved, source):
            raise BadInput(f"{flag} {out_dir} is inside the input {item}; choose a directory outside it")
    if kind in ("export", "compiled") and _is_inside(Path.cwd().resolve(), resolved):
        raise BadInput(f"{flag} {out_dir} is the current directory (or holds it): vitedge replaces its output "
                       f"directory as a whole; give a new subdirectory, e.g. {flag} {Path(out_dir) / kind}")
    if not out_dir.is_dir() or not any(p for p in out_dir.iterdir() if ".vitedge-" not in p.name):
        return
    if kind in ("export", "compiled"):
        found, own = _manifest_kind(out_dir)
        if found == kind:
            foreign = _foreign_files(out_dir, own)
            if not foreign or force:
                return
            problem = (f"{flag} {out_dir} is a previous vitedge {kind} artifact but also holds files vitedge did "
                       f"not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})")
        else:
            what = f"a vitedge {found} artifact" if found else "not empty and not a vitedge artifact"
            problem = f"{flag} {out_dir} is {what}"
    elif kind == "run":
        if any((out_dir / name).is_file() for name in RUN_STATE_FILES):
            return
        if force:
            return _say_forced_in_place(out_dir, RUN_STATE_FILES + ("export", "artifacts", "report", "tune",
                                                                    "candidates", "best", "tune.json"))
        problem = f"{flag} {out_dir} is not empty and not a previous `vitedge run` output"
    elif kind == "report":
        if _is_report_dir(out_dir):
            return
        if force:
            return _say_forced_in_place(out_dir, REPORT_FILES)
        problem = f"{flag} {out_dir} is not empty and holds no previous vitedge report"
    else:
        raise ValueError(f"unknown output kind {kind!r}")
    if force:
        return
    raise BadInput(f"{problem}: choose a new or empty directory, or pass --force to write there "
                   "(vitedge then replaces only the files it wrote and keeps the others)")


def _say_forced_in_place(out_dir: Path, names: Sequence[str]) -> None:
    """The forced write of a run or report dir: which of NAMES (what vitedge writes there) it will replace."""
    present = [name for name in names if (out_dir / name).exists()]
    others = [p.name for p in sorted(out_dir.iterdir()) if p.name not in names and ".vitedge-" not in p.name]
    _say_forced(out_dir, present, others, verb="replaces")


def remove_own(directory: str | Path) -> None:
    """Remove what vitedge wrote in the artifact DIRECTORY (its manifest's files and the manifest),
    then the folders left empty; any other file stays, and so does DIRECTORY if one does."""
    directory = Path(directory)
    _, own = _manifest_kind(directory)
    for rel in sorted(own | {MANIFEST_FILE}):
        path = directory / rel
        if _is_inside(path.resolve(), directory.resolve()) and (path.is_file() or path.is_symlink()):
            path.unlink()
    for folder in sorted((p for p in directory.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    with contextlib.suppress(OSError):
        directory.rmdir()


def check_writable_parent(out_dir: Path, in_place: bool = False) -> None:
    """Fail early, with one line, when OUT_DIR cannot be created or written. IN_PLACE: files are
    written inside an existing OUT_DIR (a run dir, a report dir), so its parent may be read-only."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"output path {out_dir} exists and is not a directory")
    if in_place and out_dir.is_dir():
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise BadInput(f"cannot write output dir {out_dir}: it is not writable")
        return
    probe = out_dir.resolve().parent  # where the dir (or its temp twin) is created
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(f"cannot create output dir {out_dir}: {probe} is not a directory")
    for folder in (probe, out_dir) if out_dir.is_dir() else (probe,):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BadInput(f"cannot write output dir {out_dir}: {folder} is not writable")


def check_free_space(path: str | Path, need_bytes: int, what: str) -> None:
    """EnvironmentProblem before the work when PATH's filesystem has less than NEED_BYTES free."""
    probe = Path(path).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise EnvironmentProblem(f"not enough disk space for {what}: about {need_bytes / 1e6:.0f} MB needed, "
                                 f"{free / 1e6:.0f} MB free on {probe}; free some space or write elsewhere")


def disk_problem(path: str | Path) -> str | None:
    """Why writes under PATH fail for lack of room (a full disk, `ulimit -f`), or None."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        return None
    if free < _LOW_DISK_BYTES:
        return f"the disk is full ({free / 1e6:.1f} MB free)"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())
        if any(p.stat().st_size >= limit for p in files):
            return f"a file reached the file-size limit (ulimit -f) of {limit / 1e6:.1f} MB"
    return None


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM for a few renames, so an interrupt cannot split a swap in two."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, *, kind: str = "export", force: bool = False,
               inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield a temp dir next to OUT_DIR; on success it replaces OUT_DIR, on error it vanishes.

    OUT_DIR is checked against the output-dir policy first (see `check_output_dir`), and the
    leftovers of killed runs next to it are cleaned up.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, kind, force=force, inputs=inputs)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{TMP_MARK}{os.getpid()}-", dir=out_dir.parent))
    except OSError as exc:
        raise _write_error(out_dir, exc) from exc
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an artifact dir is an ordinary dir
    try:
        yield tmp
        own = _manifest_kind(out_dir)[1] | {MANIFEST_FILE} if out_dir.is_dir() else set()
        kept, replaced = _carry_over(out_dir, tmp)
    except BaseException as exc:
        problem = None if isinstance(exc, (KeyboardInterrupt, SystemExit, BadInput)) else disk_problem(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if problem:
            raise EnvironmentProblem(f"ran out of room writing {out_dir}: {problem}; free some space or "
                                     "choose another output directory (nothing was written)") from exc
        raise
    old = out_dir.with_name(f".{out_dir.name}{OLD_MARK}{os.getpid()}-{os.urandom(3).hex()}")
    with _signals_held():
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    if force and (kept or any(name not in own for name in replaced)):
        _say_forced(out_dir, replaced, kept)


def _say_forced(out_dir: Path, replaced: Sequence[str], kept: Sequence[str], verb: str = "replaced") -> None:
    """One line (not with --quiet): what a forced write replaced and what it left alone."""
    from vitedge import ui
    from vitedge.ui import escape

    parts = [f"{verb} {len(replaced)} file(s) ({_some(replaced)})" if replaced else f"{verb} nothing",
             f"kept {len(kept)} file(s) vitedge did not write ({_some(kept)})" if kept else ""]
    if not ui.is_quiet():
        ui.console.print(escape(f"--force: {out_dir}: " + "; ".join(p for p in parts if p)), soft_wrap=True)


def _some(names: Sequence[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _carry_over(out_dir: Path, new: Path) -> tuple[list[str], list[str]]:
    """Hard-link into NEW (the finished temp dir) every file of the existing OUT_DIR that vitedge
    did not write: not listed by OUT_DIR's manifest, not a name NEW holds. Returns (kept, replaced).

    Only a forced write meets such files (`check_output_dir` refuses them otherwise). Links keep
    them byte-identical without copying; where the filesystem has none, they are copied. OUT_DIR
    is untouched until the swap, so an interrupt before it loses nothing."""
    if not out_dir.is_dir() or out_dir.is_symlink():
        return [], []
    _, own = _manifest_kind(out_dir)
    own |= {MANIFEST_FILE}
    kept: list[str] = []
    replaced: list[str] = []
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir).as_posix()
        if ".vitedge-" in path.name:
            continue
        target = new / rel
        clash = rel in own or target.exists() or target.is_symlink() or any(
            (new / parent).is_file() for parent in Path(rel).parents if str(parent) != ".")
        if path.is_dir() and not path.is_symlink():
            if not clash and not any(p for p in path.iterdir()):
                target.mkdir(parents=True, exist_ok=True)  # the user's empty folder
            continue
        if clash:
            replaced.append(rel)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target, follow_symlinks=False)
        except OSError:
            if path.is_symlink():
                os.symlink(os.readlink(path), target)
            else:
                shutil.copy2(path, target)
        kept.append(rel)
    return kept, replaced


# -- output locks -----------------------------------------------------------------------------

def _lock_path(target: Path) -> Path:
    """Next to TARGET; inside it when only TARGET is writable (e.g. `run -o .` under a read-only parent)."""
    if target.is_dir() and not os.access(target.parent, os.W_OK) and os.access(target, os.W_OK):
        return target / LOCK_MARK
    return target.parent / f".{target.name}{LOCK_MARK}"


@contextlib.contextmanager
def output_lock(target: str | Path, *, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold an exclusive lock on output TARGET (a dir vitedge writes) while the block runs.

    The lock is an flock on a hidden file next to TARGET, so a killed process releases it.
    A second process waits up to WAIT_S, then gets BadInput (exit 2) naming the holder.
    Locks are per path and not re-entrant; hold each output's lock in one place.
    """
    target = Path(target).resolve()
    path = _lock_path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _write_error(target, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if time.monotonic() >= deadline:
                raise BadInput(f"{target} is being written by another vitedge process (pid {holder}); "
                               "wait for it to finish or choose another output directory") from None
            time.sleep(0.1)
            continue
        try:  # the file may have been removed by the previous holder between open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def tree_hash(path: str | Path) -> str:
    """SHA-256 over the relative names and contents of every file under PATH (or of one file)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if file != path else file.name.encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


@dataclass
class StepState:
    """OUT_DIR/vitedge-run.json: each step's input hash from its last successful run (the
    resumable steps of `vitedge run` and `vitedge tune`)."""

    FILE = RUN_STATE_FILES[0]

    path: Path
    steps: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, out_dir: Path) -> "StepState":
        path = out_dir / cls.FILE
        try:
            steps = json.loads(path.read_text()).get("steps", {}) if path.is_file() else {}
        except (json.JSONDecodeError, AttributeError):
            steps = {}  # a damaged state only costs a re-run
        return cls(path, steps)

    def unchanged(self, step: str, input_hash: str, output_ok: Callable[[], bool]) -> bool:
        return self.steps.get(step, {}).get("input_hash") == input_hash and output_ok()

    def record(self, step: str, input_hash: str, seconds: float) -> None:
        self.steps[step] = {"input_hash": input_hash, "seconds": round(seconds, 2),
                            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from vitedge._version import __version__

        write_json_atomic(self.path, {"vitedge_version": __version__, "steps": self.steps})
