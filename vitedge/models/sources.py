"""One function per model source; each declares the preprocessing its model's config implies."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitedge.errors import BadInput
from vitedge.fsutil import sha256_file
from vitedge.models import hub
from vitedge.models.base import LoadedModel, ModelRequest, register_source
from vitedge.models.weights import apply_state_dict, classifier_width, read_state_dict
from vitedge.preprocessing import Preprocessing

DEFAULT_SIZE = 224


def _default_preprocessing(img_size: int | None) -> Preprocessing:
    size = img_size or DEFAULT_SIZE
    return Preprocessing(input_size=(size, size), crop_pct=0.875, interpolation="bilinear",
                         extra={"origin": "vitedge default (ImageNet); the model declares none"})


def _timm_preprocessing(model: Any, img_size: int | None) -> Preprocessing:
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    _, h, w = cfg["input_size"]
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if built:  # the size the model was built for beats its pretrained config
        h, w = int(built[0]), int(built[1])
    if img_size:
        h = w = img_size
    interp = cfg.get("interpolation", "bicubic")
    return Preprocessing(
        input_size=(h, w), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=interp if interp != "random" else "bicubic",
        crop_mode="center" if cfg.get("crop_mode", "center") == "center" else cfg["crop_mode"],
        extra={"origin": "timm pretrained_cfg"},
    )


WAYS_OUT = ("--weights FILE (your checkpoint), --pretrained (the library's pretrained weights, "
            "from the hub cache) or --random-init SEED (seeded random weights: speed/shape work only)")


def no_weights_error(spec: str) -> BadInput:
    """A timm/torchvision spec with no weights: say the three ways out instead of a random init."""
    return BadInput(f"{spec} has no weights: pass {WAYS_OUT}")


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Build under torch.manual_seed(SEED) without disturbing the caller's RNG (no-op for None)."""
    import torch

    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _origin(req: ModelRequest) -> str:
    if req.weights:
        return "file"
    return "pretrained" if req.pretrained else "random-init"


