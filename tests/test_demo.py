"""The demo end to end: world -> train -> concepts -> probe -> compare, and "when" shows up."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clipprobe.cli import main
from clipprobe.cli.demo import DEMO_MODEL
from clipprobe.tracking.runs import STEP_TAG, download_artifact, find_latest_run


@pytest.mark.slow
def test_demo_chains_every_step_and_epochs_differ(tracking_store, tmp_path):
    modules = "module:0,module:9,module:18"
    result = CliRunner().invoke(
        main, ["demo", "--out", str(tmp_path / "world"), "--epochs", "1", "--repeats", "1",
               "--modules", modules, "--experiment-name", "demo"])
    assert result.exit_code == 0, result.output[-3000:]

    client = MlflowClient()
    parent = find_latest_run("main")
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags[STEP_TAG] for r in children) == ["compare", "concepts", "probe", "train", "world"]

    versions = client.search_model_versions(f"name = '{DEMO_MODEL}'")
    epochs = sorted(int(v.tags["clipprobe.epoch"]) for v in versions)
    assert epochs == [0, 1]
    assert len({v.tags["clipprobe.fingerprint"] for v in versions}) == 2

    sweep = find_latest_run("probe")
    results = pd.read_parquet(download_artifact(sweep.info.run_id, "probe/results.parquet", tmp_path / "dl"))
    assert len(results) == 7 * 3 * 3 * 2  # concepts x modules x probe kinds x epochs
    assert set(results["module"]) == set(modules.split(","))
    assert (results["n_test"] == 90).all() and (results["n_test_pos"] == 30).all()
    assert results["test_majority_acc"].round(3).eq(0.667).all()

    # "When": some (concept, module, probe) moves beyond its 95% interval between epoch 0 and 1.
    key = ["concept", "module", "probe"]
    e0 = results[results["epoch"] == 0].set_index(key)
    e1 = results[results["epoch"] == 1].set_index(key).loc[e0.index]
    apart = (e1["test_acc_ci_low"] > e0["test_acc_ci_high"]) | (e1["test_acc_ci_high"] < e0["test_acc_ci_low"])
    assert apart.any(), "no fit changed beyond its interval between epoch 0 and epoch 1"

    report = find_latest_run("compare")
    names = {a.path for a in client.list_artifacts(report.info.run_id, "compare")}
    assert "compare/report.html" in names
