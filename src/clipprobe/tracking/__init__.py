"""The MLflow layer: the only sub-package that imports mlflow. Steps call it; the math never does."""
