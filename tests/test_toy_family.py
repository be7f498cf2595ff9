"""A loss family is one module + the registry + its tests (issue 9).

This file is the whole of a new family: ``toy_l2``, the squared distance between the
student's and the teacher's softmax. It declares its hooks (a study check, a per-epoch
health check, a headline diagnostic) and is registered in ``LOSSES``; nothing in the
loop, the spec or the driver is told about it, yet a study spec refuses its bad
corners before anything starts and a training run reports its parts, headline and
health.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from study.spec import SpecError, load_spec
from trainables.config import TrialConfig
from trainables.loop import run_training
from trainables.losses import LOSSES, DistillLoss, HealthIssue
from trainables.types import ModelOutputs

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ToyParams:
    temperature: float = 4.0
    warn_above: float = 1e9  # epoch health: warn when the epoch's mean distance exceeds it

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"toy_l2.temperature must be > 0, got {self.temperature}")


class ToyL2Loss(DistillLoss):
    """‖softmax(z_s/T) − softmax(z_t/T)‖² (batch mean)."""

    name = "toy_l2"
    Params = ToyParams
    diagnostic_keys = frozenset({"distance"})
    headline_parts = {"toy": "l2"}

    @classmethod
    def study_check(cls, params: ToyParams) -> tuple[str, str, str] | None:
        if params.temperature > 100:
            return ("temperature", f"{params.temperature:g} flattens every softmax", "<= 100")
        return None

    def coefficients(self) -> dict[str, float]:
        return {"l2": 1.0}

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor):  # type: ignore[override]
        T = self.params.temperature
        d = torch.softmax(student.logits / T, 1) - torch.softmax(teacher.logits.detach() / T, 1)
        l2 = (d * d).sum(1).mean()
        return {"l2": l2, "distance": l2.detach()}

    def epoch_health(self, diag: dict[str, float], epoch: int) -> HealthIssue | None:
        if diag["distance"] > self.params.warn_above:
            return HealthIssue(f"distance {diag['distance']:.3g} at epoch {epoch}")
        return None


@pytest.fixture()
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LOSSES, "toy_l2", ToyL2Loss)


def test_a_study_refuses_the_toy_familys_bad_corner(toy_registered: None, tmp_path: Path) -> None:
    space = tmp_path / "toy.yaml"
    space.write_text(
        f"extends: {REPO / 'search_spaces' / 'quickstart.yaml'}\n"
        "name: toy\n"
        "trial: {losses: {toy: {loss: toy_l2, weight: 1.0}}}\n"
        "search: {losses.toy.temperature: {type: float, low: 1, high: 200}}\n"
    )
    with pytest.raises(SpecError, match=r"losses\.toy\.temperature: [0-9.]+ flattens .*<= 100"):
        load_spec(space)
    space.write_text(space.read_text().replace("high: 200", "high: 50"))
    assert load_spec(space).param("losses.toy.temperature").high == 50


def test_the_toy_family_trains_and_reports_its_hooks(toy_registered: None, tmp_path: Path) -> None:
    cfg = TrialConfig.from_dict(
        {
            "epochs": 2,
            "seed": 1,
            "device": "cpu",
            "data": {"dataset": "digits", "batch_size": 64},
            "teacher": {"arch": "cnn_large"},
            "student": {"arch": "cnn_small"},
            "losses": {"ce": {}, "toy": {"loss": "toy_l2", "weight": 2.0, "warn_above": 0.0}},
        }
    )
    seen: list[dict[str, float]] = []
    run_training(cfg, lambda m, s: seen.append(m), trial_dir=str(tmp_path / "t"))
    last = seen[-1]
    assert last["train/toy/l2"] > 0
    assert last["diag/toy"] == pytest.approx(last["train/toy/l2"])  # its headline
    assert last["health/toy"] == 1.0  # warn_above 0: every epoch warns
    health = (tmp_path / "t" / "health.jsonl").read_text().splitlines()
    assert len(health) == 2 and '"term": "toy"' in health[0]
