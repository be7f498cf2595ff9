"""Compile a study's search section into Optuna / Ray Tune objects.

- ``define_by_run(spec)``: an Optuna define-by-run function (conditional ``when``
  entries need it); names stay dotted (``losses.wkd_l.sinkhorn_reg``), which Ray
  does not nest (only ``/`` nests), and the trainable applies them as overrides.
- ``grid_points(spec)``: the full grid (conditional parameters dropped where
  inactive, duplicates removed).
- ``build_searcher`` / ``build_scheduler`` (the ``trial_scheduler:`` section): the Ray
  objects. Trials that a trial scheduler stops early reach Optuna as PRUNED with their
  intermediate values (``FidelityAwareOptunaSearch``), not as COMPLETE with a low-budget score
  (Ray's default).
- Repeats (``repeats: k``): every searched configuration runs as ``k`` Ray trials, one
  per seed of ``spec.search_seeds``; Optuna sees one trial per configuration, told the
  mean over its seeds (``FidelityAwareOptunaSearch``), the grid gets a seed axis.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.optuna.optuna_search import OptunaTrialState

from study.spec import Param, StudySpec
from study.spec_checks import active_params, condition_holds

#: Optuna's record of the search: its study name, and its default file in the study directory
OPTUNA_STUDY = "search"
OPTUNA_DB = "optuna.db"


class DefineByRun:
    """The Optuna define-by-run space (a picklable object: Ray checkpoints the searcher)."""

    def __init__(self, params: list[Param], trial_cfg: dict[str, Any]) -> None:
        self.params = params
        self.trial_cfg = trial_cfg

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = {}
        for p in self.params:
            if condition_holds(p, chosen, self.trial_cfg):
                chosen[p.name] = suggest(trial, p)


def define_by_run(spec: StudySpec) -> Callable[[Any], None]:
    return DefineByRun(list(spec.search), spec.trial)


def suggest(trial: Any, p: Param) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(p.name, list(p.values))
    if p.type == "int":
        step = int(p.step) if p.step else 1
        return trial.suggest_int(p.name, int(p.low), int(p.high), step=step, log=p.log)  # type: ignore[arg-type]
    return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)  # type: ignore[arg-type]


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    names = [p.name for p in spec.search]
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for combo in itertools.product(*(p.grid_values() for p in spec.search)):
        flat = active_params(spec, dict(zip(names, combo, strict=True)))
        key = repr(sorted(flat.items()))
        if key not in seen:
            seen.add(key)
            out.append(flat)
    return out


@dataclass
class RepeatGroup:
    """One searched configuration run under several seeds: one Optuna trial (``primary``,
    the first Ray trial), one Ray trial per seed (``members``: Ray trial id -> seed)."""

    primary: str
    config: dict[str, Any]
    seeds: list[int]
    members: dict[str, int] = field(default_factory=dict)
    pending: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> trial -> value
    reported: int = 0  # the last step told to Optuna (every seed had reached it)
    finals: dict[str, tuple[bool, int, float | None]] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return len(self.members) < len(self.seeds)


@contextlib.contextmanager
def _already_finished_in_storage() -> Iterator[None]:
    """Optuna's storage is persistent (``optuna.db``) while Ray restores the searcher from
    its last snapshot: after a killed driver the storage can be ahead, and a trial it has
    already finished resumes and reports again. There is nothing left to record then."""
    try:
        yield
    except UpdateFinishedTrialError:
        pass


#: Optuna user attribute of a trial asked and told PRUNED at once as a repeat (never run)
REDRAW_ATTR = "kdstudy_redraw"


class FidelityAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells a trial stopped before ``full_budget`` epochs as PRUNED,
    and never starts a configuration it has already run.

    Its intermediate values were already reported step by step (``on_trial_result``),
    so TPE ranks it by the budget it reached, below complete trials, instead of taking
    a low-budget score as a final result (Ray's default: COMPLETE with the last value).

    Repeated configurations: every searched configuration of a study runs under the same
    seeds (common random numbers), so one proposed again would train to the identical
    result; on categorical spaces TPE does propose its incumbent again. Such a draw is
    told to Optuna as PRUNED without values (no new information; TPE moves away from it)
    and another is drawn, up to ``max_redraws`` times; in a finite space (``grid``, all
    its configurations) the first configuration not yet run is taken then, and once all
    have run the search ends (``Searcher.FINISHED``) instead of repeating a trial.

    Seeds (``seeds`` of two or more, the study's ``repeats``): a configuration Optuna
    proposes runs as one Ray trial per seed (``{**config, "seed": s}``), issued one after
    the other. Its Optuna trial gets, at each epoch every seed has reached, the mean over
    seeds as its intermediate value; once every seed has ended, the mean final value
    (COMPLETE) if all ran the full budget, PRUNED if the scheduler stopped any of them
    early, FAIL if any failed.
    """

    # Ray's OptunaSearch state this class extends (private; tests/test_private_apis.py)
    _ot_study: Any
    _ot_trials: dict[str, Any]

    def __init__(
        self,
        full_budget: int,
        *,
        n_points: int | None = None,
        grid: list[dict[str, Any]] | None = None,
        max_redraws: int = 32,
        seeds: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._full_budget = full_budget
        self._grid = [dict(p) for p in grid] if grid is not None else None
        self._n_points = len(grid) if grid is not None else n_points
        self._max_redraws = max_redraws
        self._seeds = list(seeds) if seeds and len(seeds) > 1 else None
        self._groups: dict[str, RepeatGroup] = {}  # primary Ray trial id -> group
        self._group_of: dict[str, str] = {}  # member Ray trial id -> primary
        self.repeats_skipped = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self._seeds is None:
            return self._suggest_config(trial_id)
        group = next((g for g in self._groups.values() if g.open), None)
        if group is None:
            config = self._suggest_config(trial_id)
            if not isinstance(config, dict) or not config:
                return config  # None (wait) or FINISHED
            group = RepeatGroup(trial_id, dict(config), list(self._seeds))
            self._groups[trial_id] = group
        seed = group.seeds[len(group.members)]
        group.members[trial_id] = seed
        self._group_of[trial_id] = group.primary
        return {**group.config, "seed": seed}

    def _suggest_config(self, trial_id: str) -> dict[str, Any] | str | None:
        from ray.tune.search import Searcher

        for attempt in range(self._max_redraws + 1):
            config = super().suggest(trial_id)
            if not config or not callable(self._space) or not self._is_repeat(trial_id):
                return config
            if attempt == self._max_redraws and self._grid is None:
                break  # a large space that keeps repeating itself: run the repeat
            redraw = self._ot_trials.pop(trial_id)
            redraw.set_user_attr(REDRAW_ATTR, True)  # asked, never run (see _run_trials)
            self._ot_study.tell(redraw, None, state=OptunaTrialState.PRUNED)
            self.repeats_skipped += 1
            if self._n_points is not None and len(self._distinct_run()) >= self._n_points:
                return Searcher.FINISHED
            if attempt == self._max_redraws and self._grid is not None:
                # a finite space TPE keeps repeating: run its first point not yet run
                run = self._distinct_run()
                point = next((p for p in self._grid if repr(sorted(p.items())) not in run), None)
                if point is None:
                    return Searcher.FINISHED
                self._ot_study.enqueue_trial(point)
                return super().suggest(trial_id)
        return config

    @staticmethod
    def _key(trial: Any) -> str:
        return repr(sorted(trial.params.items()))

    def _run_trials(self) -> list[Any]:
        """Optuna trials Ray runs or ran: every trial of the study but the redraws skipped
        above. The study, not this searcher's map of its trials: a persistent storage also
        holds the trials asked after the snapshot a resumed searcher was restored from (the
        rewound sampler would draw their configurations again)."""
        return [
            t
            for t in self._ot_study.get_trials(deepcopy=False)
            if not t.user_attrs.get(REDRAW_ATTR)
        ]

    def _distinct_run(self) -> set[str]:
        return {self._key(t) for t in self._run_trials()}

    def _is_repeat(self, trial_id: str) -> bool:
        new = self._ot_trials[trial_id]
        key = self._key(new)
        return any(t.number != new.number and self._key(t) == key for t in self._run_trials())

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        with _already_finished_in_storage():
            self._on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        with _already_finished_in_storage():
            self._on_trial_complete(trial_id, result, error)

    def _on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        primary = self._group_of.get(trial_id)
        if primary is None:
            super().on_trial_result(trial_id, result)
            return
        group = self._groups[primary]
        if primary in self._completed_trials or result.get(self.metric) is None:
            return
        step = int(result.get("training_iteration", group.reported + 1))
        group.pending.setdefault(step, {})[trial_id] = float(result[self.metric])
        while len(group.pending.get(group.reported + 1, {})) == len(group.seeds):
            group.reported += 1
            values = group.pending.pop(group.reported).values()
            self._ot_trials[primary].report(statistics.fmean(values), group.reported)

    def _on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        primary = self._group_of.get(trial_id)
        if primary is None:
            self._tell(trial_id, result, error)
            return
        group = self._groups[primary]
        if trial_id in group.finals:
            return
        value = (result or {}).get(self.metric)
        reached = int((result or {}).get("training_iteration", 0))
        group.finals[trial_id] = (error, reached, None if value is None else float(value))
        if group.open or len(group.finals) < len(group.seeds):
            return
        finals = list(group.finals.values())
        if any(e for e, _, _ in finals):
            self._tell(primary, None, error=True)
        elif any(v is None for _, _, v in finals):
            self._tell(primary, None, error=False)  # no value: PRUNED
        else:
            mean = statistics.fmean(v for _, _, v in finals if v is not None)
            reached = min(r for _, r, _ in finals)
            self._tell(primary, {self.metric: mean, "training_iteration": reached}, error=False)

    def _tell(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        if (
            not error
            and result
            and trial_id in self._ot_trials
            and trial_id not in self._completed_trials
            and int(result.get("training_iteration", self._full_budget)) < self._full_budget
        ):
            self._ot_study.tell(self._ot_trials[trial_id], None, state=OptunaTrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


def startup_trials(spec: StudySpec) -> int:
    """TPE's random start-up sized to the budget: a third of the samples, 2..10."""
    if spec.searcher.startup_trials is not None:
        return spec.searcher.startup_trials
    return int(min(10, max(2, spec.samples // 3)))


def trial_count(spec: StudySpec) -> int:
    """Ray trials of the search: configurations x seeds per configuration."""
    if spec.searcher.kind == "grid":
        return len(grid_points(spec)) * spec.repeats
    return spec.samples * spec.repeats


def build_sampler(spec: StudySpec) -> Any:
    import optuna

    s = spec.searcher
    if s.kind == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(
        seed=s.seed,
        n_startup_trials=startup_trials(spec),
        multivariate=s.multivariate,
        constant_liar=True,  # several trials run at once: don't propose the same point twice
    )


def build_searcher(spec: StudySpec, full_budget: int, storage_url: str | None = None) -> Any:
    """The Tune search algorithm (None for grid and PBT: the variant generator is used).

    With ``storage_url`` Optuna records its study there (SQLite in the study directory by
    default, an RDB URL on clusters; the driver is its only writer), so ``optuna-dashboard``
    and Optuna's importance evaluators work on the study (``study/report.py``)."""
    from ray.tune.search import ConcurrencyLimiter

    if spec.trial_scheduler.kind == "pbt" or spec.searcher.kind == "grid":
        return None
    optuna_storage = None
    if storage_url is not None:
        import optuna

        optuna_storage = optuna.storages.RDBStorage(storage_url)

    finite = all(p.type == "categorical" for p in spec.search)
    searcher = FidelityAwareOptunaSearch(
        full_budget,
        grid=grid_points(spec) if finite else None,
        seeds=spec.search_seeds,
        space=define_by_run(spec),
        metric=spec.objective.reported_metric,
        mode=spec.objective.mode,
        sampler=build_sampler(spec),
        points_to_evaluate=[dict(p) for p in spec.points] or None,
        storage=optuna_storage,
        study_name=OPTUNA_STUDY if optuna_storage is not None else None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.concurrency)


def asha_milestones(epochs: int, grace: int, reduction_factor: float) -> list[int]:
    """ASHA's rungs below the full budget: grace, grace*rf, grace*rf^2, ... < epochs."""
    out, r = [], float(grace)
    while r < epochs:
        out.append(int(r))
        r *= reduction_factor
    return out


class SeedGroupASHA(FIFOScheduler):
    """Asynchronous successive halving over configurations run under several seeds.

    Stock ASHA judges each Ray trial alone, so with ``repeats`` one unlucky seed at a
    rung stops a configuration whose other seeds lead (measured: the grid's best
    configuration was lost this way, one seed at 35.0 while the others were at 39.9 and
    40.7). Here a configuration (its trials' config without ``seed``) is judged once
    every seed has reached the rung, on the mean over seeds, with ASHA's asynchronous
    rule: stop if the mean is below the ``1 - 1/rf`` quantile of the means recorded
    earlier at that rung (the first arrival goes on). Seeds that went on past the rung
    while a sibling had not reached it yet are stopped at their next result.
    """

    def __init__(
        self,
        *,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        group_size: int,
        time_attr: str = "training_iteration",
    ) -> None:
        super().__init__()
        self._metric = metric
        self._sign = 1.0 if mode == "max" else -1.0
        self._max_t = max_t
        self._rungs = asha_milestones(max_t, grace_period, reduction_factor)
        self._quantile = (1 - 1 / reduction_factor) * 100
        self._group_size = group_size
        self._time_attr = time_attr
        self._recorded: dict[int, list[float]] = {}  # rung -> configuration means
        self._waiting: dict[tuple[str, int], dict[str, float]] = {}  # (group, rung) -> seeds
        self._stopped: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode are fixed at construction

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        import numpy as np

        from study.leaderboard import config_group

        group = config_group({k: v for k, v in trial.config.items() if k != "base"})
        if group in self._stopped:
            return "STOP"
        t = int(result.get(self._time_attr, 0))
        if self._metric not in result or t >= self._max_t:
            return "CONTINUE"
        value = self._sign * float(result[self._metric])
        for rung in (r for r in self._rungs if r <= t):
            waiting = self._waiting.setdefault((group, rung), {})
            if trial.trial_id in waiting:
                continue
            waiting[trial.trial_id] = value
            if len(waiting) < self._group_size:
                continue
            mean = float(np.mean(list(waiting.values())))
            earlier = self._recorded.setdefault(rung, [])
            cutoff = float(np.percentile(earlier, self._quantile)) if earlier else None
            earlier.append(mean)
            if cutoff is not None and mean < cutoff:
                self._stopped.add(group)
                return "STOP"
        return "CONTINUE"

    def debug_string(self) -> str:
        return f"SeedGroupASHA: rungs {self._rungs}, {self._group_size} seeds per configuration"


def build_scheduler(spec: StudySpec, epochs: int) -> Any:
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    s = spec.trial_scheduler
    metric, mode = spec.objective.reported_metric, spec.objective.mode
    if s.kind == "asha" and spec.repeats > 1:
        return SeedGroupASHA(
            metric=metric,
            mode=mode,
            max_t=epochs,
            grace_period=s.grace_epochs(epochs),
            reduction_factor=s.reduction_factor,
            group_size=spec.repeats,
        )
    if s.kind == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=s.grace_epochs(epochs),
            reduction_factor=s.reduction_factor,
            metric=metric,
            mode=mode,
        )
    if s.kind == "median":
        return MedianStoppingRule(
            time_attr="training_iteration",
            grace_period=s.grace_epochs(epochs),
            min_samples_required=s.min_samples_required,
            metric=metric,
            mode=mode,
        )
    if s.kind == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=max(1, round(s.perturbation_interval * epochs)),
            hyperparam_mutations=pbt_mutations(spec),
            metric=metric,
            mode=mode,
            synch=False,  # async PBT (platform.md: synch + few checkpoints hung)
        )
    return FIFOScheduler()


def pbt_mutations(spec: StudySpec) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for p in spec.search:
        if p.type == "categorical":
            out[p.name] = list(p.values)
        elif p.type == "int":
            out[p.name] = tune.randint(int(p.low), int(p.high) + 1)  # type: ignore[arg-type]
        else:
            assert p.low is not None and p.high is not None  # validated in study/spec.py
            sample = tune.loguniform if p.log else tune.uniform
            out[p.name] = sample(p.low, p.high)
    return out


def param_space(spec: StudySpec) -> dict[str, Any]:
    """The Tuner's param_space for the searcher-less cases (grid, PBT)."""
    from ray import tune

    if spec.searcher.kind == "grid":
        space: dict[str, Any] = {"point": tune.grid_search(grid_points(spec))}
        if spec.repeats > 1:
            space["seed"] = tune.grid_search(spec.search_seeds)
        return space
    if spec.trial_scheduler.kind == "pbt":
        return pbt_mutations(spec)
    return {}
