"""Any torchvision classifier end to end: resnet18 checkpoints -> registry -> probe -> compare.

ResNet's probe modules are ``conv1, bn1, layer1 .. layer4`` (no ``features`` container, no
``module:N`` names): the sweep writes their order as ``module_index`` and the report follows it.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sweep_fakes import make_splits

from clipprobe.backbones.architectures import build_model
from clipprobe.backbones.checkpoints import write_checkpoint
from clipprobe.cli import main
from clipprobe.concepts.splits import write_splits
from clipprobe.tracking import fits, runs

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
    table = pd.read_parquet(runs.download_artifact(sweep.info.run_id, fits.RESULTS_ARTIFACT))
    order = table.drop_duplicates("module").sort_values("module_index")
    assert list(order["module"]) == RESNET_MODULES
    assert list(order["module_index"]) == list(range(6))
    assert set(table["model_name"]) == {"rn18"} and sorted(set(table["epoch"])) == [0, 1]
    assert len(table) == 2 * 6 * 2  # epochs x modules x concepts

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
