"""`clipprobe neurons` and `probe --neurons` on a tiny registry and a real temporary MLflow store: the three tables
on the sweep run with their provenance, summary metrics on the checkpoint runs, resume without duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image
from sweep_fakes import COLOURS, blind, make_splits, mobilenet, plant_red
from sweep_store import register

from clipprobe.cli import main
from clipprobe.concepts.build import SIMILARITIES_FILE, SIMILARITIES_KIND
from clipprobe.concepts.splits import write_splits
from clipprobe.core.parquet import provenance, read_metadata, write_table
from clipprobe.neurons.schema import SPARSE_COLUMNS, SUMMARY_COLUMNS, UNIT_COLUMNS
from clipprobe.tracking import runs, units
from clipprobe.tracking.fits import CheckpointRuns
from clipprobe.tracking.neurons_tables import load_unit_tables
from clipprobe.world.masks import write_mask

PROBE = ["probe", "--modules", "module:0,module:1", "--probes", "linear_gap", "--repeats", "0", "--permutations",
         "0", "--cache-dir", "cache", "--device", "cpu"]
NEURONS = ["neurons", "--ks", "1,2", "--cache-dir", "cache", "--device", "cpu"]


def _setup(tmp_path, *, masks: bool = False, similarities: bool = False) -> None:
    """Two checkpoints (a blind net at epoch 0, a planted red detector at 2), splits with their truth; optionally
    pixel masks of red and blue in the pool (where a pixel has the colour) and CLIP-like cosines."""
    register({0: blind(mobilenet()), 2: plant_red(mobilenet())})
    pool = tmp_path / "pool"
    splits = make_splits(pool)
    table = splits.table.assign(truth=splits.table["label"])  # known colours: soft-WPMI from the truth
    path = write_splits(table, tmp_path / "splits.parquet", splits.metadata)
    images = sorted(p.name for p in pool.glob("*.png"))
    if masks:
        for image in images:
            pixels = np.asarray(Image.open(pool / image).convert("RGB"), np.int64)
            for concept in ("red", "blue"):
                write_mask(pool, concept, image, (np.abs(pixels - COLOURS[concept]) < 40).all(2))
    with runs.step_run("concepts", params={"source": "clip"} if similarities else None):
        runs.log_artifact(path, "concepts")
        if similarities:
            colour = [i.split("_")[0] for i in images]
            cos = pd.DataFrame({"path": images, **{c: [0.3 if c == k else 0.2 for k in colour] for c in COLOURS}})
            file = write_table(cos, tmp_path / SIMILARITIES_FILE, provenance(SIMILARITIES_KIND, pool_root=str(pool)))
            runs.log_artifact(file, "concepts")


def _invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_neurons_step_logs_tables_metrics_and_resumes(tracking_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path, masks=True)
    _invoke(*PROBE)
    sweep = runs.find_latest_run("probe").info.run_id
    out = _invoke(*NEURONS).output
    assert f"sweep: {sweep}" in out and "soft-WPMI from the true labels" in out and "IoU: masks" in out

    tables = {name: units.read_table(sweep, name) for name in units.TABLES}
    assert tuple(tables["units"].columns) == UNIT_COLUMNS and tuple(tables["sparse"].columns) == SPARSE_COLUMNS
    assert tuple(tables["summary"].columns) == SUMMARY_COLUMNS
    u = tables["units"]
    n_units = u[u["epoch"] == 0].groupby("module")["unit"].nunique().sum()
    assert len(u) == 2 * n_units * 2  # epochs x units of module:0 and module:1 x concepts
    made = read_metadata(MlflowClient().download_artifacts(sweep, units.artifact_of("units"), str(tmp_path)))
    assert made["kind"] == "neurons_units" and made["sweep_run_id"] == sweep and made["epochs"] == [0, 2]

    red = u[(u["epoch"] == 2) & (u["module"] == "module:0") & (u["concept"] == "red")]
    best = red.sort_values("auroc", ascending=False).iloc[0]
    assert best["unit"] == 0 and best["auroc"] > 0.95 and best["wpmi_label"] == "red"
    # the planted unit's top 0.5% of pixels lie on red: first by IoU, labelled red (its IoU is bounded by
    # 0.5% of all pixels over the red pixels' share, about 5%: NetDissect's numbers are small)
    assert red.sort_values("iou").iloc[-1]["unit"] == 0 and best["iou_label"] == "red" and best["iou"] > 0.02
    blind_red = u[(u["epoch"] == 0) & (u["concept"] == "red")]
    assert blind_red["q_value"].min() >= 0.05 and blind_red["iou"].max() == 0.0  # epoch 0 sees nothing
    s = tables["summary"].set_index(["epoch", "module", "concept"])
    assert s.loc[(2, "module:0", "red"), "n_detectors_auroc"] >= 1 and s.loc[(0, "module:0", "red"), "n_detectors_auroc"] == 0
    # k = all is the sweep's own linear_gap fit
    results = pd.read_parquet(runs.download_artifact(sweep, runs.RESULTS_ARTIFACT))
    lin = results.set_index(["epoch", "module", "concept"])["test_acc"]
    for key, row in s.iterrows():
        assert row["full_test_acc"] == lin.loc[key]
    assert set(tables["sparse"]["k"]) == {1, 2, *set(s["n_units"])}
    top = tables["top_images"]  # the unit cards' images: the best units' top 20 pool images
    planted = top[(top["epoch"] == 2) & (top["module"] == "module:0") & (top["unit"] == 0)]
    assert list(planted["rank"]) == list(range(1, 21)) and planted["path"].str.startswith("red_").all()
    read_back = load_unit_tables(sweep)  # what compare's report reads
    assert read_back is not None and read_back.pool_root == tmp_path / "pool" and len(read_back.units) == len(u)

    checkpoint_runs = CheckpointRuns(sweep)
    client = MlflowClient()
    metrics = client.get_run(checkpoint_runs.run_id(2)).data.metrics
    assert metrics[units.metric_name("module:0", "red", "n_detectors")] >= 1
    assert metrics[units.metric_name("module:0", "red", "best_unit")] == 0
    assert units.scored_modules(sweep) == {0: {"module:0", "module:1"}, 2: {"module:0", "module:1"}}

    # a second call scores nothing; a checkpoint left unscored (as by an interrupt) is scored alone, no duplicates
    assert "2 of 2 checkpoints already scored" in _invoke(*NEURONS).output
    client.delete_tag(checkpoint_runs.run_id(2), units.SCORED_TAG)
    out = _invoke(*NEURONS).output
    assert "1 of 2 checkpoints already scored" in out
    again = units.read_table(sweep, "units")
    order = ["epoch", "module", "unit", "concept"]
    pd.testing.assert_frame_equal(again.sort_values(order).reset_index(drop=True),
                                  u.sort_values(order).reset_index(drop=True))
    # a module outside the sweep (the classifier's own outputs) is scored on its own, beside the others
    _invoke(*NEURONS, "--modules", "logits")
    with_logits = units.read_table(sweep, "units")
    logits = with_logits[with_logits["module"] == "logits"]
    assert len(logits) == 2 * 4 * 2 and len(with_logits) == len(u) + len(logits)  # epochs x 4 classes x concepts
    assert logits["iou"].isna().all() and units.scored_modules(sweep)[2] == {"module:0", "module:1", "logits"}


def test_probe_with_neurons_does_both_and_labels_by_clip(tracking_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path, similarities=True)
    out = _invoke(*PROBE, "--epochs", "2", "--neurons").output
    sweep = runs.find_latest_run("probe")
    assert sweep.data.params["neurons"] == "True" and "unit scores: 1 checkpoints" in out
    assert "soft-WPMI from CLIP" in out and "IoU: no masks" in out
    summary = units.read_table(sweep.info.run_id, "summary")
    assert set(summary["epoch"]) == {2} and len(summary) == 2 * 2
    u = units.read_table(sweep.info.run_id, "units")
    planted = u[(u["module"] == "module:0") & (u["unit"] == 0)]
    assert set(planted["wpmi_label"]) == {"red"} and set(planted["label_source"]) == {"clip"}
    assert u["iou"].isna().all()
