"""Foundations every step uses: device choice, the Parquet provenance scheme, typed step configs."""
