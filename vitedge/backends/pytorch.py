"""PyTorch eager FP32: the reference every artifact is compared against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.base import Availability, Backend, CudaEventTimer, Runner, register_backend
from vitedge.errors import BadInput, IncompatibleArtifact
from vitedge.manifest import Manifest


class TorchRunner(Runner):
    """Eager FP32 (TF32 off on GPUs, so the reference is really FP32).

    The yardsticks of a user's own PyTorch paths (`YARDSTICKS`): AUTOCAST "bf16" runs the module
    under `torch.autocast` in bf16 (the reference stays FP32), COMPILED wraps it in `torch.compile`
    (compiled on the first run of each input shape: warm-up pays it).
    """

    name = "pytorch"

    def __init__(self, module: Any, device: str = "cpu", threads: int | None = None,
                 autocast: str | None = None, compiled: bool = False) -> None:
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
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")
        self._forward = torch.compile(self.module) if compiled else self.module
        self.info = {"backend": "pytorch", "precision_run": autocast or "fp32", "device": device,
                     "threads": torch.get_num_threads(), "autocast": autocast, "torch_compile": compiled}

    def _call(self, xt: Any) -> Any:
        import torch

        if self.autocast is None:
            return self._forward(xt)
        with torch.autocast(self.device.type, dtype=self.autocast):
            return self._forward(xt)

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self._call(torch.from_numpy(x).to(self.device))
            return out.float().cpu().numpy()

    def infer(self, batch: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        if self.device.type != "cuda":
            return super().infer(batch)
        import torch

        x = next(iter(batch.values())) if isinstance(batch, dict) else batch
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
        with torch.inference_mode(), CudaEventTimer(torch) as timer:
            out = self._call(xt)
        self.last_ms = timer.elapsed_ms()
        return out.float().cpu().numpy()


def check_source_trusted(manifest: Manifest, artifact_dir: str | Path, trusted: bool) -> None:
    """Refuse to rebuild a recorded source that runs code (.pt2, TorchScript, module:factory)
    unless the user said so: vitedge only runs code named on the user's own command line or
    recipe, and a manifest is data anyone can write (SECURITY.md)."""
    from vitedge.models.base import source_executes_code

    spec = (manifest["source"].get("request") or {}).get("spec") or manifest["source"]["spec"]
    if not trusted and source_executes_code(spec):
        raise BadInput(f"--reference {artifact_dir}: its manifest names the source {spec}, which runs code when "
                       "loaded; vitedge only runs code you name yourself: give that MODEL spec as --reference "
                       "if you trust it, or pass --trust-source (SECURITY.md)")


def load_reference(manifest: Manifest, artifact_dir: str | Path = "", trusted: bool = False) -> Any:
    """Rebuild the source model recorded in an export manifest (same spec, weights, flags)."""
    from vitedge.models import load_model

    check_source_trusted(manifest, artifact_dir, trusted)
    req = manifest["source"].get("request") or {"spec": manifest["source"]["spec"]}
    loaded = load_model(req["spec"], weights=_weights_file(req.get("weights"), manifest, artifact_dir),
                        num_classes=req.get("num_classes"), img_size=req.get("img_size"),
                        labels=manifest.get("labels"), pretrained=bool(req.get("pretrained")),
                        random_init_seed=req.get("random_init_seed"))
    recorded = manifest["source"].get("weights_sha256")
    if recorded and loaded.weights_sha256 and recorded != loaded.weights_sha256:
        raise IncompatibleArtifact(f"the weights of {req['spec']} changed since this artifact was exported "
                                   "(SHA-256 differs): re-export it, or the reference is another model")
    return loaded


def _weights_file(recorded: str | None, manifest: Manifest, artifact_dir: str | Path) -> str | None:
    """The recorded weights file or, when it was moved, a file of the same name and SHA-256
    next to the artifact or in the working dir; IncompatibleArtifact when there is none."""
    if recorded is None or Path(recorded).is_file():
        return recorded
    from vitedge import ui
    from vitedge.fsutil import sha256_file

    digest = manifest["source"].get("weights_sha256")
    name = Path(recorded).name
    root = Path(artifact_dir or ".").resolve()
    for folder in dict.fromkeys((root, root.parent, Path.cwd())):
        candidate = folder / name
        if digest and candidate.is_file() and sha256_file(candidate) == digest:
            ui.warn(f"the reference weights moved from {recorded}; using {candidate} (same SHA-256)")
            return str(candidate)
    raise IncompatibleArtifact(f"the reference weights {recorded} recorded in {artifact_dir or 'the manifest'} are "
                               "gone (moved or deleted) and no file of the same name and SHA-256 is next to the "
                               "artifact or in the working dir; put the file back, or give the reference as a "
                               "MODEL spec")


@register_backend
class PyTorchBackend(Backend):
    name = "pytorch"
    precisions = ("fp32",)
    device_kind = "any"
    runtime_module = "torch"

    def availability(self) -> Availability:
        return Availability.of_package("torch", "pip install torch")

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        loaded = load_reference(manifest, artifact_dir, bool(options.get("trust_source")))
        return TorchRunner(loaded.module, options.get("device", "cpu"), options.get("threads"))
