"""The model-source registry and what every source returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import BadInput, EnvironmentProblem
from vitedge.preprocessing import Preprocessing


@dataclass
class LoadedModel:
    """An image classifier ready to export or to serve as the FP32 reference."""

    module: Any  # torch.nn.Module (eval mode) returning logits [batch, classes]
    spec: str
    source: str
    preprocessing: Preprocessing
    num_classes: int
    labels: list[str] | None = None
    weights_path: str | None = None
    weights_sha256: str | None = None
    static_batch: int | None = None  # set when the source cannot take a dynamic batch
    exporter: str = "dynamo"  # "dynamo" or "torchscript" (ScriptModules)
    # Where the weights came from: "file" (--weights), "pretrained" (the library's own hub
    # loading), "random-init" (seeded, speed/shape work only), "embedded" (.pt2 / TorchScript /
    # a factory that builds them), "builtin" (demo). Recorded in the manifest's `source`.
    weights_origin: str | None = None
    random_init_seed: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "source": self.source,
            "num_classes": self.num_classes,
            "weights": self.weights_path,
            "weights_sha256": self.weights_sha256,
            "weights_origin": self.weights_origin,
            "random_init_seed": self.random_init_seed,
            "params_sha256": params_sha256(self.module),
            **self.details,
        }


@dataclass
class ModelRequest:
    """What the user asked for (CLI flags / recipe keys)."""

    spec: str
    weights: Path | None = None
    num_classes: int | None = None
    img_size: int | None = None
    labels: list[str] | None = None
    pretrained: bool = False  # --pretrained: the library's own pretrained loading (hub cache)
    random_init_seed: int | None = None  # --random-init SEED: seeded random weights, speed/shape only


def params_sha256(module: Any) -> str | None:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes): the identity of the
    weights actually loaded, whatever the source. None when the module has no state dict."""
    import hashlib

    import torch

    state_dict = getattr(module, "state_dict", None)
    if state_dict is None:
        return None
    try:
        state = state_dict()
    except Exception:  # noqa: BLE001 - e.g. unlifted torch.export modules
        return None
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not hasattr(tensor, "detach"):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


SourceFn = Callable[[str, ModelRequest], LoadedModel]
_SOURCES: dict[str, SourceFn] = {}


def register_source(prefix: str) -> Callable[[SourceFn], SourceFn]:
    def deco(fn: SourceFn) -> SourceFn:
        _SOURCES[prefix] = fn
        return fn

    return deco


def resolve_source(spec: str) -> tuple[str, str]:
    """Split a MODEL spec into (source, rest)."""
    path = Path(spec)
    if spec.endswith(".pt2"):
        return "pt2", spec
    if path.suffix in (".pt", ".ts", ".torchscript", ".jit") and ":" not in spec:
        return "torchscript", spec
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in ("timm", "torchvision", "hf", "demo"):
        return prefix, rest
    if sep and rest and prefix.replace(".", "").replace("_", "").isalnum():
        return "factory", spec
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", spec
    raise BadInput(
        f"unknown model spec {spec!r}: use timm:<arch>, torchvision:<arch>, hf:<dir>, "
        "a .pt2 or TorchScript file, package.module:factory, or demo:digits"
    )


# Sources whose loading runs code from the file or module named (see SECURITY.md): a .pt2
# program's graph, a TorchScript program, an imported module's factory.
CODE_SOURCES = frozenset({"pt2", "torchscript", "factory"})


def source_executes_code(spec: str) -> bool:
    """Whether loading MODEL spec runs code that comes with it (not only reads tensors)."""
    try:
        return resolve_source(spec)[0] in CODE_SOURCES
    except BadInput:
        return False


