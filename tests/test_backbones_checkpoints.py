"""Checkpoint files, fingerprints, architectures, probe modules and transforms (no MLflow)."""

from __future__ import annotations

import argparse
from collections import OrderedDict

import pytest
import torch
from PIL import Image

from clipprobe.backbones.architectures import (
    ImageTransform,
    build_model,
    default_probe_modules,
    num_classes_of,
    resolve_probe_modules,
    transform_from_args,
)
from clipprobe.backbones.checkpoints import (
    CheckpointError,
    epoch_from_name,
    fingerprint,
    load_into,
    read_checkpoint,
    write_checkpoint,
)
from clipprobe.backbones.loader import load_backbone


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("mobilenet_v2", num_classes=3, width_mult=0.25)


def test_fingerprint_is_order_independent_and_sensitive(tiny):
    sd = tiny.state_dict()
    reordered = OrderedDict(reversed(list(sd.items())))
    assert fingerprint(sd) == fingerprint(reordered)
    assert len(fingerprint(sd)) == 64
    changed = {k: v.clone() for k, v in sd.items()}
    changed["classifier.1.bias"][0] += 1e-6
    assert fingerprint(changed) != fingerprint(sd)
    # same bytes, different dtype is a different checkpoint
    as_double = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    assert fingerprint(as_double) != fingerprint(sd)


@pytest.mark.parametrize(("name", "epoch"), [
    ("model_7.pth", 7), ("model_0.pth", 0), ("epoch_12.pth", 12), ("run3-model_300.pth", 300),
    ("checkpoint.pth", None), ("weights.pth", None), ("model_7.pth.bak", None),
])
def test_epoch_from_name(name, epoch):
    assert epoch_from_name(name) == epoch


