"""The TensorRT / TensorRT-RTX runner: execute_async_v3 on torch CUDA tensors, timed with CUDA
events. TensorRT-RTX engines get an execution context with a runtime cache, loaded from and
saved (atomically) to `.tensorrt_rtx_runtime.cache` beside the engine, so kernels JIT-compiled at
the first load are reused by the next."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge.backends.base import CudaEventTimer, Runner
from vitedge.backends.tensorrt import libs
from vitedge.errors import BadInput, EnvironmentProblem, IncompatibleArtifact
from vitedge.fsutil import atomic_write


class TensorRTRunner(Runner):
    """Runs an engine with execute_async_v3 on torch CUDA tensors; times it with CUDA events."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, built: dict[str, Any] | None, device_index: int = 0,
                 library: str = libs.TENSORRT) -> None:
        super().__init__()
        import torch

        trt = libs.require(library)
        self.trt, self.library = trt, library
        display = libs.LIBRARIES[library].display

        self.torch = torch
        self.device = torch.device("cuda", device_index)
        torch.cuda.set_device(self.device)  # TensorRT deserializes and runs on the current device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if built and built.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True
        data = engine_path.read_bytes()
        why = libs.validity_problem(trt, self.runtime, data) if library == libs.RTX else None
        if why:
            raise IncompatibleArtifact(f"{display} {trt.__version__} reports {engine_path} invalid here ({why}): "
                                       "rebuild it with `vitedge compile`")
        start = time.perf_counter()
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise IncompatibleArtifact(f"{display} {trt.__version__} cannot load {engine_path} (its log above says "
                                       "why): rebuild it here with `vitedge compile`")
        self.cache_file = engine_path.with_name(libs.RUNTIME_CACHE) if library == libs.RTX else None
        self.cache_loaded = False
        if self.cache_file is not None:
            self.context = self._context_with_runtime_cache()
        else:
            self.context = self.engine.create_execution_context()
        self.load_seconds = time.perf_counter() - start
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise IncompatibleArtifact(f"{engine_path}: expected one input and one output, got {names}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.output_name))
        batch = self.engine.get_tensor_shape(self.input_name)[0]
        if batch == -1:  # dynamic: the optimisation profile's min and max
            low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.batch_range = (low[0], high[0])
        else:
            self.batch_range = (batch, batch)
        self.stream = torch.cuda.Stream(self.device)
        self.timer = CudaEventTimer(torch, self.stream)
        self.info = {"backend": "tensorrt", "library": library, "version": trt.__version__,
                     "device": f"cuda:{device_index}", "load_seconds": round(self.load_seconds, 3),
                     **({"runtime_cache": {"file": str(self.cache_file), "loaded": self.cache_loaded}}
                        if self.cache_file is not None else {}),
                     "gpu": torch.cuda.get_device_name(self.device), "batch_range": list(self.batch_range),
                     "timing": "CUDA events around execute_async_v3 (host copies excluded)"}

    def infer(self, batch: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        out = super().infer(batch)
        self.last_ms = self.timer.elapsed_ms()
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        low, high = self.batch_range
        if not low <= len(x) <= high:
            raise BadInput(f"batch {len(x)} is outside the engine's profile {low}..{high} "
                           "(rebuild with --batch MIN:OPT:MAX)")
        with torch.cuda.stream(self.stream):
            x_gpu = torch.from_numpy(x).to(self.device).to(self.input_dtype)
            self.context.set_input_shape(self.input_name, tuple(x_gpu.shape))
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)),
                              dtype=self.output_dtype, device=self.device)
            self.context.set_tensor_address(self.input_name, x_gpu.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            with self.timer:
                ok = self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        if not ok:
            raise EnvironmentProblem(f"{libs.LIBRARIES[self.library].display} execute_async_v3 failed (see its log)")
        return out.float().cpu().numpy()

    def _context_with_runtime_cache(self) -> Any:
        """TensorRT-RTX: an execution context whose runtime cache is read from CACHE_FILE."""
        config = self.engine.create_runtime_config()
        self.runtime_cache = config.create_runtime_cache()
        if self.cache_file.is_file():  # rejected (False) when made on another GPU, driver or version
            self.cache_loaded = bool(self.runtime_cache.deserialize(self.cache_file.read_bytes()))
        config.set_runtime_cache(self.runtime_cache)
        self.runtime_config = config
        return self.engine.create_execution_context(config)

    def save_runtime_cache(self) -> bool:
        """Write the runtime cache beside the engine (temp file + rename); False where it cannot."""
        if self.cache_file is None or self.engine is None:
            return False
        try:
            atomic_write(self.cache_file, bytes(memoryview(self.runtime_cache.serialize())))
            return True
        except OSError as exc:  # a read-only artifact dir still runs, only without the cache
            ui.warn(f"could not save the TensorRT-RTX runtime cache {self.cache_file}: {exc.strerror or exc}")
            return False

    def close(self) -> None:
        if self.cache_file is not None and self.engine is not None:
            self.save_runtime_cache()
        self.context = None
        self.engine = None


def _torch_dtype(trt_dtype: Any) -> Any:
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}
    return table[trt_dtype.name]
