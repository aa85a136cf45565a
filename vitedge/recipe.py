"""`vitedge run RECIPE.yaml`: export -> compile (several targets) -> bench -> gates -> reports.

A recipe is validated in full (schema, paths, targets, gates) before any work starts.
Paths written in a recipe are relative to the recipe file; paths given with `--set` are
relative to the current directory; the default output dir is `runs/<name>/` under the
current directory. Each step records a hash of its inputs in OUT_DIR/vitedge-run.json and
is skipped on the next run when that hash is unchanged and its output still verifies.
docs/bench.md lists every key.
"""

from __future__ import annotations

import copy
import difflib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vitedge import __version__, ui
from vitedge.errors import ArtifactIncomplete, BadInput, VitedgeError
from vitedge.fsutil import (
    StepState,
    check_output_dir,
    not_found,
    output_lock,
    sha256_file,
    sha256_json,
    tree_hash,
    write_text_atomic,
)
from vitedge.manifest import Manifest
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
        sorted(set(bench.get("batches", [1, 8]))), open_image_set(bench["data"]).labelled)
    gatelib.plan([gatelib.parse_gate(g) for g in data.get("gates", [])], subjects)


# -- hashing ----------------------------------------------------------------------------------

# -- the pipeline -----------------------------------------------------------------------------

def _artifact_ok(artifact_dir: Path) -> Callable[[], bool]:
    """Whether ARTIFACT_DIR holds a manifest whose files all match their hashes and whose
    source weights file (when it records one, e.g. a model's built-in weights) is unchanged."""
    def check() -> bool:
        try:
            manifest = Manifest.load(artifact_dir)
            manifest.verify_files(artifact_dir)
        except VitedgeError:
            return False
        weights, recorded = manifest.provenance.weights, manifest.provenance.weights_sha256
        return not (weights and recorded and Path(weights).is_file() and sha256_file(weights) != recorded)

    return check


def _step(state: StepState, step: str, input_hash: str, output_ok: Callable[[], bool],
          work: Callable[[], Any], counter: dict[str, int]) -> None:
    """Run WORK unless the step's inputs are unchanged and its output is intact."""
    counter["n"] += 1
    label = f"[{counter['n']}/{counter['total']}] {step}"
    if state.unchanged(step, input_hash, output_ok):
        ui.info(f"{label}: unchanged, skipped")
        counter["skipped"] += 1
        return
    ui.info(f"{label} ...")
    start = time.perf_counter()
    work()
    state.record(step, input_hash, time.perf_counter() - start)
    ui.info(f"{label}: done in {time.perf_counter() - start:.1f} s")


def _target_name(target: dict[str, Any]) -> str:
    return target.get("name") or f"{target['target']}-{target['precision']}"


def _check_outputs(recipe: dict[str, Any], out: Path, force: bool) -> None:
    """Every dir the run writes, checked against the output-dir policy before any step runs:
    OUT itself (a run dir), its export, each artifact and the report (never over an input)."""
    inputs = [_get(recipe, key) for pattern in PATH_KEYS if pattern != ("output",)
              for key in _walk(recipe) if _matches(key, pattern)]
    spec = recipe["model"]["spec"]
    if Path(spec[3:] if spec.startswith("hf:") else spec).exists():
        inputs.append(spec[3:] if spec.startswith("hf:") else spec)
    check_output_dir(out, "run", force=force)
    check_output_dir(out / "export", "export", force=force, inputs=inputs)
    for target in recipe.get("targets", []):
        check_output_dir(out / "artifacts" / _target_name(target), "compiled", force=force, inputs=inputs)
    if "tune" in recipe:
        check_output_dir(out / "tune", "run", force=force, inputs=inputs)
    else:
        check_output_dir(out / "report", "report", force=force, inputs=inputs)


def run_recipe(recipe_path: str | Path, *, out_dir: str | Path | None = None,
               overrides: list[str] | tuple[str, ...] = (), force: bool = False) -> dict[str, Any]:
    """Run RECIPE: the steps whose inputs changed, then bench with gates; return the report.

    The output dirs are checked first (`force` writes over what is not a previous run's) and
    OUT is locked against a second `vitedge run` for the whole run.
    """
    recipe = load_recipe(recipe_path, overrides)
    out = Path(out_dir) if out_dir is not None else Path(recipe.get("output") or Path("runs") / recipe["name"])
    _check_outputs(recipe, out, force)
    with output_lock(out):
        return _run_steps(recipe, out, force)