def _timm_pretrained_file(arch: str, num_classes: int | None) -> tuple[dict[str, Any], Path]:
    """timm's pretrained config for ARCH[.tag] and its checkpoint, from the HF hub cache."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=False)
    except RuntimeError as exc:
        tags = [n for n in timm.list_pretrained(f"{arch.split('.')[0]}*") if n.startswith(arch.split(".")[0] + ".")]
        hint = f" Pretrained tags: {', '.join(tags[:6])}" if tags else " timm has no pretrained weights for it."
        raise BadInput(f"timm:{arch} --pretrained: {exc}.{hint}") from exc
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise BadInput(f"timm:{arch} has no pretrained weights in timm; pass --weights FILE")
    if num_classes and num_classes != cfg.num_classes:
        raise BadInput(f"timm:{arch} --pretrained has a {cfg.num_classes}-class head; --num-classes {num_classes} "
                       "would bolt on a random one (fine-tune, then pass --weights FILE)")
    what = f"pretrained weights for timm:{arch} ({cfg.hf_hub_id or cfg.url})"
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else hub.TIMM_HUB_FILES
        file = hub.hf_download(repo, names, revision or None, what)
    elif cfg.file:
        file = Path(cfg.file)
    else:
        file = hub.torch_hub_checkpoint(cfg.url, what)
    return cfg.to_dict(), file


@register_source("timm")
def load_timm(arch: str, req: ModelRequest) -> LoadedModel:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See `timm.list_models()`."
        raise BadInput(f"unknown timm model {arch!r}.{hint}")
    if not (req.weights or req.pretrained or req.random_init_seed is not None):
        raise no_weights_error(f"timm:{arch}")
    state = read_state_dict(req.weights) if req.weights else None
    num_classes = req.num_classes or (classifier_width(state) if state else None)
    kwargs: dict[str, Any] = {}
    if num_classes:
        kwargs["num_classes"] = num_classes
    if req.img_size:
        kwargs["img_size"] = req.img_size
    pretrained: dict[str, Any] = {}
    if req.pretrained:
        cfg, file = _timm_pretrained_file(arch, num_classes)
        # timm's own loading (filter_fn resizes position embeddings, adapts in_chans) from the
        # cached file; custom_load is for .npz release files, not hub checkpoints.
        kwargs["pretrained_cfg_overlay"] = {"file": str(file),
                                            "custom_load": cfg.get("custom_load") if file.suffix == ".npz" else False}
        pretrained = {"pretrained_tag": cfg.get("tag"), "hf_hub_id": cfg.get("hf_hub_id"),
                      "pretrained_file": str(file)}
    try:
        with seeded(req.random_init_seed):
            model = timm.create_model(arch, pretrained=req.pretrained, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:
        raise BadInput(f"timm cannot build {arch} with {kwargs}: {exc}") from exc
    except RuntimeError as exc:
        if not req.pretrained:
            raise
        raise BadInput(f"timm could not load the pretrained weights of {arch}: {str(exc).splitlines()[0]}") from exc
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if req.img_size and patch and (req.img_size % patch[0] or req.img_size % patch[1]):
        raise BadInput(f"--img-size {req.img_size} is not a multiple of {arch}'s patch size {patch[0]}")
    sha = None
    if state is not None:
        # timm's own filter resizes position embeddings when --img-size differs.
        filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                state = filter_fn(state, model)
            except Exception:  # noqa: BLE001 - fall through to the strict check's message
                pass
        sha = apply_state_dict(model, state, f"timm:{arch}", req.weights)
    elif req.pretrained:
        sha = sha256_file(pretrained["pretrained_file"])
    labels = hub.imagenet_labels(model, model.num_classes) if req.pretrained else None
    return LoadedModel(
        module=model, spec=f"timm:{arch}", source="timm",
        preprocessing=_timm_preprocessing(model, req.img_size),
        num_classes=model.num_classes, labels=labels,
        weights_path=str(req.weights) if req.weights else pretrained.get("pretrained_file"), weights_sha256=sha,
        weights_origin=_origin(req), random_init_seed=req.random_init_seed,
        details={"arch": arch, "timm_version": timm.__version__, **pretrained},
    )


@register_source("demo")
def load_demo(name: str, req: ModelRequest) -> LoadedModel:
    from vitedge.models import demo

    if name != "digits":
        raise BadInput(f"unknown demo model demo:{name}; the built-in demo is demo:digits")
    if req.img_size and req.img_size != demo.DEMO_IMAGE_SIZE:
        raise BadInput(f"demo:digits takes {demo.DEMO_IMAGE_SIZE}x{demo.DEMO_IMAGE_SIZE} input, "
                       f"not --img-size {req.img_size}")
    model = demo.build_demo_model()
    weights = req.weights or demo.DEMO_WEIGHTS
    if not weights.is_file():
        raise BadInput(f"demo weights {weights} are missing; run scripts/train_demo.py")
    sha = apply_state_dict(model, read_state_dict(weights), "demo:digits", weights)
    return LoadedModel(
        module=model, spec="demo:digits", source="demo", preprocessing=demo.DEMO_PREPROCESSING,
        num_classes=10, labels=list(demo.DEMO_LABELS), weights_path=str(weights),
        weights_sha256=sha, weights_origin="file" if req.weights else "builtin",
        details={"arch": "vit (timm VisionTransformer)", "config": demo.DEMO_ARCH},
    )


@register_source("torchvision")
def load_torchvision(arch: str, req: ModelRequest) -> LoadedModel:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise BadInput(f"unknown torchvision model {arch!r}.{hint}")
    if not (req.weights or req.pretrained or req.random_init_seed is not None):
        raise no_weights_error(f"torchvision:{arch}")
    state = read_state_dict(req.weights) if req.weights else None
    file: Path | None = None
    if req.pretrained:
        try:
            default = torchvision.models.get_model_weights(arch).DEFAULT
        except (ValueError, KeyError, AttributeError) as exc:
            raise BadInput(f"torchvision:{arch} has no pretrained weights; pass --weights FILE") from exc
        classes = len(default.meta.get("categories") or [])
        if req.num_classes and req.num_classes != classes:
            raise BadInput(f"torchvision:{arch} --pretrained has a {classes}-class head; --num-classes "
                           f"{req.num_classes} would bolt on a random one (fine-tune, then pass --weights FILE)")
        if req.img_size:
            raise BadInput(f"torchvision:{arch} --pretrained is fixed to its own input size; drop --img-size")
        file = hub.torch_hub_checkpoint(default.url, f"pretrained weights for torchvision:{arch} ({default})")
        state = read_state_dict(file)
    num_classes = req.num_classes or (classifier_width(state) if state else None) or 1000
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if req.img_size and arch.startswith("vit_"):
        kwargs["image_size"] = req.img_size
    with seeded(req.random_init_seed):
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    sha = apply_state_dict(model, state, f"torchvision:{arch}", req.weights or file) if state else None
    pre, labels = _torchvision_preprocessing(arch, req.img_size)
    return LoadedModel(
        module=model, spec=f"torchvision:{arch}", source="torchvision", preprocessing=pre,
        num_classes=num_classes, labels=labels if num_classes == len(labels or []) else None,
        weights_path=str(req.weights or file) if (req.weights or file) else None, weights_sha256=sha,
        weights_origin=_origin(req), random_init_seed=req.random_init_seed,
        details={"arch": arch, "torchvision_version": torchvision.__version__},
    )


def _torchvision_preprocessing(arch: str, img_size: int | None) -> tuple[Preprocessing, list[str] | None]:
    """Read the eval transform torchvision documents for this arch's default weights."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return _default_preprocessing(img_size), None
    tf = weights.transforms()
    crop = int(tf.crop_size[0])
    resize = int(tf.resize_size[0])
    size = img_size or crop
    pre = Preprocessing(
        input_size=(size, size), mean=tuple(tf.mean), std=tuple(tf.std),
        crop_pct=min(1.0, crop / resize), resize_size=round(size * resize / crop),
        interpolation=tf.interpolation.value, extra={"origin": f"torchvision {weights}"},
    )
    return pre, list(weights.meta.get("categories") or []) or None


