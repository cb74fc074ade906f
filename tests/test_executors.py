"""The one Executor protocol: both executors have its face, and make_executor builds them or says what exists."""

from __future__ import annotations

import inspect

import pytest

from clipprobe.executors import EXECUTORS, Executor, LocalExecutor, make_executor
from clipprobe.executors.ray import RayExecutor


@pytest.mark.parametrize("cls", [LocalExecutor, RayExecutor])
def test_every_executor_has_the_protocols_face(cls):
    assert isinstance(cls(), Executor) and cls.name in EXECUTORS
    for method in ("parallelism", "run", "tune_study"):
        wanted = [p for p in inspect.signature(getattr(Executor, method)).parameters.values()
                  if p.kind is not p.VAR_KEYWORD]
        got = inspect.signature(getattr(cls, method)).parameters
        assert [(p.name, p.kind) for p in wanted] == [(p.name, got[p.name].kind if p.name in got else None)
                                                       for p in wanted], (cls, method)


def test_make_executor_builds_each_and_refuses_what_does_not_exist():
    assert isinstance(make_executor("local"), LocalExecutor)
    assert isinstance(make_executor("ray", ray_address="auto"), RayExecutor)  # connects only when it runs
    with pytest.raises(ValueError, match="--ray-address and --gpus-per-task need --executor ray"):
        make_executor("local", gpus_per_task=0.5)
    with pytest.raises(ValueError, match="unknown executor 'dask': expected one of local, ray"):
        make_executor("dask")
