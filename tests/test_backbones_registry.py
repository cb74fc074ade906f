"""Checkpoints as registered MLflow models: train, import, aliases, fresh-process loading, duplicates."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clipprobe.backbones.architectures import build_model
from clipprobe.backbones.checkpoints import fingerprint, read_checkpoint, write_checkpoint
from clipprobe.backbones.config import TrainConfig
from clipprobe.backbones.loader import load_backbone
from clipprobe.cli import main
from clipprobe.tracking import registry, runs
from clipprobe.tracking.configs import load_config
from clipprobe.tracking.registry import MLFLOW_REGISTRY
from clipprobe.world.config import WorldSpec
from clipprobe.world.generate import generate_world

ARGS = {"model": "mobilenet_v2", "width_mult": 0.25, "num_classes": 3, "val_resize_size": 24, "val_crop_size": 24}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    spec = WorldSpec(size=24, train_per_class=4, val_per_class=2, pool_size=0,
                     shapes=("circle", "square", "triangle"))
    return generate_world(tmp_path_factory.mktemp("world") / "w", spec).root


def _write(folder, epoch, seed):
    torch.manual_seed(seed)
    model = build_model("mobilenet_v2", num_classes=3, width_mult=0.25)
    return write_checkpoint(folder / f"model_{epoch}.pth", model=model, epoch=epoch, args=ARGS)


@pytest.mark.slow
def test_train_registers_every_epoch_loadable_in_a_fresh_process(world, tracking_store, tmp_path):
    with runs.step_run("world"):  # `train` finds its data through the latest world run
        runs.set_tags({"clipprobe.world_root": str(world)})
    result = CliRunner().invoke(main, ["train", "--width-mult", "0.25", "--epochs", "3", "--batch-size", "8",
                                       "--lr", "0.05", "--model-name", "tinynet", "--out-dir", "ck"])
    assert result.exit_code == 0, result.output
    ckpts = registry.list_checkpoints("tinynet")
    assert [c.epoch for c in ckpts] == [0, 1, 2, 3]
    assert [c.alias for c in ckpts] == ["epoch-000", "epoch-001", "epoch-002", "epoch-003"]
    for c in ckpts:
        assert c.fingerprint == fingerprint(read_checkpoint(tmp_path / "ck" / f"model_{c.epoch}.pth").state_dict)
        assert c.source == str(tmp_path / "ck" / f"model_{c.epoch}.pth") and not c.duplicate
    assert len({c.fingerprint for c in ckpts}) == 4
    # the train run's stored config is the one it trained with
    logged = load_config(TrainConfig, runs.find_latest_run("train").info.run_id)
    assert logged == TrainConfig(width_mult=0.25, epochs=3, batch_size=8, lr=0.05)
    client = MlflowClient()
    mv = client.get_model_version_by_alias("tinynet", "epoch-002")
    assert mv.tags[registry.EPOCH_TAG] == "2" and mv.tags[registry.FINGERPRINT_TAG] == ckpts[2].fingerprint

    run = runs.find_latest_run("train")
    assert run.data.tags[registry.MODEL_NAME_TAG] == "tinynet"
    # the folders it used, as it resolved them (val/ beside the train folder when none is named)
    assert run.data.params["train_dir"] == str(world / "train") and run.data.params["val_dir"] == str(world / "val")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [0, 1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]

    # A fresh process sees the same weights as model_2.pth, and hooks fire on the loaded module.
    code = textwrap.dedent("""
        import json, mlflow.pytorch, torch
        from clipprobe.backbones.loader import load_backbone
        from clipprobe.tracking.registry import MLFLOW_REGISTRY
        m = mlflow.pytorch.load_model("models:/tinynet@epoch-002")
        saved = torch.load("ck/model_2.pth", weights_only=True)["model"]
        same = all(torch.equal(v, saved[k]) for k, v in m.state_dict().items()) and len(saved) == len(m.state_dict())
        fired = []
        m.features[7].register_forward_hook(lambda mod, i, o: fired.append(tuple(o.shape)))
        m.eval()(torch.zeros(2, 3, 24, 24))
        b = load_backbone("tinynet", epoch=2, registry=MLFLOW_REGISTRY)
        print("RESULT", json.dumps({"same": same, "cls": type(m).__name__, "fired": fired,
                                    "epoch": b.epoch, "fingerprint": b.fingerprint}))
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_store}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stderr[-2000:]
    got = json.loads(line[0].removeprefix("RESULT "))
    assert (got["same"], got["cls"], got["epoch"]) == (True, "MobileNetV2", 2)
    assert got["fingerprint"] == ckpts[2].fingerprint
    assert len(got["fired"]) == 1 and got["fired"][0][0] == 2

    # Epochs differ: same input, different activations.
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    b1 = load_backbone("models:/tinynet@epoch-001", registry=MLFLOW_REGISTRY)
    b2 = load_backbone(f"models:/tinynet/{ckpts[2].version}", registry=MLFLOW_REGISTRY)
    assert b2.epoch == 2 and b2.version == ckpts[2].version and b2.probe_modules["module:18"] == "features.18"
    with torch.no_grad():
        assert not torch.allclose(b1.module.features[:8](x), b2.module.features[:8](x))
    assert load_backbone("tinynet", registry=MLFLOW_REGISTRY).epoch == 3  # no epoch: the highest registered

    # Re-importing the same folder adds no version.
    n_versions = len(registry.list_checkpoints("tinynet", all_versions=True))
    again = CliRunner().invoke(main, ["checkpoints", "ck", "--model-name", "tinynet"])
    assert again.exit_code == 0, again.output
    assert "imported 0 as 'tinynet', 4 already registered, 0 skipped" in again.output
    assert len(registry.list_checkpoints("tinynet", all_versions=True)) == n_versions == 4
    assert runs.find_latest_run("checkpoints").data.tags[registry.MODEL_NAME_TAG] == "tinynet"