class HFLogits:
    """Wraps a transformers image classifier so forward(x) returns the logits tensor."""

    def __new__(cls, hf_model: Any) -> Any:
        import torch

        class _Wrapper(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.model = inner

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                return self.model(pixel_values=pixel_values).logits

        return _Wrapper(hf_model)


_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?$")


@register_source("hf")
def load_hf(name: str, req: ModelRequest) -> LoadedModel:
    """hf:<local dir> (weights in the folder, or --random-init from its config) or hf:<hub id>
    (transformers from_pretrained through the hub cache)."""
    path = Path(name)
    local = path.is_dir()
    if local and not (path / "config.json").is_file():
        raise BadInput(f"hf:{name} is not a Hugging Face model folder (no config.json)")
    if not local and not _HUB_ID.match(name):
        raise BadInput(f"hf:{name} is neither a model folder nor a Hugging Face hub id (org/name)")
    if not local and not req.pretrained:
        raise BadInput(f"hf:{name} is not a local folder; add --pretrained to load it from the Hugging Face "
                       "hub cache, or give the folder it was saved to")
    from transformers import AutoConfig, AutoModelForImageClassification

    repo, _, revision = name.partition("@")
    what = f"the Hugging Face model {repo}"
    hub_kwargs: dict[str, Any] = {"revision": revision} if revision and not local else {}
    hub_kwargs["trust_remote_code"] = False  # a model's own Python files are never imported (SECURITY.md)
    try:
        config = (AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False) if local
                  else hub.hf_pretrained(AutoConfig, repo, what, **hub_kwargs))
    except ValueError as exc:  # unknown model_type, or custom code vitedge will not run
        raise BadInput(f"hf:{name}: transformers cannot read its config without running the model's "
                       f"own code or at all: {str(exc).strip().splitlines()[0]}") from exc
    archs = config.architectures or []
    if archs and not any("ImageClassification" in a for a in archs):
        # from_pretrained would silently bolt a random head onto a backbone
        raise BadInput(f"hf:{name} holds {', '.join(archs)}, not an image classifier "
                       "(vitedge needs a *ForImageClassification model)")
    try:
        if req.random_init_seed is not None:
            with seeded(req.random_init_seed):
                model = AutoModelForImageClassification.from_config(config, trust_remote_code=False)
        elif local:
            model = AutoModelForImageClassification.from_pretrained(path, local_files_only=True,
                                                                    trust_remote_code=False)
        else:
            model = hub.hf_pretrained(AutoModelForImageClassification, repo, what, **hub_kwargs)
    except (ValueError, KeyError) as exc:
        raise BadInput(
            f"hf:{name} ({config.model_type}) is not an image-classification model: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if req.weights:
        apply_state_dict(model, read_state_dict(req.weights), f"hf:{name}", req.weights)
    folder = path if local else hub.hf_snapshot_dir(repo)
    files = (sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))) if folder else []
    sha = sha256_file(req.weights) if req.weights else (sha256_file(files[0]) if len(files) == 1 else None)
    if req.random_init_seed is not None:
        files, sha = [], None
    labels = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else None
    if labels and all(lbl == f"LABEL_{i}" for i, lbl in enumerate(labels)):
        labels = None
    origin = ("file" if req.weights or local and req.random_init_seed is None and not req.pretrained
              else _origin(req))
    return LoadedModel(
        module=HFLogits(model), spec=f"hf:{name}", source="hf",
        preprocessing=_hf_preprocessing(folder, config, req.img_size),
        num_classes=config.num_labels, labels=labels,
        weights_path=str(req.weights or (files[0] if files else folder or repo)), weights_sha256=sha,
        weights_origin=origin, random_init_seed=req.random_init_seed,
        details={"model_type": config.model_type, "architectures": config.architectures,
                 **({} if local else {"hf_hub_id": repo})},
    )


