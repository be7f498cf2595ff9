"""Study YAML: every shipped space loads and compiles; bad input is one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from study.space import define_by_run, grid_points, startup_trials, trial_count
from study.spec import SpecError, load_spec
from study.spec_checks import active_params, corner_samples
from trainables.config import TrialConfig, with_overrides

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted(p for p in (REPO / "search_spaces").glob("*.yaml") if not p.name.startswith("_"))


def test_there_are_spaces_for_every_family() -> None:
    names = {p.stem for p in SPACES}
    assert {"wkl_schedule", "quickstart", "kd", "dkd", "wkd_l", "wkd_f", "gkl", "kd2m"} <= names


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_space_loads_and_compiles(path: Path) -> None:
    spec = load_spec(path)
    assert TrialConfig.from_dict(spec.trial)
    # the define-by-run space samples valid trial configs (a few random asks)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    space = define_by_run(spec)
    for _ in range(8):
        t = study.ask()
        space(t)
        flat = active_params(spec, t.params)
        assert flat == t.params  # only active parameters were suggested
        TrialConfig.from_dict(with_overrides(spec.trial, flat))
        study.tell(t, 0.0)
    for point in spec.points:
        TrialConfig.from_dict(with_overrides(spec.trial, point))
    for b in spec.baselines:
        for seed in spec.seeds:
            cfg = TrialConfig.from_dict(spec.baseline_config(b, seed))
            assert cfg.role == "baseline" and cfg.seed == seed
    assert trial_count(spec) >= 1
    assert startup_trials(spec) >= 1


def test_wkl_space_contains_the_published_point() -> None:
    spec = load_spec(REPO / "search_spaces" / "wkl_schedule.yaml")
    (point,) = spec.points
    cfg = TrialConfig.from_dict(with_overrides(spec.trial, point))
    w, kl = cfg.schedules()["wkd_l"], cfg.schedules()["kl"]
    assert (w.kind, w.shape, w.start, w.end) == ("ramp_down", "cosine", 0.625, 1.0)
    assert (kl.kind, kl.shape, kl.start, kl.end) == ("ramp_up", "cosine", 0.0, 1.0)
    kl_term = cfg.losses["kl"]
    assert kl_term.loss == "dkd" and kl_term.weight == 0.5
    kl_params = kl_term.params
    assert (kl_params.tckd_weight, kl_params.nckd_weight, kl_params.temperature) == (1, 2, 8)
    assert kl_term.weight_schedule.kind == "constant"  # no DKD warm-up on the WKL KL side
    assert cfg.losses["wkd_l"].params.wd_weight == 600 and cfg.optim.nesterov


def test_quickstart_extends_wkl_schedule() -> None:
    q = load_spec(REPO / "search_spaces" / "quickstart.yaml")
    w = load_spec(REPO / "search_spaces" / "wkl_schedule.yaml")
    assert q.trial["data"]["dataset"] == "digits" and q.epochs == 12
    assert [p.name for p in q.search] == [p.name for p in w.search]
    assert q.trial["handoff"] == w.trial["handoff"]
    assert q.samples >= 16 and len(q.seeds) >= 2
    assert {b.name for b in q.baselines} >= {"kd", "wkd_l", "gkl"}


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
trial:
  epochs: 20
  losses:
    ce: {weight: 1.0}
    kd: {weight: 0.9, temperature: 4}
search:
  losses.kd.temperature: {type: float, low: 1, high: 8}
trial_scheduler: {kind: fifo}
"""


