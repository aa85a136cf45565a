"""The small embedding API: `vitedge.load(dir)` -> Predictor, for device apps and for bench.

It reads the manifest, verifies the artifact's file hashes, opens the backend's runner and
applies the recorded preprocessing to raw images, so an app never re-implements mean/std/resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitedge.backends.base import backend_for_target, get_backend
from vitedge.errors import BadInput, EnvironmentProblem
from vitedge.manifest import Manifest
from vitedge.preprocessing import open_rgb, preprocess_image

ImageLike = str | Path | Image.Image


class Predictor:
    """Logits (and top-k labels) for image paths, PIL images or preprocessed NCHW arrays."""

    def __init__(self, artifact_dir: Path, manifest: Manifest, runner: Any, backend: str) -> None:
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.runner = runner
        self.backend = backend
        self.preprocessing = manifest.preprocessing
        self.labels: list[str] | None = manifest.labels

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.runner.close()

    def preprocess(self, x: Any) -> np.ndarray:
        """Raw images -> NCHW float32 with the manifest's preprocessing; arrays pass through."""
        if isinstance(x, np.ndarray):
            arr = x if x.ndim == 4 else x[None]
            h, w = self.preprocessing.input_size
            if arr.shape[1:] != (3, h, w):
                raise BadInput(f"expected preprocessed input [N, 3, {h}, {w}], got {list(arr.shape)}")
            return np.ascontiguousarray(arr, dtype=np.float32)
        items = x if isinstance(x, (list, tuple)) else [x]
        if not items:
            raise BadInput("predict() got no images")
        arrays = []
        for item in items:
            if isinstance(item, Image.Image):
                arrays.append(preprocess_image(item, self.preprocessing))
            elif isinstance(item, (str, Path)):
                arrays.append(preprocess_image(open_rgb(item), self.preprocessing))
            else:
                raise BadInput(f"predict() takes image paths, PIL images or an NCHW array, not {type(item).__name__}")
        return np.stack(arrays)

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """Logits [N, classes] as float32."""
        arr = self.preprocess(x)
        fixed = self.manifest.fixed_batch
        size = fixed or batch_size or len(arr)
        outs = []
        for i in range(0, len(arr), size):
            chunk = arr[i:i + size]
            if fixed and len(chunk) < fixed:  # static-batch artifacts: pad the last batch
                pad = np.zeros((fixed - len(chunk), *chunk.shape[1:]), np.float32)
                outs.append(self.runner.infer(np.concatenate([chunk, pad]))[: len(chunk)])
            else:
                outs.append(self.runner.infer(chunk))
        return np.concatenate(outs).astype(np.float32, copy=False)

    def topk(self, x: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image: the k most probable (label, probability) pairs."""
        logits = self.predict(x).astype(np.float64)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        order = np.argsort(-probs, axis=1)[:, :k]
        names = self.labels or [str(i) for i in range(probs.shape[1])]
        return [[(names[j], float(p[j])) for j in row] for row, p in zip(order, probs)]


def load(path: str | Path, backend: str | None = None, *, device: str = "cpu",
         threads: int | None = None, verify: bool = True, **options: Any) -> Predictor:
    """Open any vitedge artifact dir. `backend="pytorch"` on an export dir gives the FP32 reference."""
    artifact_dir = Path(path)
    if artifact_dir.is_file():
        artifact_dir = artifact_dir.parent
    manifest = Manifest.load(artifact_dir)
    if verify:
        manifest.verify_files(artifact_dir)
    try:
        impl = get_backend(backend) if backend else backend_for_target(manifest.target)
    except BadInput as exc:
        raise BadInput(f"{artifact_dir}: {exc}") from exc
    name = impl.name
    available = impl.availability_for(manifest)
    if not available.usable:
        raise EnvironmentProblem(f"cannot run {artifact_dir} on {name}: {available.reason}; {available.install}")
    runner = impl.open_runner(artifact_dir, manifest, device=device, threads=threads, **options)
    return Predictor(artifact_dir, manifest, runner, name)