def _run_steps(recipe: dict[str, Any], out: Path, force: bool) -> dict[str, Any]:
    """The pipeline of run_recipe, with its outputs checked and locked."""
    from vitedge import api
    from vitedge.backends import get_backend
    from vitedge.compile import compile_artifact
    from vitedge.report_cli import print_compile_summary
    from vitedge.validate.bench import run_bench

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create -o {out}: {exc.strerror or exc}") from exc
    write_text_atomic(out / RESOLVED_FILE, yaml.safe_dump(recipe, sort_keys=False))
    state = StepState.load(out)
    model, export_opts = recipe["model"], recipe.get("export", {})
    bench, calibration = recipe["bench"], recipe.get("calibration", {})
    targets = recipe.get("targets", [])
    counter = {"n": 0, "skipped": 0, "total": 2 + len(targets)}
    ui.info(f"recipe {recipe['name']} -> {out}")

    weights = model.get("weights")
    seed, pretrained = model.get("random_init_seed"), bool(model.get("pretrained"))

    export_dir = out / "export"
    parity_data = export_opts.get("data", bench["data"])
    export_inputs = {
        "spec": model["spec"], "weights_sha256": sha256_file(weights) if weights else None,
        "num_classes": model.get("num_classes"), "img_size": model.get("img_size"),
        "labels_sha256": sha256_file(model["labels"]) if model.get("labels") else None,
        "opset": export_opts.get("opset", 18), "batch": export_opts.get("batch", "dynamic"),
        "atol": export_opts.get("atol", 1e-3), "data": tree_hash(parity_data), "vitedge": __version__,
        "preprocessing": model.get("preprocessing"),
        # a seeded init (or a pretrained tag) is only reproducible with the same libraries
        "random_init_seed": seed, "pretrained": pretrained,
        "tools": _tool_versions("torch", "timm", "torchvision") if seed is not None or pretrained else None,
    }
    overrides = model.get("preprocessing", {})
    _step(state, "export", sha256_json(export_inputs), _artifact_ok(export_dir), lambda: api.export(
        model["spec"], export_dir, weights=weights, num_classes=model.get("num_classes"),
        img_size=model.get("img_size"), opset=export_inputs["opset"], batch=export_inputs["batch"],
        data=parity_data, labels=model.get("labels"), atol=export_inputs["atol"], mean=overrides.get("mean"),
        std=overrides.get("std"), crop_pct=overrides.get("crop_pct"), interpolation=overrides.get("interpolation"),
        pretrained=pretrained, random_init_seed=seed, force=force), counter)

    reference = bench.get("reference", "export")
    # The recipe's own export rebuilds the recipe's own model spec: code the user named.
    own_source = reference == "export" and \
        Manifest.load(export_dir)["source"].get("request", {}).get("spec") == model["spec"]
    if "tune" in recipe:
        return _run_tune(recipe, export_dir, out, counter, trust_source=own_source, force=force)
    export_files = Manifest.load(export_dir).get("files", {})
    calib_hash = tree_hash(calibration["data"]) if calibration.get("data") else None
    artifact_dirs = []
    for target in targets:
        name = _target_name(target)
        artifact_dir = out / "artifacts" / name
        artifact_dirs.append(artifact_dir)
        calibrated = target["precision"] in get_backend(target["target"]).calibrated_precisions \
            and calibration.get("data")
        compile_kwargs = {
            "target": target["target"], "precision": target["precision"],
            "calib": calibration["data"] if calibrated else None,
            "calib_size": target.get("calib_size", calibration.get("size")) if calibrated else None,
            "calib_method": target.get("calib_method") if calibrated else None,
            "seed": calibration.get("seed", 0), "extra": copy.deepcopy(target.get("options", {})),
        }
        inputs = {"export_files": export_files, **compile_kwargs, "calib": calib_hash if calibrated else None,
                  "vitedge": __version__}

        def build(artifact_dir: Path = artifact_dir, kwargs: dict[str, Any] = compile_kwargs) -> None:
            try:
                manifest = compile_artifact(export_dir, artifact_dir, force=force, **kwargs)
            except ArtifactIncomplete as exc:
                print_compile_summary(exc.manifest, artifact_dir)
                raise
            print_compile_summary(manifest, artifact_dir)

        _step(state, f"compile {name}", sha256_json(inputs), _artifact_ok(artifact_dir), build, counter)

    counter["n"] += 1
    ui.info(f"[{counter['n']}/{counter['total']}] bench ({counter['skipped']} step(s) skipped as unchanged)")
    return run_bench(
        artifact_dirs, reference=export_dir if reference == "export" else reference, data=bench["data"],
        batches=bench.get("batches", [1, 8]), gates=recipe.get("gates", []), report_dir=out / "report",
        device=bench.get("device", "cpu"), max_images=bench.get("max_images"), warmup=bench.get("warmup", 5),
        iters=bench.get("iters", 30), threads=bench.get("threads"), worst=bench.get("worst", 10), record=True,
        trust_source=own_source, force=force)


def _run_tune(recipe: dict[str, Any], export_dir: Path, out: Path, counter: dict[str, int], *,
              trust_source: bool, force: bool) -> dict[str, Any]:
    """The `tune:` section: search the export's candidates (OUT/tune/), with the recipe's data and gates."""
    from vitedge.tune import tune

    bench, spec = recipe["bench"], recipe["tune"]
    counter["n"] += 1
    ui.info(f"[{counter['n']}/{counter['total']}] tune")
    return tune(export_dir, out / "tune", data=bench["data"], calib=recipe.get("calibration", {}).get("data"),
                targets=spec.get("targets"), precisions=spec.get("precisions"), gates=recipe.get("gates", []),
                batches=bench.get("batches", [1, 8]), budget_minutes=spec.get("budget_minutes"),
                threads=bench.get("threads"), max_images=bench.get("max_images"), warmup=bench.get("warmup", 5),
                iters=bench.get("iters", 30), knobs=spec.get("knobs", True), trust_source=trust_source, force=force)


def _tool_versions(*names: str) -> dict[str, str | None]:
    from vitedge.envinfo import package_version

    return {name: package_version(name) for name in names}