def test_bad_files_are_named_and_skipped(tracking_store, tmp_path, caplog):
    folder = tmp_path / "ck"
    good = [_write(folder, 0, seed=0), _write(folder, 5, seed=1)]
    (folder / "model_7.pth").write_bytes(good[0].read_bytes()[:3000])
    torch.save(build_model("resnet18", num_classes=3).state_dict(), folder / "model_8.pth")
    torch.save(build_model("mobilenet_v2", num_classes=3, width_mult=0.25).state_dict(), folder / "final.pth")
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main, ["checkpoints", str(folder), "--model-name", "m"])
    assert result.exit_code == 0, result.output
    assert "imported 2 (epochs 0..5) as 'm', 0 already registered, 3 skipped" in result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, why in [("model_7.pth", "truncated or corrupt"), ("model_8.pth", "does not fit mobilenet_v2"),
                      ("final.pth", "no epoch")]:
        lines = [w for w in warnings if name in w]
        assert len(lines) == 1 and why in lines[0] and "\n" not in lines[0], warnings
    assert [c.epoch for c in registry.list_checkpoints("m")] == [0, 5]

    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (bad_only / "model_1.pth").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, ["checkpoints", str(bad_only), "--model-name", "m2"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "nothing imported" in result.output and "all 1 files were skipped" in result.output
    # the empty import's run ends FAILED: the next `probe` keeps the model that was imported ("m")
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    [empty] = client.search_runs(["0"], "tags.`clipprobe.model_name` = 'm2'")
    assert empty.info.status == "FAILED" and f"run {empty.info.run_id} FAILED" in result.output
    assert runs.find_latest_run("checkpoints").data.tags[registry.MODEL_NAME_TAG] == "m"


def test_same_weights_at_two_epochs_are_flagged(tracking_store, tmp_path, caplog):
    folder = tmp_path / "ck"
    _write(folder, 1, seed=0)
    _write(folder, 2, seed=0)  # same weights saved as another epoch: the seed's suspected bug
    _write(folder, 3, seed=1)
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main, ["checkpoints", str(folder), "--model-name", "dup"])
    assert result.exit_code == 0, result.output
    assert any("epochs 1, 2 have the SAME weights" in r.getMessage() for r in caplog.records)
    by_epoch = {c.epoch: c for c in registry.list_checkpoints("dup")}
    assert by_epoch[1].duplicate_of == ("epoch-002",) and by_epoch[2].duplicate_of == ("epoch-001",)
    assert not by_epoch[3].duplicate
    tags = MlflowClient().get_model_version("dup", by_epoch[1].version).tags
    assert tags[registry.DUPLICATE_TAG] == "epoch-002"
    with pytest.raises(ValueError, match=r"models:/dup@epoch-009: no such registered model version \(aliases: epoch-001"):
        load_backbone("models:/dup@epoch-009", registry=MLFLOW_REGISTRY)


def test_train_without_data_names_the_fix(tracking_store):
    result = CliRunner().invoke(main, ["train", "--epochs", "1"])
    assert result.exit_code == 2
    assert "no --train-dir given and no finished world run found" in result.output
    result = CliRunner().invoke(main, ["train", "--train-dir", "nowhere", "--width-mult", "0.5", "--arch", "resnet18"])
    assert result.exit_code == 2 and "'resnet18' takes no width_mult" in result.output


