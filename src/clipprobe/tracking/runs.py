"""Step runs: where they go (the embedded store by default), the tags that let a later step find them."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD
from mlflow.tracking import MlflowClient
from mlflow.utils import get_results_from_paginated_fn
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

log = logging.getLogger(__name__)

STEP_TAG = "clipprobe.step"
INTERRUPTED_TAG = "clipprobe.interrupted"  # SIGINT or SIGTERM: the run was ended KILLED by that signal
LEVEL_TAG = "clipprobe.level"
EPOCH_TAG = "clipprobe.epoch"  # on a checkpoint run of a sweep and on a registered model version
WORLD_ROOT_TAG = "clipprobe.world_root"  # on a world run: the absolute path of the generated world
MODEL_NAME_TAG = "clipprobe.model_name"  # on train / checkpoints / probe / tune runs: the registered model
PARENT_TAG = MLFLOW_PARENT_RUN_ID  # MLflow's own names for a nested run's parent and a run's name
RUN_NAME_TAG = MLFLOW_RUN_NAME
RESULTS_ARTIFACT = "probe/results.parquet"  # a probe sweep's results table
SPLITS_ARTIFACT = "concepts/splits.parquet"  # a concepts run's splits, read by probe and tune
# Without this tag MLflow 3 opens an experiment on its GenAI overview instead of the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default"
STEPS = ("world", "train", "checkpoints", "clip", "concepts", "probe", "neurons", "tune", "compare", "main")


def tracking_uri() -> str:
    """The tracking URI in force: ``MLFLOW_TRACKING_URI`` or MLflow's default ``sqlite:///mlflow.db``."""
    return mlflow.get_tracking_uri()


def use_stores(tracking: str, registry: str | None = None) -> None:
    """Point this process at a tracking store and model registry (a worker joining a driver's sweep)."""
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry or tracking)


def registry_uri() -> str:
    """The model registry URI in force (the tracking URI unless ``MLFLOW_REGISTRY_URI`` says otherwise)."""
    return mlflow.get_registry_uri()


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative sqlite path made absolute, so another process in another folder (a Ray
    worker) opens the same database."""
    path = _sqlite_path(uri)
    return f"sqlite:///{path.resolve()}" if path is not None and not path.is_absolute() else uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def enable_sqlite_wal(uri: str | None = None) -> bool:
    """Put a local sqlite store in WAL mode (persists in the file; 1.2-6x faster writes).

    Returns True when the store is sqlite and now in WAL mode. Network filesystems are the
    user's call: set ``CLIPPROBE_SQLITE_WAL=0`` to leave the journal mode alone.
    """
    if os.environ.get("CLIPPROBE_SQLITE_WAL", "1") == "0":
        return False
    path = _sqlite_path(uri or tracking_uri())
    if path is None or not path.exists():
        return False
    with sqlite3.connect(path, timeout=20) as con:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    return str(mode).lower() == "wal"


def relax_sqlite_sync(client: MlflowClient) -> bool:
    """``PRAGMA synchronous=NORMAL`` on every new connection of a local sqlite store in WAL mode.

    With WAL, NORMAL keeps the database consistent (a power cut may lose the last commits, which a
    resumed sweep redoes) and makes each commit about 1.7x cheaper. Returns True when applied.
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    engine = getattr(store, "engine", None)
    if engine is None or engine.dialect.name != "sqlite" or getattr(engine, "_clipprobe_sync", False):
        return bool(engine is not None and getattr(engine, "_clipprobe_sync", False))
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _normal_sync(dbapi_connection: Any, _record: Any) -> None:
        mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() == "wal":
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    engine._clipprobe_sync = True
    engine.dispose()  # pooled connections reopen with the pragma
    return True


NOTE_TAG = "mlflow.note.content"  # a run's or an experiment's description in the MLflow UI (Markdown)
_EXPERIMENT_NOTE_MARK = "<!-- clipprobe -->"  # our description; a user's own is never overwritten
# The filter that shows one row per pipeline step and per sweep (fits and checkpoint runs carry a level tag).
STEPS_AND_SWEEPS_FILTER = f"tags.`{LEVEL_TAG}` IS NULL"


