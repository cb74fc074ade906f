"""`clipprobe compare` on fake sweeps in a real tracking store: results read back from MLflow,
tables equal to the logged metrics, artifacts of the compare run, one-line errors."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from report_fakes import IDENTITY, METRICS, synthetic_results

from clipprobe.cli import main
from clipprobe.report.tables import build_tables
from clipprobe.tracking.results import (
    NotAProbeSweepError,
    find_latest_sweep,
    load_sweep_results,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def sweep(tracking_store, tmp_path):
    from report_fakes import log_fake_sweep

    results = synthetic_results()
    return log_fake_sweep(results, tmp_path, nested=False), results


def _key(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(epoch=df["epoch"].astype(int))
    return df.sort_values(["concept", "module", "probe", "epoch"]).reset_index(drop=True)


def test_results_from_parquet_and_nested_runs_agree_and_tables_equal_logged_metrics(tracking_store, tmp_path):
    from report_fakes import log_fake_sweep

    with pytest.raises(NotAProbeSweepError,
                       match=r"^no finished probe sweep in any experiment: run `clipprobe probe` first"):
        find_latest_sweep()
    results = synthetic_results(concepts=(("red", "colour"), ("striped", "pattern")), epochs=(2, 3))
    run_id = log_fake_sweep(results, tmp_path)
    from_parquet = load_sweep_results(run_id)
    from_runs = load_sweep_results(run_id, prefer_artifact=False)
    assert len(from_runs) == len(results) == 32
    pd.testing.assert_frame_equal(_key(from_parquet)[list(METRICS)], _key(results)[list(METRICS)])
    pd.testing.assert_frame_equal(_key(from_runs)[list(METRICS)], _key(results)[list(METRICS)])
    assert set(IDENTITY) <= set(from_runs.columns)
    assert find_latest_sweep().info.run_id == run_id

    # every table cell equals the metric logged on its fit run, exactly
    client = MlflowClient()
    fits = {}
    for r in client.search_runs([client.get_run(run_id).info.experiment_id],
                                filter_string="tags.`clipprobe.level` = 'fit'", max_results=1000):
        p = r.data.params
        if p["epoch"] == "3":
            fits[(p["concept"], p["module"], p["probe"])] = r.data.metrics
    checked = 0
    for t in build_tables(from_runs):
        for _, cell in t.cells.iterrows():
            logged = fits[(t.concept, cell["module"], cell["probe"])]
            for col in ("test_acc", "test_acc_ci_low", "test_acc_ci_high", "test_selectivity",
                        "test_majority_acc", "n_test"):
                assert cell[col] == logged[col]
            checked += 1
    assert checked == 16


def test_nested_fits_under_checkpoint_runs_are_found_page_by_page(tracking_store, tmp_path, monkeypatch):
    from report_fakes import log_fake_sweep

    import clipprobe.tracking.runs as mod

    monkeypatch.setattr(mod, "SEARCH_PAGE", 2)  # force several pages
    results = synthetic_results(concepts=(("red", "colour"),), modules=(0, 1), probes=("linear_gap",))
    run_id = log_fake_sweep(results, tmp_path, with_parquet=False, via_checkpoints=True)
    back = load_sweep_results(run_id)
    assert len(back) == len(results) == 6
    assert back["fit_run_id"].nunique() == 6


def test_compare_command_logs_a_compare_run_with_everything(sweep, tmp_path):
    run_id, results = sweep
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["compare", "--out", str(out), "--modules", "module:1,module:10",
                                    "--reference", str(FIXTURES / "seed_tables.csv")])
    assert res.exit_code == 0, res.output
    assert "== colour ==" in res.output and "[uniform_high_module] module:1" in res.output
    assert "reference values lie outside our 95% interval" in res.output
    for name in ("tables.md", "tables.csv", "tables.txt", "sanity.txt", "report.html", "report.txt",
                 "reference.csv", "plots/what_where_when_linear_gap.png",
                 "plots/accuracy_over_epochs_non_linear_gap.png"):
        assert (out / name).is_file(), name
    runs = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("Default").experiment_id],
        filter_string="tags.`clipprobe.step` = 'compare'")
    (compare_run,) = runs
    assert compare_run.data.params["sweep_run_ids"] == run_id
    logged = {a.path for a in MlflowClient().list_artifacts(compare_run.info.run_id, "compare")}
    assert {"compare/report.html", "compare/tables.csv", "compare/plots"} <= logged
    csv = pd.read_csv(out / "tables.csv")
    red = csv[(csv["concept"] == "red") & (csv["module"] == "module:10")].iloc[0]
    src = results[(results["concept"] == "red") & (results["module"] == "module:10")
                  & (results["probe"] == "linear_gap") & (results["epoch"] == 3)].iloc[0]
    assert red["linear_gap"] == src["test_acc"]


def test_compare_two_sweeps_writes_the_diff(sweep, tmp_path):
    from report_fakes import log_fake_sweep

    run_a, _ = sweep
    run_b = log_fake_sweep(synthetic_results(seed=1), tmp_path, nested=False)
    out = tmp_path / "two"
    res = CliRunner().invoke(main, ["compare", run_a, run_b, "--out", str(out), "--epoch", "2"])
    assert res.exit_code == 0, res.output
    diff = pd.read_csv(out / f"diff_{run_a[:8]}_vs_{run_b[:8]}.csv")
    assert len(diff) == 24 and set(diff["epoch_a"]) == {2}
    assert (out / run_a[:8] / "tables.md").is_file() and (out / run_b[:8] / "tables.md").is_file()
    # the run logs its config, and the config rebuilt from it is the one the command ran with
    from clipprobe.report.config import CompareConfig
    from clipprobe.tracking.configs import load_config

    (made,) = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("Default").experiment_id], filter_string="tags.`clipprobe.step` = 'compare'")
    assert load_config(CompareConfig, made.info.run_id) == CompareConfig(run_ids=(run_a, run_b), epoch=2, out=out)


def _one_line_error(args: list[str]) -> str:
    """The one error line of a command refused as a usage error (exit 2, under click's usage lines)."""
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def test_bad_input_is_one_clear_line_each(sweep, tmp_path):
    run_id, _ = sweep
    with mlflow.start_run() as other:
        mlflow.set_tag("clipprobe.step", "world")
    assert _one_line_error(["compare", other.info.run_id, "--out", str(tmp_path / "o")]) == (
        f"Error: run {other.info.run_id}: that is a 'world' run, not a probe run; pass the parent run of "
        "`clipprobe probe`")
    assert _one_line_error(["compare", "--epoch", "9", "--out", str(tmp_path / "o")]) == (
        "Error: epoch 9 is not in the sweep: it has epoch(s) 1, 2, 3")
    from report_fakes import log_fake_sweep

    gender = log_fake_sweep(synthetic_results(concepts=(("male", "gender"),)), tmp_path, nested=False)
    assert _one_line_error(["compare", run_id, gender, "--out", str(tmp_path / "o")]).startswith(
        "Error: the two sweeps have no fit in common (same concept, module and probe)")
    assert _one_line_error(["compare", "deadbeef", "--out", str(tmp_path / "o")]).startswith(
        "Error: run deadbeef: no such run in ")
    assert not (tmp_path / "o").exists()  # nothing written, no compare run
    assert not MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("Default").experiment_id],
        filter_string="tags.`clipprobe.step` = 'compare'")