def test_registered_checkpoints_show_as_registered_and_link_to_the_sweeps_that_probed_them(tracking_store):
    """What the UI reads: the logged model's mlflow.modelVersions tag (as mlflow.register_model sets it),
    the version's run; and links version <-> sweep, kept once per sweep."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=3, width_mult=0.25)
    with runs.step_run("checkpoints") as ckpt_run:
        first = registry.log_checkpoint(model, name="tiny", epoch=0, source="model_0.pth", metadata=ARGS)
        second = registry.log_checkpoint(model, name="tiny", epoch=1, source="model_1.pth", metadata=ARGS)
    client = MlflowClient()
    for ckpt in (first, second):
        mv = client.get_model_version("tiny", ckpt.version)
        assert mv.run_id == ckpt_run.info.run_id
        logged = client.get_logged_model(mv.source.removeprefix("models:/"))
        assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "tiny", "version": ckpt.version}]
        assert "Not probed yet" in mv.description
    sweeps = []
    for _ in range(2):
        with runs.step_run("probe", run_name="probe tiny epochs 0-1") as sweep:
            sweeps.append(sweep.info.run_id)
        registry.link_sweep(sweep.info.run_id, "tiny", [first.version, second.version])
    registry.link_sweep(sweeps[0], "tiny", [first.version])  # again: no duplicate link
    mv = client.get_model_version("tiny", first.version)
    assert mv.tags[registry.PROBED_BY_TAG] == ",".join(sweeps)
    assert mv.description.count("#/experiments/0/runs/") == 2 and "probe tiny epochs 0-1" in mv.description
    assert client.get_run(sweeps[1]).data.tags[registry.SWEEP_VERSIONS_TAG] == "tiny/1,tiny/2"
    assert client.get_run(sweeps[0]).data.tags[registry.SWEEP_VERSIONS_TAG] == "tiny/1"


def test_a_second_training_run_under_the_same_name_is_refused_not_spliced_in(tracking_store, tmp_path):
    """Importing another run's checkpoints under a model name that already holds those epochs would move the
    epoch-NNN aliases to the new weights, splicing two runs into one "when" axis: refused, naming the fix."""
    first, second = tmp_path / "run a", tmp_path / "run b"
    for epoch in (0, 1, 2):
        _write(first, epoch, seed=epoch)
    _write(second, 0, seed=10)  # another run: other weights at the same epochs
    _write(second, 1, seed=11)
    _write(second, 3, seed=13)
    assert CliRunner().invoke(main, ["checkpoints", str(first), "--model-name", "net"]).exit_code == 0
    before = {c.epoch: (c.version, c.fingerprint) for c in registry.list_checkpoints("net")}
    result = CliRunner().invoke(main, ["checkpoints", str(second), "--model-name", "net"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (f"{second / 'model_0.pth'}: epoch 0 of 'net' is registered already with other weights (version 1, from "
            f"{(first / 'model_0.pth').resolve()}): import this folder under its own --model-name") in result.output
    assert {c.epoch: (c.version, c.fingerprint) for c in registry.list_checkpoints("net")} == before  # untouched
    assert load_backbone("net", epoch=1, registry=MLFLOW_REGISTRY).fingerprint == before[1][1]
    again = CliRunner().invoke(main, ["checkpoints", str(second), "--model-name", "net-b"])
    assert again.exit_code == 0 and "imported 3 (epochs 0..3) as 'net-b'" in again.output


def test_a_deleted_version_leaves_load_by_epoch_and_the_sweeps_choice_agreeing(tracking_store, tmp_path, caplog):
    """Deleting a version in the UI deletes its alias too. By epoch, load_backbone then takes the newest version
    of that epoch left (what a sweep takes), saying so; an epoch with none left fails naming the aliases left."""
    folder = tmp_path / "ck"
    for epoch in (0, 1, 2):
        _write(folder, epoch, seed=epoch)
    assert CliRunner().invoke(main, ["checkpoints", str(folder), "--model-name", "net"]).exit_code == 0
    with runs.step_run("checkpoints"):  # epoch 0 registered again (a second import of the same file)
        model = build_model("mobilenet_v2", num_classes=3, width_mult=0.25)
        model.load_state_dict(read_checkpoint(folder / "model_0.pth").state_dict)
        again = registry.log_checkpoint(model, name="net", epoch=0, source=folder / "model_0.pth", metadata=ARGS)
    client = MlflowClient()
    first = [c for c in registry.list_checkpoints("net", all_versions=True) if c.epoch == 0][0]
    client.delete_model_version("net", again.version)  # the version the alias epoch-000 pointed at
    client.delete_model_version("net", registry.list_checkpoints("net")[1].version)  # epoch 1's only version
    assert [c.epoch for c in registry.list_checkpoints("net")] == [0, 2]
    with caplog.at_level(logging.WARNING):
        bb = load_backbone("net", epoch=0, registry=MLFLOW_REGISTRY)
    assert (bb.epoch, bb.version) == (0, first.version)
    assert any(f"no alias epoch-000 (its version was deleted): loading version {first.version}" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ValueError, match=r"models:/net@epoch-001: no such registered model version "
                                         r"\(aliases: epoch-002\)"):
        load_backbone("net", epoch=1, registry=MLFLOW_REGISTRY)
