"""The objective: which per-trial score ranks configurations like their final accuracy?

Issue 8: a study scores a trial by its best validation epoch (``objective: {metric:
val/top1, use: best}``). For a hand-off schedule the best epoch can come before the
hand-off it is meant to judge, and a maximum over epochs adds selection noise. This
benchmark measures, on the full grid of ``benchmarks/bench_search.py`` (25
configurations x 3 trial seeds, every epoch of every trial read from Ray's
``result.json``), how well each candidate objective computed on ONE seed ranks the
configurations like held-out seeds' final accuracy:

- ``best``: the maximum of the per-epoch ``val/top1`` (what ``val/top1_best`` reports);
- ``last``: the last epoch's ``val/top1``;
- ``mean_last2`` / ``mean_last3``: the mean of the last 2 / 3 epochs' ``val/top1``.

For each seed ``s`` and objective ``o``: Spearman over the configurations between
``o`` on seed ``s`` and

- ``G``  = the mean over the OTHER seeds of the last-epoch ``val/top1`` (the truth: the
  two sides share no training noise, so a score cannot win by fitting its own seed);
- ``G'`` = the mean over the other seeds of ``o`` itself (self-consistency across seeds);

and the top-2 hit: does the configuration with the best ``o`` on seed ``s`` lie in
``G``'s top 2 (ties in ``o`` count as the fraction of tied configurations that do: the
expected hit of a random tie-break)? Each is averaged over the 3 choices of ``s``
(min/max printed too).

Run: ``.venv/bin/python benchmarks/bench_objective.py [--grid-from RUN_DIR]
[--space FILE] [--workdir DIR]``. Without ``--grid-from`` it trains the grid itself
(bench_search's plan, teacher registry and ``grid.yaml``, so ``bench_search.py
--grid-from`` can reuse the run directory and vice versa; ~12-20 min on 2 quiet cores,
36 min at load 5-6). ``RUN_DIR`` is a bench_search/bench_objective run directory (it
holds ``grid/``); the analysis alone takes seconds.

Measured (2026-12-01, the W -> KL space ``search_wkl_grid.yaml``, CIFAR-10 JPEGs, 400
images per class split 2 000 / 2 000, teacher 44.3 %, 8 epochs, lr 0.05 cosine to 0;
Spearman over 25 configurations, mean [min, max] over the held-out seed):

==========  =====================  =====================  =========
objective   rho vs G (final)       rho vs G' (same obj.)  top-2 hit
==========  =====================  =====================  =========
best        +0.853 [+0.83, +0.88]  +0.841 [+0.81, +0.88]  0/3
last        +0.835 [+0.79, +0.90]  +0.835 [+0.79, +0.90]  0/3
mean_last2  +0.837 [+0.83, +0.85]  +0.844 [+0.82, +0.87]  0/3
mean_last3  +0.850 [+0.81, +0.90]  +0.869 [+0.85, +0.89]  0/3
==========  =====================  =====================  =========

rho - rho(best) with 90 % bootstrap intervals over configurations: last -0.018 [-0.084,
+0.030], mean_last2 -0.016 [-0.059, +0.026], mean_last3 -0.004 [-0.054, +0.044]: no
objective ranks measurably better than ``best`` here. Why: with a cosine schedule to
lr 0 the last epochs barely move (the best epoch was the last in 39 of 75 trials, epoch
7 in 21, never before 5), and the three leading configurations (KL weight 64) lie
within 0.25 points, below one seed's noise (~1 point), so every objective picks the
same configuration on 11 of the 12 (objective, seed) pairs and none of them lands in
the held-out top 2. The KD space (``--space benchmarks/spaces/search_kd_grid.yaml``)
was not run (the grid above took 36 min on the shared machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_search as bs  # noqa: E402


def objective_value(curve: Sequence[float], name: str) -> float:
    """The score ``name`` (``best``, ``last`` or ``mean_last<k>``) of a per-epoch curve.
    ``mean_last<k>`` over fewer than k epochs is the mean of what there is (as a study
    reports it mid-run)."""
    if not curve:
        raise ValueError("empty curve")
    if name == "best":
        return float(max(curve))
    if name == "last":
        return float(curve[-1])
    if name.startswith("mean_last"):
        k = int(name.removeprefix("mean_last"))
        if k < 1:
            raise ValueError(f"objective {name!r}: k must be >= 1")
        return float(statistics.fmean(curve[-k:]))
    raise ValueError(f"objective {name!r}: expected best, last or mean_last<k>")


NAMES = ("best", "last", "mean_last2", "mean_last3")

Curves = dict[str, dict[int, list[float]]]  # config -> seed -> per-epoch val/top1


def complete_curves(curves: Curves, seeds: Sequence[int], epochs: int) -> Curves:
    """The configurations whose every seed ran all ``epochs`` (failed or short trials out)."""
    return {
        c: {s: list(per[s]) for s in seeds}
        for c, per in sorted(curves.items())
        if all(s in per and len(per[s]) >= epochs for s in seeds)
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def top_hit(score: Sequence[float], truth: Sequence[float], top: int = 2) -> float:
    """Is the argmax of ``score`` among the ``top`` best of ``truth``? Ties: the argmax
    set of ``score`` counts as the fraction of its members in the top set; the top set
    holds every configuration whose truth is >= the ``top``-th largest value."""
    best = max(score)
    picks = [i for i, v in enumerate(score) if v == best]
    cut = sorted(truth, reverse=True)[min(top, len(truth)) - 1]
    return sum(truth[i] >= cut for i in picks) / len(picks)


@dataclass(frozen=True)
class SeedResult:
    objective: str
    seed: int
    rho_final: float  # against G: other seeds' mean last-epoch top-1
    rho_self: float  # against G': other seeds' mean of the same objective
    top2: float  # the pick on this seed lies in G's top 2 (fraction under ties)


def held_out(
    curves: Curves, seeds: Sequence[int], names: Sequence[str] = NAMES
) -> list[SeedResult]:
    """For each objective and seed s: the objective on seed s against the other seeds
    (see the module docstring). ``curves`` must be complete (:func:`complete_curves`)."""
    configs = sorted(curves)
    out = []
    for name in names:
        for s in seeds:
            rest = [t for t in seeds if t != s]
            if not rest:
                raise ValueError("held-out seeds need at least 2 seeds")
            score = [objective_value(curves[c][s], name) for c in configs]
            final = [statistics.fmean(curves[c][t][-1] for t in rest) for c in configs]
            same = [
                statistics.fmean(objective_value(curves[c][t], name) for t in rest) for c in configs
            ]
            out.append(
                SeedResult(
                    name, s, spearman(score, final), spearman(score, same), top_hit(score, final)
                )
            )
    return out


@dataclass(frozen=True)
class Row:
    objective: str
    rho_final: tuple[float, float, float]  # mean, min, max over seeds
    rho_self: tuple[float, float, float]
    top2: float  # mean over seeds
    per_seed_final: tuple[float, ...]


def bootstrap_gap(
    curves: Curves, seeds: Sequence[int], name: str, ref: str = "best", draws: int = 1000
) -> tuple[float, float, float]:
    """How sure is ``name`` beating ``ref``: the mean over held-out seeds of rho(name) -
    rho(ref) against G, and its 90 % interval over bootstrap resamples of the
    configurations (paired: both objectives on the same resample; fixed RNG seed).
    Resamples where a side is constant (rho undefined) are skipped."""
    import numpy as np

    configs = sorted(curves)
    rng = np.random.default_rng(0)

    def gap(idx: Sequence[int]) -> float:
        sub = {f"{j}:{configs[i]}": curves[configs[i]] for j, i in enumerate(idx)}
        res = held_out(sub, seeds, (name, ref))
        a = [r.rho_final for r in res if r.objective == name]
        b = [r.rho_final for r in res if r.objective == ref]
        return statistics.fmean(a) - statistics.fmean(b)

    point = gap(range(len(configs)))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            boots = [gap(rng.integers(0, len(configs), len(configs))) for _ in range(draws)]
    boots = [b for b in boots if not np.isnan(b)]
    lo, hi = np.quantile(boots, [0.05, 0.95])
    return point, float(lo), float(hi)


def summarize(results: list[SeedResult]) -> list[Row]:
    rows = []
    for name in dict.fromkeys(r.objective for r in results):
        rs = [r for r in results if r.objective == name]
        f = [r.rho_final for r in rs]
        g = [r.rho_self for r in rs]
        rows.append(
            Row(
                name,
                (statistics.fmean(f), min(f), max(f)),
                (statistics.fmean(g), min(g), max(g)),
                statistics.fmean(r.top2 for r in rs),
                tuple(f),
            )
        )
    return rows


def winner(rows: list[Row]) -> str:
    """The objective with the highest mean Spearman against G (ties: higher top-2 rate,
    then the order of :data:`NAMES`)."""
    return max(
        rows,
        key=lambda r: (
            round(r.rho_final[0], 6),
            r.top2,
            -NAMES.index(r.objective) if r.objective in NAMES else 0,
        ),
    ).objective


def best_epochs(curves: Curves) -> list[int]:
    """The 1-based epoch of each trial's best val/top1 (first one on ties)."""
    return [per.index(max(per)) + 1 for seeds in curves.values() for per in seeds.values()]


