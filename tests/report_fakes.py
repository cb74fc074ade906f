"""Synthetic probe-sweep results and a fake sweep in MLflow, for the report tests.

Columns are exactly those of docs/architecture.md ("Results of a probe sweep").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

IDENTITY = ("concept", "group", "module", "module_path", "probe", "epoch", "model_name",
            "model_version", "fingerprint", "hparams_source", "hparams")
METRICS = ("test_acc", "test_acc_ci_low", "test_acc_ci_high", "test_balanced_acc", "test_auroc",
           "train_acc", "test_majority_acc", "test_control_acc", "test_selectivity", "n_train",
           "n_test", "n_test_pos", "repeats", "n_dropped_features")
CONCEPTS = (("red", "colour"), ("blue", "colour"), ("striped", "pattern"))
MODULES = (0, 1, 2, 10)
PROBES = ("linear_gap", "non_linear_gap")
EPOCHS = (1, 2, 3)
N_TEST = 90


def _wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def synthetic_results(seed: int = 0, *, epochs=EPOCHS, concepts=CONCEPTS, modules=MODULES,
                      probes=PROBES, model_name: str = "mobilenet_v2") -> pd.DataFrame:
    """Accuracies that are multiples of 1/90, rising with module and epoch; module:1 is high."""
    rng = np.random.default_rng(seed)
    rows = []
    for concept, group in concepts:
        for m in modules:
            for probe in probes:
                for e in epochs:
                    base = 0.70 + 0.02 * m + 0.03 * e + (0.05 if probe != "linear_gap" else 0)
                    base = 0.97 if m == 1 else min(base, 0.98)
                    k = int(np.clip(round(base * N_TEST + rng.integers(-3, 4)), 60, N_TEST))
                    lo, hi = _wilson(k, N_TEST)
                    control = 60 / N_TEST + rng.integers(-4, 5) / N_TEST
                    rows.append({
                        "concept": concept, "group": group, "module": f"module:{m}",
                        "module_path": f"features.{m}", "probe": probe, "epoch": e,
                        "model_name": model_name, "model_version": "1",
                        "fingerprint": f"fp{e:04d}", "hparams_source": "default",
                        "hparams": json.dumps({"lr": 0.01}),
                        "test_acc": k / N_TEST, "test_acc_ci_low": lo, "test_acc_ci_high": hi,
                        "test_balanced_acc": k / N_TEST - 0.01, "test_auroc": min(1.0, k / N_TEST + 0.02),
                        "train_acc": 1.0, "test_majority_acc": 60 / N_TEST,
                        "test_control_acc": control, "test_selectivity": k / N_TEST - control,
                        "n_train": 210.0, "n_test": float(N_TEST), "n_test_pos": 30.0,
                        "repeats": 3.0, "n_dropped_features": 0.0,
                    })
    return pd.DataFrame(rows, columns=[*IDENTITY, *METRICS])


def log_fake_sweep(results: pd.DataFrame, tmp: Path, *, with_parquet: bool = True,
                   nested: bool = True, via_checkpoints: bool = False) -> str:
    """A finished parent run tagged clipprobe.step=probe, its results Parquet (optional) and
    (optional) one nested fit run per row (params = identity columns, metrics = metric columns)."""
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from clipprobe.tracking.runs import enable_sqlite_wal

    client = MlflowClient()
    with mlflow.start_run(run_name="probe") as parent:
        mlflow.set_tag("clipprobe.step", "probe")
        if with_parquet:
            path = tmp / "results.parquet"
            results.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path="probe")
    exp_id, parent_id = parent.info.experiment_id, parent.info.run_id
    if not nested:
        return parent_id
    enable_sqlite_wal()
    parents = {None: parent_id}
    if via_checkpoints:
        for e in sorted(results["epoch"].unique()):
            ck = client.create_run(exp_id, tags={"mlflow.parentRunId": parent_id,
                                                 "clipprobe.level": "checkpoint"})
            client.set_terminated(ck.info.run_id)
            parents[int(e)] = ck.info.run_id
    for _, row in results.iterrows():
        pid = parents[int(row["epoch"])] if via_checkpoints else parent_id
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": pid, "clipprobe.level": "fit"})
        client.log_batch(
            run.info.run_id,
            params=[Param(c, str(row[c])) for c in IDENTITY],
            metrics=[Metric(c, float(row[c]), 0, 0) for c in METRICS],
        )
        client.set_terminated(run.info.run_id)
    return parent_id
