"""PyTorch eager FP32: the reference every artifact is compared against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.base import Availability, Backend, Runner, register_backend
from vitedge.envinfo import package_version
from vitedge.errors import IncompatibleArtifact
from vitedge.manifest import Manifest


class TorchRunner(Runner):
    """Eager FP32 (TF32 off on GPUs, so the reference is really FP32)."""

    name = "pytorch"

    def __init__(self, module: Any, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        import torch

        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.device = torch.device(device)
        from vitedge.models.base import set_eval

        self.module = set_eval(module).to(self.device)
        self.info = {"backend": "pytorch", "precision_run": "fp32", "device": device,
                     "threads": torch.get_num_threads()}

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(x).to(self.device))
            return out.float().cpu().numpy()

    def infer(self, batch: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        if self.device.type != "cuda":
            return super().infer(batch)
        import torch

        x = next(iter(batch.values())) if isinstance(batch, dict) else batch
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():
            start.record()
            out = self.module(xt)
            end.record()
        torch.cuda.synchronize()
        self.last_ms = start.elapsed_time(end)
        return out.float().cpu().numpy()


def load_reference(manifest: Manifest) -> Any:
    """Rebuild the source model recorded in an export manifest (same spec, weights, flags)."""
    from vitedge.models import load_model

    req = manifest["source"].get("request") or {"spec": manifest["source"]["spec"]}
    loaded = load_model(req["spec"], weights=req.get("weights"), num_classes=req.get("num_classes"),
                        img_size=req.get("img_size"), labels=manifest.get("labels"),
                        pretrained=bool(req.get("pretrained")), random_init_seed=req.get("random_init_seed"))
    recorded = manifest["source"].get("weights_sha256")
    if recorded and loaded.weights_sha256 and recorded != loaded.weights_sha256:
        raise IncompatibleArtifact(f"the weights of {req['spec']} changed since this artifact was exported "
                                   "(SHA-256 differs): re-export it, or the reference is another model")
    return loaded


@register_backend
class PyTorchBackend(Backend):
    name = "pytorch"
    precisions = ("fp32",)

    def availability(self) -> Availability:
        version = package_version("torch")
        if version is None:
            return Availability(False, None, "torch is not installed", "pip install torch")
        return Availability(True, version)

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        loaded = load_reference(manifest)
        return TorchRunner(loaded.module, options.get("device", "cpu"), options.get("threads"))
