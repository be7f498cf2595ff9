"""The training loop without Ray: exact resume, failures with reasons, every space runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from study.spec import load_spec
from trainables.config import TrialConfig, with_overrides
from trainables.loop import LossUnhealthy, NonFiniteLoss, lr_at, run_training

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture(scope="module")
def cost_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    g = torch.Generator().manual_seed(0)
    d = torch.rand(10, 10, generator=g)
    d = (d + d.T) / 2
    d.fill_diagonal_(0)
    path = tmp_path_factory.mktemp("cost") / "cost.pt"
    torch.save(d, path)
    return str(path)


def digits_cfg(cost: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "epochs": 4,
        "seed": 3,
        "device": "cpu",
        "data": {"dataset": "digits", "batch_size": 64},
        "teacher": {"arch": "cnn_large"},
        "student": {"arch": "cnn_small"},
        "cost": {"path": cost},
        "losses": {
            "ce": {},
            "wkd_l": {"temperature": 4, "wd_weight": 10},
            "kl": {"loss": "dkd", "weight": 0.5, "nckd_weight": 2},
            "gkl": {"weight": 0.1},
        },
        "handoff": {"mode": "complementary", "center": 0.5, "width": 0.5},
    }
    return with_overrides(cfg, over)


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.metrics: list[dict[str, float]] = []
        self.states: list[dict[str, Any]] = []
        self.stop_after = stop_after

    def __call__(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        self.metrics.append(metrics)
        self.states.append(state)
        if self.stop_after is not None and len(self.metrics) >= self.stop_after:
            raise SystemExit  # what tune.report does when a scheduler stops a trial


def test_resume_from_a_checkpoint_gives_the_same_weights(cost_path: str, tmp_path: Path) -> None:
    cfg = TrialConfig.from_dict(digits_cfg(cost_path))
    full = Recorder()
    run_training(cfg, full, trial_dir=str(tmp_path / "a"))
    part = Recorder(stop_after=2)
    with pytest.raises(SystemExit):
        run_training(cfg, part)
    # round-trip the state through torch.save / weights_only load, like a Ray checkpoint
    path = tmp_path / "state.pt"
    torch.save(part.states[-1], path)
    state = torch.load(path, weights_only=True)
    rest = Recorder()
    run_training(cfg, rest, resume=state)
    assert [m["epoch"] for m in rest.metrics] == [3.0, 4.0]
    a, b = full.states[-1], rest.states[-1]
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    for k in a["criterion"]:
        assert torch.equal(a["criterion"][k], b["criterion"][k]), k
    assert full.metrics[-1]["val/top1"] == rest.metrics[-1]["val/top1"]
    # the mean of the last 3 epochs: computed from the reported values, kept across resume
    tops = [m["val/top1"] for m in full.metrics]
    assert full.metrics[-1]["val/top1_last3"] == pytest.approx(sum(tops[-3:]) / 3)
    assert full.metrics[0]["val/top1_last3"] == pytest.approx(tops[0])
    assert rest.metrics[-1]["val/top1_last3"] == full.metrics[-1]["val/top1_last3"]
    # what cannot be regenerated is kept
    for name in ("best.pt", "last.pt", "eval_logits.pt", "per_class.json"):
        assert (tmp_path / "a" / name).is_file()


def test_reports_carry_the_promised_metrics(cost_path: str) -> None:
    cfg = TrialConfig.from_dict(digits_cfg(cost_path, epochs=2))
    rec = Recorder()
    run_training(cfg, rec)
    m = rec.metrics[-1]
    for key in (
        "val/top1",
        "val/top1_best",
        "val/loss",
        "train/loss",
        "train/ce/ce",
        "train/wkd_l/target",
        "train/wkd_l/wasserstein",
        "train/kl/tckd",
        "train/kl/nckd",
        "train/gkl/wmse",
        "train/gkl/soft_ce",
        "weight/wkd_l",
        "weight/kl",
        "weight/gkl",
        "diag/kl",
        "diag/tc",
        "diag/nc",
        "diag/w",
        "diag/target",
        "diag/wkd_l/marginal_error",
        "lr",
        "epoch",
        "time/epoch_s",
    ):
        assert key in m, key
    assert all(isinstance(v, float) for v in m.values())
    assert m["val/top1_best"] >= m["val/top1"] - 1e-9
    # complementary hand-off: the two weights sum to one at every epoch
    for mm in rec.metrics:
        assert mm["weight/wkd_l"] + mm["weight/kl"] / 0.5 == pytest.approx(1.0)


def test_two_trials_with_the_same_seed_see_the_same_batches(cost_path: str) -> None:
    # common random numbers: only the tuned value differs -> same init, same first-epoch data
    a, b = Recorder(), Recorder()
    run_training(TrialConfig.from_dict(digits_cfg(cost_path, epochs=1)), a)
    run_training(
        TrialConfig.from_dict(digits_cfg(cost_path, epochs=1, **{"losses.ce.weight": 0.0})), b
    )
    c = Recorder()
    run_training(TrialConfig.from_dict(digits_cfg(cost_path, epochs=1)), c)
    assert a.metrics[0]["diag/target"] == c.metrics[0]["diag/target"]
    assert a.metrics[0]["train/wkd_l/target"] != b.metrics[0]["train/wkd_l/target"]


def test_non_finite_loss_fails_with_a_reason(cost_path: str) -> None:
    cfg = TrialConfig.from_dict(digits_cfg(cost_path, epochs=1, **{"optim.lr": 1e12}))
    with pytest.raises(NonFiniteLoss, match="non-finite loss at epoch 1 batch"):
        run_training(cfg, Recorder())


def test_collapsed_reference_sinkhorn_is_reported_not_trained_on(cost_path: str) -> None:
    over = {"losses.wkd_l.sinkhorn_reg": 0.005, "losses.wkd_l.temperature": 1, "epochs": 1}
    fail = {"losses.wkd_l.on_collapse": "fail"}
    cfg = TrialConfig.from_dict(digits_cfg(cost_path, **over, **fail))
    with pytest.raises(LossUnhealthy, match="use solver: converged"):
        run_training(cfg, Recorder())
    warn = TrialConfig.from_dict(
        digits_cfg(cost_path, **over, **{"losses.wkd_l.on_collapse": "warn"})
    )
    rec = Recorder()
    run_training(warn, rec)
    assert rec.metrics[0]["diag/wkd_l/collapsed"] > 0.5
    # the converged solver at the same λ does not collapse
    conv = {**over, "losses.wkd_l.solver": "converged", "losses.wkd_l.sinkhorn_iters": 500}
    rec = Recorder()
    run_training(TrialConfig.from_dict(digits_cfg(cost_path, **conv, **fail)), rec)
    assert rec.metrics[0]["diag/wkd_l/collapsed"] == 0.0


def test_lr_is_a_pure_function_of_the_epoch() -> None:
    cfg = TrialConfig.from_dict({"losses": {"ce": {}}})  # 240 epochs, CIFAR recipe
    assert lr_at(cfg, 150) == pytest.approx(0.05)
    assert lr_at(cfg, 151) == pytest.approx(0.005)
    assert lr_at(cfg, 181) == pytest.approx(0.0005)
    assert lr_at(cfg, 240) == pytest.approx(0.00005)


SPACES = sorted(p for p in (REPO / "search_spaces").glob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.slow
@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_every_space_runs_one_tiny_epoch(path: Path, cost_path: str, tmp_path: Path) -> None:
    """Each space's published point (and baselines) trains for one epoch on tiny real data,
    with the space's own architectures (untrained teacher): the wiring, not the accuracy."""
    spec = load_spec(path)
    if spec.trial["data"]["dataset"] == "digits":
        tiny = {"epochs": 1}
    else:
        if not CIFAR10.is_dir():
            pytest.skip("../shared/data/cifar10-jpeg is absent")
        tiny = {
            "epochs": 1,
            "data.dataset": f"imagefolder:{CIFAR10}",
            "data.max_per_class": 6,
            "data.val_fraction": 0.5,
            "data.cache_dir": str(tmp_path),
            "data.batch_size": 16,
            "data.root": None,
        }
    tiny["cost.path"] = cost_path
    tiny["device"] = "cpu"
    configs = [with_overrides(spec.trial, {**(spec.points[0] if spec.points else {}), **tiny})]
    configs += [with_overrides(spec.baseline_config(b, 0), tiny) for b in spec.baselines[:1]]
    for raw in configs:
        rec = Recorder()
        run_training(TrialConfig.from_dict(raw), rec)
        assert (
            len(rec.metrics) == 1 and rec.metrics[0]["train/loss"] == rec.metrics[0]["train/loss"]
        )


