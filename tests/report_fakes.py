"""Synthetic probe-sweep results and a fake sweep in MLflow, for the report tests.

Columns are exactly those of docs/architecture.md ("Results of a probe sweep").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from clipprobe.probes.evaluation import exact_interval
from clipprobe.tracking.fit_records import IDENTITY_COLUMNS, METRIC_COLUMNS, PREDICTION_COLUMNS

# The real schema and the real interval: the fakes differ from a sweep only in where the numbers come from.
IDENTITY = IDENTITY_COLUMNS
METRICS = METRIC_COLUMNS
PREDICTIONS = PREDICTION_COLUMNS
CONCEPTS = (("red", "colour"), ("blue", "colour"), ("striped", "pattern"))
MODULES = (0, 1, 2, 10)
PROBES = ("linear_gap", "non_linear_gap")
EPOCHS = (1, 2, 3)
N_TEST = 90


def correct_string(k: int, order: np.ndarray) -> str:
    """'1' for the k easiest test images of a concept (``order``: easiest first), '0' elsewhere: cells
    of one concept are nested, so a paired test sees only the |k1 - k2| images that differ."""
    out = np.zeros(len(order), int)
    out[order[:k]] = 1
    return "".join(map(str, out))


def synthetic_results(seed: int = 0, *, epochs=EPOCHS, concepts=CONCEPTS, modules=MODULES,
                      probes=PROBES, model_name: str = "mobilenet_v2") -> pd.DataFrame:
    """Accuracies that are multiples of 1/90, rising with module and epoch; module:1 is high.
    Per-image correctness is nested within a concept (see ``correct_string``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for concept, group in concepts:
        order = np.random.default_rng([7, len(concept), ord(concept[0])]).permutation(N_TEST)
        for m in modules:
            for probe in probes:
                for e in epochs:
                    base = 0.70 + 0.02 * m + 0.03 * e + (0.05 if probe != "linear_gap" else 0)
                    base = 0.97 if m == 1 else min(base, 0.98)
                    k = int(np.clip(round(base * N_TEST + rng.integers(-3, 4)), 60, N_TEST))
                    lo, hi = exact_interval(k, N_TEST)
                    control = 60 / N_TEST + rng.integers(-4, 5) / N_TEST
                    rows.append({
                        "concept": concept, "group": group, "module": f"module:{m}", "module_index": m,
                        "module_path": f"features.{m}", "probe": probe, "epoch": e,
                        "model_name": model_name, "model_version": "1",
                        "fingerprint": f"fp{e:04d}", "precision": "fp32", "hparams_source": "default",
                        "hparams": json.dumps({"lr": 0.01}),
                        "test_acc": k / N_TEST, "test_acc_ci_low": lo, "test_acc_ci_high": hi,
                        "test_balanced_acc": k / N_TEST - 0.01, "test_auroc": min(1.0, k / N_TEST + 0.02),
                        "train_acc": 1.0, "test_majority_acc": 60 / N_TEST,
                        "test_acc_resplit_mean": k / N_TEST - 0.005,
                        "test_acc_resplit_ci_low": max(0.0, k / N_TEST - 0.08),
                        "test_acc_resplit_ci_high": min(1.0, k / N_TEST + 0.07),
                        "test_permutation_acc": 0.62, "test_permutation_p": 0.05,
                        "test_control_acc": control, "test_selectivity": k / N_TEST - control,
                        "n_train": 210, "n_test": N_TEST, "n_test_pos": 30,
                        "repeats": 3, "permutations": 19, "n_dropped_features": 0,
                        "test_correct": correct_string(k, order), "test_images": f"{concept}-test-images",
                    })
    return pd.DataFrame(rows, columns=[*IDENTITY, *METRICS, *PREDICTIONS])


def log_fake_sweep(results: pd.DataFrame, tmp: Path, *, with_parquet: bool = True,
                   nested: bool = True, via_checkpoints: bool = False) -> str:
    """A finished parent run tagged clipprobe.step=probe, its results Parquet (optional) and
    (optional) one nested fit run per row (params = identity and per-image columns, metrics =
    metric columns)."""
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from clipprobe.tracking.fit_records import SWEEP_TAG
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
                                                 "clipprobe.level": "checkpoint", SWEEP_TAG: parent_id})
            client.set_terminated(ck.info.run_id)
            parents[int(e)] = ck.info.run_id
    for _, row in results.iterrows():
        pid = parents[int(row["epoch"])] if via_checkpoints else parent_id
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": pid, "clipprobe.level": "fit", SWEEP_TAG: parent_id})
        client.log_batch(
            run.info.run_id,
            params=[Param(c, str(row[c])) for c in (*IDENTITY, *PREDICTIONS)],
            metrics=[Metric(c, float(row[c]), 0, 0) for c in METRICS],
        )
        client.set_terminated(run.info.run_id)
    return parent_id
