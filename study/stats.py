"""Paired statistics for a study's final report: "arm A beats baseline B by Δ, and it is real".

The final runs retrain every arm (the best searched configuration and each baseline: KD,
WKD-L, GKL, ...) with the same few fresh seeds (N = 2-5) and evaluate each run on a test set
of ``n_eval`` images, so top-1 accuracy (percent) moves in steps of ``100 / n_eval`` points.
Values arrive per arm as ``{seed: top-1}``.

What is computed, and why:

* **Pairing by seed.** A seed fixes initialisation, data order and augmentation for every
  arm, so two arms' runs with the same seed share that seed's luck. The comparison works on
  the per-seed differences ``a[s] - b[s]``, which cancels the shared seed variance; an
  unpaired comparison would leave it in and can miss a small, consistent improvement. Only
  seeds present in both arms are used; the others are listed as unpaired and ignored.
* **t interval (primary).** With N this small, the confidence interval for the mean
  difference is the Student t interval ``mean ± t(1 - α/2, N - 1) · s / √N`` on the paired
  differences, and the p-value is the matching two-sided paired t-test
  (``scipy.stats.ttest_rel``). Both assume roughly normal differences; nothing better is
  available from 2-5 seeds.
* **Bootstrap (shown, not trusted).** A percentile bootstrap over seeds of the paired
  differences is reported next to it. With N < 6 seeds there are only a handful of distinct
  resamples (3 for N = 2, 126 for N = 5), so that interval is coarse and typically too narrow;
  it is a cross-check, not the headline.
* **Holm-Bonferroni.** A study compares its best arm against several baselines at once; the
  p-values are adjusted across those comparisons with Holm's step-down method (controls the
  family-wise error rate, uniformly more powerful than plain Bonferroni).
* **Resolution.** A difference smaller than one test image (``100 / n_eval`` points) is
  reported as not resolvable, whatever the p-value says.
* **P(A > B)** is the fraction of seed pairs in which A beats B (ties count 1/2), and
  ``spearman`` measures rank agreement, e.g. of early-stopping rungs with the final ranking.

Pure numpy + scipy: no Ray, MLflow, torch or matplotlib, so reports and tests can use it
anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats as _sp

__all__ = [
    "BOOT_METHOD",
    "CI_METHOD_T",
    "TEST_NAME",
    "ArmSummary",
    "PairedComparison",
    "compare_to_baselines",
    "format_arms_markdown",
    "format_comparisons_markdown",
    "holm",
    "paired_comparison",
    "resolution_points",
    "spearman",
    "summarize_arm",
]

CI_METHOD_T = "t (seed-paired, df=n-1)"
TEST_NAME = "paired t-test, two-sided"
BOOT_METHOD = "percentile bootstrap over seeds of the paired differences"

# Two accuracies closer than this (relative to the values' magnitude) are the same number:
# they differ only by floating-point rounding, not by a test image.
_TIE_RTOL = 1e-9


def _check_values(values: Mapping[int, float], what: str) -> None:
    bad = {s: v for s, v in values.items() if not math.isfinite(float(v))}
    if bad:
        raise ValueError(f"{what}: non-finite values for seeds {sorted(bad)}: {bad}")


def _sample_std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size >= 2 else math.nan


# ---------------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class ArmSummary:
    """One arm's final runs: mean, sample std (ddof=1) and sem over its seeds."""

    n: int
    mean: float
    std: float  # sample std, ddof=1; nan when n < 2
    sem: float  # std / sqrt(n); nan when n < 2
    min: float
    max: float
    seeds: list[int]  # sorted
    values: list[float]  # in seed order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_arm(values: dict[int, float]) -> ArmSummary:
    """Summarise one arm's ``{seed: top-1}``; raises ValueError when empty or non-finite."""
    if not values:
        raise ValueError("summarize_arm: no values (an arm needs at least one seed)")
    _check_values(values, "summarize_arm")
    seeds = sorted(values)
    x = np.array([float(values[s]) for s in seeds], dtype=float)
    n = int(x.size)
    std = _sample_std(x)
    sem = std / math.sqrt(n) if n >= 2 else math.nan
    return ArmSummary(
        n=n,
        mean=float(np.mean(x)),
        std=std,
        sem=sem,
        min=float(np.min(x)),
        max=float(np.max(x)),
        seeds=seeds,
        values=[float(v) for v in x],
    )


