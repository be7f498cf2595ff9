"""Searcher wiring: early-stopped trials reach Optuna as PRUNED, complete ones as COMPLETE."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
from optuna.trial import TrialState

from study.space import FidelityAwareOptunaSearch, build_sampler, define_by_run
from study.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def test_stopped_early_is_pruned_and_full_budget_is_complete() -> None:
    spec = load_spec(REPO / "search_spaces" / "quickstart.yaml")
    metric = spec.objective.reported_metric
    s = FidelityAwareOptunaSearch(
        12,
        space=define_by_run(spec),
        metric=metric,
        mode="max",
        sampler=build_sampler(spec),
        points_to_evaluate=[dict(p) for p in spec.points],
    )
    first = s.suggest("a")
    assert first["handoff.w_start"] == 0.625  # the published point comes first
    s.suggest("b")
    s.suggest("c")
    for step in (1, 2, 3):
        s.on_trial_result("a", {metric: 80.0 + step, "training_iteration": step})
        s.on_trial_result("b", {metric: 70.0 + step, "training_iteration": step})
    for step in range(4, 13):
        s.on_trial_result("b", {metric: 90.0, "training_iteration": step})
    s.on_trial_complete("a", {metric: 83.0, "training_iteration": 3})  # ASHA stopped it
    s.on_trial_complete("b", {metric: 90.0, "training_iteration": 12})
    s.on_trial_complete("c", None, error=True)
    trials = {t.number: t for t in s._ot_study.get_trials()}
    assert trials[0].state == TrialState.PRUNED
    assert trials[0].intermediate_values == {1: 81.0, 2: 82.0, 3: 83.0}
    assert trials[1].state == TrialState.COMPLETE and trials[1].value == 90.0
    assert trials[2].state == TrialState.FAIL
    # Ray checkpoints the searcher: it must pickle (define-by-run space included)
    pickle.dumps(s.__dict__)


def test_tpe_sampler_is_seeded_and_sized_to_the_budget() -> None:
    spec = load_spec(REPO / "search_spaces" / "quickstart.yaml")
    sampler = build_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 5  # 16 samples // 3
    a = [
        FidelityAwareOptunaSearch(
            12, space=define_by_run(spec), metric="m", mode="max", sampler=build_sampler(spec)
        ).suggest("x")
        for _ in range(2)
    ]
    assert a[0] == a[1]


def test_repeats_are_redrawn_and_an_exhausted_space_finishes() -> None:
    """Same seeds make a repeated configuration an identical trial: never run it twice."""
    from ray.tune.search import Searcher

    def define(trial: optuna.Trial) -> None:
        trial.suggest_categorical("w", [1.0, 4.0])

    s = FidelityAwareOptunaSearch(
        4,
        n_points=2,
        space=define,
        metric="m",
        mode="max",
        # TPE after 1 start-up trial: it proposes its incumbent again and again
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=1),
    )
    seen = []
    for i in range(2):
        cfg = s.suggest(f"t{i}")
        assert isinstance(cfg, dict)
        seen.append(cfg["w"])
        s.on_trial_complete(f"t{i}", {"m": 50.0 + i, "training_iteration": 4})
    assert sorted(seen) == [1.0, 4.0]  # the second draw is the other point, not a repeat
    assert s.suggest("t2") == Searcher.FINISHED  # both points run: stop, don't repeat
    states = [t.state for t in s._ot_study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 2
    assert states.count(TrialState.PRUNED) == s.repeats_skipped >= 1


def test_repeats_run_when_redraws_run_out() -> None:
    """A space that keeps proposing the same point (no n_points, no redraws): the repeat runs,
    and its Optuna trial stays attached so results can be reported."""

    def define(trial: optuna.Trial) -> None:
        trial.suggest_categorical("w", [1.0])

    s = FidelityAwareOptunaSearch(
        4,
        max_redraws=0,
        space=define,
        metric="m",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    assert s.suggest("a") == {"w": 1.0}
    s.on_trial_complete("a", {"m": 1.0, "training_iteration": 4})
    assert s.suggest("b") == {"w": 1.0}
    s.on_trial_result("b", {"m": 2.0, "training_iteration": 1})
    s.on_trial_complete("b", {"m": 2.0, "training_iteration": 4})
    assert [t.state for t in s._ot_study.get_trials()] == [TrialState.COMPLETE] * 2


def _three_weights(trial: optuna.Trial) -> None:
    trial.suggest_categorical("w", [1.0, 4.0, 16.0])


def _seeded_search(seeds: list[int], n_points: int | None = None) -> FidelityAwareOptunaSearch:
    return FidelityAwareOptunaSearch(
        3,
        n_points=n_points,
        seeds=seeds,
        space=_three_weights,
        metric="m",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )


def test_repeats_run_a_configuration_per_seed_and_tell_optuna_the_mean() -> None:
    s = _seeded_search([0, 1])
    a, b, c = s.suggest("a"), s.suggest("b"), s.suggest("c")
    assert isinstance(a, dict) and isinstance(b, dict) and isinstance(c, dict)
    assert (a["seed"], b["seed"], c["seed"]) == (0, 1, 0)
    assert {k: v for k, v in a.items() if k != "seed"} == {
        k: v for k, v in b.items() if k != "seed"
    }
    assert c["w"] != a["w"]  # the next configuration (redrawn rather than repeated)
    # intermediate values: the mean at each epoch both seeds have reached, in order
    s.on_trial_result("a", {"m": 10.0, "training_iteration": 1})
    s.on_trial_result("a", {"m": 20.0, "training_iteration": 2})
    assert s._ot_study.get_trials()[0].intermediate_values == {}
    s.on_trial_result("b", {"m": 30.0, "training_iteration": 1})
    assert s._ot_study.get_trials()[0].intermediate_values == {1: 20.0}
    s.on_trial_result("b", {"m": 40.0, "training_iteration": 2})
    s.on_trial_result("a", {"m": 21.0, "training_iteration": 3})
    s.on_trial_result("b", {"m": 41.0, "training_iteration": 3})
    s.on_trial_complete("a", {"m": 21.0, "training_iteration": 3})
    assert s._ot_study.get_trials()[0].state == TrialState.RUNNING  # seed 1 still runs
    s.on_trial_complete("b", {"m": 41.0, "training_iteration": 3})
    first = s._ot_study.get_trials()[0]
    assert first.state == TrialState.COMPLETE and first.value == 31.0
    assert first.intermediate_values == {1: 20.0, 2: 30.0, 3: 31.0}
    # second configuration: the scheduler stops seed 1 at epoch 1 -> PRUNED, not COMPLETE
    d = s.suggest("d")
    assert isinstance(d, dict) and d["seed"] == 1 and d["w"] == c["w"]
    for tid, v in (("c", 50.0), ("d", 10.0)):
        s.on_trial_result(tid, {"m": v, "training_iteration": 1})
    s.on_trial_complete("d", {"m": 10.0, "training_iteration": 1})
    s.on_trial_result("c", {"m": 55.0, "training_iteration": 2})
    s.on_trial_complete("c", {"m": 56.0, "training_iteration": 3})
    second = s._ot_study.get_trials()[-1]
    assert second.state == TrialState.PRUNED and second.intermediate_values == {1: 30.0}
    pickle.dumps(s.__dict__)  # Ray checkpoints the searcher with its groups


def test_repeats_a_failed_seed_fails_the_configuration_and_a_finite_space_finishes() -> None:
    from ray.tune.search import Searcher

    s = _seeded_search([3, 4], n_points=3)
    ids = [f"t{i}" for i in range(6)]
    configs = [s.suggest(t) for t in ids]
    assert all(isinstance(c, dict) for c in configs)
    assert [c["seed"] for c in configs] == [3, 4, 3, 4, 3, 4]  # type: ignore[index]
    assert len({c["w"] for c in configs}) == 3  # type: ignore[index]
    assert s.suggest("t6") == Searcher.FINISHED  # 3 configurations x 2 seeds: done
    s.on_trial_complete("t0", {"m": 1.0, "training_iteration": 3})
    s.on_trial_complete("t1", None, error=True)
    for t in ids[2:]:
        s.on_trial_complete(t, {"m": 2.0, "training_iteration": 3})
    states = [t.state for t in s._ot_study.get_trials() if t.state != TrialState.PRUNED]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]


class _Trial:
    """What the scheduler reads of Ray's Trial: its id and config."""

    def __init__(self, trial_id: str, w: float, seed: int) -> None:
        self.trial_id = trial_id
        self.config = {"w": w, "seed": seed}


