"""Sweeps: checkpoint x module x concept x probe, and the sweep's typed config."""
