"""A torchvision references/classification output folder, written with the recipe's exact dict
layout, imports as the recipe meant it: checkpoint.pth is the copy of the latest model_N.pth, the
width multiplier and classes come from the weights, and EMA weights are a choice."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clipprobe.backbones.architectures import build_model, infer_width_mult
from clipprobe.backbones.checkpoints import (
    CheckpointError,
    fingerprint,
    model_shape,
    read_checkpoint,
)
from clipprobe.backbones.loader import load_backbone
from clipprobe.cli import main
from clipprobe.tracking import registry, runs
from clipprobe.tracking.registry import MLFLOW_REGISTRY

WIDTH, CLASSES = 0.5, 10


class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    """references/classification/utils.py's EMA, as the recipe builds it with --model-ema."""

    def __init__(self, model, decay, device="cpu"):
        def ema_avg(avg_model_param, model_param, num_averaged):
            return decay * avg_model_param + (1 - decay) * model_param

        super().__init__(model, device, ema_avg, use_buffers=True)


def recipe_args(output_dir, *, model_ema: bool) -> argparse.Namespace:
    """train.py's get_args_parser() namespace (torchvision 0.2x), as saved in every checkpoint."""
    return argparse.Namespace(
        data_path="/datasets01/imagenet_full_size/061417/", model="mobilenet_v2", device="cuda",
        batch_size=32, epochs=300, workers=16, opt="rmsprop", lr=0.064, momentum=0.9, weight_decay=4e-05,
        norm_weight_decay=None, bias_weight_decay=None, transformer_embedding_decay=None,
        label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, lr_scheduler="steplr", lr_warmup_epochs=0,
        lr_warmup_method="constant", lr_warmup_decay=0.01, lr_step_size=1, lr_gamma=0.973, lr_min=0.0,
        print_freq=10, output_dir=str(output_dir), resume="", start_epoch=0, cache_dataset=False,
        sync_bn=False, test_only=False, auto_augment="imagenet", ra_magnitude=9, augmix_severity=3,
        random_erase=0.2, amp=True, world_size=8, dist_url="env://", model_ema=model_ema,
        model_ema_steps=32, model_ema_decay=0.99998, use_deterministic_algorithms=False,
        interpolation="bilinear", val_resize_size=256, val_crop_size=224, train_crop_size=224,
        clip_grad_norm=None, ra_sampler=False, ra_reps=3, weights=None, backend="pil", use_v2=False,
        rank=0, gpu=0, distributed=True, dist_backend="nccl",
    )


