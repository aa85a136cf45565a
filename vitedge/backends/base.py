"""The backend contract and registry.

A backend is one module that declares what it is (the manifest targets it runs, its
precisions per device, the library it loads, its typed `Options`) and knows whether it is
usable here, how to compile an export dir into its artifact, how to say in one line what
that artifact runs, and how to open a Runner on it. Adding a backend is that module plus
its name in `_MODULES`: the `compile` flags, the recipe schema, bench and `vitedge.load`
find it here.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.options import Options, merged_fields, parse_options
from vitedge.data import Tensors
from vitedge.errors import BadInput
from vitedge.manifest import Manifest

_MODULES = ("pytorch", "onnxruntime", "openvino", "tensorrt")
_REGISTRY: dict[str, "Backend"] = {}


@dataclass
class Availability:
    usable: bool
    version: str | None = None
    reason: str = ""
    install: str = ""

    @classmethod
    def of_package(cls, package: str, install: str) -> "Availability":
        """Usable when PACKAGE is installed (its version), else why not and INSTALL to fix it."""
        # importlib.metadata, not envinfo.package_version: envinfo asks torch about GPUs, and
        # the runtime (which imports this module) must not import torch (pyproject's contracts).
        from importlib import metadata

        try:
            return cls(True, metadata.version(package))
        except metadata.PackageNotFoundError:
            return cls(False, None, f"{package} is not installed", install)


class Runner(ABC):
    """Runs one artifact. A context manager; `infer` returns logits and times itself."""

    name: str = "runner"

    def __init__(self) -> None:
        self.last_ms: float = float("nan")
        self.info: dict[str, Any] = {}

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, buffers, devices."""

    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray:
        """Logits for one preprocessed NCHW float32 batch."""

    def infer(self, batch: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        x = next(iter(batch.values())) if isinstance(batch, dict) else batch
        x = np.ascontiguousarray(x, dtype=np.float32)
        start = time.perf_counter()
        out = self._run(x)
        self.last_ms = (time.perf_counter() - start) * 1e3
        return out

    def infer_all(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Logits for many inputs, in batches."""
        outs = [self.infer(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


class CudaEventTimer:
    """The one GPU timer: CUDA events recorded on STREAM around the timed work, in ms."""

    def __init__(self, torch: Any, stream: Any = None) -> None:
        self.stream = stream
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def __enter__(self) -> "CudaEventTimer":
        self.start.record(self.stream)
        return self

    def __exit__(self, *exc: object) -> None:
        self.end.record(self.stream)

    def elapsed_ms(self) -> float:
        """Milliseconds between the two events (waits for the second one)."""
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))


@dataclass
class CompileRequest:
    """What `vitedge compile` hands a backend: the generic flags, the backend's typed options
    and the preprocessed data sets (loaded by compile_artifact after every check passed)."""

    precision: str = "fp32"
    options: Options = field(default_factory=Options)
    calib: str | None = None
    calib_size: int | None = None
    calib_method: str | None = None
    seed: int = 0
    val: str | None = None
    export: Manifest | None = None  # the export's manifest, for rules that depend on it (fixed batch)
    out_dir: Path | None = None  # where the artifact lands (backends build in a temp dir beside it)
    calibration: Tensors | None = None  # preprocessed --calib set
    validation: Tensors | None = None  # preprocessed --val set, when given


class Backend(ABC):
    name: str = ""
    targets: tuple[str, ...] = ()  # manifest "target" values this backend runs (besides its name)
    precisions: tuple[str, ...] = ()
    device_kind: str = "cpu"  # "cpu": always runs on the CPU; "cuda": on a GPU; "any": follows --device
    runtime_module: str | None = None  # the library it loads (imported before bench times a load)
    Options: type[Options] = Options  # its compile options (types, defaults, help, rules)
    default_calib_method: str | None = None
    calib_methods: tuple[str, ...] = ()
    default_calib_size: int = 300
    calibrated_precisions: tuple[str, ...] = ("fp16", "int8")  # precisions that read --calib
    # True: compile() works without the runtime (it writes what it can and returns a manifest
    # with "incomplete": {"reason", "next_step"}); False: compile needs availability().usable.
    compiles_without_runtime: bool = False

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run here, and if not, why and how to install it."""

    def doctor_details(self) -> dict[str, Any]:
        """More for `vitedge doctor` than `availability` says (e.g. TensorRT's engine libraries)."""
        return {}

    def availability_for(self, manifest: Manifest) -> Availability:
        """Whether the artifact of MANIFEST can run here (by default: whether the backend can)."""
        return self.availability()

    def cannot_run_here(self, manifest: Manifest) -> str | None:
        """Why the artifact of MANIFEST cannot run on this machine (None: it can); compile's --val
        is skipped, and says so, where it cannot (a TensorRT-RTX engine built on a CPU)."""
        available = self.availability_for(manifest)
        return None if available.usable else available.reason

    def precisions_on(self, device: str) -> tuple[str, ...]:
        """The precisions it builds for DEVICE ("cpu" or "cuda"); () where it does not run."""
        return self.precisions if self.device_kind in ("any", device) else ()

    def check_options(self, request: CompileRequest) -> None:  # noqa: B027 - optional hook
        """Rules between options and the generic flags, before any work is done (raise BadInput).

        Each option's own type, range and choices are already checked from its declaration.
        """

    def compile(self, export_dir: Path, out_dir: Path, manifest: Manifest,
                request: CompileRequest) -> Manifest:
        """Write the artifact into out_dir (a temp dir); return its manifest (not yet saved).

        MANIFEST is a copy of the export manifest already extended with the generic fields
        (target, precision, calibration): add the backend's own ("artifact", "runtime",
        "precision_plan", ...) and return it.
        """
        raise NotImplementedError(f"{self.name} cannot compile")

    def summary_line(self, manifest: Manifest) -> str | None:
        """One line for the compile summary: what the artifact runs, and how (None: nothing to add)."""
        return None

    @abstractmethod
    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        """A Runner on a compiled artifact."""


def register_backend(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> None:
    for name in _MODULES:
        importlib.import_module(f"vitedge.backends.{name}")


def all_backends() -> dict[str, Backend]:
    _load_all()
    return dict(_REGISTRY)


def get_backend(name: str) -> Backend:
    backends = all_backends()
    if name not in backends:
        raise BadInput(f"unknown target {name!r}; choose one of {', '.join(sorted(backends))}")
    return backends[name]


def compile_backends() -> dict[str, Backend]:
    """The backends `vitedge compile` can target (those that implement compile)."""
    return {name: b for name, b in all_backends().items() if type(b).compile is not Backend.compile}


def compile_backend(name: str) -> Backend:
    """The backend `--target NAME` compiles with; BadInput listing the compile targets otherwise."""
    backends = compile_backends()
    if name not in backends:
        what = "runs artifacts but does not compile" if name in all_backends() else "is not a known target"
        raise BadInput(f"--target {name!r} {what}; compile targets are {', '.join(sorted(backends))}")
    return backends[name]


def backend_for_target(target: str) -> Backend:
    """The backend that runs an artifact whose manifest says TARGET ("onnx": an export dir)."""
    for backend in all_backends().values():
        if target == backend.name or target in backend.targets:
            return backend
    raise BadInput(f"unknown artifact target {target!r}")


def options_classes() -> dict[str, type[Options]]:
    """Each compile target's Options class, for the CLI flags and the recipe schema."""
    return {name: b.Options for name, b in compile_backends().items()}


def backend_options(backend: Backend, values: dict[str, Any], *, cli: bool = False) -> Options:
    """VALUES checked and typed into BACKEND's Options; an option it does not take names the
    backends that do."""
    return parse_options(backend.Options, values, backend=backend.name, others=merged_fields(options_classes()),
                         cli=cli)


def artifact_path(artifact_dir: Path, manifest: Manifest, key: str = "model") -> Path:
    """The main file of an artifact, as its manifest names it."""
    return Path(artifact_dir) / manifest.artifact_file(key)
