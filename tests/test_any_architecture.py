"""Any torchvision classifier end to end: resnet18 checkpoints -> registry -> probe -> compare.

ResNet's probe modules are ``conv1, bn1, layer1 .. layer4`` (no ``features`` container, no
``module:N`` names): the sweep writes their order as ``module_index`` and the report follows it.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sweep_fakes import make_splits

from clipprobe.backbones.architectures import build_model
from clipprobe.backbones.checkpoints import write_checkpoint
from clipprobe.cli import main
from clipprobe.concepts.splits import write_splits
from clipprobe.tracking import registry, runs

RESNET_MODULES = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


@pytest.mark.slow
def test_resnet18_checkpoints_probe_and_compare(tracking_store, tmp_path):
    folder = tmp_path / "ckpts"
    for epoch in (0, 1):
        torch.manual_seed(epoch)
        model = build_model("resnet18", num_classes=4)
        write_checkpoint(folder / f"model_{epoch}.pth", model=model, epoch=epoch,
                         args={"model": "resnet18", "val_resize_size": 32, "val_crop_size": 32})
    cli = CliRunner()
    done = cli.invoke(main, ["checkpoints", str(folder), "--arch", "resnet18", "--model-name", "rn18"])
    assert done.exit_code == 0, done.output
    splits = make_splits(tmp_path / "pool")
    with runs.step_run("concepts"):
        runs.log_artifact(write_splits(splits.table, tmp_path / "splits.parquet", splits.metadata), "concepts")

    done = cli.invoke(main, ["probe", "--probes", "linear_gap", "--repeats", "0", "--permutations", "0",
                             "--cache-dir", "cache", "--device", "cpu"])
    assert done.exit_code == 0, done.output
    sweep = runs.find_latest_run("probe")
    table = pd.read_parquet(runs.download_artifact(sweep.info.run_id, runs.RESULTS_ARTIFACT))
    order = table.drop_duplicates("module").sort_values("module_index")
    assert list(order["module"]) == RESNET_MODULES
    assert list(order["module_index"]) == list(range(6))
    assert set(table["model_name"]) == {"rn18"} and sorted(set(table["epoch"])) == [0, 1]
    assert len(table) == 2 * 6 * 2  # epochs x modules x concepts

    # point 3: names say what a run holds; checkpoint runs carry comparable metrics; keys sort naturally
    client = MlflowClient()
    concepts_run = runs.find_latest_run("concepts").info.run_id
    assert sweep.info.run_name == f"probe rn18 epochs 0-1 · concepts {concepts_run[:8]}"
    ckpts = client.search_runs([sweep.info.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}'")
    assert sorted(r.info.run_name for r in ckpts) == ["rn18 v1 · epoch 0", "rn18 v2 · epoch 1"]
    for ckpt in ckpts:
        epoch = int(ckpt.data.tags["clipprobe.epoch"])
        at = table[table["epoch"] == epoch]
        m = ckpt.data.metrics
        assert m["mean_test_acc/all/linear_gap"] == pytest.approx(at["test_acc"].mean())
        assert m["mean_test_acc/colour/linear_gap"] == pytest.approx(at["test_acc"].mean())
        red3 = at[(at["concept"] == "red") & (at["module"] == "layer2")]["test_acc"].item()
        assert m["test_acc_red/03_layer2/linear_gap"] == pytest.approx(red3)
        assert sorted(k for k in m if k.startswith("test_acc_red/")) == [
            f"test_acc_red/{i:02d}_{name}/linear_gap" for i, name in enumerate(RESNET_MODULES)]
    history = client.get_metric_history(sweep.info.run_id, "test_acc_blue/05_layer4/linear_gap")
    assert sorted(h.step for h in history) == [0, 1]

    # point 4: registered from the logged model; versions <-> sweeps
    for version in ("1", "2"):
        mv = client.get_model_version("rn18", version)
        assert mv.tags[registry.PROBED_BY_TAG] == sweep.info.run_id
        assert f"#/experiments/{sweep.info.experiment_id}/runs/{sweep.info.run_id}" in mv.description
        model_id = client.get_logged_model(mv.source.removeprefix("models:/")).model_id
        assert json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"]) == [
            {"name": "rn18", "version": version}]
    sweep = client.get_run(sweep.info.run_id)
    assert sweep.data.tags[registry.SWEEP_VERSIONS_TAG] == "rn18/1,rn18/2"
    note = sweep.data.tags["mlflow.note.content"]
    assert "[rn18 v1](#/models/rn18/versions/1) (epoch 0)" in note and "**red** (colour): best linear_gap" in note
    assert f"clipprobe compare {sweep.info.run_id}" in note

    out = tmp_path / "report"
    done = cli.invoke(main, ["compare", sweep.info.run_id, "--modules", "conv1,layer4", "--out", str(out)])
    assert done.exit_code == 0, done.output
    wide = pd.read_csv(out / "tables.csv")
    for concept in ("red", "blue"):
        assert list(wide.loc[wide["concept"] == concept, "module"]) == RESNET_MODULES
    assert (out / "plots" / "what_where_when_linear_gap.png").is_file()
    assert (out / "plots" / "accuracy_over_epochs_linear_gap.png").is_file()
    # the report's rows come from the results, in the backbone's order
    text = (out / "report.txt").read_text()
    assert text.index("conv1") < text.index("layer1") < text.index("layer4")
    # the sweep's description now points to the report's run
    compare_run = runs.find_latest_run("compare")
    note = client.get_run(sweep.info.run_id).data.tags["mlflow.note.content"]
    assert note.count("**Report:**") == 1
    assert f"#/experiments/{compare_run.info.experiment_id}/runs/{compare_run.info.run_id}" in note
