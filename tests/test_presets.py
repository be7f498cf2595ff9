"""Presets reproduce their papers: baselines run their published recipe, per-pair
published values follow the teacher -> student pair, exact epoch fractions, KD²M's recipe."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from study.spec import BASELINE_NOTE, TASK_KEYS, load_spec
from trainables.config import (
    KD2M_OPTIM,
    ConfigError,
    TrialConfig,
    parse_fraction,
    published_recipe,
    with_overrides,
)
from trainables.loop import lr_at

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted(p for p in (REPO / "search_spaces").glob("*.yaml") if not p.name.startswith("_"))

# methods.md §9, written out literally (not imported): the common CIFAR-100 optimizer
CIFAR_OPTIM = {
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "nesterov": False,
    "lr_schedule": "multistep",
    "milestones": (150 / 240, 180 / 240, 210 / 240),
    "decay": 0.1,
    "warmup": 0.0,
    "lr_min": 0.0,
}


def optim_dict(cfg: TrialConfig) -> dict:
    return {k: getattr(cfg.optim, k) for k in CIFAR_OPTIM}


def expected_config(spec, b, seed: int) -> TrialConfig:
    """The task of the trial section + the family's published recipe, nothing else."""
    task = {k: copy.deepcopy(spec.trial[k]) for k in TASK_KEYS if k in spec.trial}
    teacher, student = task["teacher"]["arch"], task["student"]["arch"]
    recipe = published_recipe(b.family, teacher, student)
    raw = {**task, **{k: v for k, v in recipe.items() if v is not None}}
    raw.update(seed=seed, role="baseline")
    return TrialConfig.from_dict(raw)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_every_baseline_is_exactly_its_published_recipe(path: Path) -> None:
    spec = load_spec(path)
    for b in spec.baselines:
        for seed in spec.seeds:
            got = TrialConfig.from_dict(spec.baseline_config(b, seed))
            want = expected_config(spec, b, seed)
            assert got.optim == want.optim, (path.name, b.name)
            assert got.losses == want.losses, (path.name, b.name)
            assert got.handoff == want.handoff, (path.name, b.name)
            assert got.optim.nesterov == (b.family == "wkl")
            for k in TASK_KEYS:  # the task is the trial's
                if k in spec.trial and k not in ("output", "cost"):
                    assert getattr(got, k) == getattr(TrialConfig.from_dict(spec.trial), k)


def test_cifar_baselines_match_the_literal_published_values() -> None:
    """resnet32x4 -> resnet8x4 baselines (methods.md §1, §3, §7, §9), written out."""
    spec = load_spec(REPO / "search_spaces" / "wkl_schedule.yaml")
    assert spec.trial["optim"]["nesterov"] is True  # the WKL trial: Nesterov
    by = {b.name: TrialConfig.from_dict(spec.baseline_config(b, 0)) for b in spec.baselines}
    for cfg in by.values():
        assert optim_dict(cfg) == CIFAR_OPTIM  # nesterov false, whatever the trial says
        assert cfg.handoff is None and cfg.role == "baseline"
    kd = by["kd"].losses
    assert (kd["ce"].weight, kd["kd"].weight, kd["kd"].params.temperature) == (0.1, 0.9, 4.0)
    w = by["wkd_l"].losses["wkd_l"]
    p = w.params
    assert (p.temperature, p.wd_weight, p.sinkhorn_reg, p.sinkhorn_iters) == (8, 600, 0.05, 10)
    assert (p.solver, p.cost_sharpen) == ("reference", 1.0)
    s = w.weight_schedule
    assert (s.kind, s.shape, s.start, s.end) == ("ramp_down", "cosine", 150 / 240, 1.0)
    g = by["gkl"].losses["gkl"]
    q = g.params
    assert (q.wmse_weight, q.soft_ce_weight, q.pair_weight_exponent, q.class_prior) == (
        16,
        1,
        0.05,
        True,
    )
    assert (q.temperature, q.prior_temperature, q.normalize) == (4, 4, "weight")
    gs = g.weight_schedule
    assert (gs.kind, gs.shape, gs.end) == ("ramp_up", "linear", 20 / 240)
    assert set(by["gkl"].losses) == {"ce", "gkl"} and by["gkl"].losses["ce"].weight == 1.0


