"""The reference recipe on a tiny concept world: checkpoints 0..N, callback, resume (no MLflow)."""

from __future__ import annotations

import pytest
import torch

from clipprobe.backbones.architectures import build_model
from clipprobe.backbones.checkpoints import fingerprint, read_checkpoint
from clipprobe.backbones.config import TrainConfig
from clipprobe.backbones.training import train, zero_init_residual
from clipprobe.world.config import WorldSpec
from clipprobe.world.generate import generate_world

TINY = TrainConfig(width_mult=0.25, epochs=2, batch_size=8, lr=0.05, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    spec = WorldSpec(size=24, train_per_class=4, val_per_class=2, pool_size=0,
                     shapes=("circle", "square", "triangle"))
    return generate_world(root / "w", spec).root


def test_lr_scales_with_batch_size():
    assert TrainConfig(batch_size=256).scaled_lr() == pytest.approx(0.045)
    assert TrainConfig(batch_size=64).scaled_lr() == pytest.approx(0.01125)
    assert TrainConfig(batch_size=64, lr=0.1).scaled_lr() == 0.1
    with pytest.raises(ValueError, match="batch_size must be positive"):
        TrainConfig(batch_size=0)


def test_train_saves_every_epoch_from_random_init(world, tmp_path):
    seen = []
    reports = train(TINY, world / "train", tmp_path / "ck", on_checkpoint=seen.append, progress=False)
    assert [r.epoch for r in seen] == [0, 1, 2] == [r.epoch for r in reports]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model_0.pth", "model_1.pth", "model_2.pth"]
    raw = torch.load(tmp_path / "ck" / "model_2.pth", weights_only=True)
    assert set(raw) == {"model", "optimizer", "lr_scheduler", "epoch", "args"} and raw["epoch"] == 2
    args = raw["args"]
    assert args["model"] == "mobilenet_v2" and args["num_classes"] == 3 and args["lr"] == 0.05
    assert (args["train_crop_size"], args["val_resize_size"], args["val_crop_size"]) == (24, 24, 24)
    assert args["classes"] == ["circle", "square", "triangle"]
    assert set(seen[0].metrics) == {"val_loss", "val_acc"}  # epoch 0: the random init, not trained
    assert set(seen[1].metrics) == {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert all(0.0 <= r.metrics["val_acc"] <= 1.0 for r in seen)
    digests = [fingerprint(read_checkpoint(tmp_path / "ck" / f"model_{e}.pth").state_dict) for e in range(3)]
    assert len(set(digests)) == 3
    assert raw["lr_scheduler"]["last_epoch"] == 2
    assert raw["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.98**2)


def test_resume_continues_like_an_unbroken_run(world, tmp_path):
    train(TINY, world / "train", tmp_path / "full", progress=False)
    train(TrainConfig(**{**TINY.__dict__, "epochs": 1}), world / "train", tmp_path / "split", progress=False)
    seen = []
    train(TINY, world / "train", tmp_path / "split", on_checkpoint=seen.append, progress=False)
    assert [r.epoch for r in seen] == [2]  # only the new checkpoint is reported
    full = fingerprint(read_checkpoint(tmp_path / "full" / "model_2.pth").state_dict)
    resumed = fingerprint(read_checkpoint(tmp_path / "split" / "model_2.pth").state_dict)
    assert full == resumed
    with pytest.raises(ValueError, match=r"model_2\.pth: cannot resume, the recipe differs \(lr: saved 0\.05 vs now 0\.1"):
        train(TrainConfig(**{**TINY.__dict__, "lr": 0.1, "epochs": 3}), world / "train", tmp_path / "split",
              progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(TINY, world / "train", tmp_path / "split", resume=False, progress=False)


def test_adamw_with_a_cosine_schedule(world, tmp_path):
    config = TrainConfig(**{**TINY.__dict__, "opt": "adamw", "lr": 0.004, "weight_decay": 0.01,
                            "lr_scheduler": "cosineannealinglr", "lr_min": 0.001})
    train(config, world / "train", tmp_path / "ck", progress=False)
    raw = torch.load(tmp_path / "ck" / "model_1.pth", weights_only=True)
    assert raw["args"]["opt"] == "adamw" and raw["args"]["lr_scheduler"] == "cosineannealinglr"
    group = raw["optimizer"]["param_groups"][0]
    assert "betas" in group and group["weight_decay"] == 0.01  # AdamW's state, not SGD's
    assert group["lr"] == pytest.approx(0.0025)  # halfway down from 0.004 to 0.001 after epoch 1 of 2
    last = torch.load(tmp_path / "ck" / "model_2.pth", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)
    # The schedule's length is part of the recipe: a cosine run is not stretched on resume.
    with pytest.raises(ValueError, match=r"cannot resume, the recipe differs \(epochs: saved 2 vs now 3\)"):
        train(TrainConfig(**{**config.__dict__, "epochs": 3}), world / "train", tmp_path / "ck", progress=False)


def test_onecycle_steps_per_batch(world, tmp_path):
    config = TrainConfig(**{**TINY.__dict__, "opt": "adamw", "lr": 0.01, "lr_scheduler": "onecycle",
                            "lr_warmup_pct": 0.5})
    train(config, world / "train", tmp_path / "ck", progress=False)
    first = torch.load(tmp_path / "ck" / "model_1.pth", weights_only=True)["lr_scheduler"]
    last = torch.load(tmp_path / "ck" / "model_2.pth", weights_only=True)
    assert first["total_steps"] == 5 and first["last_epoch"] == 2  # 12 images in batches of 8: 2 steps an epoch
    assert last["lr_scheduler"]["last_epoch"] == 4
    assert last["optimizer"]["param_groups"][0]["lr"] < 1e-6  # annealed to about zero at the end


def test_zero_init_residual_starts_blocks_as_the_identity(world, tmp_path):
    from torchvision.models.mobilenetv2 import InvertedResidual

    config = TrainConfig(**{**TINY.__dict__, "epochs": 0, "zero_init_residual": True})
    (report,) = train(config, world / "train", tmp_path / "ck", progress=False)
    blocks = [m for m in report.model.modules() if isinstance(m, InvertedResidual) and m.use_res_connect]
    assert len(blocks) >= 10 and all((b.conv[-1].weight == 0).all() for b in blocks)
    block = blocks[1].eval()
    x = torch.randn(2, block.conv[0][0].in_channels, 6, 6)
    assert torch.equal(block(x), x)  # the block passes its input through unchanged
    with pytest.raises(ValueError, match="SqueezeNet has no residual block this recipe knows"):
        zero_init_residual(build_model("squeezenet1_0", num_classes=3))


def test_config_round_trips_typed_with_its_learning_rate_unresolved():
    """The stored config keeps ``lr=None`` (scaled from the batch); the logged params carry the resolved rate."""
    config = TrainConfig(width_mult=0.5, epochs=7, opt="adamw", lr_scheduler="onecycle", zero_init_residual=True,
                         val_crop_size=20, batch_size=32, lr_min=0)
    rebuilt = TrainConfig.from_json(config.to_json())
    assert rebuilt == config and rebuilt.scaled_lr() == 0.045 * 32 / 256
    assert (rebuilt.zero_init_residual, rebuilt.val_crop_size, rebuilt.train_crop_size, rebuilt.lr) == (True, 20, None, None)
    assert isinstance(rebuilt.lr_min, float) and config.to_params()["lr"] == 0.045 * 32 / 256


def test_train_command_logs_its_config_and_it_is_rebuilt_from_the_run(world, tracking_store, tmp_path):
    from click.testing import CliRunner

    from clipprobe.cli import main
    from clipprobe.tracking import runs
    from clipprobe.tracking.configs import load_config

    with runs.step_run("world"):  # `train` finds its data through the latest world run
        runs.set_tags({runs.WORLD_ROOT_TAG: str(world)})
    result = CliRunner().invoke(main, ["train", "--width-mult", "0.25", "--epochs", "0", "--batch-size", "8",
                                       "--lr", "0", "--val-crop-size", "0", "--opt", "adamw", "--model-name", "t0",
                                       "--out-dir", str(tmp_path / "ck")])
    assert result.exit_code == 0, result.output
    run = runs.find_latest_run("train")
    assert load_config(TrainConfig, run.info.run_id) == TrainConfig(width_mult=0.25, epochs=0, batch_size=8,
                                                                    opt="adamw")
    assert run.data.params["train_dir"] == str(world / "train") and run.data.params["lr"] == str(0.045 * 8 / 256)
    # --arch is logged as arch (its option's name); the checkpoint's args keep the reference's names
    assert run.data.params["arch"] == "mobilenet_v2" and "architecture" not in run.data.params
    args = read_checkpoint(tmp_path / "ck" / "model_0.pth").args
    assert args["model"] == args["architecture"] == "mobilenet_v2" and "arch" not in args

    # A recipe that cannot continue the folder's checkpoints: one line, exit 1, the run ends FAILED.
    again = CliRunner().invoke(main, ["train", "--width-mult", "0.25", "--epochs", "0", "--batch-size", "4",
                                      "--model-name", "t0", "--out-dir", str(tmp_path / "ck")])
    assert again.exit_code == 1 and "Traceback" not in again.output
    assert "cannot resume, the recipe differs (batch_size: saved 8 vs now 4" in again.output
    from mlflow.tracking import MlflowClient

    (failed,) = [r for r in MlflowClient().search_runs([run.info.experiment_id], "tags.`clipprobe.step` = 'train'")
                 if r.info.run_id != run.info.run_id]
    assert failed.info.status == "FAILED"


def test_a_config_stored_when_arch_was_called_architecture_still_reads():
    """Format 1 stored the architecture as `architecture`; it reads back as `arch`, any other format is refused."""
    from clipprobe.backbones.config import CheckpointImport

    old = {**TrainConfig(width_mult=0.5, epochs=3).to_dict(), "format": 1}
    old["architecture"] = old.pop("arch")
    assert TrainConfig.from_dict(old) == TrainConfig(width_mult=0.5, epochs=3)
    imported = {**CheckpointImport(folder="ck", arch="resnet18").to_dict(), "format": 1}
    imported["architecture"] = imported.pop("arch")
    assert CheckpointImport.from_dict(imported) == CheckpointImport(folder="ck", arch="resnet18")
    with pytest.raises(ValueError, match="stored: config format 0, this clipprobe reads format 2"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "format": 0}, source="stored")


def test_unknown_optimizer_and_schedule_name_the_choices():
    with pytest.raises(ValueError, match="unknown optimizer 'adam': choose one of sgd, adamw"):
        TrainConfig(opt="adam")
    with pytest.raises(ValueError, match="unknown lr scheduler 'cosine': choose one of steplr, cosineannealinglr, onecycle"):
        TrainConfig(lr_scheduler="cosine")
    with pytest.raises(ValueError, match=r"lr_min must lie in \[0, lr=0.01\)"):
        TrainConfig(lr=0.01, lr_min=0.02)
    with pytest.raises(ValueError, match="lr_warmup_pct must lie strictly between 0 and 1, got 1.0"):
        TrainConfig(lr_scheduler="onecycle", lr_warmup_pct=1.0)
