"""`vitedge run`: recipe validation, overrides, path rules, the quickstart end to end, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from vitedge.errors import BadInput
from vitedge.recipe import STATE_FILE, load_recipe
from vitedge.validate.reports import load_schema

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def write_recipe(folder: Path, **changes: object) -> Path:
    """A small valid recipe in FOLDER (paths relative to it), with top-level keys replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "val").symlink_to(REPO / "calibration" / "digits" / "val")
    (folder / "calib").symlink_to(REPO / "calibration" / "digits" / "calib")
    recipe = {
        "version": 1, "model": {"spec": "demo:digits"}, "calibration": {"data": "calib"},
        "targets": [{"target": "onnxruntime", "precision": "fp32"}],
        "bench": {"data": "val", "batches": [1]}, "gates": ["top1_agreement>=0.99"],
    }
    recipe.update(changes)
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize(("changes", "overrides", "needle"), [
    ({"bench": {"data": "val", "batchs": [1]}}, [], "unknown key 'bench.batchs' (did you mean 'batches'?)"),
    ({"colour": "red"}, [], "unknown key 'colour'; valid keys here: bench, calibration, export, gates"),
    ({}, ["bench.device=tpu"], "bench.device: 'tpu' is not one of cpu, cuda"),
    ({}, ["bench.iters=0"], "bench.iters: 0 is less than the minimum of 1"),
    ({}, ["targets.0.target=coreml"], "targets.0.target: 'coreml' is not one of onnxruntime, openvino, tensorrt"),
    ({}, ["targets.0.precision=fp16"], "targets.0 (onnxruntime-fp16): onnxruntime does not support precision fp16"),
    ({"calibration": {"size": 10}}, ["targets.0.precision=int8"], "is int8 and needs calibration.data"),
    ({}, ["targets.0.options.hint=fast"], "targets.0.options.hint: 'fast' is not one of latency, throughput"),
    ({}, ["targets.0.options.max_drop=0.01"],
     "targets.0 (onnxruntime-fp32).options: option 'max_drop' is not an option of --target onnxruntime; "
     "it is for --target openvino"),
    ({}, ["targets.0.options.threads=0"], "targets.0.options.threads: 0 is less than the minimum of 1"),
    ({}, ["targets.0.options.quantize_attention=true"], "apply to --precision int8 only"),
    ({}, ["targets.0.calib_method=magic"], "targets.0 (onnxruntime-fp32).calib_method: 'magic' is not one of"),
    ({}, ["bench.data=nowhere"], "bench.data: "),
    ({}, ["gates=[top1_agreemnt>=0.9]"], "unknown metric 'top1_agreemnt'"),
    ({}, ["gates=[speedup_p50@b8>=2]"], "batch 8 is not measured"),
    ({}, ["model.spec=timm:vit_tiny_patch16_224"], "has no weights: set model.weights"),
    ({}, ["targets.1.precision=fp32"], "--set targets.1.precision=fp32: targets has 1 items, no [1]"),
    ({}, ["bench"], "--set takes key=value"),
    ({"targets": [{"target": "onnxruntime", "precision": "fp32"}, {"target": "onnxruntime", "precision": "fp32"}]},
     [], "targets share the name onnxruntime-fp32"),
    ({"model": {}}, [], "model: 'spec' is a required property"),
])
def test_invalid_recipes_name_the_key(tmp_path: Path, changes: dict, overrides: list[str], needle: str) -> None:
    path = write_recipe(tmp_path, **changes)
    with pytest.raises(BadInput) as info:
        load_recipe(path, overrides)
    assert needle in str(info.value)


def test_invalid_recipe_exits_2_before_any_work(cli, tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r", bench={"data": "val", "batchs": [1]})
    result = cli("run", path, "-o", tmp_path / "out")
    assert result.code == 2 and "unknown key 'bench.batchs'" in result.err
    assert not (tmp_path / "out").exists()
    assert cli("run", tmp_path / "missing.yaml").code == 2


def test_paths_resolve_against_the_recipe_and_set_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    path = write_recipe(tmp_path / "recipes")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "other_val").symlink_to(REPO / "calibration" / "digits" / "val")
    monkeypatch.chdir(tmp_path / "elsewhere")
    recipe = load_recipe(path, ["bench.iters=7", "calibration.data=other_val", "targets.0.options.threads=2",
                                "gates=[top1_agreement>=0.9, 'faster(onnxruntime-fp32, reference)']"])
    assert recipe["bench"]["data"] == str((tmp_path / "recipes" / "val").resolve())
    assert recipe["calibration"]["data"] == str((tmp_path / "elsewhere" / "other_val").resolve())
    assert recipe["bench"]["iters"] == 7 and recipe["targets"][0]["options"] == {"threads": 2}
    assert recipe["gates"] == ["top1_agreement>=0.9", "faster(onnxruntime-fp32, reference)"]
    assert recipe["name"] == "r"


