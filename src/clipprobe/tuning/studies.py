"""Optuna studies over probe hyper-parameters: one study per probe kind, scored by stratified k-fold
validation accuracy inside the training part only (the test part of a split never reaches this module).

No MLflow here: the caller passes ``on_start`` and ``on_trial`` (the CLI logs each trial as a nested run).

Several workers share a study, each running its *share* of the trials (``run_share``). A worker killed
mid-trial leaves that trial RUNNING; whoever runs the share again (Ray's retry of the task) fails it and
runs only what the share still lacks, so the study ends with exactly the trials asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from sklearn.model_selection import StratifiedKFold
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from clipprobe.core.errors import InputError
from clipprobe.probes.batched import fit_many
from clipprobe.probes.evaluation import ConceptTask, accuracy
from clipprobe.probes.kinds import ProbeKind, probe_kind

log = logging.getLogger(__name__)


class _InterruptWithoutTraceback(logging.Filter):
    """Optuna logs a trial that Ctrl-C or SIGTERM stops as a failed trial with the whole traceback; the
    interrupt is the user's, not an error: keep the line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_InterruptWithoutTraceback())

DEFAULT_FOLDS = 3
DEFAULT_N_TRIALS = 20
DEFAULT_SEED = 0
CV_SEED = 0  # fold assignment: fixed, so workers with different --seed share one objective
STORAGE_TIMEOUT_S = 10.0
JOURNAL_FILE = "optuna.journal"
FINGERPRINT_ATTR = "clipprobe.subset_fingerprint"
CATCH = (ValueError, RuntimeError, FloatingPointError)  # a trial failing this way is recorded as FAIL
# Trial user attrs: the share a trial counts toward ("<tune run id>:<worker>"), the process that ran it
# (host:pid), and why it failed on its own (a caught exception). A FAIL without ERROR_ATTR is a lost trial.
SHARE_ATTR = "clipprobe.share"
WORKER_ATTR = "clipprobe.worker"
ERROR_ATTR = "clipprobe.error"
# RDB storages record a heartbeat per running trial; one silent for GRACE_S is failed by the next worker
# that starts a trial (Optuna's fail_stale_trials), which also hands it to ``on_stale``.
HEARTBEAT_S = 20
GRACE_S = 60


class StorageError(InputError, RuntimeError):
    """An Optuna storage that cannot be opened (message names the URL, credentials masked)."""


class StudyError(InputError, ValueError):
    """A study that cannot run on what it was given (too few images for the folds, another subset of fits than
    the stored study's, no complete trial); the message names the fix."""


@dataclass(frozen=True)
class TuneTask:
    """The training part of one (concept, module, epoch) fit: features X ``(n, d)`` and 0/1 labels y."""

    name: str
    X: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.X.ndim != 2 or self.y.shape != (self.X.shape[0],):
            raise ValueError(f"task {self.name!r}: X has shape {self.X.shape} and y {self.y.shape}: "
                             "expected (n, d) and (n,)")
        if set(np.unique(self.y).tolist()) != {0, 1}:
            raise ValueError(f"task {self.name!r}: labels are {np.unique(self.y).tolist()}: expected both 0 and 1")


def training_part(X: Any, task: ConceptTask, name: str | None = None) -> TuneTask:
    """The rows of ``task``'s train part only, copied out of X (a numpy array or a lazy ``Bf16Matrix``)."""
    train = np.asarray(task.train, bool)
    rows = np.asarray(task.rows)[train]
    order = np.argsort(rows)
    features = np.asarray(X[rows[order]], dtype=np.float32)
    return TuneTask(name or task.concept, features, np.asarray(task.labels)[train][order].astype(np.int64))


def fold_masks(y: np.ndarray, folds: int, seed: int = CV_SEED) -> list[np.ndarray]:
    """Validation masks of ``folds`` stratified folds of labels y."""
    if folds < 2:
        raise StudyError(f"folds={folds}: expected 2 or more")
    fewest = int(np.bincount(y, minlength=2).min())
    if fewest < folds:
        raise StudyError(f"a class has only {fewest} training images, fewer than folds={folds}: lower --folds")
    masks = []
    for _, val in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        m = np.zeros(len(y), bool)
        m[val] = True
        masks.append(m)
    return masks


