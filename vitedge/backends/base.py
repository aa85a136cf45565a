"""The backend contract and registry.

A backend knows whether it is usable here, how to compile an export dir into its artifact,
and how to open a Runner on an artifact. Adding a backend is one new module listed in
`_MODULES`; the CLI choices, recipe validation and the contract tests find it here.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


@dataclass
class CompileOptions:
    """Everything `vitedge compile` may pass to a backend; each backend reads what it needs."""

    precision: str = "fp32"
    calib: str | None = None
    calib_size: int | None = None
    calib_method: str | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    calibration: Tensors | None = None  # preprocessed --calib set (loaded by compile_artifact)
    validation: Tensors | None = None  # preprocessed --val set, when given


class Backend(ABC):
    name: str = ""
    precisions: tuple[str, ...] = ()
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

    def check_options(self, options: CompileOptions) -> None:  # noqa: B027 - optional hook
        """Reject options this backend cannot honour, before any work is done (raise BadInput)."""

    def compile(self, export_dir: Path, out_dir: Path, manifest: Manifest,
                options: CompileOptions) -> Manifest:
        """Write the artifact into out_dir (a temp dir); return its manifest (not yet saved).

        MANIFEST is a copy of the export manifest already extended with the generic fields
        (target, precision, calibration): add the backend's own ("artifact", "runtime",
        "precision_plan", ...) and return it.
        """
        raise NotImplementedError(f"{self.name} cannot compile")

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


def artifact_path(artifact_dir: Path, manifest: Manifest, key: str = "model") -> Path:
    """The main file of an artifact, as its manifest names it."""
    name = manifest.get("artifact", {}).get(key) or manifest.get("onnx", {}).get("file", "model.onnx")
    return Path(artifact_dir) / name
