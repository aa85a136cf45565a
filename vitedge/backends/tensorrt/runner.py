"""The TensorRT runner: execute_async_v3 on torch CUDA tensors, timed with CUDA events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.base import CudaEventTimer, Runner
from vitedge.errors import BadInput, EnvironmentProblem, IncompatibleArtifact


class TensorRTRunner(Runner):
    """Runs an engine with execute_async_v3 on torch CUDA tensors; times it with CUDA events."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, built: dict[str, Any] | None, device_index: int = 0) -> None:
        super().__init__()
        import tensorrt as trt
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device_index)
        torch.cuda.set_device(self.device)  # TensorRT deserializes and runs on the current device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if built and built.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise IncompatibleArtifact(f"TensorRT {trt.__version__} cannot load {engine_path} (built for "
                                       "another GPU or TensorRT version?): rebuild it here with "
                                       "`vitedge compile`")
        self.context = self.engine.create_execution_context()
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
        self.info = {"backend": "tensorrt", "version": trt.__version__, "device": f"cuda:{device_index}",
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
            raise EnvironmentProblem("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None


def _torch_dtype(trt_dtype: Any) -> Any:
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}
    return table[trt_dtype.name]
