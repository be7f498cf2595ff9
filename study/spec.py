"""The study YAML: schema, ``extends:``, and validation with one-line errors.

A study file is data only (``yaml.safe_load``). Sections:

- ``trial``: the fixed trial config (``trainables.config.TrialConfig`` as a mapping);
- ``search``: searched parameters by dotted path into ``trial``
  (``{type: float|int|categorical, low, high, log, step, values, grid, when}``);
- ``points``: configurations to evaluate first (published references), by the
  same dotted names;
- ``objective``: ``{metric, mode, use: best|last}``;
- ``searcher``: ``{kind: tpe|random|grid, seed, startup_trials, multivariate}``;
- ``trial_scheduler``: Ray's trial scheduler, ``{kind: fifo|asha|pbt|median, grace_period,
  reduction_factor, ...}``
  with epoch positions as fractions of the planned epochs;
- ``samples`` (searched configurations), ``concurrency``,
  ``resources: {cpu, gpu, custom: {name: N}}`` (``custom``: Ray custom resources, flat
  in ``StudySpec.resources``),
  ``seeds`` (baselines run under each), ``repeats`` (each searched configuration runs
  under the first ``repeats`` seeds and is ranked by its mean: ``samples x repeats``
  trials; default 1, one trial under ``trial.seed`` or the first seed),
  ``baselines: {name: {family: ..., losses: ..., handoff: ..., <other trial keys>}}``:
  a baseline runs its family's *published recipe* for the trial's teacher -> student
  pair (optimizer, losses, schedules; ``trainables.config.published_recipe``) and takes
  from ``trial`` only the task (``TASK_KEYS``); its entry's ``losses`` deep-merge into
  the recipe's (``null`` deletes a term; required for a family without a recipe), its
  other keys override,
  ``failure: {max_failures}``, ``checkpoints: {num_to_keep}``;
- ``final: {top_k, seeds}``: after the search, the best ``top_k`` searched
  configurations and every baseline are re-trained on the full training set under
  fresh ``seeds`` (never used while tuning; the same seeds for every arm, so the
  comparison is paired) and evaluated once on the test set;
- ``extends: other.yaml`` (relative to this file): deep-merged under this file;
  ``null`` deletes an inherited entry of ``search``, ``points`` or ``baselines``.

Every error is a ``SpecError`` whose message is one line:
``<file>: <key path>: <what is wrong> (<what is allowed>)``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from study.final import FinalSpec, parse_final
from study.spec_yaml import SpecError, deep_merge, load_yaml, merge_terms
from trainables.config import (
    RECIPE_FAMILIES,
    ConfigError,
    NetConfig,
    TrialConfig,
    get_path,
    published_recipe,
    with_overrides,
)

TOP_KEYS = (
    "name",
    "description",
    "extends",
    "trial",
    "search",
    "points",
    "objective",
    "searcher",
    "trial_scheduler",
    "samples",
    "concurrency",
    "resources",
    "seeds",
    "repeats",
    "baselines",
    "failure",
    "checkpoints",
    "final",
)
SEARCHERS = ("tpe", "random", "grid")
TRIAL_SCHEDULERS = ("fifo", "asha", "pbt", "median")
PARAM_TYPES = ("float", "int", "categorical")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Param:
    name: str  # dotted path into the trial config
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple[Any, ...] = ()
    grid: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high

    def grid_values(self) -> tuple[Any, ...]:
        if self.grid:
            return self.grid
        if self.type == "categorical":
            return self.values
        if self.type == "int" and self.step:
            assert self.low is not None and self.high is not None
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step)))
        return ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        for k in ("low", "high", "step"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.log:
            d["log"] = True
        if self.values:
            d["values"] = list(self.values)
        if self.grid:
            d["grid"] = list(self.grid)
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when.items()}
        return d


@dataclass(frozen=True)
class Objective:
    metric: str = "val/top1"
    mode: str = "max"
    use: str = "best"  # best: the best epoch's value (published trainers); last: final epoch

    @property
    def reported_metric(self) -> str:
        return f"{self.metric}_best" if self.use == "best" else self.metric


@dataclass(frozen=True)
class SearcherSpec:
    kind: str = "tpe"
    seed: int = 0
    startup_trials: int | None = None  # None: sized to the budget (samples // 3, 2..10)
    multivariate: bool = True


@dataclass(frozen=True)
class TrialSchedulerSpec:
    kind: str = "asha"
    grace_period: float = 0.25  # fraction of the planned epochs (first rung)
    reduction_factor: float = 2.0
    perturbation_interval: float = 0.1  # pbt, fraction of epochs
    min_samples_required: int = 3  # median

    def grace_epochs(self, epochs: int) -> int:
        """The first rung's epoch: never before the configured fraction (0.75 of 6 epochs
        is epoch 5; Python's round gave 4, a rung at 0.67 where the measured ranking
        agreement was +0.50 against +0.91 at epoch 5)."""
        return max(1, math.ceil(self.grace_period * epochs - 1e-9))


@dataclass(frozen=True)
class Baseline:
    name: str
    overrides: dict[str, Any]  # nested; merged onto the family's published recipe

    @property
    def family(self) -> str:
        return str(self.overrides.get("family", self.name))


#: what a baseline takes from the study's trial section: the task, never the recipe
TASK_KEYS = ("data", "teacher", "student", "epochs", "device", "amp", "final", "cost", "output")
BASELINE_NOTE = (
    "baselines run their published recipe (optimizer, losses, schedules of their family "
    "for the trial's teacher -> student pair); from the trial section they take only the "
    "task: " + ", ".join(TASK_KEYS)
)


@dataclass
class StudySpec:
    path: Path
    name: str
    description: str
    trial: dict[str, Any]
    search: list[Param]
    points: list[dict[str, Any]]
    objective: Objective
    searcher: SearcherSpec
    trial_scheduler: TrialSchedulerSpec
    samples: int
    concurrency: int
    resources: dict[str, float]
    seeds: list[int]
    baselines: list[Baseline]
    repeats: int
    max_failures: int
    num_to_keep: int | None
    raw: dict[str, Any]
    final: FinalSpec = field(default_factory=FinalSpec)

    @property
    def trial_config(self) -> TrialConfig:
        """The trial section, typed (validated when the spec was loaded): every default
        lives in ``trainables.config``, none is repeated here or in the driver."""
        return TrialConfig.from_dict(self.trial, "trial")

    @property
    def epochs(self) -> int:
        return self.trial_config.epochs

    @property
    def search_seeds(self) -> list[int]:
        """The trial seeds of every searched configuration (one trial per seed)."""
        if self.repeats == 1:
            return [int(self.trial.get("seed", self.seeds[0]))]
        return self.seeds[: self.repeats]

    def param(self, name: str) -> Param:
        for p in self.search:
            if p.name == name:
                return p
        raise KeyError(name)

    def baseline_config(self, b: Baseline, seed: int) -> dict[str, Any]:
        """The baseline's trial dict: the trial's task + its family's published recipe
        for the pair + its own entry (never the trial's optimizer, losses or schedules)."""
        task = {k: copy.deepcopy(self.trial[k]) for k in TASK_KEYS if k in self.trial}
        teacher = get_path(task, "teacher.arch", TrialConfig().teacher.arch)
        student = get_path(task, "student.arch", NetConfig().arch)
        recipe = published_recipe(b.family, str(teacher), str(student))
        over = copy.deepcopy(b.overrides)
        losses_over = over.pop("losses", None)
        handoff = over.pop("handoff", recipe.get("handoff"))
        if recipe["losses"] is None:
            losses = losses_over
        else:
            losses = merge_terms(recipe["losses"], losses_over or {})
        cfg = deep_merge(task, {"family": b.family, "optim": recipe["optim"]})
        cfg = deep_merge(cfg, over)
        cfg["losses"] = losses
        if handoff is not None:
            cfg["handoff"] = handoff
        cfg["seed"] = seed
        cfg["role"] = "baseline"
        return cfg

    def spec_hash(self) -> str:
        blob = json.dumps(self.raw, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def compiled(self) -> dict[str, Any]:
        """What --dry-run prints and the parent run stores."""
        return {
            "name": self.name,
            "epochs": self.epochs,
            "search": {p.name: p.to_dict() for p in self.search},
            "points": self.points,
            "objective": vars(self.objective) | {"reported": self.objective.reported_metric},
            "searcher": vars(self.searcher),
            "trial_scheduler": vars(self.trial_scheduler)
            | {"grace_epochs": self.trial_scheduler.grace_epochs(self.epochs)},
            "samples": self.samples,
            "concurrency": self.concurrency,
            "resources": self.resources,
            "seeds": self.seeds,
            "repeats": self.repeats,
            "search_seeds": self.search_seeds,
            "baselines": [b.name for b in self.baselines],
            "baselines_note": BASELINE_NOTE,
            "baseline_recipes": {b.name: self.baseline_recipe(b) for b in self.baselines},
            "final": vars(self.final) | {"seeds": list(self.final.seeds)},
        }

    def baseline_recipe(self, b: Baseline) -> dict[str, Any]:
        """A baseline's resolved optimizer, losses and hand-off (what the dry run shows)."""
        cfg = TrialConfig.from_dict(self.baseline_config(b, self.seeds[0]))
        plain = cfg.to_dict()
        losses = {}
        for name, term in plain["losses"].items():
            term["weight_schedule"] = cfg.losses[name].weight_schedule.describe()
            losses[name] = term
        out = {"family": cfg.family, "optim": plain["optim"], "losses": losses}
        if cfg.handoff is not None:
            w, kl = cfg.handoff.schedules()
            out["handoff"] = {"w": w.describe(), "kl": kl.describe()}
        return out


# -- loading ----------------------------------------------------------------------------
def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Load, merge, apply CLI overrides (dotted top-level paths) and validate."""
    path = Path(path)
    raw = load_yaml(path)
    for k, v in (overrides or {}).items():
        cur = raw
        keys = k.split(".")
        for key in keys[:-1]:
            cur = cur.setdefault(key, {})
        cur[keys[-1]] = v
    return validate(raw, path)


def validate(raw: dict[str, Any], path: Path) -> StudySpec:
    fname = path.name
    err = _Err(fname)
    for k in raw:
        if k not in TOP_KEYS:
            err(k, "unknown section", f"allowed: {', '.join(TOP_KEYS)}")
    trial = raw.get("trial")
    if not isinstance(trial, dict):
        err("trial", "missing or not a mapping", "the fixed trial config is required")
    try:
        epochs = TrialConfig.from_dict(trial, "trial").epochs
    except ConfigError as exc:
        raise SpecError(f"{fname}: {exc}") from None

    search = _parse_search(raw.get("search") or {}, trial, err)
    names = {p.name for p in search}
    points = _parse_points(raw.get("points") or [], search, err)
    objective = _dc(Objective, raw.get("objective"), "objective", err)
    if objective.mode not in ("max", "min"):
        err("objective.mode", f"{objective.mode!r} is not allowed", "allowed: max, min")
    if objective.use not in ("best", "last"):
        err("objective.use", f"{objective.use!r} is not allowed", "allowed: best, last")
    if objective.metric.split("/")[0] not in ("val", "train", "diag"):
        err("objective.metric", f"{objective.metric!r}", "a reported metric such as val/top1")
    searcher = _dc(SearcherSpec, raw.get("searcher"), "searcher", err)
    if searcher.kind not in SEARCHERS:
        err(
            "searcher.kind", f"{searcher.kind!r} is not allowed", f"allowed: {', '.join(SEARCHERS)}"
        )
    trial_scheduler = _dc(TrialSchedulerSpec, raw.get("trial_scheduler"), "trial_scheduler", err)
    if trial_scheduler.kind not in TRIAL_SCHEDULERS:
        err(
            "trial_scheduler.kind",
            f"{trial_scheduler.kind!r} is not allowed",
            f"allowed: {', '.join(TRIAL_SCHEDULERS)}",
        )
    if not 0 < trial_scheduler.grace_period <= 1:
        err(
            "trial_scheduler.grace_period",
            f"{trial_scheduler.grace_period}",
            "a fraction of epochs in (0, 1]",
        )
    if trial_scheduler.reduction_factor <= 1:
        err(
            "trial_scheduler.reduction_factor",
            f"{trial_scheduler.reduction_factor}",
            "must be > 1",
        )
    if trial_scheduler.kind == "pbt" and searcher.kind != "random":
        err(
            "trial_scheduler.kind",
            "pbt cannot be combined with a search algorithm",
            "use searcher.kind: random with pbt (Ray: PBT mutates, it does not search)",
        )
    if not isinstance(searcher.seed, int) or isinstance(searcher.seed, bool):
        err("searcher.seed", f"{searcher.seed!r}", "an integer")
    st = searcher.startup_trials
    if st is not None and (isinstance(st, bool) or not isinstance(st, int) or st < 1):
        err("searcher.startup_trials", f"{st!r}", "an integer >= 1, or null (sized to samples)")
    if not math.isfinite(trial_scheduler.reduction_factor):
        err(
            "trial_scheduler.reduction_factor",
            f"{trial_scheduler.reduction_factor}",
            "a finite number > 1",
        )
    if not 0 < trial_scheduler.perturbation_interval <= 1:
        err(
            "trial_scheduler.perturbation_interval",
            f"{trial_scheduler.perturbation_interval}",
            "a fraction of epochs in (0, 1]",
        )
    _int(trial_scheduler.min_samples_required, "trial_scheduler.min_samples_required", err, 1)
    samples = _int(raw.get("samples", 16), "samples", err, minimum=1)
    concurrency = _int(raw.get("concurrency", 2), "concurrency", err, minimum=1)
    res = _parse_resources(raw.get("resources") or {}, err)
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
    ):
        err("seeds", f"{seeds!r}", "a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        err("seeds", f"{seeds!r} has repeats", "distinct integers")
    repeats = _int(raw.get("repeats", 1), "repeats", err, minimum=1)
    if repeats > len(seeds):
        err(
            "repeats",
            f"{repeats} but seeds has {len(seeds)} ({seeds})",
            f"at most len(seeds) = {len(seeds)}, or list more seeds",
        )
    if repeats > 1 and trial.get("seed") is not None:
        err(
            "trial.seed",
            f"{trial['seed']!r} fixed while repeats: {repeats} runs every configuration under "
            f"seeds {seeds[:repeats]}",
            "remove trial.seed, or set repeats: 1",
        )
    if repeats > 1 and trial_scheduler.kind == "pbt":
        err(
            "repeats",
            f"{repeats} with trial_scheduler.kind: pbt",
            "repeats: 1 (PBT mutates trials)",
        )
    if repeats > 1 and any(p.name == "seed" for p in search):
        err("repeats", f"{repeats} with seed searched", "search the seed or repeat, not both")
    baselines = _parse_baselines(raw.get("baselines") or {}, trial, seeds, err)
    failure = _section(raw, "failure", ("max_failures",), err)
    max_failures = _int(failure.get("max_failures", 2), "failure.max_failures", err, minimum=0)
    ckpts = _section(raw, "checkpoints", ("num_to_keep",), err)
    # Retention: resuming needs only the latest checkpoint (best/last weights, logits and
    # per-class accuracy are kept apart, in the trial's output folder); PBT exploits copy
    # donors' checkpoints, so it keeps them all (platform.md: a deleted donor hung PBT).
    num_to_keep = ckpts.get("num_to_keep", "auto")
    if num_to_keep == "auto":
        num_to_keep = None if trial_scheduler.kind == "pbt" else 2
    elif num_to_keep is not None:
        num_to_keep = _int(num_to_keep, "checkpoints.num_to_keep", err, minimum=1)
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        # the name becomes a folder (studies/<name>) and an MLflow experiment: no path
        # separators, no "..", nothing that could write outside the study directory
        err(
            "name",
            f"{str(name)[:80]!r}",
            "letters, digits, '.', '_', '-'; starting with a "
            "letter or digit; at most 100 characters",
        )
    if not isinstance(raw.get("description", ""), str):
        err("description", f"{str(raw['description'])[:80]!r}", "a string")
    final = parse_final(raw.get("final"), seeds, trial, search, err)
    spec = StudySpec(
        path=path.resolve(),
        name=str(name),
        description=str(raw.get("description", "")),
        trial=trial,
        search=search,
        points=points,
        objective=objective,
        searcher=searcher,
        trial_scheduler=trial_scheduler,
        samples=samples,
        concurrency=concurrency,
        resources=res,
        seeds=list(seeds),
        baselines=baselines,
        repeats=repeats,
        max_failures=max_failures,
        num_to_keep=num_to_keep,
        raw=raw,
        final=final,
    )
    if searcher.kind == "grid":
        for p in search:
            if not p.grid_values():
                err(f"search.{p.name}.grid", "missing", "grid search needs a grid: [values] list")
    if not names and searcher.kind != "grid" and samples > 1 and not points:
        err("search", "no searched parameters", "add entries under search:, or set samples: 1")
    from study.spec_checks import check_fidelity  # it imports this module

    check_fidelity(spec, epochs, err)
    return spec


class _Err:
    def __init__(self, fname: str) -> None:
        self.fname = fname

    def __call__(self, key: str, what: str, allowed: str = "") -> NoReturn:
        tail = f" ({allowed})" if allowed else ""
        raise SpecError(f"{self.fname}: {key}: {what}{tail}")


def _section(raw: dict[str, Any], key: str, allowed: tuple[str, ...], err: _Err) -> dict[str, Any]:
    """An optional mapping section with a fixed set of keys."""
    section = raw.get(key)
    if section is None:
        return {}
    if not isinstance(section, dict):
        err(key, f"{section!r}", f"a mapping {{{', '.join(allowed)}}}")
    for k in section:
        if k not in allowed:
            err(f"{key}.{k}", "unknown key", f"allowed: {', '.join(allowed)}")
    return section


#: Ray's own resource names, refused as custom names (any case): cpu/gpu have their keys
RESERVED_RESOURCES = ("cpu", "gpu", "memory", "object_store_memory")
CUSTOM_RESOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _resource_amount(v: Any, key: str, err: _Err, allowed: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
        err(key, f"{v!r}", allowed)
    return float(v)


def _parse_resources(resources: Any, err: _Err) -> dict[str, float]:
    """``resources: {cpu, gpu, custom: {name: amount}}`` -> the flat per-trial request Ray
    takes: ``{"cpu": 1.0, "gpu": 0.0, <custom name>: amount, ...}`` (custom resources are
    those a node offers with ``ray start --resources='{"name": N}'``)."""
    if not isinstance(resources, dict):
        err("resources", f"{resources!r}", "a mapping {cpu: N, gpu: fraction, custom: {name: N}}")
    for k in resources:
        if k not in ("cpu", "gpu", "custom"):
            err(f"resources.{k}", "unknown key", "allowed: cpu, gpu, custom")
    res = {
        k: _resource_amount(
            resources.get(k, default),
            f"resources.{k}",
            err,
            "a finite number >= 0 (gpu may be fractional, e.g. 0.5)",
        )
        for k, default in (("cpu", 1), ("gpu", 0))
    }
    custom = resources.get("custom")
    if custom is None:
        custom = {}
    if not isinstance(custom, dict):
        err("resources.custom", f"{custom!r}", "a mapping {name: amount} of Ray custom resources")
    for name, v in custom.items():
        key = f"resources.custom.{name}"
        if not isinstance(name, str) or not CUSTOM_RESOURCE_NAME.fullmatch(name):
            err(
                key,
                f"{name!r} is not a resource name",
                "letters, digits, _ . - (not first: a digit, . or -)",
            )
        if name.lower() in RESERVED_RESOURCES:
            err(
                key,
                f"{name!r} is one of Ray's own resources",
                "a custom name; set CPUs and GPUs with resources.cpu / resources.gpu",
            )
        res[name] = _resource_amount(v, key, err, "a finite number >= 0")
    return res


def _int(v: Any, key: str, err: _Err, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        err(key, f"{v!r}", f"an integer >= {minimum}")
    return int(v)


def _dc(cls: type, raw: Any, key: str, err: _Err) -> Any:
    raw = raw or {}
    if not isinstance(raw, dict):
        err(key, f"{raw!r}", "a mapping")
    fields_: dict[str, Any] = getattr(cls, "__dataclass_fields__", {})
    allowed = list(fields_)
    for k, v in raw.items():
        if k not in allowed:
            err(f"{key}.{k}", "unknown key", f"allowed: {', '.join(allowed)}")
        default = fields_[k].default
        if isinstance(default, bool) != isinstance(v, bool):
            err(f"{key}.{k}", f"{v!r}", f"expected {type(default).__name__}")
        if isinstance(default, int | float) and not isinstance(v, int | float):
            err(f"{key}.{k}", f"{v!r}", "expected a number")
        if isinstance(default, int) and not isinstance(default, bool) and not isinstance(v, int):
            err(f"{key}.{k}", f"{v!r}", "expected an integer")
        if isinstance(v, float) and math.isnan(v):
            err(f"{key}.{k}", f"{v!r}", "expected a number, not NaN")
        if isinstance(default, str) and not isinstance(v, str):
            err(f"{key}.{k}", f"{v!r}", "expected a string")
    return cls(**raw)


def _parse_search(raw: Any, trial: dict[str, Any], err: _Err) -> list[Param]:
    if not isinstance(raw, dict):
        err("search", f"{raw!r}", "a mapping of dotted trial keys -> parameter specs")
    out: list[Param] = []
    seen: set[str] = set()
    for name, spec in raw.items():
        key = f"search.{name}"
        if spec is None:  # deleted by an extending file
            continue
        if not isinstance(spec, dict):
            err(key, f"{spec!r}", "a mapping {type, low, high, log, values, when}")
        allowed = ("type", "low", "high", "log", "step", "values", "grid", "when")
        for k in spec:
            if k not in allowed:
                err(f"{key}.{k}", "unknown key", f"allowed: {', '.join(allowed)}")
        tp = spec.get("type")
        if tp not in PARAM_TYPES:
            err(f"{key}.type", f"{tp!r}", f"allowed: {', '.join(PARAM_TYPES)}")
        when: dict[str, tuple[Any, ...]] = {}
        if not isinstance(spec.get("when") or {}, dict):
            err(f"{key}.when", f"{spec['when']!r}", "a mapping {earlier parameter: value(s)}")
        for dep, val in (spec.get("when") or {}).items():
            if dep not in seen and get_path(trial, dep, _MISSING) is _MISSING:
                err(
                    f"{key}.when.{dep}",
                    "refers to neither an earlier searched parameter nor a trial key",
                    "list the parameter it depends on above it",
                )
            when[dep] = tuple(val) if isinstance(val, list) else (val,)
        if tp == "categorical":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                err(f"{key}.values", f"{values!r}", "a non-empty list")
            for v in values:
                if v is not None and not isinstance(v, bool | int | float | str):
                    err(f"{key}.values", f"{v!r}", "values must be null, bool, number or string")
            p = Param(name, tp, values=tuple(values), grid=tuple(spec.get("grid") or ()), when=when)
            for g in p.grid:
                if g not in p.values:
                    err(f"{key}.grid", f"{g!r} is not one of the values", f"allowed: {values}")
        else:
            low: Any = spec.get("low")
            high: Any = spec.get("high")
            for k, v in (("low", low), ("high", high)):
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    err(f"{key}.{k}", f"{v!r}", "a finite number")
            if low >= high:
                err(key, f"low {low} >= high {high}", "low < high")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                err(f"{key}.log", f"{log!r}", "true or false")
            if log and low <= 0:
                err(f"{key}.low", f"{low}", "log scale needs low > 0")
            if tp == "int" and (not float(low).is_integer() or not float(high).is_integer()):
                err(key, f"low/high {low}/{high}", "integers for type: int")
            step = spec.get("step")
            if step is not None and (
                isinstance(step, bool)
                or not isinstance(step, int | float)
                or not 0 < step < math.inf
                or (tp == "int" and not float(step).is_integer())
            ):
                err(f"{key}.step", f"{step!r}", "a finite number > 0 (an integer for type: int)")
            grid = tuple(spec.get("grid") or ())
            p = Param(name, tp, float(low), float(high), log, step, (), grid, when)
            for g in grid:
                if not p.contains(g):
                    err(f"{key}.grid", f"{g!r} outside [{low}, {high}]", "grid values in range")
        # the path must be a real trial key: build the config with every categorical value
        # (each may be of the wrong type) or the range's first value, under its ``when``
        probes: list[Any] = list(p.values) if p.type == "categorical" else [p.low]
        active = {dep: allowed[0] for dep, allowed in when.items() if allowed}
        for probe in probes:
            if p.type == "int":
                probe = int(probe)
            try:
                TrialConfig.from_dict(with_overrides(trial, {**active, name: probe}), "trial")
            except ConfigError as exc:
                raise SpecError(f"{err.fname}: {key}: {exc.path}: {exc.detail}") from None
        out.append(p)
        seen.add(name)
    return out


_MISSING = object()


def _parse_points(raw: Any, search: list[Param], err: _Err) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        err("points", f"{raw!r}", "a list of {searched name: value} mappings")
    by_name = {p.name: p for p in search}
    out = []
    for i, point in enumerate(raw):
        if point is None:
            continue
        if not isinstance(point, dict):
            err(f"points[{i}]", f"{point!r}", "a mapping of searched names to values")
        for k, v in point.items():
            if k not in by_name:
                err(
                    f"points[{i}].{k}",
                    "not a searched parameter",
                    f"searched: {', '.join(by_name)}",
                )
            if not by_name[k].contains(v):
                err(f"points[{i}].{k}", f"{v!r} is outside the searched range", _range(by_name[k]))
        out.append(dict(point))
    return out


def _range(p: Param) -> str:
    if p.type == "categorical":
        return f"allowed: {list(p.values)}"
    return f"allowed: [{p.low:g}, {p.high:g}]"


def _parse_baselines(
    raw: Any, trial: dict[str, Any], seeds: list[int], err: _Err
) -> list[Baseline]:
    if not isinstance(raw, dict):
        err("baselines", f"{raw!r}", "a mapping name -> {losses: ..., other trial keys}")
    out = []
    for name, over in raw.items():
        if over is None:
            continue
        if not isinstance(over, dict):
            err(f"baselines.{name}", f"{over!r}", "a mapping {family: ..., <trial keys>}")
        family = over.get("family", name)
        if not isinstance(family, str):
            err(f"baselines.{name}.family", f"{family!r}", "a family name (a string)")
        if family not in RECIPE_FAMILIES and not isinstance(over.get("losses"), dict):
            err(
                f"baselines.{name}",
                f"family {family!r} has no published recipe and no losses: mapping",
                f"families with a recipe: {', '.join(RECIPE_FAMILIES)}; or give losses:",
            )
        if "losses" in over and not isinstance(over["losses"], dict):
            err(f"baselines.{name}.losses", f"{over['losses']!r}", "a mapping of loss terms")
        b = Baseline(str(name), over)
        tmp = StudySpec.__new__(StudySpec)
        tmp.trial = trial
        try:
            TrialConfig.from_dict(StudySpec.baseline_config(tmp, b, seeds[0]), f"baselines.{name}")
        except ConfigError as exc:
            raise SpecError(f"{err.fname}: {exc}") from None
        out.append(b)
    return out


# -- multi-fidelity checks ----------------------------------------------------------------
