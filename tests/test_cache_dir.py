"""Where graphs and feature caches are kept: one place (classifier.graph.cache_dir), outside the clone."""

from __future__ import annotations

from pathlib import Path

from classifier import graph
from training import calibrate, options

ARGS = ["--model-dir", "models/fast", "--train", "train", "--valid", "valid"]


def test_dogbreeds_cache_wins_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(graph.CACHE_ENV, str(tmp_path / "mine"))
    assert graph.cache_dir() == tmp_path / "mine"

    monkeypatch.delenv(graph.CACHE_ENV)
    assert graph.cache_dir() == tmp_path / "xdg" / "dogbreeds"

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert graph.cache_dir() == tmp_path / "home" / ".cache" / "dogbreeds"


def test_training_and_calibration_keep_features_in_the_same_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(graph.CACHE_ENV, str(tmp_path))
    features = tmp_path / "features"
    assert options.parse_args(ARGS).cache_dir == features
    assert calibrate.parse_args(ARGS[:4]).cache_dir == features
    assert calibrate.parse_args([*ARGS[:4], "--cache-dir", "elsewhere"]).cache_dir == Path("elsewhere")
