"""The private Ray / Optuna state the driver relies on, where no public API exists.

Each reach lives in one place (``study.ray_phases.reattach_callbacks``; Ray's ``OptunaSearch``
internals inside ``study.space.FidelityAwareOptunaSearch``). These tests fail loudly,
naming the attribute, if an upgrade of Ray or Optuna moves it.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune

from study.ray_phases import reattach_callbacks
from study.space import build_searcher
from study.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def test_a_tuner_keeps_its_run_config_where_reattach_callbacks_sets_it(tmp_path: Path) -> None:
    tuner = tune.Tuner(
        lambda config: None, run_config=tune.RunConfig(name="t", storage_path=str(tmp_path))
    )
    marker = [tune.Callback()]
    reattach_callbacks(tuner, marker)
    assert tuner._local_tuner._run_config.callbacks is marker


def test_optuna_search_keeps_the_state_the_searcher_extends() -> None:
    spec = load_spec(REPO / "search_spaces" / "quickstart.yaml")
    limiter = build_searcher(spec, spec.epochs)
    searcher = limiter.searcher  # ConcurrencyLimiter's public attribute
    searcher.set_search_properties(spec.objective.reported_metric, spec.objective.mode, {})
    config = searcher.suggest("t1")
    assert isinstance(config, dict)
    # the private attributes FidelityAwareOptunaSearch reads and writes
    for name in ("_ot_study", "_ot_trials", "_completed_trials"):
        assert hasattr(searcher, name), f"Ray's OptunaSearch no longer has {name}"
    assert "t1" in searcher._ot_trials
    assert hasattr(searcher._ot_study, "tell") and hasattr(searcher._ot_study, "enqueue_trial")
