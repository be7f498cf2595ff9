"""The leaderboard groups a searched configuration's seeds and ranks configurations by
their mean; complete configurations (every seed ran every epoch) come first."""

from __future__ import annotations

import statistics

from study.leaderboard import TrialSummary, config_group, leaderboard


def trial(tid: str, seed: int, value: float, w: float, epochs: int = 4, role: str = "trial"):
    return TrialSummary(
        trial_id=tid,
        role=role,
        name="kd" if role == "baseline" else "wkl",
        seed=seed,
        value=value,
        epochs=epochs,
        planned_epochs=4,
        status="TERMINATED",
        overrides={"losses.kl.weight": w, "seed": seed} if role == "trial" else {},
    )


def test_config_group_ignores_the_seed_only() -> None:
    a = config_group({"losses.kl.weight": 1.0, "seed": 0})
    assert a == config_group({"seed": 1, "losses.kl.weight": 1.0})
    assert a != config_group({"losses.kl.weight": 2.0, "seed": 0})


def test_leaderboard_ranks_configurations_by_their_mean_over_seeds() -> None:
    trials = [
        # w=1: the best single trial (90) but a worse mean than w=2
        trial("a0", 0, 90.0, 1.0),
        trial("a1", 1, 70.0, 1.0),
        trial("b0", 0, 85.0, 2.0),
        trial("b1", 1, 84.0, 2.0),
        # w=4: best mean, but seed 1 was stopped early -> ranked after complete ones
        trial("c0", 0, 95.0, 4.0),
        trial("c1", 1, 94.0, 4.0, epochs=2),
        trial("k0", 0, 80.0, 0.0, role="baseline"),
        trial("k1", 1, 82.0, 0.0, role="baseline"),
    ]
    table, summary = leaderboard(trials, "val/top1_best", "max", repeats=2)
    rows = summary["searched"]
    assert [r["trial_ids"] for r in rows] == [["b0", "b1"], ["a0", "a1"], ["c0", "c1"]]
    assert rows[0]["value"] == statistics.fmean([85.0, 84.0])
    assert rows[0]["std"] == statistics.stdev([85.0, 84.0]) and rows[0]["n"] == 2
    assert [r["complete"] for r in rows] == [True, True, False]
    assert rows[2]["epochs"] == 2 and "seed" not in rows[0]["overrides"]
    assert len(summary["trials"]) == 6  # per-trial rows are kept too
    assert "(stopped early)" in table.splitlines()[-6]
    assert f"best searched - kd: {84.5 - 81.0:+.3f}" in table
    # a configuration with fewer seeds than repeats is not complete
    _, partial = leaderboard(trials[:1], "val/top1_best", "max", repeats=2)
    assert partial["searched"][0]["complete"] is False


def test_leaderboard_minimises_when_asked() -> None:
    trials = [trial("a0", 0, 0.5, 1.0), trial("b0", 0, 0.2, 2.0)]
    _, summary = leaderboard(trials, "val/loss", "min")
    assert [r["trial_id"] for r in summary["searched"]] == ["b0", "a0"]
    assert all(r["complete"] for r in summary["searched"])
