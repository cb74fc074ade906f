"""The tracking side on real servers: the direct SQL fit writer on PostgreSQL (the same checks as on
sqlite, tests/bulk_cases.py), and a sweep by two Ray workers against `mlflow server` backed by
PostgreSQL with served artifacts: every fit exactly once, the results file complete."""

from __future__ import annotations

import pytest
from bulk_cases import (  # noqa: F401 - collected here again, on PostgreSQL
    test_a_batch_with_a_bad_fit_lands_not_at_all,
    test_bulk_fit_runs_read_back_like_runs_logged_through_mlflow,
    test_per_image_strings_too_long_for_a_param_stay_out_of_the_run,
)
from mlflow.tracking import MlflowClient
from ray_cluster import ray_cluster  # noqa: F401 - the fixture, used by name
from servers import postgres, postgres_store, server_store  # noqa: F401 - fixtures, used by name

from clipprobe.tracking import fits, runs

pytestmark = pytest.mark.slow


@pytest.fixture
def sweep(postgres_store):  # noqa: F811 - the fixture imported above
    """conftest's sweep fixture, on a fresh PostgreSQL database: the bulk tests imported above run on it."""
    from types import SimpleNamespace

    from clipprobe.tracking.fit_writer import FitWriter
    from clipprobe.tracking.sweep_fits import SweepFits

    with runs.step_run("probe", run_name="sweep") as parent:
        run_id = parent.info.run_id
        writer = FitWriter(run_id)
        assert writer.fast is not None and writer.fast.engine.dialect.name == "postgresql"
        yield SimpleNamespace(run_id=run_id, experiment_id=parent.info.experiment_id, writer=writer,
                              reader=SweepFits(run_id), checkpoints=fits.CheckpointRuns(run_id))
        writer.close()


def test_a_sweep_of_two_ray_workers_against_mlflow_server_on_postgresql(ray_cluster, server_store, tmp_path):  # noqa: F811
    from click.testing import CliRunner
    from sweep_fakes import blind, mobilenet, plant_red
    from sweep_store import PER_EPOCH, every_fit_once, log_splits, register
    from sweep_store import RAY_OPTS as OPTS

    from clipprobe.cli import main

    register({0: blind(mobilenet()), 1: plant_red(mobilenet())})
    log_splits(tmp_path)
    out = CliRunner().invoke(main, ["probe", *OPTS, "--executor", "ray", "--epochs", "0-1"])
    assert out.exit_code == 0, out.output
    ckpts = every_fit_once(MlflowClient(), 2 * PER_EPOCH)
    workers = {r.data.tags["clipprobe.worker"] for r in ckpts}
    assert len(ckpts) == 2 and all(r.info.status == "FINISHED" for r in ckpts)
    assert len(workers) == 2  # two worker processes, one checkpoint each