def test_report_reads_for_a_newcomer_intro_provenance_plots_then_tables(sweep, tmp_path):
    """Intro (what/where/when, probe kinds, intervals, selectivity), provenance with links to the UI, the
    what-where-when plots before the tables, and the sweep's description pointing at the report."""
    import re

    from clipprobe.tracking.fits import NOTE_TAG, describe_sweep

    run_id, results = sweep
    describe_sweep(run_id, results)
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["compare", run_id, "--out", str(out), "--ui-url", "http://127.0.0.1:5000/"])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    order = [page.index(marker) for marker in (
        "<h2>What this report shows", "<h2>Where the numbers come from", 'alt="what-where-when linear_gap"',
        'alt="accuracy over epochs linear_gap"', ": when concepts emerge</h2>", ": sanity flags</h2>",
        '<table data-concept="red">')]
    assert order == sorted(order)
    for words in ("WHAT concepts", "WHERE", "WHEN", "linear_gap</code>: a linear classifier (logistic regression) on "
                  "the globally average-pooled", "non_linear_gap</code>: a small MLP", "Clopper-Pearson",
                  "majority baseline (0.667)", "sel. (selectivity)", "control task"):
        assert words in page, words
    sweep_url = f"http://127.0.0.1:5000/#/experiments/0/runs/{run_id}"
    assert f'<a href="{sweep_url}">' in page
    assert "mobilenet_v2" in page and "v1 = epoch 1" in page
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d UTC</td>", page)
    assert "Lines for all modules" in page
    text = (out / "report.txt").read_text()
    assert text.startswith("This report answers three questions") and f"sweep {run_id[:8]}: run {run_id}" in text
    note = MlflowClient().get_run(run_id).data.tags[NOTE_TAG]
    compare_run = MlflowClient().search_runs(["0"], "tags.`clipprobe.step` = 'compare'")[0]
    assert compare_run.info.run_name == f"compare mobilenet_v2 {run_id[:8]}"
    assert note.startswith("**probe**: what each module") and "**Findings**" in note
    assert f"#/experiments/0/runs/{compare_run.info.run_id}" in note and "compare/report.html" in note
