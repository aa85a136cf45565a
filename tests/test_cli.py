"""The CLI as a new user meets it: exit codes and one clear line for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def test_version_and_help(cli) -> None:
    r = cli("--version")
    assert r.code == 0 and r.out.strip() == "vitedge 0.1.0"
    r = cli("--help")
    assert r.code == 0
    for command in ("export", "compile", "bench", "run", "inspect", "doctor"):
        assert command in r.out


def test_export_demo_and_inspect(cli, tmp_path: Path) -> None:
    r = cli("export", "demo:digits", "-o", tmp_path / "demo")
    assert r.code == 0, r.text
    assert "exported demo:digits" in r.out and "top-1 agreement 1.0000" in r.out
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["model.onnx", "vitedge.json"]
    r = cli("inspect", tmp_path / "demo", "--json")
    assert r.code == 0
    manifest = json.loads(r.out)
    assert manifest["source"]["spec"] == "demo:digits" and manifest["num_classes"] == 10
    r = cli("inspect", tmp_path / "demo")
    assert r.code == 0 and "demo:digits" in r.out and "pixel_values" in r.out


def test_quiet_export_prints_nothing(cli, tmp_path: Path) -> None:
    r = cli("--quiet", "export", "demo:digits", "-o", tmp_path / "q")
    assert r.code == 0 and r.out == "" and r.err == ""


def test_doctor(cli) -> None:
    r = cli("doctor", "--json")
    assert r.code == 0
    report = json.loads(r.out)
    for backend in ("pytorch", "onnxruntime", "openvino", "nncf", "tensorrt"):
        assert backend in report["backends"]
    assert report["backends"]["onnxruntime"]["usable"] is True
    if not report["backends"]["tensorrt"]["usable"]:
        assert "nvidia" in report["backends"]["tensorrt"]["install"].lower()
    cpu = report["hardware"]["cpu"]
    assert "isa" in cpu
    if cpu["arch"] == "x86_64":  # VNNI/AMX decide whether OpenVINO INT8 has a fast path
        flags = Path("/proc/cpuinfo").read_text()
        assert cpu["int8_vnni"] is any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    r = cli("doctor")
    assert r.code == 0 and "ISA" in r.out


def _bad_weights(tmp_path: Path) -> Path:
    import timm

    model = timm.create_model("vit_small_patch16_224", num_classes=10)
    path = tmp_path / "vit_small.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("unknown model", 2, "unknown timm model 'vit_tinny_patch16_224'. Did you mean vit_tiny_patch16_224"),
        ("unknown source", 2, "unknown model spec"),
        ("missing weights", 2, "weights file"),
        ("other architecture", 2, "do not fit timm:vit_tiny_patch16_224"),
        ("wrong image size", 2, "not a multiple of vit_tiny_patch16_224's patch size 16"),
        ("wrong size for a traced model", 2, "does not accept input of shape [2, 3, 224, 224]"),
        ("not a classifier", 2, "is not an image classifier"),
        ("unwritable output", 2, "cannot create output dir"),
        ("old opset", 2, "opset 13 is too old"),
        ("bad batch", 2, "--batch must be 'dynamic' or a positive integer"),
        ("zero batch", 2, "--batch must be 'dynamic' or a positive integer, got '0'"),
        ("output is a file", 2, "exists and is not a directory"),
        ("huge image size", 2, "--img-size must be between 8 and 1024, got 4096"),
    ],
)
def test_export_bad_input(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          case: str, code: int, needle: str) -> None:
    out = tmp_path / "out"
    args: list = {
        "unknown model": ["timm:vit_tinny_patch16_224"],
        "unknown source": ["resnet50"],
        "missing weights": ["timm:vit_tiny_patch16_224", "--weights", tmp_path / "nope.pth"],
        "other architecture": ["timm:vit_tiny_patch16_224", "--weights", "WEIGHTS"],
        "wrong image size": ["timm:vit_tiny_patch16_224", "--random-init", "0", "--img-size", "100"],
        "wrong size for a traced model": ["TRACED"],
        "not a classifier": ["not_a_vit:make"],
        "unwritable output": ["demo:digits"],
        "old opset": ["demo:digits", "--opset", "13"],
        "bad batch": ["demo:digits", "--batch", "many"],
        "zero batch": ["demo:digits", "--batch", "0"],
        "output is a file": ["demo:digits"],
        "huge image size": ["timm:vit_tiny_patch16_224", "--img-size", "4096"],
    }[case]
    if "WEIGHTS" in args:
        args[args.index("WEIGHTS")] = _bad_weights(tmp_path)
    if "TRACED" in args:
        import timm

        model = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=64).eval()
        torch.jit.trace(model, torch.randn(1, 3, 64, 64)).save(str(tmp_path / "traced.pt"))
        args = [tmp_path / "traced.pt"]
    if case == "not a classifier":
        (tmp_path / "not_a_vit.py").write_text(
            "import torch\n\ndef make():\n    return torch.nn.Conv2d(3, 8, 3)\n")
        monkeypatch.chdir(tmp_path)
    if case == "unwritable output":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    if case == "output is a file":
        out.write_text("mine")
    r = cli("export", *args, "-o", out)
    assert r.code == code, r.text
    lines = [line for line in r.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.err
    assert needle in " ".join(r.err.split()), r.err
    assert "Traceback" not in r.text
    assert not out.exists() or out.read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp leftovers


def test_inspect_rejects_non_onnx_and_non_artifacts(cli, tmp_path: Path) -> None:
    (tmp_path / "fake.onnx").write_bytes(b"definitely not protobuf")
    r = cli("inspect", tmp_path / "fake.onnx")
    assert r.code == 2 and "is not an ONNX model" in r.err
    r = cli("inspect", tmp_path)
    assert r.code == 2 and "has no vitedge.json" in r.err


def test_inspect_detects_tampered_files(cli, demo_export_copy: Path) -> None:
    with open(demo_export_copy / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    r = cli("inspect", demo_export_copy)
    assert r.code == 2 and "does not match its SHA-256" in r.err


def test_debug_shows_traceback(cli, tmp_path: Path) -> None:
    """--debug adds the traceback before the error line; the exit code stays the error's (2 here)."""
    r = cli("--debug", "export", "timm:nope_nope", "-o", tmp_path / "x")
    assert r.code == 2 and "Traceback (most recent call last)" in r.err and "vitedge.errors.BadInput" in r.err
    assert r.err.strip().splitlines()[-1].startswith("error: unknown timm model")


def test_usage_error_exit_code(cli) -> None:
    r = cli("export")
    assert r.code == 2


def test_hf_backbone_is_not_a_classifier(cli, tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "backbone")
    r = cli("export", f"hf:{tmp_path / 'backbone'}", "-o", tmp_path / "out")
    assert r.code == 2 and "holds ViTModel, not an image classifier" in r.err
