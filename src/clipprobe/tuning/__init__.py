"""Optuna studies over probe hyper-parameters, and the tune step's typed config."""