def _hf_preprocessing(path: Path | None, config: Any, img_size: int | None) -> Preprocessing:
    """The eval transform of the folder's image processor (preprocessor_config.json), as transformers
    runs it: resize (`size`: height/width straight, or shortest_edge keeping the aspect; ConvNext /
    PoolFormer scale it by 1/crop_pct, LeViT by 256/224), then, with `do_center_crop`, a centre
    crop to `crop_size`, which is then the model's input size (DeiT: resize 256, crop 224)."""
    cfg_path = path / "preprocessor_config.json" if path else None
    if cfg_path is None or not cfg_path.is_file():
        size = img_size or getattr(config, "image_size", DEFAULT_SIZE)
        return _default_preprocessing(size)
    cfg = json.loads(cfg_path.read_text())
    kind = str(cfg.get("image_processor_type") or "").removesuffix("Fast")
    size = cfg.get("size") or {"shortest_edge": DEFAULT_SIZE}
    if isinstance(size, int):  # the old form: an int is the shortest edge
        size = {"shortest_edge": size}
    normalize = cfg.get("do_normalize", True) is not False and kind != "MobileViTImageProcessor"
    mean = tuple(cfg.get("image_mean", (0.5, 0.5, 0.5))) if normalize else (0.0, 0.0, 0.0)
    std = tuple(cfg.get("image_std", (0.5, 0.5, 0.5))) if normalize else (1.0, 1.0, 1.0)
    interp = _HF_RESAMPLE.get(cfg.get("resample", 2), "bilinear")
    origin = f"preprocessor_config.json ({kind or 'image processor'})"
    common = dict(mean=mean, std=std, interpolation=interp, crop_offset="floor",
                  scale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) is not False else 1.0,
                  channel_order="BGR" if cfg.get("do_flip_channel_order") else "RGB")
    crop = cfg.get("crop_size") if cfg.get("do_center_crop") else None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    crop_pct = cfg.get("crop_pct")
    if kind == "ConvNextImageProcessor":  # its own resize: crops to shortest_edge below 384, warps at 384+
        edge = int(size.get("shortest_edge", DEFAULT_SIZE))
        crop_pct = float(crop_pct if crop_pct is not None else 224 / 256)
        if edge >= 384:
            size, crop = {"height": edge, "width": edge}, None
        else:
            size, crop = {"shortest_edge": int(edge / crop_pct)}, {"height": edge, "width": edge}
    elif kind == "LevitImageProcessor" and "shortest_edge" in size:
        size = {"shortest_edge": int((256 / 224) * size["shortest_edge"])}
    elif kind == "PoolFormerImageProcessor" and crop_pct:
        side = size.get("shortest_edge") or size.get("height")
        if side and size.get("height", side) == size.get("width", side):
            size = {"shortest_edge": int(side / float(crop_pct))}
    if "height" in size and size.get("height") != size.get("width") and crop:
        raise BadInput(f"{cfg_path}: a {size['height']}x{size['width']} resize followed by a centre crop is "
                       "not a transform vitedge reproduces; give --crop-pct to resize the shortest side instead")
    if crop:  # the crop size is the model's input; the resize before it scales along with --img-size
        crop_h, crop_w = int(crop.get("height", crop.get("width"))), int(crop.get("width", crop.get("height")))
        h, w = (img_size, img_size) if img_size else (crop_h, crop_w)
        resize = int(size["height"] if "height" in size else size["shortest_edge"])
        resize = round(resize * h / crop_h) if img_size else resize
        mode = "squash_center" if "height" in size else "center"
        return Preprocessing(input_size=(h, w), crop_pct=min(1.0, max(h, w) / resize), resize_size=resize,
                             crop_mode=mode, extra={"origin": origin, "resize": size, "crop_size": crop}, **common)
    if "height" in size:  # ViTImageProcessor: resize straight to HxW, no crop
        h, w = (img_size, img_size) if img_size else (int(size["height"]), int(size["width"]))
        return Preprocessing(input_size=(h, w), crop_pct=1.0, crop_mode="squash",
                             extra={"origin": origin, "resize": size}, **common)
    # shortest edge, no crop: the model sees a square of that side (centre of the resized image)
    edge = img_size or int(size["shortest_edge"])
    return Preprocessing(input_size=(edge, edge), crop_pct=1.0, resize_size=edge,
                         extra={"origin": origin, "resize": size}, **common)