def subset_fingerprint(tasks: Sequence[TuneTask], folds: int, extra: Mapping[str, Any] | None = None) -> str:
    """A digest of what a study scores: task names, training features and labels, folds (and ``extra``)."""
    h = hashlib.sha256(json.dumps({"folds": folds, "cv_seed": CV_SEED, "extra": extra or {}},
                                  sort_keys=True, default=str).encode())
    for t in sorted(tasks, key=lambda t: t.name):
        h.update(t.name.encode())
        h.update(str(t.X.shape).encode())
        h.update(np.ascontiguousarray(t.X).tobytes())
        h.update(np.ascontiguousarray(t.y).tobytes())
    return h.hexdigest()


def study_name(kind: str, fingerprint: str, prefix: str | None = None) -> str:
    """``<kind>-<fingerprint[:12]>``, or ``<prefix>-<kind>`` when the user names the study."""
    return f"{prefix}-{kind}" if prefix else f"{kind}-{fingerprint[:12]}"


# ---------------------------------------------------------------- storage


def mask_url(url: str) -> str:
    """``url`` with only its password hidden (``postgresql://user:***@host/db``), as SQLAlchemy renders it;
    text that is no database URL (a journal file path) is returned as it is."""
    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"^([\w+.-]+://[^/:@]*:)[^@/]*@", r"\1***@", url)  # unparsable: SQLAlchemy refuses it anyway


# The pip package of each DBAPI driver module SQLAlchemy 2 may pick (``make_url(url).get_dialect().driver``).
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000",
                   "asyncpg": "asyncpg", "mysqldb": "mysqlclient", "pymysql": "PyMySQL", "mysqlconnector":
                   "mysql-connector-python", "mariadbconnector": "mariadb", "pyodbc": "pyodbc",
                   "pymssql": "pymssql", "oracledb": "oracledb", "cx_oracle": "cx_Oracle"}


def storage_driver(url: str) -> tuple[str, str]:
    """``(driver, pip package)`` SQLAlchemy uses for ``url``: ``postgresql://`` -> ``("psycopg",
    "psycopg[binary]")`` under SQLAlchemy 2 (its default PostgreSQL driver), ``postgresql+psycopg2://`` ->
    psycopg2. The dialect class is loaded, the driver itself is not imported."""
    driver = make_url(url).get_dialect().driver
    return driver, DRIVER_PACKAGES.get(driver, driver)


def _connect_args(url: str, timeout: float) -> dict[str, Any]:
    """The driver's own connect timeout: a server that does not answer fails the connect, nothing hangs."""
    dialect = make_url(url).get_backend_name()
    if dialect in ("postgresql", "mysql", "mariadb"):
        return {"connect_timeout": max(1, int(timeout))}
    if dialect == "sqlite":
        return {"timeout": timeout}
    return {}


