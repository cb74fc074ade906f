"""One cache root: $CLIPPROBE_CACHE_DIR, else $XDG_CACHE_HOME/clipprobe, else ~/.cache/clipprobe; a folder per kind;
--cache-dir replaces its kind's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipprobe.activations.cache import ActivationCache
from clipprobe.core.caches import cache_dir, cache_root


def test_the_root_follows_clipprobe_cache_dir_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPPROBE_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("CLIPPROBE_CACHE_DIR")
    assert cache_root() == tmp_path / "xdg" / "clipprobe"
    assert cache_dir("activations") == tmp_path / "xdg" / "clipprobe" / "activations"
    assert cache_dir("scores") == tmp_path / "xdg" / "clipprobe" / "scores"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset (the XDG spec)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "clipprobe"


def test_an_override_replaces_its_kinds_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPPROBE_CACHE_DIR", str(tmp_path / "root"))
    assert cache_dir("activations", tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert ActivationCache(tmp_path / "elsewhere").root == tmp_path / "elsewhere"
    assert ActivationCache().root == tmp_path / "root" / "activations"  # read when opened, not at import
    with pytest.raises(ValueError, match="unknown cache kind 'weights': expected one of activations, scores"):
        cache_dir("weights")


def test_tests_never_write_into_the_real_home_cache():
    assert cache_root() != Path.home() / ".cache" / "clipprobe"  # conftest points it at a temporary folder


def test_probe_and_tune_take_the_activations_folder_of_the_root(monkeypatch, tmp_path):
    from clipprobe.executors import LocalExecutor
    from clipprobe.steps.probe import SweepWork

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CLIPPROBE_CACHE_DIR")
    assert SweepWork(LocalExecutor()).cache_dir == tmp_path / "xdg" / "clipprobe" / "activations"
    assert SweepWork(LocalExecutor(), cache_dir="here").cache_dir == Path("here")
