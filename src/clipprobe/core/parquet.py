"""Parquet tables that carry their provenance (model, prompt, seed, pool, sweep, ...) as JSON file metadata.

One scheme for every table a step hands on (concept scores and splits, a sweep's results): a JSON
object under the ``clipprobe`` key of the Parquet schema metadata, read back with ``read_metadata``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clipprobe import __version__

METADATA_KEY = b"clipprobe"


def write_table(df: pd.DataFrame, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``df`` with ``metadata`` (JSON under the ``clipprobe`` key); atomic via a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata({**existing, METADATA_KEY: json.dumps(metadata).encode()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The provenance metadata of a table written by :func:`write_table` (empty dict if none)."""
    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table and its provenance metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table not found: {path}")
    return pd.read_parquet(path), read_metadata(path)


def provenance(kind: str, **fields: Any) -> dict[str, Any]:
    """The metadata of a table of ``kind`` (``probe_results``, ...): what made it, plus the clipprobe version.

    ``fields`` are JSON-ready values: run ids, model, versions, seeds, the step's logged params.
    """
    return {"kind": kind, "clipprobe_version": __version__, **fields}
