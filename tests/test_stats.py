"""study/stats.py: paired comparisons, Holm, Spearman and the report tables.

Every expected number is recomputed in the test from its definition (hand formulas with
scipy.stats.t, a hand-worked Holm example, scipy.stats.spearmanr), never copied from a run.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as sp

from study.stats import (
    ArmSummary,
    PairedComparison,
    compare_to_baselines,
    format_arms_markdown,
    format_comparisons_markdown,
    holm,
    paired_comparison,
    resolution_points,
    spearman,
    summarize_arm,
)

N_EVAL = 1440  # a test set of 1440 images: one image is 100/1440 ≈ 0.069 points


def on_grid(correct: int, n_eval: int = N_EVAL) -> float:
    """Top-1 in percent when ``correct`` of ``n_eval`` test images are right."""
    return 100.0 * correct / n_eval


def hand_t(d: list[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """mean, t interval and two-sided p of the paired differences, from the formulas."""
    n = len(d)
    mean = sum(d) / n
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = s / math.sqrt(n)
    q = sp.t.ppf(1 - (1 - confidence) / 2, df=n - 1)
    t = mean / se
    p = 2 * sp.t.sf(abs(t), df=n - 1)
    return mean, mean - q * se, mean + q * se, p


# Accuracies of two arms on a 1440-image test set, five seeds, as counts of correct images.
A_CORRECT = {0: 1301, 1: 1288, 2: 1310, 3: 1296, 4: 1305}
B_CORRECT = {0: 1290, 1: 1285, 2: 1297, 3: 1291, 4: 1290}
A = {s: on_grid(c) for s, c in A_CORRECT.items()}
B = {s: on_grid(c) for s, c in B_CORRECT.items()}


# ---------------------------------------------------------------------------- summaries


def test_summarize_arm_matches_numpy_and_orders_by_seed() -> None:
    values = {3: 80.0, 1: 82.5, 2: 79.0}
    s = summarize_arm(values)
    ordered = [values[k] for k in sorted(values)]
    assert s.seeds == [1, 2, 3]
    assert s.values == ordered
    assert s.n == 3
    assert s.mean == pytest.approx(sum(ordered) / 3)
    assert s.std == pytest.approx(float(np.std(ordered, ddof=1)))
    assert s.sem == pytest.approx(float(np.std(ordered, ddof=1)) / math.sqrt(3))
    assert (s.min, s.max) == (min(ordered), max(ordered))
    assert s.to_dict()["seeds"] == [1, 2, 3]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mean = 0.0  # type: ignore[misc]


def test_summarize_arm_single_seed_has_nan_spread_and_empty_is_rejected() -> None:
    s = summarize_arm({7: 91.0})
    assert s.n == 1 and s.mean == 91.0 and math.isnan(s.std) and math.isnan(s.sem)
    with pytest.raises(ValueError):
        summarize_arm({})
    with pytest.raises(ValueError, match="non-finite"):
        summarize_arm({0: 90.0, 1: float("nan")})


def test_resolution_points() -> None:
    assert resolution_points(N_EVAL) == pytest.approx(on_grid(1))
    assert resolution_points(200) == pytest.approx(0.5)
    for bad in (0, -5):
        with pytest.raises(ValueError):
            resolution_points(bad)


# ------------------------------------------------------------------- paired comparisons


def test_t_interval_and_p_value_match_hand_computation() -> None:
    c = paired_comparison(A, B, name_a="best", name_b="KD")
    d = [A[s] - B[s] for s in sorted(A)]
    mean, lo, hi, p = hand_t(d)
    assert c.seeds == sorted(A) and c.n == len(d)
    assert c.delta == pytest.approx(mean)
    assert c.delta_std == pytest.approx(float(np.std(d, ddof=1)))
    assert (c.ci_low, c.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert c.p_value == pytest.approx(p, rel=1e-9)
    assert c.ci_method == "t (seed-paired, df=n-1)"
    assert c.test == "paired t-test, two-sided"
    assert c.p_holm is None
    assert c.to_dict()["delta"] == c.delta


def test_other_confidence_level_widens_by_hand_ratio() -> None:
    d = [A[s] - B[s] for s in sorted(A)]
    _, lo90, hi90, _ = hand_t(d, confidence=0.90)
    _, lo99, hi99, _ = hand_t(d, confidence=0.99)
    c90 = paired_comparison(A, B, name_a="a", name_b="b", confidence=0.90)
    c99 = paired_comparison(A, B, name_a="a", name_b="b", confidence=0.99)
    assert (c90.ci_low, c90.ci_high) == (pytest.approx(lo90), pytest.approx(hi90))
    assert (c99.ci_low, c99.ci_high) == (pytest.approx(lo99), pytest.approx(hi99))
    assert c99.ci_high - c99.ci_low > c90.ci_high - c90.ci_low


def test_pairing_uses_only_shared_seeds() -> None:
    a = dict(A)
    b = dict(B)
    a[99] = 10.0  # only in A: an outlier that would wreck an unpaired mean
    b[42] = 99.0  # only in B
    c = paired_comparison(a, b, name_a="best", name_b="KD")
    ref = paired_comparison(A, B, name_a="best", name_b="KD")
    assert c.seeds == sorted(A) and 99 not in c.seeds and 42 not in c.seeds
    assert c.unpaired_seeds_a == [99] and c.unpaired_seeds_b == [42]
    assert c.delta == pytest.approx(ref.delta)
    assert (c.ci_low, c.ci_high, c.p_value) == (ref.ci_low, ref.ci_high, ref.p_value)
    assert c.note is not None and "99" in c.note and "42" in c.note


def test_no_shared_seed_raises_naming_the_seeds() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\].*\[2, 3\]"):
        paired_comparison({0: 1.0, 1: 2.0}, {2: 1.0, 3: 2.0}, name_a="a", name_b="b")


def test_one_shared_seed_gives_delta_without_interval() -> None:
    c = paired_comparison({0: 80.0, 1: 81.0}, {1: 79.5, 2: 70.0}, name_a="a", name_b="b")
    assert c.n == 1 and c.seeds == [1]
    assert c.delta == pytest.approx(81.0 - 79.5)
    for v in (c.delta_std, c.ci_low, c.ci_high, c.boot_ci_low, c.boot_ci_high, c.p_value):
        assert math.isnan(v)
    assert c.verdict == "a vs b: too few paired seeds (n=1) for an interval"
    assert c.note is not None


def test_paired_design_detects_shift_that_unpaired_misses() -> None:
    # Seeds move both arms by several points; A is better by ~0.5 points on every seed.
    seed_effect = [70.0, 75.0, 80.0, 72.0, 78.0]
    gain = [0.5, 0.7, 0.4, 0.6, 0.5]
    b = dict(enumerate(seed_effect))
    a = {s: seed_effect[s] + gain[s] for s in b}
    c = paired_comparison(a, b, name_a="best", name_b="KD")
    assert c.ci_low > 0  # the paired t interval excludes 0
    assert c.p_value < 0.05
    assert c.verdict.startswith("best beats KD by +0.54 points")
    # The unpaired (Welch) comparison of the same numbers sees nothing.
    unpaired = sp.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert unpaired.pvalue > 0.5


def test_constant_differences_are_degenerate_but_decided() -> None:
    b = {0: on_grid(1200), 1: on_grid(1250), 2: on_grid(1300)}
    a = {s: v + on_grid(10) for s, v in b.items()}  # exactly 10 images better each seed
    c = paired_comparison(a, b, name_a="a", name_b="b")
    assert c.delta == pytest.approx(on_grid(10))
    assert c.p_value == 0.0
    assert c.ci_low == c.ci_high == c.delta
    assert c.delta_std == 0.0
    assert c.prob_improvement == 1.0

    same = paired_comparison(b, dict(b), name_a="a", name_b="b")
    assert same.delta == 0.0 and same.p_value == 1.0
    assert same.ci_low == same.ci_high == 0.0
    assert same.prob_improvement == 0.5  # every seed a tie
    assert same.verdict.startswith("a vs b: not significant at 0.05")


def test_prob_improvement_counts_ties_as_half() -> None:
    a = {0: 80.0, 1: 81.0, 2: 82.0, 3: 79.0}
    b = {0: 79.0, 1: 81.0, 2: 83.0, 3: 78.0}
    wins = sum(a[s] > b[s] for s in a)
    ties = sum(a[s] == b[s] for s in a)
    c = paired_comparison(a, b, name_a="a", name_b="b")
    assert (wins, ties) == (2, 1)
    assert c.prob_improvement == pytest.approx((wins + ties / 2) / len(a))


def test_bootstrap_is_reproducible_contains_delta_and_is_a_percentile_of_resample_means() -> None:
    # Few resamples, so that the interval depends on which ones were drawn.
    small = [
        paired_comparison(A, B, name_a="a", name_b="b", n_boot=30, rng_seed=7) for _ in range(5)
    ]
    assert len({(c.boot_ci_low, c.boot_ci_high) for c in small}) == 1
    c1 = paired_comparison(A, B, name_a="a", name_b="b", n_boot=20000, rng_seed=7)
    c2 = paired_comparison(A, B, name_a="a", name_b="b", n_boot=20000, rng_seed=7)
    assert (c1.boot_ci_low, c1.boot_ci_high) == (c2.boot_ci_low, c2.boot_ci_high)
    assert c1.boot_ci_low <= c1.delta <= c1.boot_ci_high
    # Every resample mean lies between the smallest and largest difference.
    d = [A[s] - B[s] for s in sorted(A)]
    assert min(d) <= c1.boot_ci_low < c1.boot_ci_high <= max(d)
    # Independently: the percentile interval of 20000 resampled means of d (another
    # generator, so agreement up to Monte Carlo noise of a few resample-mean steps).
    rng = np.random.default_rng(123)
    means = np.asarray(d)[rng.integers(0, len(d), size=(20000, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    step = on_grid(1) / len(d)  # resample means move in steps of one image / n
    assert abs(c1.boot_ci_low - lo) <= 3 * step + 1e-12
    assert abs(c1.boot_ci_high - hi) <= 3 * step + 1e-12
    # A different seed gives a (slightly) different interval: the seed is really used.
    others = {
        (c.boot_ci_low, c.boot_ci_high)
        for c in (
            paired_comparison(A, B, name_a="a", name_b="b", n_boot=30, rng_seed=k) for k in range(5)
        )
    }
    assert len(others) > 1


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        paired_comparison(A, B, name_a="a", name_b="b", confidence=1.0)
    with pytest.raises(ValueError):
        paired_comparison(A, B, name_a="a", name_b="b", n_boot=0)
    with pytest.raises(ValueError):
        paired_comparison(A, B, name_a="a", name_b="b", resolution=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        paired_comparison({**A, 0: float("inf")}, B, name_a="a", name_b="b")


# ----------------------------------------------------------------------------- verdicts


def test_resolution_verdict_when_delta_is_below_one_image() -> None:
    res = resolution_points(144)  # 0.69 points per image
    b = {0: 80.0, 1: 85.0, 2: 90.0}
    a = {0: 80.0 + 0.1, 1: 85.0 + 0.1, 2: 90.0 + 0.1}  # consistent, but < one image
    c = paired_comparison(a, b, name_a="a", name_b="b", resolution=res)
    assert c.p_value < 0.05  # significant on paper ...
    assert abs(c.delta) < res  # ... yet smaller than one test image
    assert c.verdict == (
        f"a vs b: no resolvable difference; |Δ|={abs(c.delta):.2f} is below one test image "
        f"({res:.2f} points)"
    )
    assert c.resolution == res
    # Without the resolution, the same numbers read as a win.
    assert "beats" in paired_comparison(a, b, name_a="a", name_b="b").verdict


def test_significant_and_not_significant_verdicts() -> None:
    c = paired_comparison(A, B, name_a="best", name_b="KD")
    d = [A[s] - B[s] for s in sorted(A)]
    mean, lo, hi, p = hand_t(d)
    assert p < 0.05
    assert c.verdict == (
        f"best beats KD by {mean:+.2f} points (95% CI [{lo:+.2f}, {hi:+.2f}], paired t p={p:.3g})"
    )
    worse = paired_comparison(B, A, name_a="KD", name_b="best")
    assert worse.verdict.startswith(f"KD trails best by {-mean:+.2f} points")

    noisy_a = {0: 80.0, 1: 82.0, 2: 79.0}
    noisy_b = {0: 79.0, 1: 83.0, 2: 78.5}
    nd = [noisy_a[s] - noisy_b[s] for s in sorted(noisy_a)]
    _, nlo, nhi, np_ = hand_t(nd)
    n = paired_comparison(noisy_a, noisy_b, name_a="a", name_b="b")
    assert np_ > 0.05 and nlo < 0 < nhi
    assert n.verdict == (
        f"a vs b: not significant at 0.05 (paired t p={np_:.3g}); "
        f"the 95% CI [{nlo:+.2f}, {nhi:+.2f}] includes 0"
    )


# -------------------------------------------------------------------------------- Holm


def test_holm_textbook_example() -> None:
    raw = {"x": 0.01, "y": 0.04, "z": 0.03}
    # By hand, m = 3: sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(2*0.03, 1*0.04).
    expected = {"x": 3 * 0.01, "z": 2 * 0.03, "y": max(2 * 0.03, 1 * 0.04)}
    out = holm(raw)
    assert list(out) == list(raw)  # same keys, same order
    for k in raw:
        assert out[k] == pytest.approx(expected[k])
    assert out == pytest.approx({"x": 0.03, "y": 0.06, "z": 0.06})


def test_holm_caps_at_one_keeps_nan_out_of_m_and_is_monotone() -> None:
    out = holm({"a": 0.4, "b": float("nan"), "c": 0.02})
    assert math.isnan(out["b"])
    # m = 2 (nan not counted): c -> 2*0.02, a -> max(2*0.02, 1*0.4)
    assert out["c"] == pytest.approx(2 * 0.02)
    assert out["a"] == pytest.approx(0.4)
    capped = holm({"a": 0.6, "b": 0.7})
    assert capped == {"a": 1.0, "b": 1.0}
    rng = np.random.default_rng(0)
    raw = {f"k{i}": float(p) for i, p in enumerate(rng.uniform(0, 0.3, size=8))}
    adj = holm(raw)
    order = sorted(raw, key=raw.__getitem__)
    assert all(adj[k] >= raw[k] for k in raw)
    assert all(adj[a] <= adj[b] for a, b in zip(order, order[1:], strict=False))
    assert holm({}) == {}
    with pytest.raises(ValueError):
        holm({"a": 1.5})


def test_compare_to_baselines_applies_holm_sorted_by_name() -> None:
    baselines = {
        "WKD-L": {s: v - on_grid(3) + (0.2 if s % 2 else -0.2) for s, v in A.items()},
        "GKL": B,
        "KD": {s: v - on_grid(1) for s, v in A.items()},  # constant gap: p = 0
    }
    comps = compare_to_baselines(A, baselines, best_name="best", n_boot=500)
    assert [c.name_b for c in comps] == ["GKL", "KD", "WKD-L"]
    raw = {c.name_b: c.p_value for c in comps}
    for c in comps:
        assert c.name_a == "best"
        solo = paired_comparison(A, baselines[c.name_b], name_a="best", name_b=c.name_b)
        assert c.p_value == pytest.approx(solo.p_value)
        assert c.n_boot == 500
    # Holm by hand over the three raw p-values.
    order = sorted(raw, key=raw.__getitem__)
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[k]))
        got = next(c for c in comps if c.name_b == k)
        assert got.p_holm == pytest.approx(running)
        assert got.p_holm is not None and got.p_holm >= got.p_value
    # The verdicts now quote the Holm p, and decide by it.
    kinds = set()
    for c in comps:
        assert c.p_holm is not None and f"Holm p={c.p_holm:.3g}" in c.verdict
        kind = "beats" if c.p_holm < 0.05 else "not significant"
        kinds.add(kind)
        assert kind in c.verdict
    assert kinds == {"beats", "not significant"}  # both branches exercised


def test_holm_can_turn_a_raw_win_into_not_significant() -> None:
    # Three baselines, each with raw p just under 0.05, computed from the data.
    b1 = {0: 80.0, 1: 81.0, 2: 82.0}
    best = {0: 80.9, 1: 81.6, 2: 82.95}
    raw = paired_comparison(best, b1, name_a="best", name_b="x")
    assert 0.0 < raw.p_value < 0.05
    comps = compare_to_baselines(best, {"x": b1, "y": dict(b1), "z": dict(b1)}, best_name="best")
    for c in comps:
        assert c.p_holm == pytest.approx(min(1.0, 3 * raw.p_value))
        assert c.p_holm is not None and c.p_holm >= 0.05
        assert c.verdict.startswith(f"best vs {c.name_b}: not significant at 0.05 (Holm p=")
        assert "unadjusted 95% CI" in c.verdict and "excludes 0" in c.verdict


def test_exactly_one_image_is_resolvable() -> None:
    b = {0: on_grid(1200), 1: on_grid(1290), 2: on_grid(1350)}
    a = {s: on_grid(c + 1) for s, c in zip(b, (1200, 1290, 1350), strict=True)}
    c = paired_comparison(a, b, name_a="a", name_b="b", resolution=resolution_points(N_EVAL))
    assert c.delta == pytest.approx(resolution_points(N_EVAL))
    assert "no resolvable" not in c.verdict
    assert c.verdict.startswith("a beats b by +0.07 points")


def test_compare_to_baselines_with_resolution() -> None:
    comps = compare_to_baselines(A, {"KD": B}, best_name="best", resolution=100.0)
    assert comps[0].verdict.startswith("best vs KD: no resolvable difference")
    assert comps[0].p_holm == pytest.approx(comps[0].p_value)  # m = 1


# ------------------------------------------------------------------------------ Spearman


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]),
        ([0.3, 0.1, 0.2, 0.9], [10.0, 30.0, 20.0, 5.0]),
        ([1.0, 1.0, 2.0, 3.0, 3.0, 4.0], [5.0, 6.0, 6.0, 7.0, 9.0, 8.0]),  # ties
    ],
)
def test_spearman_matches_scipy(x: list[float], y: list[float]) -> None:
    assert spearman(x, y) == pytest.approx(float(sp.spearmanr(x, y).statistic))


def test_spearman_nan_cases() -> None:
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]))
    with pytest.raises(ValueError):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])


# ------------------------------------------------------------------------------ Markdown


def test_format_comparisons_markdown() -> None:
    comps = compare_to_baselines(
        A, {"KD": B, "GKL": B}, best_name="best", resolution=resolution_points(N_EVAL)
    )
    md = format_comparisons_markdown(comps)
    lines = md.strip().splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    assert header == [
        "comparison",
        "n seeds",
        "Δ mean",
        "95% CI (t)",
        "bootstrap 95% CI",
        "P(A>B)",
        "p (paired t)",
        "p (Holm)",
        "verdict",
    ]
    assert lines[1].startswith("|---")
    c = comps[1]  # KD
    row = lines[3]
    assert row.startswith("| best − KD | 5 | ")
    assert f"{c.delta:+.2f}" in row and f"[{c.ci_low:+.2f}, {c.ci_high:+.2f}]" in row
    assert f"[{c.boot_ci_low:+.2f}, {c.boot_ci_high:+.2f}]" in row
    assert f"{c.p_value:.3g}" in row and f"{c.p_holm:.3g}" in row
    # One row per comparison, same number of cells as the header.
    body = [ln for ln in lines[2:] if ln.startswith("|")]
    assert len(body) == len(comps)
    for ln in body:
        assert ln.replace("\\|", "").count("|") == len(header) + 1
    # The line under the table names the test and the interval methods.
    assert "paired t-test, two-sided" in md and "t (seed-paired, df=n-1)" in md
    assert "bootstrap" in lines[-1] and "Holm" in lines[-1]
    assert format_comparisons_markdown([]).strip()


def test_markdown_escapes_pipes_in_verdicts() -> None:
    b = {0: 80.0, 1: 85.0, 2: 90.0}
    a = {s: v + 0.1 for s, v in b.items()}
    c = paired_comparison(a, b, name_a="a", name_b="b", resolution=1.0)
    assert "|Δ|" in c.verdict
    row = format_comparisons_markdown([c]).splitlines()[2]
    assert "\\|Δ\\|" in row
    assert row.replace("\\|", "").count("|") == 10
    assert "| n/a |" in row  # no Holm p on a lone comparison


def test_format_arms_markdown() -> None:
    arms = {"best": summarize_arm(A), "KD": summarize_arm(B), "solo": summarize_arm({3: 70.0})}
    md = format_arms_markdown(arms, "top-1 (%)")
    lines = md.strip().splitlines()
    assert "top-1 (%)" in lines[0]
    s = arms["best"]
    assert lines[2] == (
        f"| best | 5 | {s.mean:.2f} | {s.std:.2f} | {s.sem:.2f} | {s.min:.2f} | "
        f"{s.max:.2f} | 0, 1, 2, 3, 4 |"
    )
    assert lines[4].startswith("| solo | 1 | 70.00 | n/a | n/a |")
    assert "ddof=1" in lines[-1]


def test_dataclasses_are_frozen_with_to_dict() -> None:
    c = paired_comparison(A, B, name_a="a", name_b="b")
    assert isinstance(c, PairedComparison) and dataclasses.is_dataclass(c)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.delta = 0.0  # type: ignore[misc]
    d = c.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(PairedComparison)}
    assert isinstance(summarize_arm(A), ArmSummary)