def print_table(rows: list[Row], label: str, n_cfg: int, seeds: Sequence[int], epochs: int) -> None:
    print(
        f"\n{label}: {n_cfg} configurations x seeds {list(seeds)}, {epochs} epochs; objective on "
        "one seed vs the other seeds (mean [min, max] over the held-out seed choice)"
    )
    print(
        f"{'objective':<12}{'rho vs G (final)':>25}{'rho vs G (same obj.)':>27}{'top-2 hit':>11}"
        f"  per seed vs G"
    )
    for r in rows:
        m, lo, hi = r.rho_final
        m2, lo2, hi2 = r.rho_self
        per = " ".join(f"{v:+.2f}" for v in r.per_seed_final)
        print(
            f"{r.objective:<12}{m:>+10.3f} [{lo:+.2f}, {hi:+.2f}]"
            f"{m2:>+12.3f} [{lo2:+.2f}, {hi2:+.2f}]{r.top2:>11.2f}  {per}"
        )
    print(f"winner (mean rho vs G): {winner(rows)}")


# -- the grid (bench_search's functions) ---------------------------------------------------
def grid_args(space: Path) -> argparse.Namespace:
    """bench_search's default command line (its full run) for ``make_plan``."""
    args = bs.build_parser().parse_args(["--space", str(space)])
    args.repeats = int(yaml.safe_load(space.read_text()).get("repeats", 1))  # as main does
    return args


