"""TensorRT build settings: the compile options, the engine settings made from them (which both
the Python build and the printed `trtexec` line read), and the rules that tie an engine to a
GPU and a TensorRT version. No TensorRT import here."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitedge.backends.options import (
    Options,
    ignored_scope_option,
    option,
    plan_option,
    quantize_attention_option,
    smoothquant_alpha_option,
)
from vitedge.errors import BadInput
from vitedge.manifest import Manifest

TRT_ONNX = "model.trt.onnx"
ENGINE = "model.engine"
DEFAULT_PROFILE = (1, 8, 32)  # min:opt:max batch
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS"}  # CLI spelling -> trt enum member


@dataclass(frozen=True)
class TensorRTOptions(Options):
    """`vitedge compile --target tensorrt` options."""

    engine_lib: str = option("auto", "Engine library: auto | tensorrt | tensorrt-rtx (auto: TensorRT when it "
                             "imports, else TensorRT-RTX; docs/tensorrt.md says which GPU needs which).",
                             choices=("auto", "tensorrt", "tensorrt-rtx"))
    gpu_arch: str | None = option(None, "TensorRT-RTX: compute capabilities to build for, e.g. sm86,sm89,sm120 "
                                  "(default: this GPU; without one sm86,sm89,sm120).")

    batch: str | None = option(None, "Optimisation profile MIN:OPT:MAX batch sizes (e.g. 1:8:32; default "
                               "1:8:32 for a dynamic-batch export).")
    workspace_gb: float | None = option(None, "Builder workspace limit, GB.", flag="--workspace",
                                        exclusive_minimum=0, rule="a positive number of GB")
    opt_level: int | None = option(None, "Builder optimisation level 0-5 (TensorRT's default 3).", minimum=0,
                                   maximum=5, rule="0-5 (TensorRT's builder optimisation level)")
    timing_cache: Path | None = option(None, "Timing cache file, read and updated by every build (name one "
                                       "per GPU and TensorRT version).", path=True)
    hardware_compat: str = option("none", "Hardware compatibility: none | ampere+ (one engine for every "
                                  "Ampere-or-later GPU).", choices=tuple(HARDWARE_COMPAT))
    version_compatible: bool = option(False, "Build a version-compatible engine (runs on later TensorRT "
                                      "of the same major version).")
    io: str = option("fp32", "Graph input/output dtype: fp32 | fp16 (fp16 needs --precision fp16 or int8).",
                     choices=("fp32", "fp16"))
    fp16_margin: float | None = option(None, "FP16 plan: keep nodes FP32 whose |activation| exceeds this "
                                       "fraction of FP16's range 65504.", exclusive_minimum=0, maximum=1,
                                       rule="a fraction of FP16's range 65504, in (0, 1]")
    ignored_scope: list[str] = ignored_scope_option()
    quantize_attention: bool = quantize_attention_option()
    quantized: Path | None = option(None, "INT8: a pre-quantized Q/DQ ONNX of the same network (ModelOpt, "
                                    "QAT) to build instead of vitedge's own quantization.", path=True,
                                    must_exist=True)
    plan: str = plan_option()
    smoothquant_alpha: float | None = smoothquant_alpha_option()


@dataclass
class EngineSettings:
    """What the engine build needs besides the graph; validated before any work is done.

    `build_engine` and `trtexec_command` both read these, so the printed line builds what the
    Python build builds. `timing_cache` is an absolute path (see `timing_cache_file`).
    """

    input_name: str
    chw: tuple[int, int, int]
    profile: tuple[int, int, int] | None  # batch min/opt/max; None for a fixed-batch export
    fixed_batch: int | None
    workspace_mib: int | None
    opt_level: int | None
    timing_cache: str | None
    hardware_compat: str
    version_compatible: bool

    @classmethod
    def from_options(cls, manifest: Manifest, options: TensorRTOptions | dict[str, Any]) -> "EngineSettings":
        """From the export's I/O and the (already checked) --batch/--workspace/... options.

        A relative --timing-cache is relative to the current directory, like every CLI path;
        it is stored absolute so that the build and the line name the same file.
        """
        if isinstance(options, dict):
            options = TensorRTOptions(**{k: Path(v) if k == "timing_cache" and v else v
                                         for k, v in options.items()})
        inputs = manifest["io"]["inputs"]
        if len(inputs) != 1:
            raise BadInput(f"TensorRT compile expects one input, the export has {len(inputs)}")
        shape = inputs[0]["shape"]
        fixed = manifest.fixed_batch
        workspace = options.workspace_gb
        return cls(
            input_name=inputs[0]["name"], chw=tuple(int(d) for d in shape[1:]),  # type: ignore[arg-type]
            profile=parse_profile(options.batch, fixed), fixed_batch=fixed,
            workspace_mib=int(workspace * 1024) if workspace else None, opt_level=options.opt_level,
            timing_cache=os.path.abspath(options.timing_cache) if options.timing_cache else None,
            hardware_compat=options.hardware_compat, version_compatible=options.version_compatible,
        )

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Full min/opt/max input shapes of the optimisation profile."""
        assert self.profile is not None
        return tuple((b, *self.chw) for b in self.profile)  # type: ignore[return-value]

    def timing_cache_file(self) -> Path | None:
        """The one timing-cache rule: the file --timing-cache names, exactly, for the Python build
        and for the trtexec line alike; without it, no cache (each build times from scratch).

        The file is not keyed by GPU or TensorRT version, because the line is usually written
        where neither is known: name one file per target. The Python build loads it with
        TensorRT's `ignore_mismatch=False`, so a cache from another GPU or version is not used.
        """
        return Path(self.timing_cache) if self.timing_cache else None

    def trtexec_command(self, artifact_dir: str | Path = ".", onnx_file: str = TRT_ONNX,
                        engine_file: str = ENGINE) -> str:
        """The trtexec line that builds the same engine as `build_engine`, to run in ARTIFACT_DIR:
        paths relative to it, every word shell-quoted."""
        parts = ["trtexec", f"--onnx={onnx_file}", "--stronglyTyped", "--noTF32"]
        if self.profile:
            for flag, shape in zip(("min", "opt", "max"), self.shapes(), strict=True):
                parts.append(f"--{flag}Shapes={self.input_name}:{'x'.join(map(str, shape))}")
        if self.workspace_mib:
            parts.append(f"--memPoolSize=workspace:{self.workspace_mib}")
        if self.opt_level is not None:
            parts.append(f"--builderOptimizationLevel={self.opt_level}")
        cache = self.timing_cache_file()
        if cache is not None:
            parts.append(f"--timingCacheFile={os.path.relpath(cache, os.path.abspath(artifact_dir))}")
        if self.hardware_compat != "none":
            parts.append(f"--hardwareCompatibilityLevel={self.hardware_compat}")
        if self.version_compatible:
            parts.append("--versionCompatible")
        parts.append(f"--saveEngine={engine_file}")
        return shlex.join(parts)