def test_baselines_ignore_the_trial_recipe_and_keep_their_own_overrides(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "search_spaces" / "kd.yaml").read_text())
    raw["extends"] = str(REPO / "search_spaces" / "_cifar100_rn32x4_rn8x4.yaml")
    raw["trial"]["optim"] = {
        "nesterov": True,
        "lr": 0.3,
        "weight_decay": 0.0,
        "lr_schedule": "cosine",
    }
    raw["trial"]["on_nonfinite"] = "skip_batch"
    raw["baselines"] = {"kd_t2": {"family": "kd", "losses": {"kd": {"temperature": 2}}}}
    raw["baselines"]["kd_fast"] = {"family": "kd", "optim": {"lr": 0.1}, "losses": {"ce": None}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    by = {b.name: TrialConfig.from_dict(spec.baseline_config(b, 0)) for b in spec.baselines}
    assert optim_dict(by["kd"]) == CIFAR_OPTIM and by["kd"].on_nonfinite == "fail"
    assert by["kd_t2"].losses["kd"].params.temperature == 2.0  # the entry wins
    assert by["kd_t2"].losses["ce"].weight == 0.1 and optim_dict(by["kd_t2"]) == CIFAR_OPTIM
    assert set(by["kd_fast"].losses) == {"kd"}  # null drops a recipe term
    assert by["kd_fast"].optim.lr == 0.1 and not by["kd_fast"].optim.nesterov


def test_a_family_without_a_recipe_needs_losses(tmp_path: Path) -> None:
    from study.spec import SpecError

    raw = {
        "trial": {"epochs": 20, "losses": {"ce": {}, "kd": {}}},
        "search": {"losses.kd.temperature": {"type": "float", "low": 1, "high": 8}},
        "trial_scheduler": {"kind": "fifo"},
        "baselines": {"mine": {"family": "mystery"}},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"baselines\.mine: family 'mystery' has no published"):
        load_spec(path)
    raw["baselines"]["mine"]["losses"] = {"ce": {"weight": 1.0}}
    path.write_text(yaml.safe_dump(raw))
    b = load_spec(path).baselines[0]
    assert set(TrialConfig.from_dict(load_spec(path).baseline_config(b, 0)).losses) == {"ce"}


def test_students_with_a_low_published_lr_get_it_in_baselines(tmp_path: Path) -> None:
    spec = load_spec(
        REPO / "search_spaces" / "gkl.yaml",
        {"trial.teacher.arch": "wrn_40_2", "trial.student.arch": "ShuffleV1"},
    )
    for b in spec.baselines:
        cfg = TrialConfig.from_dict(spec.baseline_config(b, 0))
        assert cfg.optim.lr == 0.01  # methods.md §9 (and WKD-L / GKL WRN40-2->SNV1)
    by = {b.name: TrialConfig.from_dict(spec.baseline_config(b, 0)) for b in spec.baselines}
    assert (
        by["wkd_l"].losses["wkd_l"].params.wd_weight,
        by["wkd_l"].losses["wkd_l"].params.temperature,
    ) == (200, 6)
    q = by["gkl"].losses["gkl"].params
    assert (q.wmse_weight, q.soft_ce_weight, q.pair_weight_exponent, q.class_prior) == (
        8,
        1,
        0.0,
        False,
    )


def test_dry_run_shows_each_baselines_resolved_recipe() -> None:
    spec = load_spec(REPO / "search_spaces" / "wkl_schedule.yaml")
    c = json.loads(json.dumps(spec.compiled(), default=str))
    assert c["baselines_note"].startswith("baselines run their published recipe")
    assert c["baselines_note"] == BASELINE_NOTE
    rec = c["baseline_recipes"]
    assert set(rec) == {"kd", "wkd_l", "gkl"}
    for r in rec.values():
        assert r["optim"]["nesterov"] is False and r["optim"]["lr"] == 0.05
    assert rec["gkl"]["losses"]["gkl"]["wmse_weight"] == 16.0
    assert rec["wkd_l"]["losses"]["wkd_l"]["weight_schedule"] == "ramp_down[cosine](0.625->1)"


# -- per-pair published values (methods.md §2, §7) -------------------------------------
def trial_for(space: str, teacher: str, student: str) -> TrialConfig:
    spec = load_spec(
        REPO / "search_spaces" / space,
        {"trial.teacher.arch": teacher, "trial.student.arch": student},
    )
    return TrialConfig.from_dict(spec.trial)


@pytest.mark.parametrize(
    "teacher, student, nckd_weight",
    [
        ("resnet32x4", "resnet8x4", 8.0),
        ("resnet56", "resnet20", 2.0),
        ("resnet110", "resnet32", 2.0),
        ("wrn_40_2", "wrn_16_2", 6.0),
        ("wrn_40_2", "wrn_40_1", 6.0),
        ("vgg13", "vgg8", 6.0),
        ("vgg13", "MobileNetV2", 6.0),
        ("wrn_40_2", "ShuffleV1", 8.0),
    ],
)
def test_dkd_space_picks_the_pairs_published_nckd_weight(
    teacher: str, student: str, nckd_weight: float
) -> None:
    p = trial_for("dkd.yaml", teacher, student).losses["dkd"].params
    assert (p.tckd_weight, p.nckd_weight, p.temperature) == (1.0, nckd_weight, 4.0)


@pytest.mark.parametrize(
    "teacher, student, expected",
    [
        ("resnet32x4", "resnet8x4", (16, 1, 0.05, True)),
        ("resnet56", "resnet20", (4, 1, 0.2, True)),
        ("wrn_40_2", "wrn_16_2", (20, 3, 0.3, False)),
        ("vgg13", "vgg8", (8, 1, 0.2, True)),
        ("resnet32x4", "ShuffleV2", (12, 3, 0.1, True)),
        ("resnet110", "resnet32", (4, 1, 0.1, False)),
        ("resnet32x4", "ShuffleV1", (8, 1, 0.0, True)),
        ("wrn_40_2", "ShuffleV1", (8, 1, 0.0, False)),
        ("ResNet50", "MobileNetV2", (8, 1, 0.05, True)),
        ("vgg13", "MobileNetV2", (12, 4, 0.1, True)),
        ("wrn_40_2", "wrn_40_1", (12, 1, 0.3, False)),
    ],
)
def test_gkl_space_picks_the_pairs_published_settings(
    teacher: str, student: str, expected: tuple
) -> None:
    p = trial_for("gkl.yaml", teacher, student).losses["gkl"].params
    assert (p.wmse_weight, p.soft_ce_weight, p.pair_weight_exponent, p.class_prior) == expected
    assert (p.temperature, p.prior_temperature) == (4.0, 4.0)


def test_explicit_values_win_and_unknown_pairs_keep_the_defaults() -> None:
    base = {"teacher": {"arch": "resnet56"}, "student": {"arch": "resnet20"}}
    cfg = TrialConfig.from_dict(
        {**base, "losses": {"dkd": {"nckd_weight": 5.0}, "gkl": {"pair_weight_exponent": 0.7}}}
    )
    assert cfg.losses["dkd"].params.nckd_weight == 5.0  # explicit wins over the pair's β = 2
    gkl = cfg.losses["gkl"].params
    assert (gkl.pair_weight_exponent, gkl.wmse_weight) == (0.7, 4.0)
    # searched values are explicit too
    spec = load_spec(REPO / "search_spaces" / "dkd.yaml", {"trial.student.arch": "resnet20"})
    spec.trial["teacher"]["arch"] = "resnet56"
    flat = {"losses.dkd.nckd_weight": 3.0}
    searched = TrialConfig.from_dict(with_overrides(spec.trial, flat))
    assert searched.losses["dkd"].params.nckd_weight == 3
    unknown = TrialConfig.from_dict({"losses": {"dkd": {}, "gkl": {}}})  # cnn_large -> cnn_small
    assert unknown.losses["dkd"].params.nckd_weight == 8.0
    assert unknown.losses["gkl"].params.wmse_weight == 16
    # IKL (normalize: batch) takes IKL's table: γ 1, GI off, T2 100, paper (α, β)
    ikl = TrialConfig.from_dict({**base, "losses": {"gkl": {"normalize": "batch"}}})
    q = ikl.losses["gkl"].params
    assert (q.wmse_weight, q.soft_ce_weight, q.pair_weight_exponent) == (4, 1, 1)
    assert (q.class_prior, q.prior_temperature) == (False, 100)


def test_wkl_trial_section_as_is_resolves_to_the_published_kl_side() -> None:
    spec = load_spec(REPO / "search_spaces" / "wkl_schedule.yaml")
    cfg = TrialConfig.from_dict(spec.trial)  # no point applied: the base as written
    kl = cfg.losses["kl"]
    assert kl.loss == "dkd" and kl.weight == 0.5
    assert (kl.params.tckd_weight, kl.params.nckd_weight, kl.params.temperature) == (1.0, 2.0, 8.0)
    assert (cfg.losses["wkd_l"].params.wd_weight, cfg.losses["wkd_l"].params.temperature) == (
        600,
        8,
    )
    q = TrialConfig.from_dict(load_spec(REPO / "search_spaces" / "quickstart.yaml").trial)
    assert (q.losses["kl"].params.tckd_weight, q.losses["kl"].params.nckd_weight) == (1.0, 2.0)
    # a DKD term outside WKL keeps DKD's own β = 8
    assert TrialConfig.from_dict({"losses": {"dkd": {}}}).losses["dkd"].params.nckd_weight == 8.0


# -- exact epoch fractions ----------------------------------------------------------------
def test_fraction_strings_parse_exactly() -> None:
    assert parse_fraction("20/240") == 20 / 240
    assert parse_fraction(" 150 / 240 ") == 0.625
    assert parse_fraction("1.5/3") == 0.5
    for bad, match in (
        ("1/0", "divides by zero"),
        ("abc", "exact fraction"),
        ("-1/2", "exact fraction"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_fraction(bad, "x")
    cfg = TrialConfig.from_dict(
        {
            "losses": {"kd": {}},
            "optim": {"milestones": ["150/240", "180/240", "210/240"], "warmup": "5/100"},
            "handoff": None,
        }
    )
    assert cfg.optim.milestones == (150 / 240, 180 / 240, 210 / 240)
    assert cfg.optim.warmup == 5 / 100
    with pytest.raises(ConfigError, match=r"^optim\.lr: expected a number, got '1/2'$"):
        TrialConfig.from_dict({"losses": {"kd": {}}, "optim": {"lr": "1/2"}})
    with pytest.raises(ConfigError, match=r"^optim\.milestones\[1\]: expected a number or an"):
        TrialConfig.from_dict({"losses": {"kd": {}}, "optim": {"milestones": [0.5, "x"]}})


def test_shipped_spaces_write_exact_fractions() -> None:
    for path in (REPO / "search_spaces").glob("*.yaml"):
        text = path.read_text()
        assert "0.083333" not in text, path.name
    spec = load_spec(REPO / "search_spaces" / "dkd.yaml")
    cfg = TrialConfig.from_dict(spec.trial)
    assert cfg.losses["dkd"].weight_schedule.end == 20 / 240
    assert cfg.optim.milestones == (150 / 240, 180 / 240, 210 / 240)
    assert [lr_at(cfg, e) for e in (150, 151, 181, 211)] == pytest.approx(
        [0.05, 0.005, 0.0005, 0.00005]
    )


# -- KD²M's published recipe (methods.md §8) ------------------------------------------
def test_kd2m_preset_is_the_published_recipe() -> None:
    spec = load_spec(REPO / "search_spaces" / "kd2m_published.yaml")
    cfg = TrialConfig.from_dict(spec.trial)
    assert (cfg.teacher.arch, cfg.student.arch, cfg.epochs) == ("tv_resnet34", "tv_resnet18", 15)
    assert cfg.data.batch_size == 128 and cfg.data.dataset.startswith("imagefolder:")
    o = cfg.optim
    assert (o.lr, o.momentum, o.weight_decay, o.nesterov) == (0.01, 0.9, 0.0, False)
    assert (o.lr_schedule, o.lr_min, o.warmup) == ("cosine", 1e-4, 0.0)
    t = cfg.losses["kd2m"]
    assert (t.weight, t.params.distance, t.params.diagonal) == (1e-4, "gaussian_w2", True)
    assert cfg.losses["ce"].weight == 1.0 and set(cfg.losses) == {"ce", "kd2m"}
    assert set(spec.param("losses.kd2m.distance").values) == {
        "w2",
        "cw2",
        "jw2",
        "gaussian_w2",
        "gaussian_cw2",
        "gaussian_kl",
    }  # the six rows of the published table
    assert spec.searcher.kind == "grid"
    for b in spec.baselines:  # the student row: same optimizer, CE only
        base = TrialConfig.from_dict(spec.baseline_config(b, 0))
        assert base.optim == o and set(base.losses) == {"ce"}
    assert TrialConfig.from_dict({"losses": {"ce": {}}, "optim": KD2M_OPTIM}).optim == o


def test_cosine_lr_ends_at_its_floor() -> None:
    spec = load_spec(REPO / "search_spaces" / "kd2m_published.yaml")
    cfg = TrialConfig.from_dict(spec.trial)
    E, lr, floor = 15, 0.01, 1e-4
    for e in range(1, E + 1):
        ref = floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * (e - 1) / E))
        assert lr_at(cfg, e) == pytest.approx(ref, rel=1e-12)
    assert lr_at(cfg, 1) == pytest.approx(lr)
    assert floor < lr_at(cfg, E) < 3e-4
    # the default floor is 0: the old schedule, unchanged
    plain = TrialConfig.from_dict(
        {"epochs": 10, "losses": {"kd": {}}, "optim": {"lr_schedule": "cosine"}}
    )
    assert lr_at(plain, 6) == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    with pytest.raises(ConfigError, match=r"^optim\.lr_min: lr_min must be in \[0, peak"):
        TrialConfig.from_dict({"losses": {"kd": {}}, "optim": {"lr": 0.01, "lr_min": 0.1}})