def open_storage(url: str | Path | None, *, default_dir: str | Path = ".", timeout: float = STORAGE_TIMEOUT_S,
                 heartbeat: tuple[int, int] = (HEARTBEAT_S, GRACE_S),
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> BaseStorage:
    """An Optuna storage: None -> journal file ``default_dir/optuna.journal``; ``<dialect>://...`` -> an
    RDB (PostgreSQL for many machines); any other text -> a journal file at that path.

    Journal files suit several worker processes on one machine (file lock, append-only, no server).
    An RDB connects with the driver's own ``timeout`` (``connect_timeout``); every failure is one
    ``StorageError`` line naming the URL with its password hidden. An RDB records a heartbeat per running
    trial every ``heartbeat[0]`` s; a trial silent for ``heartbeat[1]`` s is failed by the next worker that
    starts one and handed to ``on_stale`` (journal files have no heartbeat in Optuna 5: there only
    ``run_share`` finds lost trials).
    """
    if url is None or str(url) == "":
        url = Path(default_dir) / JOURNAL_FILE
    text = str(url)
    masked = mask_url(text)
    if "://" not in text:
        path = Path(text)
        if not path.parent.is_dir():
            raise StorageError(f"cannot open Optuna storage {masked}: folder {path.parent} does not exist; "
                               "create it or pass another --storage")
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(text, engine_kwargs={"connect_args": _connect_args(text, timeout)},
                              heartbeat_interval=heartbeat[0], grace_period=heartbeat[1],
                              heartbeat_stale_trial_callback=on_stale)
    except NoSuchModuleError:
        reason = f"SQLAlchemy knows no database {text.split('://', 1)[0]!r}; check the URL"
    except ArgumentError as err:
        reason = f"{err}; check the URL"
    except ImportError:
        driver, package = storage_driver(text)
        dialect = make_url(text).get_backend_name()
        reason = (f"SQLAlchemy's driver for {text.split('://', 1)[0]}:// is {driver}, which is not installed: "
                  f"pip install '{package}', or name an installed driver ({dialect}+<driver>://...)")
    except Exception as err:  # noqa: BLE001 - refused, timed out, bad file: the driver's own words, in one line
        reason = " ".join(str(getattr(err, "orig", None) or err).split())
        reason = reason.replace(text, masked)  # the URL, if quoted, with its password hidden
        reason = f"{reason}; check the URL and that the database is reachable"
    raise StorageError(f"cannot open Optuna storage {masked}: {reason}")


def with_stale_callback(storage: BaseStorage | str | Path | None,
                        on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> BaseStorage:
    """``storage`` (opened if it is a URL or path) handing heartbeat-stale trials to ``on_stale``; an RDB
    opened without a callback gets this one."""
    if not isinstance(storage, BaseStorage):
        return open_storage(storage, on_stale=on_stale)
    if isinstance(storage, RDBStorage) and storage.heartbeat_stale_trial_callback is None:
        storage.heartbeat_stale_trial_callback = on_stale
    return storage


# ---------------------------------------------------------------- studies


@dataclass
class StudyResult:
    """What one study gave: its name, the best searched params and value, and trial counts by state."""

    kind: str
    study_name: str
    best_params: dict[str, Any]
    best_value: float
    counts: dict[str, int]
    study: optuna.Study = field(repr=False)


def check_kind(kind: str | ProbeKind) -> ProbeKind:
    """The probe kind, refused in one line when unknown or when it has nothing to search."""
    pk = probe_kind(kind)
    if not pk.search_space:
        raise ValueError(f"probe kind {pk.name!r} has an empty search space: nothing to tune; "
                         "give it SearchDims in probes/kinds.py or drop it from --probes")
    return pk


def _defaults_inside(pk: ProbeKind, base: Mapping[str, Any]) -> dict[str, Any]:
    """The kind's default values of the searched dimensions that lie inside the search space."""
    params = pk.params(base)
    out = {}
    for dim in pk.search_space:
        value = params[dim.name]
        if dim.type == "categorical":
            if value in (dim.choices or ()):
                out[dim.name] = value
        elif dim.low <= value <= dim.high:
            out[dim.name] = value
    return out


@dataclass(frozen=True)
class FoldBlock:
    """Tasks of one feature width stacked into one matrix: probe ``t * folds + f`` trains task t without
    fold f and is scored on fold f. One ``fit_many`` call fits the whole block."""

    X: np.ndarray = field(repr=False)  # (rows of all its tasks, d): training parts only
    labels: np.ndarray = field(repr=False)  # (B, N)
    train: np.ndarray = field(repr=False)  # (B, N)
    val: np.ndarray = field(repr=False)  # (B, N)
    n_tasks: int


def fold_blocks(tasks: Sequence[TuneTask], folds: int) -> list[FoldBlock]:
    """Tasks grouped by feature width (first seen first), each group one ``FoldBlock``."""
    groups: dict[int, list[TuneTask]] = {}
    for t in tasks:
        groups.setdefault(t.X.shape[1], []).append(t)
    blocks = []
    for group in groups.values():
        N, B = sum(len(t.y) for t in group), len(group) * folds
        labels, train, val = np.zeros((B, N), np.int64), np.zeros((B, N), bool), np.zeros((B, N), bool)
        start = 0
        for i, t in enumerate(group):
            rows = slice(start, start + len(t.y))
            for f, mask in enumerate(fold_masks(t.y, folds)):
                b = i * folds + f
                labels[b, rows], train[b, rows], val[b, rows] = t.y, ~mask, mask
            start += len(t.y)
        X = np.concatenate([t.X for t in group]) if len(group) > 1 else group[0].X
        blocks.append(FoldBlock(X, labels, train, val, len(group)))
    return blocks


def make_objective(pk: ProbeKind, tasks: Sequence[TuneTask], folds: int, *, device: str,
                   base: Mapping[str, Any] | None = None) -> Callable[[optuna.Trial], float]:
    """Mean over tasks of their mean validation accuracy over folds.

    All folds of all tasks of one feature width are fitted in one batched call (2-5x faster than a call
    per fold); the running mean is reported to the pruner after each such block (a module x epoch).
    """
    blocks = fold_blocks(tasks, folds)

    def objective(trial: optuna.Trial) -> float:
        params = pk.params({**(base or {}), **pk.suggest(trial)})
        accs: list[float] = []
        for step, block in enumerate(blocks):
            fit = fit_many(pk, block.X, block.labels, block.train, block.val, params, device=device)
            scores = fit.scores.double().numpy()
            per_probe = [accuracy((scores[b][v] > 0).astype(int), block.labels[b][v])
                         for b, v in enumerate(block.val)]
            accs.extend(np.asarray(per_probe).reshape(block.n_tasks, folds).mean(1).tolist())
            trial.report(float(np.mean(accs)), step=step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"after {len(accs)} of {len(tasks)} fits: mean validation accuracy "
                                         f"{np.mean(accs):.3f}")
        return float(np.mean(accs))

    return objective


def open_study(
    kind: str | ProbeKind,
    tasks: Sequence[TuneTask],
    *,
    storage: BaseStorage,
    name: str | None = None,
    folds: int = DEFAULT_FOLDS,
    base: Mapping[str, Any] | None = None,
    fingerprint_extra: Mapping[str, Any] | None = None,
) -> tuple[str, int]:
    """Create (or find) the study of one probe kind on ``tasks``: its name and how many trials it held.

    A new study gets the subset's fingerprint and the kind's defaults as its first trial; a study made on
    another subset raises. Several workers sharing a study call this first from one place (the driver),
    so the defaults are queued once."""
    pk = check_kind(kind)
    fingerprint = subset_fingerprint(tasks, folds, {"kind": pk.name, "base": dict(base or {}), **(fingerprint_extra or {})})
    sname = study_name(pk.name, fingerprint, name)
    study = optuna.create_study(storage=storage, study_name=sname, direction="maximize", load_if_exists=True)
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    elif stored != fingerprint:
        raise StudyError(f"study {sname!r} was made on another subset of fits (fingerprint {stored[:12]}, "
                         f"now {fingerprint[:12]}): pass another --study-name or the same subset")
    existing = len(study.trials)
    if existing == 0:
        study.enqueue_trial(_defaults_inside(pk, base or {}), skip_if_exists=True)
    return sname, existing


def worker_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def counts_toward_share(trial: FrozenTrial) -> bool:
    """A trial that ran to its end: complete, pruned, or failed by its own exception (not lost with its worker)."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs)


def share_trials(study: optuna.Study, share: str) -> list[FrozenTrial]:
    """The trials of ``share``, in number order."""
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SHARE_ATTR) == share]


def fail_lost_trials(study: optuna.Study, share: str) -> list[FrozenTrial]:
    """Fail the trials of ``share`` still RUNNING and return them: one process at a time runs a share, so
    before it starts they are the trials of an earlier attempt that died (Ray retries a task only once its
    worker process is gone). Optuna's heartbeat would fail them too, but only ``GRACE_S`` after their last
    beat and only on an RDB storage; this is at once, and on a journal file as well."""
    lost = []
    for t in share_trials(study, share):
        if t.state == TrialState.RUNNING:
            lost.append(study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True))
            log.warning("study %s: trial %d was lost with its worker %s: failed", study.study_name, t.number,
                        t.user_attrs.get(WORKER_ATTR, "?"))
    return lost


def run_share(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    share: str,
    n_trials: int | None,
    timeout: float | None = None,
    on_start: Callable[[optuna.Trial], None] | None = None,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> int:
    """Run ``share``'s ``n_trials`` trials of ``study`` (None: until ``timeout``); returns how many ran now.

    Run again for the same share (Ray's retry of a killed worker's task), it first fails the trials the
    dead attempt left RUNNING (``fail_lost_trials``), hands every ended trial of the share to ``on_trial``
    again (so their runs are ended; the callback skips what it already ended), and runs only the trials
    the share still lacks: a lost trial is replaced, none is run twice. ``on_start`` sees each trial
    before the objective.

    Optuna's ``MaxTrialsCallback`` is not used: it stops a worker after a trial once the study holds n,
    so workers that start their last trials together overshoot; shares give exactly n. Neither is
    ``RetryHeartbeatStaleTrialCallback``: the share already replaces a lost trial, and its queued copy
    would be one trial too many (or left WAITING when no worker is left to take it).
    """
    lost = fail_lost_trials(study, share)
    mine = share_trials(study, share)
    if on_trial is not None:
        for t in mine:
            if t.state.is_finished():
                on_trial(study, t)
    todo = None if n_trials is None else n_trials - sum(map(counts_toward_share, mine))
    if lost or mine:
        log.info("study %s: share %s has %d ended trials (%d lost); running %s more", study.study_name, share,
                 len(mine), len(lost), todo if todo is not None else "until the timeout")
    if todo is not None and todo <= 0:
        return 0

    def tracked(trial: optuna.Trial) -> float:
        trial.set_user_attr(SHARE_ATTR, share)
        trial.set_user_attr(WORKER_ATTR, worker_name())
        if on_start is not None:
            on_start(trial)
        try:
            return objective(trial)
        except CATCH as err:
            trial.set_user_attr(ERROR_ATTR, f"{type(err).__name__}: {err}"[:500])
            raise

    ended: list[int] = []
    try:
        study.optimize(tracked, n_trials=todo, timeout=timeout, catch=CATCH,
                       callbacks=[lambda _, t: ended.append(t.number), *([on_trial] if on_trial else [])])
    except BaseException:  # Ctrl-C or an error not in CATCH: Optuna failed the trial but calls no callback
        if on_trial is not None:
            for t in share_trials(study, share):
                if t.state.is_finished() and t.number not in ended:
                    with contextlib.suppress(Exception):
                        on_trial(study, t)
        raise
    return len(ended)


def tune(
    kind: str | ProbeKind,
    tasks: Sequence[TuneTask],
    *,
    storage: BaseStorage | str | None = None,
    name: str | None = None,
    n_trials: int | None = DEFAULT_N_TRIALS,
    timeout: float | None = None,
    seed: int = DEFAULT_SEED,
    folds: int = DEFAULT_FOLDS,
    base: Mapping[str, Any] | None = None,
    fingerprint_extra: Mapping[str, Any] | None = None,
    on_start: Callable[[optuna.Trial], None] | None = None,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    share: str | None = None,
    device: str = "cpu",  # a torch device (the library's, like the estimators'); steps pass the resolved --device
) -> StudyResult:
    """Run (or resume) the study of one probe kind on ``tasks``; returns its best searched params.

    ``name`` prefixes the study name (default: kind + subset fingerprint); the same tasks and name
    resume the same study. A new study first tries the kind's defaults (where inside the space).
    ``share`` names this invocation's trials (``run_share``; default: a fresh name).
    """
    pk = check_kind(kind)
    if not tasks:
        raise StudyError(f"no tasks to tune {pk.name} on: choose some --concepts, --modules and --epochs")
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"n_trials={n_trials}: expected 1 or more (or None with a timeout)")
    objective = make_objective(pk, tasks, folds, base=base, device=device)  # checks folds before any storage
    if not isinstance(storage, BaseStorage):
        storage = open_storage(storage)
    sname, existing = open_study(pk, tasks, storage=storage, name=name, folds=folds, base=base,
                                 fingerprint_extra=fingerprint_extra)
    study = load_study(storage, sname, seed=seed + existing)
    log.info("study %s: %d trials so far; running %s more%s", sname, existing, n_trials or "unlimited",
             f" for at most {timeout:g} s" if timeout else "")
    run_share(study, objective, share=share or f"{worker_name()}:{os.urandom(4).hex()}", n_trials=n_trials,
              timeout=timeout, on_start=on_start, on_trial=on_trial)
    return summarise(pk.name, study)


def load_study(storage: BaseStorage, name: str, *, seed: int) -> optuna.Study:
    """A study as every worker runs it: TPE seeded by ``seed``, median pruning after 5 complete trials.

    Seed a resumed study by the trials already there, so it does not replay its first random points."""
    return optuna.load_study(storage=storage, study_name=name, sampler=optuna.samplers.TPESampler(seed=seed),
                             pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))


def summarise(kind: str, study: optuna.Study) -> StudyResult:
    """Best params and value of a study, and how many trials ended in each state."""
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    if counts["complete"] == 0:
        raise StudyError(f"study {study.study_name!r} has no complete trial ({counts}): raise --n-trials or "
                         "--timeout, or look at the failed trials' runs")
    best = study.best_trial
    return StudyResult(kind, study.study_name, dict(best.params), float(best.value), counts, study)


def study_plots(study: optuna.Study, folder: str | Path) -> list[Path]:
    """Optimisation history and parameter importances as PNGs in ``folder`` (importance skipped, with a
    log line, when Optuna cannot compute it, e.g. too few complete trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for what, plot in (("history", vis.plot_optimization_history), ("importance", vis.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            log.info("study %s: no %s plot (%s)", study.study_name, what, err)
            continue
        fig = (ax[0] if isinstance(ax, np.ndarray) else ax).figure
        path = folder / f"{study.study_name}-{what}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        out.append(path)
    return out
