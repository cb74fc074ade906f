"""Concept tables use the package's one Parquet provenance scheme (``clipprobe.parquet``)."""

from clipprobe.parquet import METADATA_KEY, read_metadata, read_table, write_table

__all__ = ["METADATA_KEY", "read_metadata", "read_table", "write_table"]
