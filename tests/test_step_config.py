"""Step configs round-trip through their stored JSON and through a real MLflow run, with their types."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest

from clipprobe.core.step_config import StepConfig
from clipprobe.tracking.configs import load_config, log_config


@dataclass(frozen=True)
class ToyConfig(StepConfig):
    STEP = "toy"

    names: tuple[str, ...] | None = None
    epochs: tuple[int, ...] = (0, 3)
    rate: float = 0.5
    flag: bool = False
    folder: Path | None = None
    nested: dict = field(default_factory=dict)


def test_a_config_round_trips_with_its_types() -> None:
    config = ToyConfig(names=("a", "b"), epochs=(1, 2), rate=2, flag=True, folder=Path("/x/y"), nested={"p": {"c": 1}})
    back = ToyConfig.from_json(config.to_json())
    assert back == ToyConfig(names=("a", "b"), epochs=(1, 2), rate=2.0, flag=True, folder=Path("/x/y"),
                             nested={"p": {"c": 1}})
    assert isinstance(back.rate, float) and isinstance(back.names, tuple) and isinstance(back.folder, Path)
    assert ToyConfig.from_json(ToyConfig().to_json()) == ToyConfig()
    assert ToyConfig.artifact_path() == "toy/config.json"


@pytest.mark.parametrize(("text", "message"), [
    ('{"format": 2}', "config format 2, this clipprobe reads format 1"),
    ('{"format": 1, "colour": "red"}', "unknown settings colour"),
    ("{", "not JSON"),
])
def test_an_unreadable_config_is_one_error_naming_its_source(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"run X: toy/config.json: {message}"):
        ToyConfig.from_json(text, source="run X: toy/config.json")


def test_a_config_is_logged_with_its_run_and_rebuilt_from_it(tracking_store: str) -> None:
    config = ToyConfig(names=("red",), rate=0.25)
    with mlflow.start_run() as run:
        log_config(config)
    assert load_config(ToyConfig, run.info.run_id) == config
    with mlflow.start_run() as other:
        pass
    with pytest.raises(LookupError, match=f"run {other.info.run_id} stores no toy/config.json"):
        load_config(ToyConfig, other.info.run_id)
