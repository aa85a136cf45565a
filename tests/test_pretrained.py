"""Explicit weights: --pretrained through a hub cache populated here (never the network),
--random-init recorded and replayed bit-identically, and no silent random init."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitedge.manifest import Manifest
from vitedge.models import load_model
from vitedge.models.base import params_sha256

TIMM_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's default tag for vit_tiny
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_snapshot(cache: Path, repo: str) -> Path:
    """The folder a hub download of REPO@main lands in (huggingface_hub's cache layout)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


@pytest.fixture()
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF hub cache + torch hub dir, offline: only what a test puts there exists."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return cache


@pytest.fixture(scope="module")
def timm_checkpoint() -> dict[str, torch.Tensor]:
    """What timm's hub repo would hold: a vit_tiny state dict (random values, 1000 classes)."""
    import timm

    torch.manual_seed(7)
    model = timm.create_model("vit_tiny_patch16_224")
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("spec", ["timm:vit_tiny_patch16_224", "torchvision:swin_t"])
def test_no_weights_is_an_error_naming_the_ways_out(cli, tmp_path: Path, spec: str) -> None:
    r = cli("export", spec, "-o", tmp_path / "out")
    assert r.code == 2, r.text
    for way in ("--weights FILE", "--pretrained", "--random-init SEED"):
        assert way in r.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["timm:vit_tiny_patch16_224", "--pretrained", "--random-init", "1"], "exclude each other"),
        (["demo:digits", "--pretrained"], "--pretrained applies to timm:, torchvision: and hf:"),
        (["demo:digits", "--random-init", "0"], "--random-init applies to"),
        (["timm:vit_tiny_patch16_224.nope", "--pretrained"], "Invalid pretrained tag"),
        (["timm:vit_tiny_patch16_224", "--pretrained", "--num-classes", "10"], "would bolt on a random one"),
    ],
)
def test_weight_flag_errors(cli, tmp_path: Path, args: list[str], needle: str) -> None:
    r = cli("export", *args, "-o", tmp_path / "out")
    assert r.code == 2 and needle in r.text, r.text


def test_random_init_is_recorded_and_the_reference_is_rebuilt_bit_identically(cli, tmp_path: Path) -> None:
    import vitedge
    from vitedge.backends.pytorch import load_reference

    out = tmp_path / "out"
    r = cli("--quiet", "export", "timm:vit_tiny_patch16_224", "--random-init", "5", "--img-size", "32", "-o", out)
    assert r.code == 0, r.text
    manifest = Manifest.load(out)
    source = manifest["source"]
    assert source["weights_origin"] == "random-init" and source["random_init_seed"] == 5
    assert source["request"]["random_init_seed"] == 5 and source["weights"] is None
    reference = load_reference(manifest)
    assert params_sha256(reference.module) == source["params_sha256"]
    other = load_model("timm:vit_tiny_patch16_224", img_size=32, random_init_seed=6)
    assert params_sha256(other.module) != source["params_sha256"]  # the seed is what decides
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with vitedge.load(out, backend="pytorch") as torch_ref, vitedge.load(out, backend="onnxruntime") as onnx:
        np.testing.assert_allclose(onnx.predict(x), torch_ref.predict(x), atol=1e-4)


