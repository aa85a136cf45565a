"""What a recipe is: its schema (targets' options generated from the backends), reading the
YAML safely, `--set` overrides, paths resolved against the recipe, and every check (schema,
paths, targets, gates) before any work starts. `recipe.run` runs what this returns."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from vitedge.errors import BadInput
from vitedge.fsutil import StepState, not_found
from vitedge.preprocessing import INTERPOLATIONS

STATE_FILE = StepState.FILE
RESOLVED_FILE = "recipe.resolved.yaml"
RECIPE_VERSION = 1
MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64

_PATH = {"type": "string", "minLength": 1}
_POSITIVE = {"type": "integer", "minimum": 1}
_RGB = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}


def compile_options_schema() -> dict[str, Any]:
    """`targets[].options`: `val` plus every backend's Options (the same declarations the
    `vitedge compile` flags are generated from; which target takes which is checked with the
    backend, naming the targets that do take an option)."""
    from vitedge.backends.base import options_classes
    from vitedge.backends.options import json_schema

    return {"val": {**_PATH, "description": "Labelled validation data checked after the build."},
            **json_schema(options_classes())}


def _option_path_keys() -> tuple[tuple[str, ...], ...]:
    """Option keys that hold paths (resolved against the recipe's folder)."""
    from vitedge.backends.base import options_classes
    from vitedge.backends.options import merged_fields

    names = ["val", *(n for n, (info, _) in merged_fields(options_classes()).items() if info.spec.path)]
    return tuple(("targets", "*", "options", name) for name in names)


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


def recipe_schema() -> dict[str, Any]:
    """The recipe's JSON Schema; targets and precisions come from the backend registry."""
    from vitedge.backends.base import compile_backends
    from vitedge.tune import KNOBS
    from vitedge.validate.yardsticks import YARDSTICKS

    backends = compile_backends()
    return _object({
        "version": {"const": RECIPE_VERSION},
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
        "output": _PATH,
        "model": _object({
            "spec": {"type": "string", "minLength": 1}, "weights": _PATH,
            "random_init_seed": {"type": "integer", "minimum": 0}, "pretrained": {"type": "boolean"},
            "num_classes": _POSITIVE, "img_size": {"type": "integer", "minimum": 8},
            "labels": _PATH,
            "preprocessing": _object({  # overrides of what the model source declares
                "mean": _RGB, "std": _RGB, "crop_pct": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "interpolation": {"enum": list(INTERPOLATIONS)},
            }),
        }, ("spec",)),
        "export": _object({
            "opset": {"type": "integer", "minimum": 17}, "batch": {"anyOf": [{"const": "dynamic"}, _POSITIVE]},
            "atol": {"type": "number", "exclusiveMinimum": 0}, "data": _PATH,
        }),
        "calibration": _object({
            "data": _PATH, "size": _POSITIVE, "seed": {"type": "integer", "minimum": 0},
        }),
        "targets": {"type": "array", "minItems": 1, "items": _object({
            "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
            "target": {"enum": sorted(backends)},
            "precision": {"enum": sorted({p for b in backends.values() for p in b.precisions})},
            "calib_method": {"type": "string"}, "calib_size": _POSITIVE,
            "options": _object(compile_options_schema()),
        }, ("target", "precision"))},
        "bench": _object({
            "data": _PATH, "reference": {"type": "string", "minLength": 1},
            "batches": {"type": "array", "items": _POSITIVE, "minItems": 1},
            "device": {"enum": ["cpu", "cuda"]}, "max_images": _POSITIVE,
            "warmup": {"type": "integer", "minimum": 0}, "iters": _POSITIVE, "threads": _POSITIVE,
            "worst": {"type": "integer", "minimum": 0},
            "yardsticks": {"type": "array", "uniqueItems": True, "items": {"enum": list(YARDSTICKS)}},
        }, ("data",)),
        "gates": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "tune": _object({
            "targets": {"type": "array", "minItems": 1, "items": {"enum": sorted(backends)}},
            "precisions": {"type": "array", "minItems": 1,
                           "items": {"enum": sorted({p for b in backends.values() for p in b.precisions})}},
            "budget_minutes": {"type": "number", "exclusiveMinimum": 0},
            "knobs": {"type": "array", "uniqueItems": True, "items": {"enum": list(KNOBS)}},
        }),
    }, ("model", "bench"))


# Keys holding paths ("*": any list index). Recipe-file values resolve against the recipe's
# folder, --set values against the current directory.
PATH_KEYS = (("output",), ("model", "weights"), ("model", "labels"), ("export", "data"),
             ("calibration", "data"), ("bench", "data"), *_option_path_keys())
SPEC_KEYS = (("model", "spec"), ("bench", "reference"))
_SPEC_FILE_SUFFIXES = (".pt2", ".pt", ".ts", ".torchscript", ".jit")


def _matches(key: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    return len(key) == len(pattern) and all(p in ("*", k) for k, p in zip(key, pattern, strict=True))


def _resolve_path(value: Any, base: Path) -> Any:
    return str((base / value).resolve()) if isinstance(value, str) else value


def _resolve_spec(value: Any, base: Path) -> Any:
    """MODEL specs that name a file or folder (hf:DIR, .pt2, TorchScript, an export dir)."""
    if not isinstance(value, str) or value == "export":  # bench.reference: the recipe's own export
        return value
    if value.startswith("hf:"):
        return "hf:" + str((base / value[3:]).resolve())
    candidate = base / value
    if ":" not in value and (value.endswith(_SPEC_FILE_SUFFIXES) or candidate.is_dir()):
        return str(candidate.resolve())
    return value


def _walk(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in nested dicts and lists."""
    keys = []
    if isinstance(data, dict):
        for k, v in data.items():
            keys.append((*prefix, str(k)))
            keys += _walk(v, (*prefix, str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            keys.append((*prefix, str(i)))
            keys += _walk(v, (*prefix, str(i)))
    return keys


def _get(data: Any, key: tuple[str, ...]) -> Any:
    for part in key:
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _set(data: dict[str, Any], key: tuple[str, ...], value: Any, text: str) -> None:
    node: Any = data
    for i, part in enumerate(key[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise BadInput(f"--set {text}: {'.'.join(key[:i])} has {len(node)} items, no [{part}]")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise BadInput(f"--set {text}: {'.'.join(key[:i])} is not a mapping or a list")
    last = key[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise BadInput(f"--set {text}: {'.'.join(key[:-1])} has {len(node)} items, no [{last}]")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise BadInput(f"--set {text}: {'.'.join(key[:-1])} is not a mapping or a list")


def _resolve_paths(data: dict[str, Any], base: Path, only: tuple[str, ...] | None = None) -> None:
    """Make the path (and file-naming spec) values of DATA absolute, relative to BASE."""
    for key in _walk(data):
        if only is not None and key != only:
            continue
        if any(_matches(key, p) for p in PATH_KEYS):
            _set(data, key, _resolve_path(_get(data, key), base), ".".join(key))
        elif any(_matches(key, p) for p in SPEC_KEYS):
            _set(data, key, _resolve_spec(_get(data, key), base), ".".join(key))


def _parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise BadInput(f"--set takes key=value (dotted keys, e.g. bench.iters=50), got {text!r}")
    try:
        value = safe_yaml(raw, f"--set {text}") if raw.strip() else ""
    except BadInput as exc:
        if isinstance(exc.__cause__, yaml.YAMLError):
            value = raw
        else:
            raise
    return tuple(key.strip().split(".")), value


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with limits, so a hostile recipe gets one line instead of eating memory:
    at most MAX_RECIPE_BYTES of text, MAX_YAML_VALUES values once aliases are expanded
    ("billion laughs"), MAX_YAML_DEPTH levels of nesting, and no alias that contains itself."""
    if len(text) > MAX_RECIPE_BYTES:
        raise BadInput(f"{where} is {len(text) / 1e6:.1f} MB; a recipe is at most {MAX_RECIPE_BYTES >> 20} MB")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise BadInput(f"{where} is not valid YAML: {exc}") from exc
    budget = [MAX_YAML_VALUES]

    def visit(node: yaml.Node, ancestors: tuple[int, ...]) -> None:
        line = node.start_mark.line + 1
        if id(node) in ancestors:
            raise BadInput(f"{where}: line {line}: a YAML alias refers to the value that contains it; "
                           "recipes cannot be recursive")
        if len(ancestors) >= MAX_YAML_DEPTH:
            raise BadInput(f"{where}: line {line}: nested more than {MAX_YAML_DEPTH} levels deep")
        budget[0] -= 1
        if budget[0] < 0:
            raise BadInput(f"{where} expands to more than {MAX_YAML_VALUES} values (aliases of aliases?); "
                           "refusing it: a recipe is a few dozen keys")
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else []
        for child in children:
            visit(child, (*ancestors, id(node)))

    if root is not None:
        visit(root, ())
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInput(f"{where} is not valid YAML: {exc}") from exc


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read, override and validate a recipe; every path in the result is absolute."""
    path = Path(path)
    if not path.is_file():
        raise not_found(path, "recipe")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise BadInput(f"recipe {path} is {path.stat().st_size / 1e6:.1f} MB; a recipe is at most "
                       f"{MAX_RECIPE_BYTES >> 20} MB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"recipe {path} is not UTF-8 text") from exc
    data = safe_yaml(text, f"recipe {path}")
    if not isinstance(data, dict):
        raise BadInput(f"recipe {path} must be a mapping of keys (model, targets, bench, ...)")
    _resolve_paths(data, path.parent.resolve())
    for text in overrides:
        key, value = _parse_override(text)
        _set(data, key, value, text)
        _resolve_paths(data, Path.cwd(), only=key)
    data.setdefault("name", path.stem)
    _validate(data, path)
    return data


def _validate(data: dict[str, Any], path: Path) -> None:
    """Schema first (each error names its key), then what a schema cannot say."""
    import jsonschema

    schema = recipe_schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        lines = [_explain(e, schema) for e in errors[:8]]
        raise BadInput(f"recipe {path} is not valid:\n  " + "\n  ".join(lines))
    if ("targets" in data) == ("tune" in data):
        raise BadInput(f"recipe {path}: give either `targets:` (the artifacts to build) or `tune:` (search for the "
                       "fastest one that passes the gates), not both")
    names = [t.get("name") or f"{t['target']}-{t['precision']}" for t in data.get("targets", [])]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BadInput(f"recipe {path}: targets share the name {', '.join(duplicates)}; give each a `name:`")
    from vitedge.backends import get_backend
    from vitedge.compile import check_request

    calibration = data.get("calibration", {})
    for i, target in enumerate(data.get("targets", [])):
        backend = get_backend(target["target"])
        where = f"targets.{i} ({names[i]})"
        if target["precision"] not in backend.precisions:
            raise BadInput(f"recipe {path}: {where}: {target['target']} does not support precision "
                           f"{target['precision']}; choose one of {', '.join(backend.precisions)}")
        method = target.get("calib_method")
        if method is not None and method not in backend.calib_methods:
            raise BadInput(f"recipe {path}: {where}.calib_method: {method!r} is not one of "
                           f"{', '.join(backend.calib_methods) or 'none (it does not calibrate)'}")
        if target["precision"] == "int8" and not calibration.get("data"):
            raise BadInput(f"recipe {path}: {where} is int8 and needs calibration.data (an image folder)")
        try:  # the same checks `vitedge compile` runs on its flags, before any work
            check_request(backend, precision=target["precision"], calib=calibration.get("data"),
                          calib_size=target.get("calib_size", calibration.get("size")), calib_method=method,
                          seed=calibration.get("seed", 0), options=target.get("options"))
        except BadInput as exc:
            raise BadInput(f"recipe {path}: {where}.options: {exc}") from exc
    model = data["model"]
    chosen = [k for k, on in (("weights", model.get("weights") is not None), ("pretrained", model.get("pretrained")),
                              ("random_init_seed", model.get("random_init_seed") is not None)) if on]
    if len(chosen) > 1:
        raise BadInput(f"recipe {path}: model.{' and model.'.join(chosen)} exclude each other")
    if model["spec"].split(":")[0] in ("timm", "torchvision") and not chosen:
        raise BadInput(f"recipe {path}: {model['spec']} has no weights: set model.weights to a state dict, "
                       "model.pretrained: true (the library's pretrained weights, from the hub cache), "
                       "or model.random_init_seed for a seeded random init (speed comparisons only)")
    for key in PATH_KEYS:
        for found in (k for k in _walk(data) if _matches(k, key) and key != ("output",)):
            if not Path(_get(data, found)).exists():
                raise BadInput(f"recipe {path}: {'.'.join(found)}: {_get(data, found)} does not exist")
    if "targets" in data:
        _check_gates(data, names)  # tune checks its gates against its candidates before any build


def _explain(error: Any, schema: dict[str, Any]) -> str:
    """One line per schema error, naming the key (and the nearest valid key for typos)."""
    where = ".".join(str(p) for p in error.path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"unknown key {'.'.join([*map(str, error.path), key])!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
        return "; ".join(hints) + f"; valid keys here: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    return f"{where}: {error.message}"


def _check_gates(data: dict[str, Any], names: list[str]) -> None:
    """Gates are checked against the recipe's targets and batches before anything runs."""
    from vitedge.data import open_image_set
    from vitedge.validate import gates as gatelib

    aliases: dict[str, list[str]] = {}
    for name, target in zip(names, data["targets"], strict=True):
        aliases.setdefault(f"{target['target']}-{target['precision']}", []).append(name)
    bench = data["bench"]
    subjects = gatelib.Subjects(
        names, {a: n[0] for a, n in aliases.items() if len(n) == 1 and a not in names},
        sorted(set(bench.get("batches", [1, 8]))), open_image_set(bench["data"]).labelled,
        yardsticks=list(bench.get("yardsticks", [])))
    gatelib.plan([gatelib.parse_gate(g) for g in data.get("gates", [])], subjects)
