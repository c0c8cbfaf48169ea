"""Saved models side by side (core.compare): one table, curves against characters seen, the same continuation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core import checkpoint as ckpt
from core.compare import CONFIG_ROWS, compare

FIXTURE = Path(__file__).parents[1] / "fixtures" / "classic_tiny"


def test_two_copies_of_a_model_compare_equal_and_one_model_is_refused(tmp_path):
    for name in ("a", "b"):
        shutil.copytree(FIXTURE, tmp_path / name)
    result = compare(["a", "b"], tmp_path, prompt="To be", seed=2, chars=40)
    assert [row[0] for row in result.table] == list(CONFIG_ROWS)
    assert all(row[1] == row[2] for row in result.table)
    assert result.continuations["a"] == result.continuations["b"] and len(result.continuations["a"]) == 40
    assert result.curves["a"] == result.curves["b"] and all(x > 0 for x, _ in result.curves["a"][1:])
    with pytest.raises(ckpt.ModelError, match="two or more"):
        compare(["a"], tmp_path)