def run_grid(space: Path, root: Path, teachers: Path | None) -> tuple[Path, bs.Plan]:
    """Train bench_search's grid (same plan, teacher registry and ``grid.yaml``) into a new
    run directory under ``root``; returns (run dir, plan)."""
    import torch

    torch.set_num_threads(1)
    bs.SPACE = space
    run_dir = root / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    task = bs.resolve_task(root)
    raw = yaml.safe_load(space.read_text())
    grace = float((raw.get("trial_scheduler") or {}).get("grace_period", 0.25))
    plan = bs.make_plan(grid_args(space), cifar=task.dataset != "digits", space_grace=grace)
    val_fraction = plan.val_fraction or float(raw["trial"]["data"]["val_fraction"])
    teachers_dir = (
        teachers or root / f"teachers-val{val_fraction:g}-n{plan.max_per_class}"
    ).resolve()
    t0 = time.monotonic()
    top1 = bs.ensure_teacher(task, plan, teachers_dir, val_fraction)
    print(
        f"teacher val top-1 {top1:.3f} ({time.monotonic() - t0:.0f}s); run dir {run_dir}",
        flush=True,
    )
    data = {
        "dataset": task.dataset,
        "max_per_class": plan.max_per_class,
        "val_fraction": val_fraction,
        "cache_dir": str(root / "data-cache"),
    }
    grid_yaml = bs.study_yaml(
        run_dir,
        "grid",
        {
            "trial": {"epochs": plan.epochs, "data": data},
            "search": {
                **plan.search_overlay,
                "seed": {"type": "categorical", "values": list(plan.seeds)},
            },
            "searcher": {"kind": "grid"},
            "trial_scheduler": {"kind": "fifo"},
            "repeats": 1,
        },
    )
    wall = bs.run_study(grid_yaml, run_dir / "grid", teachers_dir, task, [])
    print(f"grid trained in {wall:.0f}s", flush=True)
    return run_dir, plan