@pytest.mark.parametrize(
    "patch, expected",
    [
        (
            {"trial": {"losses": {"kd": {"temprature": 4}}}},
            "trial.losses.kd.temprature: unknown key; "
            "allowed: loss, weight, weight_schedule, temperature",
        ),
        # the old spellings of renamed keys name the bad key and the new names
        (
            {"scheduler": {"kind": "fifo"}},
            "scheduler: unknown section (allowed: name, description, extends, trial, search, "
            "points, objective, searcher, trial_scheduler, samples,",
        ),
        (
            {"trial": {"optim": {"schedule": "cosine"}}},
            "trial.optim.schedule: unknown key; allowed: decay, lr, lr_min, lr_schedule, "
            "milestones, momentum, nesterov, warmup, weight_decay",
        ),
        (
            {"trial": {"losses": {"kd": {"schedule": {"kind": "ramp_up"}}}}},
            "trial.losses.kd.schedule: unknown key; "
            "allowed: loss, weight, weight_schedule, temperature",
        ),
        (
            {"trial": {"losses": {"dkd": {"beta": 2}}}},
            "trial.losses.dkd.beta: unknown key; "
            "allowed: loss, weight, weight_schedule, nckd_weight, tckd_weight, temperature",
        ),
        (
            {"trial": {"losses": {"gkl": {"gamma": 0.1}}}},
            "trial.losses.gkl.gamma: unknown key; allowed: loss, weight, weight_schedule, "
            "class_prior, normalize, pair_weight_exponent, prior_temperature, soft_ce_weight, "
            "temperature, wmse_weight",
        ),
        (
            {"trial": {"losses": {"kd2m": {"beta": 0.1}}}},
            "trial.losses.kd2m.beta: unknown key; allowed: loss, weight, weight_schedule, "
            "diagonal, distance, logit_cost, logit_cost_weight, ridge",
        ),
        (
            {"trial": {"losses": {"kd": {"loss": "kdd"}}}},
            "unknown loss 'kdd'; allowed: ce, dkd, gkl",
        ),
        ({"trial": {"epochs": "many"}}, "trial.epochs: expected an integer, got 'many'"),
        (
            {"search": {"losses.kd.tau": {"type": "float", "low": 1, "high": 2}}},
            "search.losses.kd.tau: trial.losses.kd.tau: unknown key",
        ),
        (
            {"search": {"losses.kd.temperature": {"type": "float", "low": 3, "high": 2}}},
            "low 3 >= high 2",
        ),
        (
            {"search": {"losses.kd.temperature": {"type": "real", "low": 1, "high": 2}}},
            "search.losses.kd.temperature.type: 'real' (allowed: float, int, categorical)",
        ),
        (
            {"points": [{"losses.kd.temperature": 20}]},
            "points[0].losses.kd.temperature: 20 is outside the searched range (allowed: [1, 8])",
        ),
        (
            {"trial_scheduler": {"kind": "hyperband"}},
            "trial_scheduler.kind: 'hyperband' is not allowed (allowed: fifo, asha, pbt, median)",
        ),
        ({"searcher": {"kind": "tpe", "sede": 1}}, "searcher.sede: unknown key"),
        ({"resources": {"gpus": 1}}, "resources.gpus: unknown key (allowed: cpu, gpu, custom)"),
        # Ray custom resources: an explicit sub-mapping, names and amounts checked
        (
            {"resources": {"custom": 3}},
            "resources.custom: 3 (a mapping {name: amount} of Ray custom resources)",
        ),
        (
            {"resources": {"custom": {"kd worker": 1}}},
            "resources.custom.kd worker: 'kd worker' is not a resource name (letters, digits",
        ),
        (
            {"resources": {"custom": {"1st": 1}}},
            "resources.custom.1st: '1st' is not a resource name",
        ),
        (
            {"resources": {"custom": {"GPU": 1}}},
            "resources.custom.GPU: 'GPU' is one of Ray's own resources (a custom name; set CPUs "
            "and GPUs with resources.cpu / resources.gpu)",
        ),
        ({"resources": {"custom": {"cpu": 1}}}, "resources.custom.cpu: 'cpu' is one of Ray's own"),
        (
            {"resources": {"custom": {"Object_Store_Memory": 1}}},
            "resources.custom.Object_Store_Memory: 'Object_Store_Memory' is one of Ray's own",
        ),
        (
            {"resources": {"custom": {"memory": 1}}},
            "resources.custom.memory: 'memory' is one of Ray's own",
        ),
        (
            {"resources": {"custom": {"kd_worker": -1}}},
            "resources.custom.kd_worker: -1 (a finite number >= 0)",
        ),
        (
            {"resources": {"custom": {"kd_worker": True}}},
            "resources.custom.kd_worker: True (a finite number >= 0)",
        ),
        (
            {"resources": {"custom": {"kd_worker": float("inf")}}},
            "resources.custom.kd_worker: inf (a finite number >= 0)",
        ),
        (
            {"resources": {"custom": {"kd_worker": "1"}}},
            "resources.custom.kd_worker: '1' (a finite number >= 0)",
        ),
        ({"bogus": 1}, "bogus: unknown section"),
        ({"trial_scheduler": {"kind": "pbt"}}, "pbt cannot be combined with a search algorithm"),
        (
            {"repeats": 3, "seeds": [0, 1]},
            "repeats: 3 but seeds has 2 ([0, 1]) (at most len(seeds) = 2, or list more seeds)",
        ),
        ({"repeats": 0}, "repeats: 0 (an integer >= 1)"),
        (
            {"repeats": 2, "seeds": [0, 1], "trial": {"seed": 5}},
            "trial.seed: 5 fixed while repeats: 2 runs every configuration under seeds [0, 1]",
        ),
    ],
)
def test_errors_are_one_line_with_path_value_and_allowed(
    tmp_path: Path, patch: dict, expected: str
) -> None:
    raw = yaml.safe_load(BASE)
    _merge(raw, patch)
    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("s.yaml: ")
    assert expected in msg