def parse_profile(text: str | None, fixed_batch: int | None) -> tuple[int, int, int] | None:
    """`--batch MIN:OPT:MAX` -> (min, opt, max); the default for dynamic exports; None for fixed."""
    if text is None:
        return None if fixed_batch else DEFAULT_PROFILE
    try:
        values = tuple(int(v) for v in text.split(":"))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1 or not values[0] <= values[1] <= values[2]:
        raise BadInput(f"--batch takes MIN:OPT:MAX positive batch sizes with MIN <= OPT <= MAX "
                       f"(e.g. 1:8:32), got {text!r}")
    if fixed_batch and values != (fixed_batch,) * 3:
        raise BadInput(f"the export has a fixed batch of {fixed_batch}: re-export with --batch dynamic "
                       f"to build a {text} profile")
    return values  # type: ignore[return-value]


def engine_mismatch(built: dict[str, Any], trt_version: str, gpu_name: str,
                    compute_capability: str) -> str | None:
    """Why an engine built as BUILT cannot run with this TensorRT on this GPU (None: it can)."""
    problems = []
    if built.get("version_compatible"):
        if trt_version.split(".")[0] != built["version"].split(".")[0] or \
                _version_tuple(trt_version) < _version_tuple(built["version"]):
            problems.append(f"TensorRT {trt_version} here, the version-compatible engine needs "
                            f"{built['version']} or a later {built['version'].split('.')[0]}.x")
    elif trt_version != built["version"]:
        problems.append(f"TensorRT {trt_version} here, the engine was built with {built['version']}")
    compat = built.get("hardware_compat", "none")
    if compat == "ampere+":
        if _version_tuple(compute_capability) < (8, 0):
            problems.append(f"{gpu_name} (sm {compute_capability}) is older than Ampere")
    elif (gpu_name, compute_capability) != (built["gpu"], built["compute_capability"]):
        problems.append(f"this GPU is {gpu_name} (sm {compute_capability}), the engine was built for "
                        f"{built['gpu']} (sm {built['compute_capability']})")
    if not problems:
        return None
    return ("; ".join(problems) + ": rebuild it here with `vitedge compile --target tensorrt` (or build with "
            "--hardware-compat ampere+ / --version-compatible for portable engines)")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])