def test_seed_group_asha_judges_a_configuration_by_its_mean_over_seeds() -> None:
    from study.space import SeedGroupASHA

    sch = SeedGroupASHA(
        metric="m", mode="max", max_t=8, grace_period=2, reduction_factor=2, group_size=2
    )
    assert sch._rungs == [2, 4]
    a0, a1, b0, b1, c0, c1 = (_Trial(f"{w}{s}", w, s) for w in (1.0, 2.0, 3.0) for s in (0, 1))

    def res(t: int, v: float) -> dict:
        return {"m": v, "training_iteration": t}

    # configuration a arrives first at rung 2: it goes on whatever its values
    assert sch.on_trial_result(None, a0, res(2, 30.0)) == "CONTINUE"
    assert sch.on_trial_result(None, a1, res(2, 50.0)) == "CONTINUE"  # mean 40
    # b: one seed far below a's mean, the other far above; mean 41 >= 40 -> goes on,
    # where stock ASHA would have stopped b0 (20 < 30) on its own
    assert sch.on_trial_result(None, b0, res(2, 20.0)) == "CONTINUE"  # waits for b1
    assert sch.on_trial_result(None, b0, res(3, 21.0)) == "CONTINUE"
    assert sch.on_trial_result(None, b1, res(2, 62.0)) == "CONTINUE"
    # c: mean 35 < the median of [40, 41] -> stopped; its first seed at its next result
    assert sch.on_trial_result(None, c0, res(2, 36.0)) == "CONTINUE"
    assert sch.on_trial_result(None, c1, res(2, 34.0)) == "STOP"
    assert sch.on_trial_result(None, c0, res(3, 37.0)) == "STOP"
    # full budget: never stopped
    assert sch.on_trial_result(None, a0, res(8, 1.0)) == "CONTINUE"
    pickle.dumps(sch)  # Tune pickles its scheduler with the experiment


