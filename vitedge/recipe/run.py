"""`vitedge run`'s pipeline: the output dirs checked and locked, then export -> compile (each
target) -> bench, or export -> tune; each step skipped when its input hash is unchanged and its
output still verifies (OUT/vitedge-run.json)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vitedge import ui
from vitedge._version import __version__
from vitedge.errors import ArtifactIncomplete, BadInput, VitedgeError
from vitedge.fsutil import (
    StepState,
    check_output_dir,
    output_lock,
    sha256_file,
    sha256_json,
    tree_hash,
    write_text_atomic,
)
from vitedge.manifest import Manifest
from vitedge.recipe.load import (  # the package's own helpers
    PATH_KEYS,
    RESOLVED_FILE,
    _get,
    _matches,
    _walk,
    load_recipe,
)


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
        trust_source=own_source, force=force, yardsticks=bench.get("yardsticks", []))


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
