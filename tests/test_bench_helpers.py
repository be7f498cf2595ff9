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


@pytest.mark.parametrize("repeats", [3])
def test_asha_samples_fill_the_budget_of_the_grid_over_its_seeds(repeats: int) -> None:
    plan = bs.Plan(
        epochs=8,
        seeds=(0, 1, 2),
        max_per_class=None,
        val_fraction=None,
        teacher_epochs=None,
        grace_period=0.75,
        reduction_factor=2.0,
        repeats=repeats,
        seed_offset=0,
        search_overlay={},
        quick=False,
    )
    n = bs.asha_samples(25, 8, plan)
    budget = bs.EPOCH_BUDGET * 25 * 8 * 3  # 30 % of 25 configurations x 8 epochs x 3 seeds
    assert bs.study_cost_quantile(n, plan, 8) <= budget < bs.study_cost_quantile(n + 1, plan, 8)
    # the seeds of a configuration are planned for: at least what they cost apart
    rungs = bs.asha_rungs(8, 0.75, 2.0)
    assert bs.study_cost_quantile(n, plan, 8) >= bs.asha_cost_quantile(n * repeats, rungs, 2.0)


def test_group_asha_cost_reduces_to_asha_with_one_seed_and_one_slot() -> None:
    import random

    rng = random.Random(0)
    for _ in range(20):
        order = list(range(9))
        rng.shuffle(order)
        assert bs.group_asha_cost(order, [2, 4, 8], 2.0, 1, 1) == bs.asha_cost(
            order, [2, 4, 8], 2.0
        )


def test_group_asha_cost_counts_seeds_that_run_ahead_while_waiting() -> None:
    # 2 seeds, 2 slots: both seeds of the worse configuration (arriving second) reach
    # the rung in the same step; the first to report goes on (its sibling is not there
    # yet), the second completes the group and stops it: 2 x 8 + 3 + 2
    assert bs.group_asha_cost([1, 0], [2, 8], 2.0, 2, 2) == 21
    # 3 seeds, 2 slots: the first configuration runs 3 x 8 = 24; the second one's first
    # seed starts beside the first one's third and finishes (8) before its other two
    # reach the rung, where it stops: one at its rung (2), one an epoch later (3)
    assert bs.group_asha_cost([1, 0], [2, 8], 2.0, 3, 2) == 24 + 8 + 2 + 3