def write_recipe_run(folder, epochs: int = 2, *, model_ema: bool = False) -> list:
    """model_0.pth .. model_<epochs-1>.pth and checkpoint.pth, saved as train.py saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=CLASSES, width_mult=WIDTH)
    args = recipe_args(folder, model_ema=model_ema)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=args.lr, momentum=0.9, eps=0.0316, alpha=0.9)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=args.lr_gamma)
    scaler = torch.amp.GradScaler("cpu")
    ema = ExponentialMovingAverage(model, decay=0.9) if model_ema else None
    states = []
    for epoch in range(epochs):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "epoch": epoch,
            "args": args,
        }
        if ema is not None:
            checkpoint["model_ema"] = ema.state_dict()
        checkpoint["scaler"] = scaler.state_dict()
        torch.save(checkpoint, folder / f"model_{epoch}.pth")
        torch.save(checkpoint, folder / "checkpoint.pth")
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    return states


def _import(folder, *args):
    return CliRunner().invoke(main, ["checkpoints", str(folder), "--arch", "mobilenet_v2", *args])


def test_recipe_folder_imports_one_version_per_epoch(tracking_store, tmp_path):
    folder = tmp_path / "run"
    states = write_recipe_run(folder)
    result = _import(folder)
    assert result.exit_code == 0, result.output
    assert "imported 2 (epochs 0..1) as 'mobilenet_v2', 0 already registered, 0 skipped" in result.output
    assert "checkpoint.pth: the copy of model_1.pth (same epoch and weights), not registered twice" in result.output
    every = registry.list_checkpoints("mobilenet_v2", all_versions=True)
    assert [(c.epoch, c.source) for c in every] == [(0, str(folder / "model_0.pth")),
                                                    (1, str(folder / "model_1.pth"))]
    assert not any(c.duplicate for c in every)
    assert every[1].fingerprint == fingerprint(states[1])
    tags = MlflowClient().get_model_version("mobilenet_v2", every[1].version).tags
    assert (tags["clipprobe.width_mult"], tags["clipprobe.num_classes"]) == ("0.5", "10")
    assert (tags[registry.WEIGHTS_TAG], tags["clipprobe.val_crop_size"]) == ("model", "224")
    imported = runs.find_latest_run("checkpoints")
    assert imported.data.metrics["n_copies"] == 1
    from clipprobe.backbones.config import CheckpointImport
    from clipprobe.tracking.configs import load_config

    assert load_config(CheckpointImport, imported.info.run_id) == CheckpointImport(folder=folder, arch="mobilenet_v2")

    # The run goes on: the new checkpoint.pth copies model_2.pth; nothing is registered twice.
    states = write_recipe_run(folder, epochs=3)
    again = _import(folder)
    assert again.exit_code == 0, again.output
    assert "imported 1 (epochs 2..2) as 'mobilenet_v2', 2 already registered, 0 skipped" in again.output
    assert "checkpoint.pth: the copy of model_2.pth" in again.output
    assert [c.epoch for c in registry.list_checkpoints("mobilenet_v2", all_versions=True)] == [0, 1, 2]
    backbone = load_backbone("mobilenet_v2", epoch=2, registry=MLFLOW_REGISTRY)
    assert backbone.fingerprint == fingerprint(states[2])
    # The file alone loads too: width and classes read from the weights.
    direct = load_backbone(folder / "checkpoint.pth")
    assert direct.fingerprint == fingerprint(states[2]) and direct.epoch == 2
    assert direct.module.classifier[-1].out_features == CLASSES


def test_stale_checkpoint_with_other_weights_is_skipped(tracking_store, tmp_path, caplog):
    folder = tmp_path / "run"
    write_recipe_run(folder)
    stale = torch.load(folder / "checkpoint.pth", weights_only=False)
    stale["model"] = build_model("mobilenet_v2", num_classes=CLASSES, width_mult=WIDTH).state_dict()
    torch.save(stale, folder / "checkpoint.pth")
    with caplog.at_level(logging.WARNING):
        result = _import(folder, "--model-name", "m")
    assert result.exit_code == 0, result.output
    assert "imported 2 (epochs 0..1) as 'm', 0 already registered, 1 skipped" in result.output
    warning = [r.getMessage() for r in caplog.records if "checkpoint.pth" in r.getMessage()]
    assert len(warning) == 1 and "epoch 1 like model_1.pth but with other weights" in warning[0]
    assert [c.epoch for c in registry.list_checkpoints("m", all_versions=True)] == [0, 1]


def test_hyper_parameters_the_weights_fix_are_read_or_named(tracking_store, tmp_path, caplog):
    folder = tmp_path / "run"
    write_recipe_run(folder, epochs=1)
    ckpt = read_checkpoint(folder / "model_0.pth")
    assert ckpt.args["model"] == "mobilenet_v2" and ckpt.epoch == 0 and not ckpt.has_ema
    shape = model_shape(ckpt, "mobilenet_v2")
    assert (shape.width_mult, shape.num_classes) == (0.5, 10)
    with pytest.raises(CheckpointError, match=r"model_0.pth: its weights are mobilenet_v2 width_mult 0.5 "
                       r"\(first conv: 16 channels\), not 1: pass --width-mult 0.5 or leave it out"):
        model_shape(ckpt, "mobilenet_v2", width_mult=1.0)
    with pytest.raises(CheckpointError, match="its classifier has 10 outputs, not num_classes 4: pass --num-classes 10"):
        model_shape(ckpt, "mobilenet_v2", num_classes=4)
    assert model_shape(ckpt, "mobilenet_v2", width_mult=0.5, num_classes=10) == shape
    for width in (0.25, 0.35, 0.75, 1.0, 1.4):
        assert infer_width_mult("mobilenet_v2", build_model("mobilenet_v2", num_classes=3, width_mult=width)
                                .state_dict()) == width
    assert infer_width_mult("mobilenet_v2", build_model("resnet18", num_classes=3).state_dict()) is None

    with caplog.at_level(logging.WARNING):
        result = _import(folder, "--width-mult", "1.0")
    assert result.exit_code != 0 and "all 2 files were skipped" in result.output
    assert sum("pass --width-mult 0.5" in r.getMessage() for r in caplog.records) == 2


def test_ema_weights_are_a_choice_recorded_on_the_version(tracking_store, tmp_path, caplog):
    folder = tmp_path / "run"
    raw = write_recipe_run(folder, model_ema=True)
    saved = torch.load(folder / "model_1.pth", weights_only=False)
    assert set(saved) == {"model", "optimizer", "lr_scheduler", "epoch", "args", "model_ema", "scaler"}
    ema = {k.removeprefix("module."): v for k, v in saved["model_ema"].items() if k != "n_averaged"}
    assert fingerprint(ema) != fingerprint(raw[1])

    result = _import(folder, "--weights", "ema")
    assert result.exit_code == 0, result.output
    assert "imported 2 (epochs 0..1) as 'mobilenet_v2-ema'" in result.output
    ckpts = registry.list_checkpoints("mobilenet_v2-ema", all_versions=True)
    assert [c.epoch for c in ckpts] == [0, 1] and ckpts[1].fingerprint == fingerprint(ema)
    assert ckpts[1].tags[registry.WEIGHTS_TAG] == "ema"
    loaded = load_backbone("models:/mobilenet_v2-ema@epoch-001", registry=MLFLOW_REGISTRY)
    assert all(torch.equal(v, ema[k]) for k, v in loaded.module.state_dict().items())
    assert load_backbone(folder / "model_1.pth", weights="ema").fingerprint == fingerprint(ema)
    assert load_backbone(folder / "model_1.pth").fingerprint == fingerprint(raw[1])

    plain = _import(folder)  # the raw model: its own registered model, its own fingerprints
    assert plain.exit_code == 0, plain.output
    raw_ckpts = registry.list_checkpoints("mobilenet_v2", all_versions=True)
    assert raw_ckpts[1].fingerprint == fingerprint(raw[1]) and raw_ckpts[1].tags[registry.WEIGHTS_TAG] == "model"
    assert runs.find_latest_run("checkpoints").data.params["weights"] == "model"

    mixed = _import(folder, "--weights", "ema", "--model-name", "mobilenet_v2")
    assert mixed.exit_code == 2
    assert "registered model 'mobilenet_v2' holds model weights, not ema" in mixed.output
    assert "--model-name mobilenet_v2-ema" in mixed.output

    no_ema = tmp_path / "no-ema"
    write_recipe_run(no_ema)
    with caplog.at_level(logging.WARNING):
        result = _import(no_ema, "--weights", "ema", "--model-name", "x")
    assert result.exit_code != 0 and "all 3 files were skipped" in result.output
    assert any("has no model_ema weights (trained without --model-ema); import it with --weights model"
               in r.getMessage() for r in caplog.records)


def test_files_a_real_run_folder_collects_are_named_with_their_fix(tracking_store, tmp_path):
    """Beside the recipe's files: a whole pickled model, safetensors exports. Each is named in the command's
    output with what to do; the safetensors files import with --pattern, their epoch read from the name."""
    from safetensors.torch import save_file

    folder = tmp_path / "run"
    states = write_recipe_run(folder)
    torch.save(build_model("mobilenet_v2", num_classes=CLASSES, width_mult=WIDTH), folder / "model_5.pth")
    save_file(states[1], str(folder / "model_10.safetensors"))
    save_file(states[0], str(folder / "model_9.safetensors"))

    result = CliRunner().invoke(main, ["checkpoints", str(folder), "--arch", "mobilenet_v2"])
    assert result.exit_code == 0, result.output
    assert "imported 2 (epochs 0..1) as 'mobilenet_v2', 0 already registered, 1 skipped" in result.output
    assert (f"skipped {folder / 'model_5.pth'}: a pickled torchvision.models.mobilenetv2.MobileNetV2 object, not a "
            "state dict (weights-only loading refuses pickled classes): re-save it as torch.save({'model': "
            "model.state_dict(), 'epoch': N}, ...)") in result.output
    assert "2 other checkpoint file(s) (.safetensors) do not match '*.pth': pass --pattern '*.safetensors'" \
        in result.output

    safetensors = _import(folder, "--pattern", "*.safetensors", "--model-name", "exported")
    assert safetensors.exit_code == 0, safetensors.output
    assert "imported 2 (epochs 9..10) as 'exported'" in safetensors.output
    assert [(c.epoch, c.fingerprint) for c in registry.list_checkpoints("exported")] == [
        (9, fingerprint(states[0])), (10, fingerprint(states[1]))]
