"""A tiny registry and concept splits in the test's tracking store, the probe command on them, and the sweep's
fit runs read back (what the sweep, executor, resume and tune tests share)."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner
from sweep_fakes import make_splits

from clipprobe.cli import main
from clipprobe.concepts.splits import write_splits
from clipprobe.tracking import fits, registry, runs

META = {"architecture": "mobilenet_v2", "width_mult": 0.25, "num_classes": 4, "val_resize_size": 32,
        "val_crop_size": 32}
OPTS = ["--modules", "module:0,module:1", "--probes", "linear_gap,non_linear_gap", "--repeats", "1",
        "--cache-dir", "cache", "--device", "cpu"]
# The executor tests' sweep: OPTS without permutation refits.
RAY_OPTS = ["--modules", "module:0,module:1", "--probes", "linear_gap,non_linear_gap", "--repeats", "1",
            "--permutations", "0", "--cache-dir", "cache", "--device", "cpu"]
PER_EPOCH = 2 * 2 * 2  # modules x concepts x probes


def register(models_by_epoch, name="toy"):
    with runs.step_run("checkpoints", tags={registry.MODEL_NAME_TAG: name}):
        for epoch, model in models_by_epoch.items():
            registry.log_checkpoint(model, name=name, epoch=epoch, source=f"model_{epoch}.pth", metadata=META)


def log_splits(tmp_path):
    splits = make_splits(tmp_path / "pool")
    path = write_splits(splits.table, tmp_path / "splits.parquet", splits.metadata)
    with runs.step_run("concepts"):
        runs.log_artifact(path, "concepts")


def probe(*args):
    return CliRunner().invoke(main, ["probe", *OPTS, *args])


def fit_runs(client, sweep_id):
    return client.search_runs([client.get_run(sweep_id).info.experiment_id],
                              f"tags.`{fits.SWEEP_TAG}` = '{sweep_id}' and tags.`clipprobe.level` = 'fit'",
                              max_results=1000)


def finished_keys(client, sweep_id):
    found = fit_runs(client, sweep_id)
    assert all(r.info.status == "FINISHED" for r in found)
    return [fits.fit_key(r.data.params) for r in found]


def sweep_run(client):
    exp = client.get_experiment_by_name("Default").experiment_id
    found = client.search_runs([exp], "tags.`clipprobe.step` = 'probe'")
    return found[0].info.run_id if found else None


def every_fit_once(client, n_fits):
    """The sweep's checkpoint runs, after checking that its ``n_fits`` fits each finished exactly once and
    that probe/results.parquet holds exactly those fits, every one with an accuracy."""
    sweep_id = sweep_run(client)
    keys = finished_keys(client, sweep_id)
    assert len(keys) == n_fits and len(set(keys)) == len(keys)
    table = pd.read_parquet(runs.download_artifact(sweep_id, fits.RESULTS_ARTIFACT))
    assert len(table) == n_fits and set(map(fits.fit_key, table.to_dict("records"))) == set(keys)
    assert table["test_acc"].notna().all()
    return client.search_runs([client.get_run(sweep_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep_id}'")
