"""The objective benchmark's arithmetic (issue 8) on hand-computed cases: no training."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_objective as bo  # noqa: E402


def test_objective_values_of_one_curve() -> None:
    curve = [1.0, 4.0, 2.0, 3.0]
    assert bo.objective_value(curve, "best") == 4.0
    assert bo.objective_value(curve, "last") == 3.0
    assert bo.objective_value(curve, "mean_last2") == pytest.approx(2.5)
    assert bo.objective_value(curve, "mean_last3") == pytest.approx(3.0)
    # fewer epochs than k: the mean of what there is (a study's report mid-run)
    assert bo.objective_value([1.0, 2.0], "mean_last3") == pytest.approx(1.5)
    for bad in ("median", "mean_last0"):
        with pytest.raises(ValueError):
            bo.objective_value(curve, bad)
    with pytest.raises(ValueError):
        bo.objective_value([], "last")


def test_complete_curves_drop_missing_seeds_and_short_trials() -> None:
    curves = {
        "a": {0: [1.0, 2.0], 1: [1.0, 3.0]},
        "b": {0: [1.0, 2.0]},  # seed 1 failed
        "c": {0: [1.0], 1: [1.0, 3.0]},  # seed 0 stopped after 1 of 2 epochs
    }
    assert list(bo.complete_curves(curves, (0, 1), 2)) == ["a"]


def test_an_early_peak_misranks_under_best_and_not_under_last() -> None:
    # a peaks at epoch 1 and collapses; b > c at the end; the same on every seed
    same = {"a": [9.0, 1.0], "b": [2.0, 3.0], "c": [1.0, 2.0]}
    curves = {c: {s: list(v) for s in (0, 1, 2)} for c, v in same.items()}
    rows = {r.objective: r for r in bo.summarize(bo.held_out(curves, (0, 1, 2)))}
    # best: (9, 3, 2) against the final (1, 3, 2): ranks (3, 2, 1) vs (1, 3, 2),
    # sum d^2 = 6, rho = 1 - 6 * 6 / (3 * 8) = -0.5; mean_last2 (5, 2.5, 1.5) likewise
    assert rows["best"].rho_final == pytest.approx((-0.5, -0.5, -0.5))
    assert rows["mean_last2"].rho_final[0] == pytest.approx(-0.5)
    assert rows["last"].rho_final == pytest.approx((1.0, 1.0, 1.0))
    # against the other seeds' own best, best agrees with itself perfectly
    assert rows["best"].rho_self[0] == pytest.approx(1.0)
    # best picks a (last in the truth), last picks b (first)
    assert rows["best"].top2 == 0.0
    assert rows["last"].top2 == 1.0
    assert bo.winner(list(rows.values())) == "last"


def test_truth_is_the_mean_of_the_other_seeds_only() -> None:
    # a Latin square of last-epoch values: summed over all three seeds every configuration
    # ties (the truth would be constant, rho undefined), held out it is the reverse order:
    # s0 (3,2,1) vs s1+s2 (3,4,5); s1 (1,3,2) vs s0+s2 (5,3,4); s2 (2,1,3) vs s0+s1 (4,5,3)
    last = {"x": (3.0, 1.0, 2.0), "y": (2.0, 3.0, 1.0), "z": (1.0, 2.0, 3.0)}
    curves = {c: {s: [0.0, v[s]] for s in range(3)} for c, v in last.items()}
    res = [r for r in bo.held_out(curves, (0, 1, 2), ("last",))]
    assert [r.seed for r in res] == [0, 1, 2]
    assert [r.rho_final for r in res] == pytest.approx([-1.0, -1.0, -1.0])
    assert all(r.top2 == 0.0 for r in res)  # each seed's winner is last on the others
    with pytest.raises(ValueError):
        bo.held_out({"x": {0: [1.0]}, "y": {0: [2.0]}}, (0,))


def test_top_hit_counts_ties_as_an_expected_pick() -> None:
    assert bo.top_hit([5.0, 5.0, 1.0], [1.0, 3.0, 2.0]) == 0.5
    assert bo.top_hit([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == 1.0
    assert bo.top_hit([3.0, 2.0, 1.0], [1.0, 3.0, 2.0]) == 0.0
    # ties in the truth at the cut: everything >= the 2nd best value is top 2
    assert bo.top_hit([3.0, 2.0, 1.0], [2.0, 3.0, 2.0]) == 1.0


def test_best_epochs_are_one_based_first_maximum() -> None:
    curves = {"a": {0: [1.0, 3.0, 3.0]}, "b": {0: [5.0, 1.0, 2.0], 1: [1.0, 2.0, 4.0]}}
    assert bo.best_epochs(curves) == [2, 1, 3]
    assert not math.isnan(bo.spearman([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]))


def test_bootstrap_gap_is_paired_on_the_same_configurations() -> None:
    same = {"a": [9.0, 1.0], "b": [2.0, 3.0], "c": [1.0, 2.0], "d": [0.0, 0.5]}
    curves = {c: {s: list(v) for s in (0, 1, 2)} for c, v in same.items()}
    point, lo, hi = bo.bootstrap_gap(curves, (0, 1, 2), "last", draws=50)
    # last ranks exactly (+1); best: (9, 3, 2, 0.5) vs (1, 3, 2, 0.5): ranks (4, 3, 2, 1)
    # vs (2, 4, 3, 1), sum d^2 = 4 + 1 + 1 = 6, rho = 1 - 36 / 60 = 0.4
    assert point == pytest.approx(1.0 - 0.4)
    assert lo <= point <= hi
