"""A sweep through `mlflow server` prints its own lines, not MLflow's two "View run / View experiment" lines
for each of its checkpoint and fit runs (308,000 lines at the seed's scale before)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from servers import mlflow_server
from stores import tracking_at
from sweep_fakes import mobilenet
from sweep_store import OPTS, fit_runs, log_splits, register

from clipprobe.cli import main
from clipprobe.tracking import fits

pytestmark = pytest.mark.slow  # starts an mlflow server


def test_a_sweep_through_mlflow_server_prints_one_mlflow_link(tmp_path, monkeypatch):
    artifacts = tmp_path / "served"
    artifacts.mkdir()
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", artifacts) as url, tracking_at(url, tmp_path, monkeypatch):
        register({e: mobilenet(e) for e in range(2)})
        log_splits(tmp_path)
        result = CliRunner().invoke(main, ["probe", *OPTS])
        assert result.exit_code == 0, result.output
        client = MlflowClient()
        sweep_id = client.search_runs([client.get_experiment_by_name("Default").experiment_id],
                                      "tags.`clipprobe.step` = 'probe'")[0].info.run_id
        runs = fit_runs(client, sweep_id)
        # 2 checkpoints x 2 modules x 2 concepts x 2 probes, each one FINISHED run
        assert len(runs) == 16 and {r.info.status for r in runs} == {"FINISHED"}
        assert {r.info.status for r in client.search_runs(
            [client.get_run(sweep_id).info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{sweep_id}'")} == {"FINISHED"}
        assert len(fits.CheckpointRuns(sweep_id).statuses()) == 2

    # lines as a terminal leaves them: a progress bar redrawn after "\r" is one line
    lines = [line.split("\r")[-1] for line in result.output.split("\n") if line.split("\r")[-1].strip()]
    links = [line for line in lines if "View run" in line or "View experiment" in line]
    # the sweep run's own link (MLflow's two lines when `clipprobe probe` ends its run), none for the 18 runs below
    assert len(links) == 2 and sweep_id in links[0], "\n".join(links)
    # MLflow's download bars: the concepts run's splits only, none per checkpoint model or for the summary
    downloads = [line for line in lines if "Downloading artifacts" in line]
    assert len(downloads) <= 1, "\n".join(downloads)
    # the rest is the sweep's own: its plan, a bar per checkpoint stage, its summary (35 lines here)
    assert len(lines) <= 40, "\n".join(lines)