def grid_plan_of(run_dir: Path) -> tuple[int, tuple[int, ...], str]:
    """Epochs, trial seeds and the space's name of a grid run directory (its grid.yaml)."""
    spec = yaml.safe_load((run_dir / "grid.yaml").read_text())
    seeds = tuple(int(s) for s in spec["search"]["seed"]["values"])
    space = yaml.safe_load(Path(spec["extends"]).read_text())
    return int(spec["trial"]["epochs"]), seeds, str(space.get("name", spec["extends"]))


def analyse(run_dir: Path) -> dict[str, object]:
    epochs, seeds, label = grid_plan_of(run_dir)
    raw = bs.grid_curves(run_dir / "grid")
    curves = complete_curves(raw, seeds, epochs)
    dropped = sorted(set(raw) - set(curves))
    rows = summarize(held_out(curves, seeds))
    print_table(rows, label, len(curves), seeds, epochs)
    gaps = {n: bootstrap_gap(curves, seeds, n) for n in NAMES if n != "best"}
    print(
        "rho vs G minus best's (mean over held-out seeds; 90 % bootstrap interval over "
        "configurations): "
        + ", ".join(f"{n} {g:+.3f} [{lo:+.3f}, {hi:+.3f}]" for n, (g, lo, hi) in gaps.items())
    )
    if dropped:
        print(f"left out (a seed failed or stopped short): {', '.join(dropped)}")
    be = best_epochs(curves)
    print(
        f"best epoch of the {len(be)} trials: "
        + ", ".join(f"{e}: {be.count(e)}" for e in sorted(set(be)))
        + f" (last epoch = {epochs})"
    )
    summary = {
        "space": label,
        "epochs": epochs,
        "seeds": list(seeds),
        "configurations": len(curves),
        "dropped": dropped,
        "rows": [vars(r) for r in rows],
        "winner": winner(rows),
        "gap_vs_best_bootstrap90": gaps,
        "best_epochs": be,
    }
    (run_dir / "objective_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid-from", type=Path, help="a run directory holding grid/ and grid.yaml")
    p.add_argument(
        "--space",
        type=Path,
        default=REPO / "benchmarks" / "spaces" / "search_wkl_grid.yaml",
        help="space of a new grid (without --grid-from); also spaces/search_kd_grid.yaml",
    )
    p.add_argument("--workdir", type=Path, help="default: <tmp>/kdstudy-bench-search")
    p.add_argument("--teachers-dir", type=Path, help="default: bench_search's registry")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    if args.grid_from:
        run_dir = args.grid_from.resolve()
        if not (run_dir / "grid").is_dir():
            p.error(f"--grid-from {run_dir}: no grid/ in it")
    else:
        root = (args.workdir or Path(tempfile.gettempdir()) / "kdstudy-bench-search").resolve()
        run_dir, _ = run_grid(args.space.resolve(), root, args.teachers_dir)
    analyse(run_dir)
    print(f"wall time {time.monotonic() - t0:.0f}s; grid under {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