def runs_table_url(experiment_id: str, search_filter: str = "") -> str:
    """The runs table of an experiment in the MLflow UI (a ``#/`` link, "Model training" mode), optionally
    with a search filter: ``runs_table_url("0", STEPS_AND_SWEEPS_FILTER)`` lists every step and sweep on one page."""
    from urllib.parse import quote

    # MLflow 3.17 opens experiments in its GenAI mode unless the URL (or the user's last toggle) asks
    # for "Model training"; the experiment kind tag alone does not switch it.
    query = "?workflowType=machine_learning" + (f"&searchFilter={quote(search_filter, safe='')}" if search_filter else "")
    return f"#/experiments/{experiment_id}/runs{query}"


def experiment_description(experiment_id: str) -> str:
    """What the experiment page says: how the runs are laid out and the filters that find them."""
    steps = runs_table_url(experiment_id, STEPS_AND_SWEEPS_FILTER)
    sweeps = runs_table_url(experiment_id, f"tags.`{STEP_TAG}` = 'probe'")
    return "\n".join([
        _EXPERIMENT_NOTE_MARK,
        "**clipprobe**: what a vision backbone encodes, where (module) and when (epoch). Each pipeline step "
        "(world, train or checkpoints, concepts, probe, tune, compare) is a top-level run; a probe sweep holds one "
        "nested run per checkpoint and below it one per fit, so its fits fill most of the runs table.",
        "",
        f"- [Steps and sweeps only]({steps}): `{STEPS_AND_SWEEPS_FILTER}`",
        f"- [Probe sweeps]({sweeps}): `tags.{STEP_TAG} = 'probe'`",
        "- The fits of one sweep: `tags.clipprobe.sweep_run_id = '<sweep run id>'` (linked from each sweep's description)",
        "- One cell across sweeps: `params.concept = 'red' and params.module = 'module:7' and params.probe = 'linear_gap'`",
        f"- Checkpoint runs (compare two checkpoints): `tags.{LEVEL_TAG} = 'checkpoint'`",
    ])


def _experiment_id(experiment_name: str | None) -> str | None:
    """Resolve (creating if needed) the experiment, MLflow's default one when nothing names another; tag it so
    the UI opens on its runs table, and describe the filters that find the work in it."""
    client = MlflowClient()
    if experiment_name is None:
        exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if exp_id is None and name is None:
            exp_id = DEFAULT_EXPERIMENT_ID
        exp = client.get_experiment(exp_id) if exp_id else client.get_experiment_by_name(name)
    else:
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            exp = client.get_experiment(client.create_experiment(experiment_name))
    if exp is None:
        return None
    prepare_experiment(client, exp)
    return exp.experiment_id


def prepare_experiment(client: MlflowClient, exp: Any) -> None:
    """The experiment kind that makes the UI open on the runs table (not the GenAI overview) and our
    description (unless the user wrote one)."""
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    note = exp.tags.get(NOTE_TAG, "")
    wanted = experiment_description(exp.experiment_id)
    if note != wanted and (not note or note.startswith(_EXPERIMENT_NOTE_MARK)):
        client.set_experiment_tag(exp.experiment_id, NOTE_TAG, wanted)


@contextmanager
def step_run(
    step: str,
    *,
    experiment_name: str | None = None,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Run]:
    """Open the run of one pipeline step and tag it ``clipprobe.step=<step>``.

    Inside ``mlflow run`` (``MLFLOW_RUN_ID`` set) the run MLflow made is resumed: calling
    ``mlflow.set_experiment`` there would break it, so the experiment comes from
    ``--experiment-name`` of ``mlflow run``. With a run already active (the ``main`` chain), the
    step becomes its nested child. Otherwise a new run starts in ``experiment_name`` (default:
    MLflow's default experiment).
    """
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}: expected one of {', '.join(STEPS)}")
    active = mlflow.active_run()
    under_mlflow_run = bool(os.environ.get("MLFLOW_RUN_ID"))
    if active is not None:
        # Children live in the parent's experiment (the fluent default would be experiment 0).
        run_cm = mlflow.start_run(experiment_id=active.info.experiment_id, run_name=run_name or step, nested=True)
    elif os.environ.get("MLFLOW_RUN_ID"):
        client = MlflowClient()
        made = client.get_run(os.environ["MLFLOW_RUN_ID"])  # the run `mlflow run` opened, in its experiment
        prepare_experiment(client, client.get_experiment(made.info.experiment_id))
        run_cm = mlflow.start_run(run_id=made.info.run_id)
    else:
        exp_id = _experiment_id(experiment_name)
        run_cm = mlflow.start_run(experiment_id=exp_id, run_name=run_name or step)
    with ended_killed_on_interrupt(run_cm, step=step) as run:
        enable_sqlite_wal()
        # `mlflow run` names its run at random; name it after the step, as runs started here are.
        named = {RUN_NAME_TAG: run_name or step} if active is None and under_mlflow_run else {}
        mlflow.set_tags({STEP_TAG: step, **named, **(tags or {})})
        if params:
            log_params(params)
        yield mlflow.get_run(run.info.run_id)