# ---------------------------------------------------------------------------- formatting


def _fmt_num(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _fmt_p(p: float | None) -> str:
    """A p-value to 3 significant digits ("n/a" when missing)."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3g}"


def _fmt_ci(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return f"[{lo:+.2f}, {hi:+.2f}]"


def _fmt_pct(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _fmt_alpha(confidence: float) -> str:
    return f"{1.0 - confidence:.2g}"


# --------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class PairedComparison:
    """Arm A against arm B, paired by seed (``delta`` = mean of ``a[s] - b[s]``)."""

    name_a: str
    name_b: str
    seeds: list[int]  # the paired seeds (present in both arms), sorted
    n: int
    delta: float  # mean paired difference a - b, in points
    delta_std: float  # sample std (ddof=1) of the paired differences; nan when n < 2
    ci_low: float  # t interval (primary)
    ci_high: float
    ci_method: str
    boot_ci_low: float  # percentile bootstrap over seeds (coarse for n < 6)
    boot_ci_high: float
    p_value: float  # two-sided paired t-test, unadjusted
    test: str
    prob_improvement: float  # P(A > B) over seed pairs, ties count 1/2
    resolution: float | None  # one test image, in points (100 / n_eval)
    verdict: str
    confidence: float = 0.95
    n_boot: int = 10000
    p_holm: float | None = None  # Holm-adjusted p, set by compare_to_baselines
    unpaired_seeds_a: list[int] = field(default_factory=list)  # in A only: ignored
    unpaired_seeds_b: list[int] = field(default_factory=list)  # in B only: ignored
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verdict(
    *,
    name_a: str,
    name_b: str,
    n: int,
    delta: float,
    ci_low: float,
    ci_high: float,
    p_value: float,
    p_holm: float | None,
    resolution: float | None,
    confidence: float,
) -> str:
    """One plain sentence naming the pair; uses the Holm p when set, else the unadjusted
    paired-t p (and says which)."""
    pair = f"{name_a} vs {name_b}"
    if n < 2:
        return f"{pair}: too few paired seeds (n={n}) for an interval"
    # (a difference of exactly one image must not fall below it by float rounding)
    if resolution is not None and abs(delta) < resolution * (1.0 - _TIE_RTOL):
        return (
            f"{pair}: no resolvable difference; |Δ|={abs(delta):.2f} is below one test image "
            f"({resolution:.2f} points)"
        )
    holm_set = p_holm is not None and math.isfinite(p_holm)
    p = float(p_holm) if holm_set and p_holm is not None else p_value
    label = "Holm p" if holm_set else "paired t p"
    conf = _fmt_pct(confidence)
    ci = _fmt_ci(ci_low, ci_high)
    alpha = 1.0 - confidence
    if math.isfinite(p) and p < alpha:
        verb = "beats" if delta > 0 else "trails"
        return (
            f"{name_a} {verb} {name_b} by {delta:+.2f} points ({conf} CI {ci}, {label}={_fmt_p(p)})"
        )
    excludes = ci_low > 0 or ci_high < 0
    tail = (
        f"the unadjusted {conf} CI {ci} excludes 0"
        if excludes
        else f"the {conf} CI {ci} includes 0"
    )
    return f"{pair}: not significant at {_fmt_alpha(confidence)} ({label}={_fmt_p(p)}); {tail}"


def paired_comparison(
    a: dict[int, float],
    b: dict[int, float],
    *,
    name_a: str,
    name_b: str,
    resolution: float | None = None,
    confidence: float = 0.95,
    n_boot: int = 10000,
    rng_seed: int = 0,
) -> PairedComparison:
    """Compare arm A with arm B over the seeds both have (``delta`` = mean of a - b).

    The primary interval is the t interval on the paired differences and the p-value the
    two-sided paired t-test; a seeded percentile bootstrap over seeds is computed alongside.
    With all paired differences equal (std 0) the t-test is degenerate: the interval is
    ``[delta, delta]`` and p is 0 (differences nonzero) or 1 (all zero). With exactly one
    shared seed, delta is reported and interval and p are nan. No shared seed: ValueError.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if resolution is not None and not (math.isfinite(resolution) and resolution > 0):
        raise ValueError(f"resolution must be a positive number of points, got {resolution}")
    _check_values(a, name_a)
    _check_values(b, name_b)

    seeds = sorted(set(a) & set(b))
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if not seeds:
        raise ValueError(
            f"{name_a} and {name_b} share no seed to pair on: "
            f"{name_a} has seeds {sorted(a)}, {name_b} has seeds {sorted(b)}"
        )
    notes: list[str] = []
    if only_a or only_b:
        notes.append(f"unpaired seeds ignored ({name_a} only: {only_a}; {name_b} only: {only_b})")

    xa = np.array([float(a[s]) for s in seeds], dtype=float)
    xb = np.array([float(b[s]) for s in seeds], dtype=float)
    d = xa - xb
    n = int(d.size)
    delta = float(np.mean(d))
    scale = max(1.0, float(np.max(np.abs(xa))), float(np.max(np.abs(xb))))
    tol = _TIE_RTOL * scale

    wins = float(np.sum(d > tol))
    ties = float(np.sum(np.abs(d) <= tol))
    prob_improvement = (wins + 0.5 * ties) / n

    nan = math.nan
    if n < 2:
        notes.append("one paired seed: no interval and no test")
        delta_std, ci_low, ci_high, p_value = nan, nan, nan, nan
        boot_low, boot_high = nan, nan
    else:
        delta_std = _sample_std(d)
        if float(np.ptp(d)) <= tol:
            # All differences equal: s = 0, the t statistic is ±inf or 0/0.
            delta_std = 0.0
            ci_low = ci_high = delta
            if abs(delta) <= tol:
                p_value = 1.0
                notes.append("all paired differences are 0: p = 1")
            else:
                p_value = 0.0
                notes.append("all paired differences are equal and nonzero (std 0): p = 0")
        else:
            res = _sp.ttest_rel(xa, xb, alternative="two-sided")
            p_value = float(res.pvalue)
            ci = res.confidence_interval(confidence_level=confidence)
            ci_low, ci_high = float(ci.low), float(ci.high)
        rng = np.random.default_rng(rng_seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        boot_means = d[idx].mean(axis=1)
        alpha = 1.0 - confidence
        boot_low = float(np.percentile(boot_means, 100.0 * alpha / 2))
        boot_high = float(np.percentile(boot_means, 100.0 * (1 - alpha / 2)))
        if n < 6:
            notes.append(f"bootstrap over n={n} seeds is coarse")

    verdict = _verdict(
        name_a=name_a,
        name_b=name_b,
        n=n,
        delta=delta,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        p_holm=None,
        resolution=resolution,
        confidence=confidence,
    )
    return PairedComparison(
        name_a=name_a,
        name_b=name_b,
        seeds=seeds,
        n=n,
        delta=delta,
        delta_std=delta_std,
        ci_low=ci_low,
        ci_high=ci_high,
        ci_method=CI_METHOD_T,
        boot_ci_low=boot_low,
        boot_ci_high=boot_high,
        p_value=p_value,
        test=TEST_NAME,
        prob_improvement=prob_improvement,
        resolution=resolution,
        verdict=verdict,
        confidence=confidence,
        n_boot=n_boot,
        p_holm=None,
        unpaired_seeds_a=only_a,
        unpaired_seeds_b=only_b,
        note="; ".join(notes) if notes else None,
    )


def _with_p_holm(comp: PairedComparison, p_holm: float) -> PairedComparison:
    verdict = _verdict(
        name_a=comp.name_a,
        name_b=comp.name_b,
        n=comp.n,
        delta=comp.delta,
        ci_low=comp.ci_low,
        ci_high=comp.ci_high,
        p_value=comp.p_value,
        p_holm=p_holm,
        resolution=comp.resolution,
        confidence=comp.confidence,
    )
    return replace(comp, p_holm=p_holm, verdict=verdict)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni step-down adjusted p-values, same keys.

    Sorted ascending, ``p_(i)`` gets ``max_{j <= i} (m - j + 1) p_(j)`` capped at 1, so the
    adjusted values keep the order of the raw ones. nan stays nan and does not count in m.
    """
    for k, p in p_values.items():
        if not (math.isnan(p) or 0.0 <= p <= 1.0):
            raise ValueError(f"holm: p-value for {k!r} is not in [0, 1]: {p}")
    valid = sorted((p, k) for k, p in p_values.items() if not math.isnan(p))
    m = len(valid)
    out: dict[str, float] = {k: math.nan for k, p in p_values.items() if math.isnan(p)}
    running = 0.0
    for i, (p, k) in enumerate(valid):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return {k: out[k] for k in p_values}


def compare_to_baselines(
    best: dict[int, float],
    baselines: dict[str, dict[int, float]],
    *,
    best_name: str,
    resolution: float | None = None,
    **kw: Any,
) -> list[PairedComparison]:
    """``best`` against each baseline (paired by seed), Holm-corrected across the baselines.

    Extra keywords go to :func:`paired_comparison`. Sorted by baseline name; each
    comparison's ``p_holm`` is set and its verdict uses it.
    """
    comps = [
        paired_comparison(
            best, baselines[name], name_a=best_name, name_b=name, resolution=resolution, **kw
        )
        for name in sorted(baselines)
    ]
    adjusted = holm({c.name_b: c.p_value for c in comps})
    return [_with_p_holm(c, adjusted[c.name_b]) for c in comps]


# ---------------------------------------------------------------------------- ranks etc.


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when n < 3 or an input is
    constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman: lengths differ ({len(x)} vs {len(y)})")
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("spearman: non-finite input")
    if xa.size < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return math.nan
    rx = _sp.rankdata(xa) - (xa.size + 1) / 2.0
    ry = _sp.rankdata(ya) - (ya.size + 1) / 2.0
    return float(np.sum(rx * ry) / math.sqrt(float(np.sum(rx * rx)) * float(np.sum(ry * ry))))


def resolution_points(n_eval: int) -> float:
    """One test image in top-1 percentage points: ``100 / n_eval``."""
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 1:
        raise ValueError(f"n_eval must be a positive integer, got {n_eval!r}")
    return 100.0 / n_eval


# ------------------------------------------------------------------------------ markdown


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def format_comparisons_markdown(comps: list[PairedComparison]) -> str:
    """A GitHub Markdown table of paired comparisons, followed by a line naming the test and
    the interval methods."""
    if not comps:
        return "_No paired comparisons._\n"
    confs = sorted({c.confidence for c in comps})
    conf = _fmt_pct(confs[0]) if len(confs) == 1 else "conf."
    header = [
        "comparison",
        "n seeds",
        "Δ mean",
        f"{conf} CI (t)",
        f"bootstrap {conf} CI",
        "P(A>B)",
        "p (paired t)",
        "p (Holm)",
        "verdict",
    ]
    rows = [
        [
            f"{c.name_a} − {c.name_b}",
            str(c.n),
            _fmt_num(c.delta, signed=True),
            _fmt_ci(c.ci_low, c.ci_high),
            _fmt_ci(c.boot_ci_low, c.boot_ci_high),
            _fmt_num(c.prob_improvement),
            _fmt_p(c.p_value),
            _fmt_p(c.p_holm),
            c.verdict,
        ]
        for c in comps
    ]
    n_boot = sorted({c.n_boot for c in comps})
    boots = ", ".join(str(b) for b in n_boot)
    holm_note = (
        f"p (Holm): Holm-Bonferroni across the {len(comps)} comparisons"
        if any(c.p_holm is not None for c in comps)
        else "p (Holm): not adjusted"
    )
    footer = (
        f"_Test: {TEST_NAME}, pairing runs by seed (Δ = A − B, top-1 points). "
        f"CI: {CI_METHOD_T}; bootstrap: {BOOT_METHOD} ({boots} resamples), "
        f"coarse with fewer than 6 seeds. {holm_note}._"
    )
    return "\n".join([*_md_table(header, rows), "", footer]) + "\n"


def format_arms_markdown(arms: dict[str, ArmSummary], metric: str) -> str:
    """A GitHub Markdown table of arm summaries (rows in the dict's order), followed by a
    line saying what mean, std and sem are."""
    if not arms:
        return "_No arms._\n"
    header = ["arm", "n seeds", f"{metric} mean", "std", "sem", "min", "max", "seeds"]
    rows = [
        [
            name,
            str(s.n),
            _fmt_num(s.mean),
            _fmt_num(s.std),
            _fmt_num(s.sem),
            _fmt_num(s.min),
            _fmt_num(s.max),
            ", ".join(str(x) for x in s.seeds),
        ]
        for name, s in arms.items()
    ]
    footer = (
        f"_{metric}: mean over seeds ± sample std (ddof=1, n/a with one seed); sem = std / √n._"
    )
    return "\n".join([*_md_table(header, rows), "", footer]) + "\n"