def test_timm_pretrained_from_the_hub_cache(cli, tmp_path: Path, offline_cache: Path,
                                            timm_checkpoint: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(timm_checkpoint, str(_hub_snapshot(offline_cache, TIMM_REPO) / "model.safetensors"))
    loaded = load_model("timm:vit_tiny_patch16_224", pretrained=True)
    assert loaded.weights_origin == "pretrained" and loaded.random_init_seed is None
    assert loaded.details["hf_hub_id"] == TIMM_REPO
    state = loaded.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in timm_checkpoint.items())
    assert len(loaded.labels) == 1000 and loaded.labels[0].startswith("tench")  # ImageNet-1k, from timm.data
    # the CLI path, at a smaller size (timm's own filter resamples the position embedding)
    out = tmp_path / "out"
    r = cli("--quiet", "export", "timm:vit_tiny_patch16_224", "--pretrained", "--img-size", "32", "-o", out)
    assert r.code == 0, r.text
    manifest = Manifest.load(out)
    assert manifest["source"]["weights_origin"] == "pretrained"
    assert manifest["source"]["request"]["pretrained"] is True
    assert manifest["labels"][:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"]


@pytest.mark.parametrize("spec", ["timm:vit_tiny_patch16_224", "hf:google/vit-base-patch16-224",
                                  "torchvision:swin_t"])
def test_offline_and_not_cached_names_the_cache_and_weights(cli, tmp_path: Path, offline_cache: Path,
                                                            spec: str) -> None:
    r = cli("export", spec, "--pretrained", "-o", tmp_path / "out")
    assert r.code == 3, r.text
    line = " ".join(r.text.split())  # rich wraps long lines
    assert "HF_HUB_OFFLINE=1" in line and "--weights FILE" in line
    cache = offline_cache if not spec.startswith("torchvision") else tmp_path / "torch-home" / "hub" / "checkpoints"
    assert str(cache) in line
    assert "Traceback" not in r.text


def test_hf_hub_id_from_the_cache(tmp_path: Path, offline_cache: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    labels = {0: "cat", 1: "dog"}
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    model.save_pretrained(_hub_snapshot(offline_cache, "acme/tiny-vit"))
    with pytest.raises(Exception, match="add --pretrained"):
        load_model("hf:acme/tiny-vit")
    loaded = load_model("hf:acme/tiny-vit", pretrained=True)
    assert loaded.weights_origin == "pretrained" and loaded.labels == ["cat", "dog"]
    assert loaded.details["hf_hub_id"] == "acme/tiny-vit" and loaded.weights_sha256
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model.eval()(pixel_values=x).logits)


def test_torchvision_pretrained_from_the_torch_hub_cache(tmp_path: Path, offline_cache: Path) -> None:
    """torchvision's DEFAULT weights file, found in TORCH_HOME (a small non-ViT keeps this fast)."""
    import torchvision

    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    torch.manual_seed(1)
    model = torchvision.models.mobilenet_v3_small()
    target = tmp_path / "torch-home" / "hub" / "checkpoints" / Path(weights.url).name
    target.parent.mkdir(parents=True)
    torch.save(model.state_dict(), target)
    loaded = load_model("torchvision:mobilenet_v3_small", pretrained=True)
    assert loaded.weights_origin == "pretrained" and loaded.weights_path == str(target)
    assert params_sha256(loaded.module) == params_sha256(model)
    assert loaded.labels is not None and len(loaded.labels) == 1000


def test_weights_origin_of_every_source(demo_export: Path) -> None:
    assert Manifest.load(demo_export)["source"]["weights_origin"] == "builtin"
    seeded = load_model("timm:vit_tiny_patch16_224", img_size=32, random_init_seed=0)
    again = load_model("timm:vit_tiny_patch16_224", img_size=32, random_init_seed=0)
    assert params_sha256(seeded.module) == params_sha256(again.module)


def test_an_unreachable_hub_is_found_before_any_download() -> None:
    from vitedge.models.hub import unreachable

    assert "127.0.0.1" in unreachable("http://127.0.0.1:9/")  # nothing listens on port 9 (discard)


def test_random_init_export_benches_against_its_own_rebuilt_reference(cli, tmp_path: Path, digits_val: Path) -> None:
    """Issue 9's first failure, end to end (random init, labelled so): a timm name without weights is
    refused with the three ways out; a --random-init export benched against its own export dir
    agrees with the rebuilt reference exactly, and every report format says the weights are random."""
    refused = cli("export", "timm:vit_tiny_patch16_224", "-o", tmp_path / "none")
    ways_out = ("--weights FILE", "--pretrained", "--random-init SEED")
    assert refused.code == 2 and all(w in refused.text for w in ways_out)
    assert not (tmp_path / "none").exists()
    out, reports = tmp_path / "exp", tmp_path / "rep"
    r = cli("--quiet", "export", "timm:vit_tiny_patch16_224", "--random-init", "3", "--img-size", "32",
            "--num-classes", "10", "-o", out)
    assert r.code == 0, r.text
    r = cli("--quiet", "bench", out, "--reference", out, "--data", digits_val, "--max-images", "40", "--batch", "1",
            "--iters", "3", "--warmup", "1", "--gate", "top1_agreement>=0.999", "--report", reports)
    assert r.code == 0, r.text
    report = json.loads((reports / "report.json").read_text())
    assert report["artifacts"][0]["drift"]["top1_agreement"] == 1.0
    assert report["artifacts"][0]["drift"]["cosine_min"] > 0.9999
    for name in ("report.json", "report.md", "report.xml", "report.html"):
        assert "random weights: accuracy figures are meaningless" in (reports / name).read_text(), name