def _merge(a: dict, b: dict) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v


def test_custom_resources_reach_the_flat_request(tmp_path: Path) -> None:
    text = BASE + "resources: {cpu: 2, gpu: 0.5, custom: {kd_worker: 1, fast.disk-1: 0.25}}\n"
    spec = load_spec(write(tmp_path, text))
    # flat, as Ray takes it (tune.with_resources, ray.nodes() names), all floats
    assert spec.resources == {"cpu": 2.0, "gpu": 0.5, "kd_worker": 1.0, "fast.disk-1": 0.25}
    assert all(type(v) is float for v in spec.resources.values())
    # what --dry-run prints and the parent run stores (compiled.json) shows them
    assert spec.compiled()["resources"]["kd_worker"] == 1.0
    assert spec.raw["resources"]["custom"] == {"kd_worker": 1, "fast.disk-1": 0.25}
    # defaults unchanged; an empty or null custom mapping adds nothing
    assert load_spec(write(tmp_path, BASE)).resources == {"cpu": 1.0, "gpu": 0.0}
    for custom in ("{}", "null"):
        text = BASE + f"resources: {{gpu: 1, custom: {custom}}}\n"
        assert load_spec(write(tmp_path, text)).resources == {"cpu": 1.0, "gpu": 1.0}


def test_asha_grace_must_exceed_warmup(tmp_path: Path) -> None:
    text = """
trial:
  epochs: 240
  losses:
    ce: {}
    dkd: {weight_schedule: {kind: ramp_up, shape: linear, start: 0, end: 0.083333}}
search:
  losses.dkd.nckd_weight: {type: float, low: 1, high: 8}
trial_scheduler: {kind: asha, grace_period: 0.05}
"""
    with pytest.raises(
        SpecError, match=r"does not exceed the loss/LR warm-up \(ends at epoch 20\)"
    ):
        load_spec(write(tmp_path, text))
    ok = text.replace("grace_period: 0.05", "grace_period: 0.1")
    assert load_spec(write(tmp_path, ok)).trial_scheduler.grace_epochs(240) == 24


def test_rung_before_searched_schedules_can_differ_is_refused(tmp_path: Path) -> None:
    text = """
trial:
  epochs: 100
  losses:
    ce: {}
    wkd_l: {}
    kl: {loss: kd}
  handoff: {mode: complementary, shape: cosine, center: 0.7, width: 0.2}
search:
  handoff.center: {type: float, low: 0.6, high: 0.8}
trial_scheduler: {kind: asha, grace_period: 0.1}
"""
    with pytest.raises(SpecError, match="comes before the searched weight schedules can differ"):
        load_spec(write(tmp_path, text))
    later = text.replace("grace_period: 0.1", "grace_period: 0.6")
    load_spec(write(tmp_path, later))


def test_extends_merges_and_null_deletes(tmp_path: Path) -> None:
    write(tmp_path, BASE, "base.yaml")
    child = write(
        tmp_path,
        "extends: base.yaml\ntrial: {epochs: 4}\nsearch: {losses.kd.temperature: null}\nsamples: 1\n",
        "child.yaml",
    )
    spec = load_spec(child)
    assert spec.epochs == 4 and spec.search == []
    assert spec.trial["losses"]["kd"]["temperature"] == 4


def test_extends_cycle_and_missing_file(tmp_path: Path) -> None:
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(SpecError, match="circular"):
        load_spec(tmp_path / "a.yaml")
    with pytest.raises(SpecError, match="no such study file"):
        load_spec(tmp_path / "nope.yaml")