def test_a_student_starts_from_pretrained_weights_except_a_foreign_head(
    cost_path: str, tmp_path: Path
) -> None:
    """KD²M's recipe starts the student from ImageNet weights: every tensor whose name and
    shape match is loaded, a head of another task keeps its seeded init."""
    from trainables.loop import load_pretrained
    from trainables.models import build

    donor = build("cnn_small", 5, in_channels=1)  # another task: a 5-way head
    path = tmp_path / "pre.pt"
    torch.save({"model": donor.state_dict()}, path)
    student = build("cnn_small", 10, in_channels=1)
    left = load_pretrained(student, str(path))
    own, theirs = student.state_dict(), donor.state_dict()
    assert left and all(own[k].shape != theirs[k].shape for k in left)  # only the head
    for k in own:
        if k not in left:
            assert torch.equal(own[k], theirs[k]), k
    cfg = TrialConfig.from_dict(
        digits_cfg(cost_path, epochs=1, **{"student.checkpoint": str(path)})
    )
    rec = Recorder()
    run_training(cfg, rec)
    assert rec.metrics[-1]["epoch"] == 1.0
    torch.save({"encoder.weight": torch.zeros(3)}, path)  # weights of something else
    with pytest.raises(ValueError, match="no tensor matches"):
        load_pretrained(student, str(path))