def test_shipped_recipes_are_valid() -> None:
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        assert recipe["name"] == path.stem and recipe["gates"], path


def test_quickstart_end_to_end_then_resumes(cli, tmp_path: Path) -> None:
    """The README's first command; then unchanged steps are skipped and a changed one re-runs."""
    out = tmp_path / "quickstart"
    fast = ("--set", "bench.iters=5", "--set", "bench.warmup=1")
    first = cli("run", QUICKSTART, "-o", out, *fast)
    # Exit 5 (unreliable) only when speed checks could not be decided on this (shared) machine.
    assert first.code in (0, 5), first.text
    report = json.loads((out / "report" / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    assert [a["name"] for a in report["artifacts"]] == ["openvino-fp32", "openvino-int8", "onnxruntime-fp32",
                                                        "onnxruntime-int8", "openvino-int8-amx"]
    assert [(a["target"], a["precision"]) for a in report["artifacts"]] == [
        ("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
        ("openvino", "int8")]
    # OpenVINO's free default is timed beside them, and every artifact is stated against it
    assert [y["name"] for y in report["yardsticks"]] == ["openvino-default"]
    assert all({r["yardstick"] for r in a["vs_yardsticks"]} == {"openvino-default"} for a in report["artifacts"])
    assert report["status"] == ("passed" if first.code == 0 else "unreliable") and len(report["gates"]) >= 4
    undecided = [g for g in report["gates"] if g["outcome"] not in ("pass", "skipped")]
    assert all(g["outcome"] == "unreliable" and g["metric"] == "p50_ms" for g in undecided), undecided
    assert [v["artifact"] for v in report["verdicts"]] == [a["name"] for a in report["artifacts"]]
    assert {p.name for p in (out / "report").iterdir()} == {"report.json", "report.xml", "report.md", "report.html"}
    assert "vitedge bench: " in first.out and "onnxruntime-int8" in first.out
    manifest = json.loads((out / "artifacts" / "openvino-int8" / "vitedge.json").read_text())
    assert manifest["validation"]["gates_status"] in ("passed", "unreliable")
    assert manifest["validation"]["top1_agreement"] > 0.9
    state = json.loads((out / STATE_FILE).read_text())["steps"]
    assert set(state) == {"export", "compile openvino-fp32", "compile openvino-int8", "compile onnxruntime-fp32",
                          "compile onnxruntime-int8", "compile openvino-int8-amx"}
    built = {p: p.stat().st_mtime_ns for p in (out / "artifacts").rglob("model.*")}

    # Unchanged: every build step is skipped; an impossible gate still fails the run with exit 1.
    second = cli("run", QUICKSTART, "-o", out, *fast, "--set", "gates=[openvino-int8:size_mb<=0.001]")
    assert second.code == 1, second.text
    assert second.err.count("unchanged, skipped") == 6
    assert "FAIL [openvino-int8:size_mb<=0.001] openvino-int8: size_mb = " in second.err
    assert {p: p.stat().st_mtime_ns for p in built} == built

    # A changed compile option rebuilds that target only.
    third = cli("run", QUICKSTART, "-o", out, *fast, "--set", "targets.2.options.threads=1")
    assert third.code in (0, 5), third.text
    assert third.err.count("unchanged, skipped") == 5
    assert "compile onnxruntime-fp32: done" in third.err
    rebuilt = [p for p, t in built.items() if p.stat().st_mtime_ns != t]
    assert [p.parent.name for p in rebuilt] == ["onnxruntime-fp32"]
    assert json.loads((out / "artifacts" / "onnxruntime-fp32" / "vitedge.json").read_text())["runtime"][
        "threads"] == 1
