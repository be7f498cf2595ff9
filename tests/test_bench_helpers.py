"""The arithmetic the search benchmark's verdict rests on, on hand-checked cases."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_search as bs  # noqa: E402


def test_spearman_extremes() -> None:
    x = [1.0, 2.0, 3.0, 4.0]
    assert bs.spearman(x, [10.0, 20.0, 30.0, 40.0]) == pytest.approx(1.0)
    assert bs.spearman(x, [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_single_seed_grid_picks_ranks_each_seeds_argmax() -> None:
    rows = [
        bs.GridRow("a", 3.0, 0.0, {0: 3.0, 1: 2.0}),
        bs.GridRow("b", 2.5, 0.0, {0: 1.0, 1: 4.0}),
        bs.GridRow("c", 1.0, 0.0, {0: 1.0}),
    ]
    assert bs.single_seed_grid_picks(rows, (0, 1, 2)) == [(0, 1), (1, 2)]


def test_asha_rungs_follow_rays_milestones() -> None:
    assert bs.asha_rungs(8, 0.25, 2) == [2, 4, 8]
    assert bs.asha_rungs(12, 0.25, 3) == [3, 9, 12]