@register_source("pt2")
def load_pt2(file: str, req: ModelRequest) -> LoadedModel:
    path = Path(file)
    if not path.is_file():
        raise BadInput(f"{file} does not exist")
    try:
        program = _load_pt2_weights_only(path)
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001
        if "Weights only load failed" in str(exc):
            raise BadInput(f"{file} holds pickled data that is not plain tensors, which would run code when "
                           "loaded; vitedge refuses it (torch's weights-only loader rejected it)") from exc
        raise BadInput(f"{file} is not a torch.export program (.pt2) vitedge can load safely: "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    shape = _pt2_input_shape(program)
    if shape is None or len(shape) != 4:
        raise BadInput(f"{file}: expected one image input [N, 3, H, W], found {shape}")
    batch, _, h, w = shape
    static = batch if isinstance(batch, int) else None
    if req.img_size and (isinstance(h, int) and h != req.img_size):
        raise BadInput(f"{file} was exported for {h}x{w} input, not --img-size {req.img_size}")
    size = h if isinstance(h, int) else (req.img_size or DEFAULT_SIZE)
    return LoadedModel(
        module=program.module(), spec=str(path), source="pt2",
        preprocessing=_default_preprocessing(size), num_classes=req.num_classes or 0,
        weights_path=str(path), weights_sha256=sha256_file(path), static_batch=static, weights_origin="embedded",
        details={"export_target": program, "dynamic_batch": static is None, "executes_code": True,
                 "loader": "torch.export.load, pickled tensors refused (TORCH_FORCE_WEIGHTS_ONLY_LOAD=1)"},
    )


def _load_pt2_weights_only(path: Path) -> Any:
    """torch.export.load with every pickle it would read forced through torch's weights-only
    unpickler (TORCH_FORCE_WEIGHTS_ONLY_LOAD), and archives holding pickled Python objects
    (custom/opaque constants, loaded by plain pickle) refused: the safest load torch offers."""
    import zipfile

    import torch
    from torch.export.pt2_archive.constants import CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX

    with zipfile.ZipFile(path) as archive:
        pickled = [n for n in archive.namelist()
                   if Path(n).name.startswith((CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX))]
    if pickled:
        raise BadInput(f"{path} holds pickled Python objects ({pickled[0]}), which run code when loaded; "
                       "vitedge does not load them: re-export the program without custom-object constants")
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)  # its fallback logs a traceback; our error says it in one line
    try:
        return torch.export.load(str(path))
    finally:
        export_log.setLevel(level)
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def _pt2_input_shape(program: Any) -> list | None:
    user_inputs = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs[:1]:
            val = node.meta.get("val")
            if val is not None:
                return [int(d) if str(d).isdigit() else str(d) for d in val.shape]
    return None


@register_source("torchscript")
def load_torchscript(file: str, req: ModelRequest) -> LoadedModel:
    import torch

    path = Path(file)
    if not path.is_file():
        raise BadInput(f"{file} does not exist")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise BadInput(f"{file} is not a TorchScript file: {str(exc).strip().splitlines()[0]}") from exc
    return LoadedModel(
        module=module, spec=str(path), source="torchscript",
        preprocessing=_default_preprocessing(req.img_size), num_classes=req.num_classes or 0,
        weights_path=str(path), weights_sha256=sha256_file(path), exporter="torchscript",
        weights_origin="embedded", details={"executes_code": True},
    )


@register_source("factory")
def load_factory(spec: str, req: ModelRequest) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # like `python -m`: modules in the working dir import
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"cannot import {module_name!r} for model spec {spec!r}: {exc}") from exc
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise BadInput(f"{module_name} has no callable {attr!r}")
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    state = read_state_dict(req.weights) if req.weights else None
    kwargs: dict[str, Any] = {}
    num_classes = req.num_classes or (classifier_width(state) if state else None)
    if num_classes and ("num_classes" in params or takes_kwargs):
        kwargs["num_classes"] = num_classes
    if req.img_size and ("img_size" in params or takes_kwargs):
        kwargs["img_size"] = req.img_size
    with seeded(req.random_init_seed):
        model = factory(**kwargs)
    sha = apply_state_dict(model, state, spec, req.weights) if state is not None else None
    pre = (_timm_preprocessing(model, req.img_size) if hasattr(model, "pretrained_cfg")
           else _default_preprocessing(req.img_size))
    return LoadedModel(
        module=model, spec=spec, source="factory", preprocessing=pre,
        num_classes=num_classes or 0, weights_path=str(req.weights) if req.weights else None,
        weights_sha256=sha, details={"factory": spec, "executes_code": True}, random_init_seed=req.random_init_seed,
        weights_origin="file" if req.weights else ("random-init" if req.random_init_seed is not None else "embedded"),
    )
