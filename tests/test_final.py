"""Final runs are planned from the tuning ranking: complete configurations only, fresh
seeds disjoint from every tuning seed, the same seeds for every arm (a paired design),
the test split and the full training set, and the same arms again on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.final import base_key, choose_arms, final_bases, parse_base_key, plan
from study.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]


def row(group: str, value: float, complete: bool, **over: object) -> dict:
    return {"config_group": group, "value": value, "complete": complete, "overrides": over}


def test_choose_arms_takes_complete_configurations_in_rank_order() -> None:
    searched = [
        row("a", 99.0, False, **{"losses.kl.weight": 9.0}),  # best value but stopped early
        row("b", 97.0, True, **{"losses.kl.weight": 2.0}),
        row("c", 96.0, True, **{"losses.kl.weight": 1.0}),
    ]
    arms = choose_arms(searched, ["kd", "gkl"], "wkl", top_k=2)
    assert [a.name for a in arms] == ["wkl-1", "wkl-2", "gkl", "kd"]
    assert arms[0].config_group == "b" and arms[0].overrides == {"losses.kl.weight": 2.0}
    assert arms[1].tuning_value == 96.0 and arms[2].kind == "baseline"


def test_final_bases_pair_every_arm_on_the_same_fresh_seeds() -> None:
    search = {"family": "wkl", "seed": 0, "epochs": 4, "losses": {"ce": {}, "kl": {}}}
    bases = {"search": search, "kd:0": {"family": "kd", "seed": 0, "role": "baseline"}}
    arms = choose_arms([row("b", 1.0, True, **{"losses.kl.weight": 2.0})], ["kd"], "wkl", 1)
    out = final_bases(arms, [1000, 1001], bases, tuning_seed=0)
    assert sorted(out) == sorted(base_key(a, s) for a in ("wkl-1", "kd") for s in (1000, 1001))
    for key, cfg in out.items():
        arm, seed = parse_base_key(key) or ("", -1)
        assert cfg["seed"] == seed and cfg["final"] is True and cfg["role"] == "final"
    assert out[base_key("wkl-1", 1000)]["losses"]["kl"]["weight"] == 2.0
    assert bases["search"]["seed"] == 0 and "final" not in bases["search"]  # not mutated
    assert parse_base_key("kd:0") is None


def test_plan_is_read_back_on_resume(tmp_path: Path) -> None:
    search = {"family": "wkl", "seed": 0, "epochs": 4}
    bases = {"search": search, "kd:0": {"family": "kd", "seed": 0}}
    ranked = {"searched": [row("b", 1.0, True, x=1), row("c", 0.5, True, x=2)]}
    kw = dict(family="wkl", baselines=["kd"], top_k=1, seeds=[7, 8], tuning_seed=0)
    arms, first = plan(tmp_path, ranked, bases, **kw)  # type: ignore[arg-type]
    # a resumed driver whose ranking came out differently still runs the chosen arms
    reranked = {"searched": [row("c", 2.0, True, x=2), row("b", 1.0, True, x=1)]}
    arms2, second = plan(tmp_path, reranked, bases, **kw)  # type: ignore[arg-type]
    assert arms2 == arms and second == first and arms[0].overrides == {"x": 1}


def write_spec(tmp_path: Path, final: object, **top: object) -> Path:
    raw = {"name": "t", "extends": str(REPO / "search_spaces" / "quickstart.yaml"), **top}
    if final is not None:
        raw["final"] = final
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_final_defaults_are_fresh_and_typed(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, None))
    assert spec.final.top_k == 1 and len(spec.final.seeds) >= 2
    assert not set(spec.final.seeds) & set(spec.seeds)
    assert spec.compiled()["final"]["seeds"] == list(spec.final.seeds)


@pytest.mark.parametrize(
    ("final", "top", "needle"),
    [
        ({"seeds": [0, 5]}, {}, "final.seeds: [0] were used while tuning"),
        ({"seeds": [9, 10]}, {"seeds": [9, 1]}, "final.seeds: [9] were used while tuning"),
        ({"seeds": [5]}, {}, "final.seeds: [5] (a list of at least 2 integers"),
        ({"seeds": [5, 5]}, {}, "final.seeds: [5, 5] has repeats"),
        ({"top_k": 0}, {}, "final.top_k"),
        ({"runs": 3}, {}, "final.runs: unknown key (allowed: top_k, seeds)"),
        ("yes", {}, "final: 'yes'"),
    ],
)
def test_bad_final_sections_are_refused_in_one_line(
    tmp_path: Path, final: object, top: dict, needle: str
) -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(write_spec(tmp_path, final, **top))
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg, msg


def test_stored_urls_keep_their_form_and_lose_credentials() -> None:
    from study.cli_checks import without_userinfo as _without_userinfo

    assert _without_userinfo("sqlite:////abs/optuna.db") == "sqlite:////abs/optuna.db"
    assert _without_userinfo("http://user:pw@mlflow:5000") == "http://mlflow:5000"
    assert "pw" not in _without_userinfo("postgresql://kd:pw@db:5432/optuna")