def test_reads_torchvision_reference_dict_with_namespace_args(tiny, tmp_path):
    path = tmp_path / "anything.pth"
    args = argparse.Namespace(model="mobilenet_v2", lr=0.045, val_resize_size=256, val_crop_size=224)
    torch.save({"model": tiny.state_dict(), "optimizer": {}, "lr_scheduler": {}, "epoch": 4, "args": args}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.epoch == 4
    assert ckpt.args["model"] == "mobilenet_v2" and ckpt.args["lr"] == 0.045
    assert fingerprint(ckpt.state_dict) == fingerprint(tiny.state_dict())


def test_plain_state_dict_epoch_from_name_and_ddp_prefix(tiny, tmp_path):
    path = tmp_path / "model_9.pth"
    torch.save({f"module.{k}": v for k, v in tiny.state_dict().items()}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.epoch == 9 and ckpt.args == {}
    assert set(ckpt.state_dict) == set(tiny.state_dict())


def test_write_then_read_round_trip(tiny, tmp_path):
    path = write_checkpoint(tmp_path / "model_2.pth", model=tiny, epoch=2, args={"model": "mobilenet_v2"})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    assert read_checkpoint(path).epoch == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_files_raise_one_line_naming_the_file(tiny, tmp_path):
    good = write_checkpoint(tmp_path / "model_1.pth", model=tiny, epoch=1, args={})
    truncated = tmp_path / "model_2.pth"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"model_2\.pth: not a readable checkpoint, truncated or corrupt") as info:
        read_checkpoint(truncated)
    assert "\n" not in str(info.value)
    no_epoch = tmp_path / "weights.pth"
    torch.save(tiny.state_dict(), no_epoch)
    with pytest.raises(CheckpointError, match=r"weights\.pth: no epoch .* rename it model_<epoch>\.pth"):
        read_checkpoint(no_epoch)
    other = tmp_path / "model_3.pth"
    torch.save(build_model("resnet18", num_classes=3).state_dict(), other)
    with pytest.raises(CheckpointError, match=r"model_3\.pth: its state dict does not fit mobilenet_v2.*missing"):
        load_into(build_model("mobilenet_v2", num_classes=3, width_mult=0.25), read_checkpoint(other),
                  "mobilenet_v2")


def test_mobilenet_v2_probe_modules_are_the_seeds_19():
    model = build_model("mobilenet_v2", num_classes=2, width_mult=0.25)
    modules = default_probe_modules(model)
    assert list(modules) == [f"module:{i}" for i in range(19)]
    assert modules["module:0"] == "features.0" and modules["module:18"] == "features.18"


def test_other_architectures_have_defaults_and_overrides():
    resnet = build_model("resnet18", num_classes=2)
    assert list(default_probe_modules(resnet).values()) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    mnv2 = build_model("mobilenet_v2", num_classes=2, width_mult=0.25)
    assert resolve_probe_modules(mnv2, ["module:3", "features.7", "features.7.conv"]) == {
        "module:3": "features.3", "module:7": "features.7", "features.7.conv": "features.7.conv"}
    with pytest.raises(ValueError, match=r"unknown module 'features.30'.*features.0 .. features.18"):
        resolve_probe_modules(mnv2, ["features.30"])


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown architecture 'mobilenet_v9'"):
        build_model("mobilenet_v9")
    with pytest.raises(ValueError, match="'resnet18' takes no width_mult"):
        build_model("resnet18", width_mult=0.5)
    assert num_classes_of(build_model("resnet18", num_classes=5).state_dict()) == 5


def test_transforms_from_args():
    image = Image.new("RGB", (64, 64), (200, 10, 10))
    world = transform_from_args({"val_resize_size": 64, "val_crop_size": 64})
    out = world(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert out[0].mean() > 1.0 > out[1].mean()  # red channel normalised high
    reference = transform_from_args({})
    assert (reference.resize_size, reference.crop_size) == (256, 224)
    assert reference(Image.new("L", (300, 400))).shape == (3, 224, 224)
    with pytest.raises(ValueError, match="val_crop_size 80 is larger than val_resize_size 64"):
        ImageTransform(resize_size=64, crop_size=80)


def test_load_backbone_from_file(tiny, tmp_path):
    args = {"model": "mobilenet_v2", "width_mult": 0.25, "num_classes": 3, "val_resize_size": 32,
            "val_crop_size": 32}
    path = write_checkpoint(tmp_path / "model_5.pth", model=tiny, epoch=5, args=args)
    backbone = load_backbone(path, modules=["module:2", "module:18"])
    assert backbone.epoch == 5 and backbone.name is None and backbone.architecture == "mobilenet_v2"
    assert backbone.fingerprint == fingerprint(tiny.state_dict())
    assert not backbone.module.training
    assert backbone.probe_modules == {"module:2": "features.2", "module:18": "features.18"}
    assert backbone.transform.crop_size == 32
    with pytest.raises(ValueError, match="holds epoch 5, but epoch 6 was asked for"):
        load_backbone(path, epoch=6)


def test_load_backbone_takes_registry_sources_from_the_registry_it_is_given(tiny, tmp_path):
    """backbones/ never imports tracking/: a models:/ URI or a name goes through the registry passed in."""
    from clipprobe.backbones.loader import LoadedModel

    class Registry:
        def __init__(self):
            self.asked = []

        def uri(self, name, epoch):
            self.asked.append((name, epoch))
            return f"models:/{name}@epoch-{4 if epoch is None else epoch:03d}"

        def load(self, uri):
            self.asked.append(uri)
            return LoadedModel(module=tiny, metadata={"epoch": "4", "architecture": "mobilenet_v2",
                                                      "fingerprint": fingerprint(tiny.state_dict())},
                               name="tinynet", version="7")

    registry = Registry()
    backbone = load_backbone("tinynet", registry=registry)
    assert registry.asked == [("tinynet", None), "models:/tinynet@epoch-004"]
    assert (backbone.epoch, backbone.name, backbone.version) == (4, "tinynet", "7")
    with pytest.raises(ValueError, match="holds epoch 4, but epoch 5 was asked for"):
        load_backbone("models:/tinynet/7", epoch=5, registry=registry)
    with pytest.raises(ValueError, match=r"models:/tinynet@epoch-004: a models:/ URI or registered model name "
                                         r"needs a model registry: pass registry="):
        load_backbone("models:/tinynet@epoch-004")