def test_conditional_parameters_and_grid(tmp_path: Path) -> None:
    text = """
trial:
  epochs: 10
  losses:
    ce: {}
    wkd_l: {}
search:
  losses.wkd_l.solver: {type: categorical, values: [reference, converged]}
  losses.wkd_l.sinkhorn_reg: {type: float, low: 0.01, high: 0.1, log: true, grid: [0.01, 0.1], when: {losses.wkd_l.solver: converged}}
searcher: {kind: grid}
trial_scheduler: {kind: fifo}
"""
    spec = load_spec(write(tmp_path, text))
    pts = grid_points(spec)
    assert pts == [
        {"losses.wkd_l.solver": "reference"},
        {"losses.wkd_l.solver": "converged", "losses.wkd_l.sinkhorn_reg": 0.01},
        {"losses.wkd_l.solver": "converged", "losses.wkd_l.sinkhorn_reg": 0.1},
    ]
    corners = corner_samples(spec)
    assert all(
        "losses.wkd_l.sinkhorn_reg" not in c
        for c in corners
        if c["losses.wkd_l.solver"] == "reference"
    )


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "study" / "run.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_dry_run_prints_and_starts_nothing(tmp_path: Path) -> None:
    r = run_cli(
        "--space",
        str(REPO / "search_spaces" / "quickstart.yaml"),
        "--dry-run",
        "--storage",
        str(tmp_path / "st"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "16 searched trial(s) + 6 baseline run(s)" in r.stdout
    assert not (tmp_path / "st").exists()


def test_cli_bad_input_exits_2_with_one_line_and_no_files(tmp_path: Path) -> None:
    bad = write(tmp_path, BASE.replace("temperature: 4}", "temperature: 4, tau: 1}"))
    r = run_cli("--space", str(bad), "--storage", str(tmp_path / "st"), cwd=tmp_path)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: s.yaml: trial.losses.kd.tau: unknown key; "
        "allowed: loss, weight, weight_schedule, temperature"
    ]
    assert not (tmp_path / "st").exists()
    r = run_cli("--space", str(bad), "--num-samples", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--num-samples" in r.stderr


def test_cli_missing_teacher_on_a_large_dataset_is_refused_cleanly(tmp_path: Path) -> None:
    """No silent teacher training on CIFAR-100; nothing written, no Ray, exit 2."""
    r = run_cli(
        "--space",
        str(REPO / "search_spaces" / "wkl_schedule.yaml"),
        "--storage",
        str(tmp_path / "st"),
        "--quiet",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: trial.teacher: no resnet32x4 teacher")
    assert "--train-teacher" in lines[0] and "trial.teacher.checkpoint" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_repeats_run_each_configuration_under_the_first_seeds(tmp_path: Path) -> None:
    from study.space import param_space

    raw = yaml.safe_load(BASE)
    raw.update({"repeats": 2, "seeds": [7, 8, 9], "samples": 5})
    spec = load_spec(write(tmp_path, yaml.safe_dump(raw)))
    assert spec.search_seeds == [7, 8] and trial_count(spec) == 10
    assert spec.compiled()["search_seeds"] == [7, 8]
    raw["searcher"] = {"kind": "grid"}
    raw["search"] = {"losses.kd.temperature": {"type": "categorical", "values": [2, 4, 8]}}
    grid = load_spec(write(tmp_path, yaml.safe_dump(raw)))
    assert trial_count(grid) == 6
    space = param_space(grid)
    assert space["seed"] == {"grid_search": [7, 8]} and len(space["point"]["grid_search"]) == 3
    raw.pop("repeats")
    raw["trial"]["seed"] = 3
    assert load_spec(write(tmp_path, yaml.safe_dump(raw))).search_seeds == [3]


def test_first_rung_never_comes_before_its_fraction() -> None:
    from study.spec import TrialSchedulerSpec

    assert TrialSchedulerSpec(grace_period=0.75).grace_epochs(6) == 5  # 4.5 -> 5, not round's 4
    assert TrialSchedulerSpec(grace_period=0.75).grace_epochs(8) == 6
    assert TrialSchedulerSpec(grace_period=0.1).grace_epochs(240) == 24  # exact stays exact
    assert TrialSchedulerSpec(grace_period=0.01).grace_epochs(12) == 1