def test_seed_group_asha_minimises() -> None:
    from study.space import SeedGroupASHA

    sch = SeedGroupASHA(
        metric="m", mode="min", max_t=4, grace_period=1, reduction_factor=2, group_size=1
    )
    assert sch.on_trial_result(None, _Trial("a", 1.0, 0), {"m": 0.5, "training_iteration": 1})
    assert sch.on_trial_result(None, _Trial("b", 2.0, 0), {"m": 0.9, "training_iteration": 1}) == (
        "STOP"
    )
    assert sch.on_trial_result(None, _Trial("c", 3.0, 0), {"m": 0.1, "training_iteration": 1}) == (
        "CONTINUE"
    )


def test_a_finite_space_runs_an_unrun_point_when_redraws_run_out() -> None:
    """TPE after one start-up trial keeps proposing its incumbent; with no redraws left,
    the search takes the next configuration not run yet instead of a repeat."""
    from ray.tune.search import Searcher

    grid = [{"w": 1.0}, {"w": 4.0}, {"w": 16.0}]
    s = FidelityAwareOptunaSearch(
        4,
        grid=grid,
        max_redraws=0,
        space=_three_weights,
        metric="m",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=1),
    )
    seen = []
    for i in range(3):
        cfg = s.suggest(f"t{i}")
        assert isinstance(cfg, dict)
        seen.append(cfg["w"])
        s.on_trial_complete(f"t{i}", {"m": 50.0 - i, "training_iteration": 4})
    assert sorted(seen) == [1.0, 4.0, 16.0]
    assert s.repeats_skipped >= 1  # a repeat was drawn and replaced
    assert s.suggest("t3") == Searcher.FINISHED


def test_a_searcher_restored_from_an_older_snapshot_does_not_repeat_a_newer_trial(
    tmp_path: Path,
) -> None:
    """Ray restores the searcher from its last snapshot, but the persistent Optuna storage
    holds every trial asked since (a driver killed between two snapshots): the seeded
    sampler, rewound to the snapshot, draws the configuration of such a trial again. The
    storage is asked, and that draw is redrawn instead of run twice."""
    spec = load_spec(REPO / "search_spaces" / "quickstart.yaml")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")

    def search() -> FidelityAwareOptunaSearch:
        return FidelityAwareOptunaSearch(
            12,
            space=define_by_run(spec),
            metric=spec.objective.reported_metric,
            mode="max",
            sampler=build_sampler(spec),
            storage=storage,
            study_name="search",
        )

    s = search()
    s.suggest("a")  # the published point
    s.suggest("b")
    snapshot = pickle.dumps(s.__dict__)  # what Searcher.save writes
    newer = s.suggest("c")  # asked after the snapshot; then the driver dies
    again = search()
    again.__dict__.update(pickle.loads(snapshot))  # Searcher.restore
    first = again.suggest("c")
    assert isinstance(first, dict) and first != newer
    assert again.repeats_skipped == 1