@contextmanager
def ended_killed_on_interrupt(run_cm: Any, *, step: str | None = None) -> Iterator[Run]:
    """Enter an ``mlflow.start_run`` context; on Ctrl-C or SIGTERM (``KeyboardInterrupt``) end the run KILLED
    (MLflow would mark it FAILED) before the interrupt goes on. A SIGKILL leaves it RUNNING: resumable.

    The interrupt carries the innermost such run's id and step (``clipprobe_run_id``, ``clipprobe_step``), so
    the command can say which run ended and how to go on."""
    with run_cm as run:
        try:
            yield run
        except KeyboardInterrupt as err:
            if getattr(err, "clipprobe_run_id", None) is None:
                err.clipprobe_run_id, err.clipprobe_step = run.info.run_id, step
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run.info.run_id:
                # `mlflow run` (3.17) overwrites any status its entry point set with FAILED on a non-zero exit
                # (its _maybe_set_run_terminated compares a status string to int codes): the tag survives.
                mlflow.set_tag(INTERRUPTED_TAG, getattr(err, "signal_name", "SIGINT"))
                mlflow.end_run("KILLED")
            raise


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters on the active run (values stringified, long ones cut to MLflow's limit).

    Under ``mlflow run`` the entry point's parameters are already logged as typed on the command line and
    shell-quoted by MLflow (``model_name="''"``, ``cache_dir="'/my cache'"``, ``allow_duplicate_weights=false``),
    while a step run started from the CLI logs the values it resolved: two sweeps would then compare on
    spelling. So the run ends up with the resolved values either way: on a SQL store (sqlite, PostgreSQL, ...)
    the values ``mlflow run`` logged are replaced by the resolved ones, the others lose MLflow's shell quotes,
    and its empty ("" = the command's default) parameters that the step does not log are removed; elsewhere a
    differing value is kept as ``<name>_resolved`` (MLflow's params are immutable through its API).
    """
    run_id = active_run_id()
    client = MlflowClient()
    existing = client.get_run(run_id).data.params
    new: dict[str, str] = {}
    changed: dict[str, str] = {}
    for key, value in params.items():
        text = _param_value(value)
        if key not in existing:
            new[key] = text
        elif existing[key] != text:
            changed[key] = text
    from_project = set()
    for key, value in existing.items():
        if key in params:
            continue
        plain = shell_unquoted(value)
        if plain == "":
            from_project.add(key)
        elif plain != value:
            changed[key] = plain
    if (changed or from_project) and not _rewrite_params(client, run_id, changed, from_project):
        new.update({f"{key}_resolved": text for key, text in changed.items()
                    if key in params and shell_unquoted(existing[key]) != text})
    if new:
        mlflow.log_params(new)


def shell_unquoted(value: str) -> str:
    """A parameter value as the command received it: ``mlflow run`` logs ``'/my cache'`` and ``''`` with the
    shell quotes it put around them (``shlex.quote``). A value that is not one quoted word stays as it is."""
    import shlex

    try:
        words = shlex.split(value)
    except ValueError:
        return value
    return words[0] if len(words) == 1 and shlex.quote(words[0]) == value else value


def _rewrite_params(client: MlflowClient, run_id: str, values: Mapping[str, str], drop: set[str]) -> bool:
    """Replace logged param values and drop params, in the tables of a SQL store; False elsewhere."""
    from clipprobe.tracking.bulk import fast_store

    store = fast_store(client)  # MLflow's private tables: only on a schema revision this was tested on
    if store is None:
        return False
    from mlflow.store.tracking.dbmodels.models import SqlParam

    with store.ManagedSessionMaker() as session:
        for key, value in values.items():
            session.query(SqlParam).filter(SqlParam.run_uuid == run_id, SqlParam.key == key).update(
                {"value": value}, synchronize_session=False)
        if drop:
            session.query(SqlParam).filter(SqlParam.run_uuid == run_id, SqlParam.key.in_(sorted(drop))).delete(
                synchronize_session=False)
    log.debug("run %s: params as resolved (%d replaced, %d unset removed)", run_id, len(values), len(drop))
    return True


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts(folder: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


def active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: open one with clipprobe.tracking.runs.step_run")
    return run.info.run_id


def find_latest_run(step: str, *, experiment_name: str | None = None,
                    experiment_id: str | None = None) -> Run | None:
    """The newest FINISHED run made by ``step`` in one experiment (by name or id), or across all of them."""
    client = MlflowClient()
    if experiment_id is not None:
        exp_ids = [experiment_id]
    elif experiment_name is not None:
        exp = client.get_experiment_by_name(experiment_name)
        exp_ids = [exp.experiment_id] if exp else []
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return None
    runs = client.search_runs(
        exp_ids,
        filter_string=f"tags.`{STEP_TAG}` = '{step}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def chosen_experiment(experiment_name: str | None = None) -> tuple[str | None, str]:
    """``(id, name)`` of the experiment a step run opened now would go to, without creating it.

    In order: the active run's (the demo chain), the run ``mlflow run`` made (``MLFLOW_RUN_ID``),
    ``experiment_name``, ``MLFLOW_EXPERIMENT_ID`` / ``MLFLOW_EXPERIMENT_NAME``, MLflow's default
    experiment. The id is None for a named experiment that does not exist yet.
    """
    client = MlflowClient()
    active = mlflow.active_run()
    exp_id = None
    if active is not None:
        exp_id = active.info.experiment_id
    elif os.environ.get("MLFLOW_RUN_ID"):
        exp_id = client.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    elif experiment_name is None:
        exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        experiment_name = None if exp_id else os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if exp_id is None and experiment_name is None:
            exp_id = "0"
    if exp_id is not None:
        return exp_id, client.get_experiment(exp_id).name
    exp = client.get_experiment_by_name(experiment_name)
    return (exp.experiment_id if exp else None), experiment_name


SEARCH_PAGE = SEARCH_MAX_RESULTS_THRESHOLD  # runs per search page: MLflow's largest


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    """Every run matching ``filter_string``, through MLflow's own pagination (``SEARCH_PAGE`` per page)."""
    return get_results_from_paginated_fn(
        lambda n, token: client.search_runs(experiment_ids, filter_string=filter_string, max_results=n,
                                            page_token=token),
        SEARCH_PAGE)


def get_run(run_id: str) -> Run:
    return MlflowClient().get_run(run_id)


def get_step_run(run_id: str, step: str, *, source: str, fix: str, error: type[Exception] = ValueError) -> Run:
    """The top-level run of ``step`` with this id, or one clear ``error``: "<source>: <what is wrong>; <fix>".

    ``source`` names where the id came from (e.g. ``--resume 0123``), ``fix`` says what to pass instead.
    """
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise error(f"{source}: no such run in {client.tracking_uri}; {fix}") from None
    level = run.data.tags.get(LEVEL_TAG)
    found = run.data.tags.get(STEP_TAG)
    if level:
        parent = run.data.tags.get(PARENT_TAG)
        raise error(f"{source}: that is a nested {level} run, not a {step} run; {fix}"
                    + (f" (its parent run is {parent})" if parent else ""))
    if found != step:
        what = f"a {found!r} run" if found else f"a run without a {STEP_TAG} tag"
        raise error(f"{source}: that is {what}, not a {step} run; {fix}")
    return run


def download_artifact(run_id: str, artifact_path: str, dst_dir: str | Path | None = None) -> Path:
    """Local path of one artifact of a run (a no-copy path for a local artifact store)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    # The run's own repository: a local one answers with the file's path (no copy, no progress bar); a remote
    # one downloads, with MLflow's bar unless the user turned it off (MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR).
    repository = get_artifact_repository(MlflowClient().get_run(run_id).info.artifact_uri)
    if dst_dir is not None:
        Path(dst_dir).mkdir(parents=True, exist_ok=True)
    return Path(repository.download_artifacts(artifact_path, None if dst_dir is None else str(dst_dir)))
