"""Reading a state dict from safetensors/.pth/.pt/.bin and fitting it to a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitedge.errors import BadInput
from vitedge.fsutil import sha256_file

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "model_ema", "net")
_PREFIXES = ("module.", "_orig_mod.")


def _check_checkpoint_format(path: Path) -> None:
    """BadInput unless PATH looks like what torch.save writes: a zip archive, or a pickle."""
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except IsADirectoryError:
        raise BadInput(f"--weights {path} is a directory; give the weights file inside it") from None
    except OSError as exc:
        raise BadInput(f"cannot read weights {path}: {exc.strerror or exc}") from exc
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        raise BadInput(f"weights {path} is not a valid PyTorch checkpoint (torch.save writes a zip archive, "
                       f"older versions a pickle; this file is neither); give a .pth/.pt/.bin from torch.save "
                       "or a .safetensors file")


def read_state_dict(path: Path) -> dict[str, Any]:
    """Load tensors only (never unpickle code); unwrap common checkpoint wrappers."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise BadInput(f"cannot read weights {path}: not a valid safetensors file ({exc})") from exc
    else:
        _check_checkpoint_format(path)
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
                raise BadInput(
                    f"cannot read weights {path} safely: it pickles code, not just tensors. "
                    "Save `model.state_dict()` (torch.save or safetensors) instead"
                ) from exc
            raise BadInput(f"cannot read weights {path}: {msg}") from exc
    for _ in range(3):  # nested wrappers like {"model": {"state_dict": ...}}
        if isinstance(state, dict):
            inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
            if inner is not None and not _looks_like_state_dict(state):
                state = inner
                continue
        break
    if not isinstance(state, dict) or not _looks_like_state_dict(state):
        raise BadInput(f"weights file {path} holds no state dict of tensors")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _looks_like_state_dict(obj: dict) -> bool:
    import torch

    return bool(obj) and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def classifier_width(state: dict[str, Any]) -> int | None:
    """Number of classes implied by the classifier head in a state dict, if recognisable."""
    for key in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight",
                "heads.head.weight", "head.l.weight"):
        if key in state and getattr(state[key], "ndim", 0) == 2:
            return int(state[key].shape[0])
    return None


def apply_state_dict(model: Any, state: dict[str, Any], spec: str, path: Path) -> str:
    """Load strictly; on mismatch say which keys and shapes differ. Returns the file's SHA-256."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise BadInput(
            f"weights {path.name} do not fit {spec}: {'; '.join(parts)}. "
            "Check the architecture, --num-classes and --img-size"
        )
    model.load_state_dict(state, strict=True)
    return sha256_file(path)