def load_model(
    spec: str,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    labels: list[str] | None = None,
    *,
    pretrained: bool = False,
    random_init_seed: int | None = None,
) -> LoadedModel:
    """Load MODEL spec + weights into an eval-mode classifier and check it is one.

    Weights are explicit: WEIGHTS (a state dict), PRETRAINED (the library's own pretrained
    loading, from the hub cache) or RANDOM_INIT_SEED (seeded random init, rebuilt bit-identically
    from the seed); timm/torchvision specs refuse to load without one of them.
    """
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            from vitedge.fsutil import not_found

            raise not_found(weights, "weights file")
        weights = weights.resolve()  # recorded absolute: a bench from another dir finds it
    if num_classes is not None and num_classes < 1:
        raise BadInput(f"--num-classes must be positive, got {num_classes}")
    if img_size is not None and not 8 <= img_size <= 1024:
        raise BadInput(f"--img-size must be between 8 and 1024, got {img_size}")
    source, rest = resolve_source(spec)
    _check_weight_flags(source, weights, pretrained, random_init_seed)
    request = ModelRequest(spec, weights, num_classes, img_size, labels, pretrained, random_init_seed)
    try:
        loaded = _SOURCES[source](rest, request)
    except ImportError as exc:
        raise EnvironmentProblem(
            f"model source {source!r} needs a missing package ({exc.name or exc}): "
            f"pip install {'vitedge[hf]' if source == 'hf' else exc.name}"
        ) from exc
    set_eval(loaded.module)
    if source in ("pt2", "torchscript", "hf"):  # a file or folder: recorded absolute, like weights
        spec = f"hf:{Path(rest).resolve()}" if source == "hf" else str(Path(rest).resolve())
    loaded.details["request"] = {  # replayed by the PyTorch reference runner
        "spec": spec, "weights": str(weights) if weights else None,
        "num_classes": num_classes, "img_size": img_size,
        "pretrained": pretrained, "random_init_seed": random_init_seed,
    }
    if labels is not None:
        if len(labels) != loaded.num_classes:
            raise BadInput(
                f"--labels has {len(labels)} labels but the model has {loaded.num_classes} classes"
            )
        loaded.labels = labels
    probe_classifier(loaded)
    return loaded


_PRETRAINED_SOURCES = ("timm", "torchvision", "hf")
_RANDOM_INIT_SOURCES = ("timm", "torchvision", "hf", "factory")


def _check_weight_flags(source: str, weights: Path | None, pretrained: bool, seed: int | None) -> None:
    """At most one weights choice, and only where the source can honour it."""
    chosen = [flag for flag, on in (("--weights", weights is not None), ("--pretrained", pretrained),
                                    ("--random-init", seed is not None)) if on]
    if len(chosen) > 1:
        raise BadInput(f"{' and '.join(chosen)} exclude each other: the weights come from one place")
    if pretrained and source not in _PRETRAINED_SOURCES:
        raise BadInput(f"--pretrained applies to timm:, torchvision: and hf: specs, not {source} models "
                       "(their weights are in the file or the code)")
    if seed is not None and source not in _RANDOM_INIT_SOURCES:
        raise BadInput(f"--random-init applies to timm:, torchvision:, hf: and factory specs, not {source} models")
    if seed is not None and not 0 <= seed < 2**63:
        raise BadInput(f"--random-init takes a seed >= 0, got {seed}")


def set_eval(module: Any) -> Any:
    """eval() where supported (torch.export's unlifted modules refuse it; they are traced in eval)."""
    try:
        module.eval()
    except NotImplementedError:
        pass
    return module


def probe_classifier(loaded: LoadedModel) -> None:
    """Run one forward pass: the output must be logits [batch, classes] for this input size."""
    import torch

    h, w = loaded.preprocessing.input_size
    batch = loaded.static_batch or 2
    x = torch.randn(batch, 3, h, w)
    try:
        with torch.inference_mode():
            out = loaded.module(x)
    except Exception as exc:  # noqa: BLE001 - any failure here means a bad size or model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(
            f"{loaded.spec} does not accept input of shape {list(x.shape)} ({first}); "
            "check --img-size against the model"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(
            f"{loaded.spec} is not an image classifier: it returns {shape}, "
            "vitedge needs logits of shape [batch, classes]"
        )
    if out.shape[1] != loaded.num_classes:
        loaded.num_classes = int(out.shape[1])
        if loaded.labels is not None and len(loaded.labels) != loaded.num_classes:
            loaded.labels = None


def parse_labels(path: str | Path) -> list[str]:
    """A labels file: one label per line (txt), a JSON list, or a JSON {index: label} map."""
    import json

    path = Path(path)
    if not path.is_file():
        from vitedge.fsutil import not_found

        raise not_found(path, "labels file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"labels file {path} is not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            try:
                return [str(data[k]) for k in sorted(data, key=int)]
            except ValueError as exc:
                raise BadInput(f"labels file {path}: keys must be class indices") from exc
        if isinstance(data, list):
            return [str(x) for x in data]
        raise BadInput(f"labels file {path} must hold a list or an {{index: label}} map")
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise BadInput(f"labels file {path} is empty")
    return labels
