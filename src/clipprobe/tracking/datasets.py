"""Tables as MLflow dataset inputs, so a run's lineage (which scores, which splits) shows in the UI."""

from __future__ import annotations

import warnings

import mlflow
import pandas as pd


def log_dataset_input(df: pd.DataFrame, *, name: str, artifact_path: str, context: str,
                      tags: dict[str, str] | None = None) -> str:
    """Log ``df`` as an input of the active run, its source the run artifact at ``artifact_path``.

    Returns the digest MLflow computed for the table.
    """
    source = mlflow.get_artifact_uri(artifact_path)
    with warnings.catch_warnings():  # MLflow's notes on ambiguous sources and integer columns are noise here
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(df, source=source, name=name)
        mlflow.log_input(dataset, context=context, tags=tags)
    return dataset.digest
