"""From a real small study (digits) to a report: the final step run on its own
(``study/final.py``), then the report (``study/report.py``), checked against the runs
MLflow stored: fresh final seeds disjoint from every tuning seed, the test split used by
final runs only, and each Δ with its interval and p-values recomputed independently."""

from __future__ import annotations

import base64
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as sps

from tests.conftest import shared_teachers
from tests.test_study_e2e import ENV, REPO, runs_of

FINAL = [sys.executable, str(REPO / "study" / "final.py")]
REPORT = [sys.executable, str(REPO / "study" / "report.py")]


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_final_step_and_report_match_the_stored_runs(tmp_path: Path) -> None:
    storage = tmp_path / "st"
    study = [sys.executable, str(REPO / "study" / "run.py")]
    study += ["--space", str(REPO / "search_spaces" / "quickstart.yaml")]
    study += ["--storage", str(storage), "--teachers-dir", str(shared_teachers())]
    first = run([*study, "--num-samples", "3", "--max-epochs", "3", "--skip-final"], tmp_path)
    # without final runs the report says so and makes no claim
    assert "No final runs yet" in first.stdout
    assert not (storage / "final").exists()

    out = run([*FINAL, "--study", str(storage)], tmp_path).stdout
    assert "Final runs: last-epoch test top-1" in out
    run([*REPORT, "--study", str(storage)], tmp_path)

    spec = json.loads((storage / "spec.json").read_text())
    arms = json.loads((storage / "final" / "arms.json").read_text())
    final_seeds = set(arms["seeds"])
    client, parents, children = runs_of(storage, "quickstart")
    final = [c for c in children if c.data.tags["role"] == "final"]
    tuning = [c for c in children if c.data.tags["role"] != "final"]
    names = [a["name"] for a in arms["arms"]]
    assert len(final) == len(names) * len(final_seeds) == 4 * 3
    # fresh seeds: no tuning run used any of them; every arm ran every final seed
    assert not final_seeds & {int(c.data.tags["seed"]) for c in tuning}
    assert not final_seeds & set(spec.get("seeds", [0]))
    by_arm: dict[str, dict[int, float]] = {}
    for c in final:
        assert c.info.status == "FINISHED" and c.data.tags["split"] == "test"
        assert not any(k.startswith("val/") for k in c.data.metrics)
        assert c.info.run_name == f"final/{c.data.tags['arm']}-seed{c.data.tags['seed']}"
        by_arm.setdefault(c.data.tags["arm"], {})[int(c.data.tags["seed"])] = c.data.metrics[
            "test/top1"
        ]
    assert {a: set(v) for a, v in by_arm.items()} == {a: final_seeds for a in names}
    # the test split was evaluated by final runs only
    assert all(not any(k.startswith("test/") for k in c.data.metrics) for c in tuning)

    summary = json.loads((storage / "report" / "summary.json").read_text())
    best = next(a["name"] for a in arms["arms"] if a["kind"] == "searched")
    comps = {c["name_b"]: c for c in summary["comparisons"]}
    assert set(comps) == {"kd", "wkd_l", "gkl"}
    raw_p = {}
    for b, comp in comps.items():
        seeds = sorted(final_seeds)
        d = [by_arm[best][s] - by_arm[b][s] for s in seeds]
        n = len(d)
        assert comp["name_a"] == best and comp["seeds"] == seeds
        assert comp["delta"] == pytest.approx(statistics.fmean(d), abs=1e-9)
        sd = statistics.stdev(d)
        if sd > 0:
            half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
            assert comp["ci_low"] == pytest.approx(statistics.fmean(d) - half, abs=1e-9)
            assert comp["ci_high"] == pytest.approx(statistics.fmean(d) + half, abs=1e-9)
            t = statistics.fmean(d) / (sd / math.sqrt(n))
            raw_p[b] = 2 * sps.t.sf(abs(t), n - 1)
            assert comp["p_value"] == pytest.approx(raw_p[b], rel=1e-9, abs=1e-12)
        wins = sum(1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in d)
        assert comp["prob_improvement"] == pytest.approx(wins / n)
    if len(raw_p) == len(comps):  # Holm by hand: sorted ascending, running max of (m-i)p
        order = sorted(raw_p, key=raw_p.__getitem__)
        running = 0.0
        for i, b in enumerate(order):
            running = max(running, min(1.0, (len(order) - i) * raw_p[b]))
            assert comps[b]["p_holm"] == pytest.approx(running, rel=1e-9, abs=1e-12)
    # the per-arm table agrees with the runs too
    for arm, vals in by_arm.items():
        assert summary["final"][arm]["mean"] == pytest.approx(statistics.fmean(vals.values()))

    # figures and a self-contained HTML page, logged to the study's parent run
    report = storage / "report"
    for fig in summary["figures"]:
        assert (report / fig).stat().st_size > 5000, fig
    assert {"figures/test_top1.png", "figures/loss_evolution.png"} <= set(summary["figures"])
    html = (report / "report.html").read_text()
    png = (report / "figures" / "test_top1.png").read_bytes()
    assert base64.b64encode(png).decode() in html and "https://" not in html
    (parent,) = parents
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in logged
    exp = client.get_experiment_by_name("quickstart")
    assert "Paired comparisons" in exp.tags["mlflow.note.content"]
