"""Pretrained weights the way their libraries load them, from the local caches, never hanging.

timm and transformers read checkpoints through the Hugging Face hub cache (`HF_HUB_CACHE`,
else `HF_HOME/hub`, else `~/.cache/huggingface/hub`); torchvision through the torch hub cache
(`TORCH_HOME/hub/checkpoints`). With `HF_HUB_OFFLINE=1` only the caches are read. Every
network attempt is bounded (`HUB_TIMEOUT_S`), and "not cached and not reachable" becomes one
line naming the cache dir and `--weights` (exit 3), never a hang or a traceback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vitedge.errors import EnvironmentProblem

HUB_TIMEOUT_S = 10.0  # per network attempt (etag / connect); huggingface_hub's own default too
_TRUE = ("1", "on", "yes", "true")
# Checkpoint files timm's hub loading looks for, in its own order of preference.
TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache dir, resolved from the environment now."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def not_available(what: str, cache: Path, exc: BaseException | None = None) -> EnvironmentProblem:
    """The one line for 'these pretrained weights cannot be had here'."""
    why = "HF_HUB_OFFLINE=1 is set" if hub_offline() else "the hub could not be reached"
    detail = f" ({_first_line(exc)})" if exc is not None and not hub_offline() else ""
    return EnvironmentProblem(
        f"{what}: not in the cache {cache} and {why}{detail}; download them once on a connected "
        "machine into that cache (same HF_HOME / TORCH_HOME), or pass --weights FILE"
    )


def hf_download(repo_id: str, filenames: tuple[str, ...], revision: str | None, what: str) -> Path:
    """The first of FILENAMES in hub repo REPO_ID: from the cache, else (online) from the hub."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cache = hub_cache_dir()
    for filename in filenames:  # the cache first: no network at all when it is there
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache,
                                        local_files_only=True, library_name="vitedge"))
        except (LocalEntryNotFoundError, EntryNotFoundError):
            pass
    if hub_offline():
        raise not_available(what, cache)
    if (why := unreachable(_hf_endpoint())) is not None:
        raise not_available(what, cache, ConnectionError(why))
    for filename in filenames:
        try:
            with _bounded_sockets():
                return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache,
                                            etag_timeout=HUB_TIMEOUT_S, library_name="vitedge"))
        except EntryNotFoundError:  # the repo exists but holds another file name
            continue
        except Exception as exc:  # noqa: BLE001 - connection, auth, missing repo: one attempt only
            raise not_available(what, cache, exc) from exc
    raise not_available(what, cache)


def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def hf_pretrained(cls: Any, repo_id: str, what: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(repo_id)` through the cache; local_files_only when offline."""
    cache = hub_cache_dir()
    if not hub_offline() and hf_snapshot_dir(repo_id) is None and (why := unreachable(_hf_endpoint())):
        raise not_available(what, cache, ConnectionError(why))
    try:
        with _bounded_sockets():
            return cls.from_pretrained(repo_id, cache_dir=str(cache), local_files_only=hub_offline(), **kwargs)
    except OSError as exc:  # transformers turns every cache/network miss into an OSError
        raise not_available(what, cache, exc) from exc


def hf_snapshot_dir(repo_id: str) -> Path | None:
    """The cached snapshot folder holding REPO_ID's config.json (None if not cached)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache_dir())
    return Path(found).parent if isinstance(found, str) else None


def torch_hub_checkpoint(url: str, what: str) -> Path:
    """A torchvision checkpoint URL through the torch hub cache; downloaded only when online."""
    import torch

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / os.path.basename(url)
    if path.is_file():
        return path
    if hub_offline():
        raise not_available(what, cache)
    if (why := unreachable(url)) is not None:
        raise not_available(what, cache, ConnectionError(why))
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with _bounded_sockets():
            torch.hub.download_url_to_file(url, str(path), progress=False)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
        raise not_available(what, cache, exc) from exc
    return path


def unreachable(url: str) -> str | None:
    """Why URL's host cannot be reached within HUB_TIMEOUT_S (DNS + TCP connect), or None.

    Checked before any download: the hub clients retry with backoff (about 25 s per file
    for huggingface_hub), so an unreachable hub would otherwise cost minutes.
    """
    parts = urlsplit(url)
    result: dict[str, str | None] = {}

    def probe() -> None:
        try:
            with socket.create_connection((parts.hostname or "", parts.port or 443), timeout=HUB_TIMEOUT_S):
                result["error"] = None
        except OSError as exc:
            result["error"] = f"{parts.hostname}: {exc.strerror or exc}"

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo itself has no timeout
    thread.start()
    thread.join(HUB_TIMEOUT_S)
    return result.get("error", f"{parts.hostname}: no answer in {HUB_TIMEOUT_S:g} s")


@contextlib.contextmanager
def _bounded_sockets() -> Iterator[None]:
    """Every socket opened inside times out after HUB_TIMEOUT_S (urllib has no default)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(HUB_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def imagenet_labels(model_or_cfg: Any, num_classes: int) -> list[str] | None:
    """ImageNet-1k/12k/22k class names for a timm pretrained config, from timm.data."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    try:
        subset = infer_imagenet_subset(model_or_cfg)
        if subset is None:
            return None
        labels = list(ImageNetInfo(subset).label_descriptions())
    except Exception:  # noqa: BLE001 - an unknown subset: no names rather than wrong ones
        return None
    return labels if len(labels) == num_classes else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 100 else first[:97] + "..."
