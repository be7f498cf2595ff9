"""Bad input: a table-driven corpus (issue "Bad input").

Every case is refused the same way: exit code 2, stderr exactly one non-empty line
``error: <where>: <what is wrong> (<what is allowed>)`` naming the file, key path or flag,
no traceback, no Ray started, no MLflow run, no file written anywhere.

Most cases run ``study.run.main`` in-process (the same validation the command runs before
anything starts); the CLI-flag and teacher/cost-file classes also run the real command in
subprocesses (started together, so the file stays fast), without ``--dry-run``, with
``--storage`` and ``--teachers-dir`` in a temporary folder.

Classes (``CASES``, by id prefix): ``decode`` (files that are not YAML text, wrong-type
sections, YAML bombs), ``value`` (wrong values accepted before), ``typo`` (unknown keys at
any depth), ``extends``, ``flag`` (CLI flags), ``file`` (teacher checkpoints, cost
matrices). Cases already in tests/test_spec.py and tests/test_security.py are not
repeated here.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from study.run import main

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "study" / "run.py")]
DELETE = object()

BASE: dict[str, Any] = {
    "trial": {
        "epochs": 20,
        "losses": {"ce": {"weight": 1.0}, "kd": {"weight": 0.9, "temperature": 4}},
    },
    "search": {"losses.kd.temperature": {"type": "float", "low": 1, "high": 8}},
    "trial_scheduler": {"kind": "fifo"},
}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if v is DELETE:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def base_text(patch: dict[str, Any] | None = None) -> str:
    return yaml.safe_dump(_merge(BASE, patch or {}), sort_keys=False)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


#: "billion laughs": 9 anchors, each a list of 9 of the previous one (9**9 strings)
BOMB = "\n".join(
    ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
)


@dataclass(frozen=True)
class Case:
    """One bad input: the study file (text or bytes, or a builder writing the inputs into
    the folder and returning the --space path), extra CLI arguments, and the fragments
    the error line must contain (where; what is allowed)."""

    id: str
    space: str | bytes | Callable[[Path], Path] = ""
    argv: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()
    extra: dict[str, str | bytes] = field(default_factory=dict)  # more input files

    def write(self, folder: Path) -> Path:
        for name, content in self.extra.items():
            target = folder / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        if callable(self.space):
            return self.space(folder)
        path = folder / "s.yaml"
        if isinstance(self.space, bytes):
            path.write_bytes(self.space)
        else:
            path.write_text(self.space or base_text())
        return path


def P(id: str, patch: dict[str, Any], *expect: str, argv: tuple[str, ...] = ()) -> Case:
    """A case: BASE with ``patch`` deep-merged (``DELETE`` removes a key)."""
    return Case(id, base_text(patch), argv, expect)


def T(id: str, text: str | bytes, *expect: str, **kw: Any) -> Case:
    return Case(id, text, expect=expect, **kw)


def search(name: str, **spec: Any) -> dict[str, Any]:
    return {"search": {"losses.kd.temperature": DELETE, name: spec}}


CASES: list[Case] = [
    # -- decode: files that are not YAML text, sections of the wrong type, bombs ---------
    T("decode-latin1", b"name: caf\xe9\n" + base_text().encode(), "s.yaml", "UTF-8"),
    T("decode-binary", bytes(range(256)) * 4, "s.yaml", "UTF-8"),
    T("decode-nul-bytes", b"trial:\x00\x00 {}\n", "s.yaml", "invalid YAML"),
    T("decode-syntax", base_text() + "search: {a: [1, 2}\n", "s.yaml", "line ", "invalid YAML"),
    T("decode-tab-indent", "trial:\n\tepochs: 3\n", "s.yaml", "invalid YAML"),
    T("decode-top-list", "- trial\n- search\n", "s.yaml", "mapping"),
    T("decode-top-scalar", "just a string\n", "s.yaml", "mapping"),
    T("decode-top-int", "42\n", "s.yaml", "mapping"),
    P("decode-failure-int", {"failure": 3}, "s.yaml: failure: 3", "mapping"),
    P("decode-failure-list", {"failure": [1]}, "s.yaml: failure:", "mapping"),
    P("decode-checkpoints-str", {"checkpoints": "all"}, "s.yaml: checkpoints:", "mapping"),
    P("decode-resources-list", {"resources": [1, 0]}, "s.yaml: resources:", "mapping"),
    P("decode-trial-list", {"trial": ["epochs", 3]}, "s.yaml: trial:", "mapping"),
    P("decode-objective-str", {"objective": "max"}, "s.yaml: objective:", "mapping"),
    P("decode-losses-list", {"trial": {"losses": ["ce", "kd"]}}, "trial.losses", "mapping"),
    P("decode-optim-int", {"trial": {"optim": 5}}, "trial.optim", "mapping"),
    P(
        "decode-when-scalar",
        {"search": {"losses.kd.temperature": {"type": "float", "low": 1, "high": 8, "when": 3}}},
        "search.losses.kd.temperature.when",
        "mapping",
    ),
    P("decode-final-list", {"final": [1000, 1001]}, "s.yaml: final:", "mapping"),
    T(
        "decode-anchor-bomb",
        BOMB + "\n" + base_text() + "description: *l8\n",
        "s.yaml",
        "too large",
    ),
    T(
        "decode-anchor-bomb-in-trial",
        "description:\n  "
        + BOMB.replace("\n", "\n  ")
        + "\ntrial: {epochs: 3, losses: {ce: {}}, data: {root: *l8}}\n",
        "s.yaml",
        "too large",
    ),
    T("decode-deep-nesting", base_text() + f"description: {nested(5000)}\n", "s.yaml", "deep"),
    T(
        "decode-deep-mapping",
        base_text() + "description: " + "{a: " * 200 + "1" + "}" * 200 + "\n",
        "s.yaml",
        "deep",
    ),
    T(
        "decode-duplicate-top-key",
        base_text() + "samples: 4\nsamples: 8\n",
        "s.yaml",
        "duplicate key 'samples'",
    ),
    T(
        "decode-duplicate-nested-key",
        "trial:\n  epochs: 3\n  epochs: 30\n  losses: {ce: {}}\nsamples: 1\n",
        "s.yaml",
        "duplicate key 'epochs'",
    ),
    # -- value: wrong values that were accepted ----------------------------------------
    P("value-lr-nan", {"trial": {"optim": {"lr": float("nan")}}}, "trial.optim.lr", "finite"),
    P("value-lr-inf", {"trial": {"optim": {"lr": float("inf")}}}, "trial.optim.lr", "finite"),
    P("value-lr-zero", {"trial": {"optim": {"lr": 0}}}, "trial.optim.lr", "> 0"),
    P("value-lr-negative", {"trial": {"optim": {"lr": -0.1}}}, "trial.optim.lr", "> 0"),
    P("value-lr-bool", {"trial": {"optim": {"lr": True}}}, "trial.optim.lr", "number"),
    P("value-epochs-zero", {"trial": {"epochs": 0}}, "trial.epochs", ">= 1"),
    P("value-epochs-negative", {"trial": {"epochs": -5}}, "trial.epochs", ">= 1"),
    P("value-epochs-bool", {"trial": {"epochs": True}}, "trial.epochs", "integer"),
    P("value-epochs-fractional", {"trial": {"epochs": 2.5}}, "trial.epochs", "integer"),
    P("value-batch-zero", {"trial": {"data": {"batch_size": 0}}}, "trial.data.batch_size", ">= 1"),
    P(
        "value-batch-negative",
        {"trial": {"data": {"eval_batch_size": -8}}},
        "trial.data.eval_batch_size",
        ">= 1",
    ),
    P(
        "value-batch-bool",
        {"trial": {"data": {"batch_size": False}}},
        "trial.data.batch_size",
        "integer",
    ),
    P(
        "value-val-fraction-nan",
        {"trial": {"data": {"val_fraction": float("nan")}}},
        "trial.data.val_fraction",
        "finite",
    ),
    P(
        "value-weight-inf",
        {"trial": {"losses": {"kd": {"weight": float("inf")}}}},
        "trial.losses.kd.weight",
        ">= 0",
    ),
    P(
        "value-temperature-zero",
        {"trial": {"losses": {"kd": {"temperature": 0}}}},
        "trial.losses.kd.temperature",
        "> 0",
    ),
    P("value-samples-zero", {"samples": 0}, "s.yaml: samples: 0", ">= 1"),
    P("value-samples-bool", {"samples": True}, "s.yaml: samples: True", "integer"),
    P("value-concurrency-float", {"concurrency": 1.5}, "s.yaml: concurrency", "integer"),
    P(
        "value-max-failures-negative",
        {"failure": {"max_failures": -1}},
        "failure.max_failures",
        ">= 0",
    ),
    P(
        "value-num-to-keep-zero",
        {"checkpoints": {"num_to_keep": 0}},
        "checkpoints.num_to_keep",
        ">= 1",
    ),
    P("value-resources-cpu-nan", {"resources": {"cpu": float("nan")}}, "resources.cpu", "finite"),
    P("value-resources-gpu-inf", {"resources": {"gpu": float("inf")}}, "resources.gpu", "finite"),
    P("value-resources-gpu-bool", {"resources": {"gpu": True}}, "resources.gpu", "number"),
    P(
        "value-reduction-inf",
        {"trial_scheduler": {"kind": "fifo", "reduction_factor": float("inf")}},
        "trial_scheduler.reduction_factor",
        "finite",
    ),
    P(
        "value-grace-nan",
        {"trial_scheduler": {"grace_period": float("nan")}},
        "trial_scheduler.grace_period",
        "a number",
    ),
    P(
        "value-perturbation-zero",
        {"trial_scheduler": {"perturbation_interval": 0}},
        "trial_scheduler.perturbation_interval",
        "(0, 1]",
    ),
    P(
        "value-min-samples-float",
        {"trial_scheduler": {"min_samples_required": 2.5}},
        "trial_scheduler.min_samples_required",
        "integer",
    ),
    P("value-searcher-seed-float", {"searcher": {"seed": 1.5}}, "searcher.seed", "integer"),
    P(
        "value-startup-negative",
        {"searcher": {"startup_trials": -3}},
        "searcher.startup_trials",
        "integer",
    ),
    P(
        "value-startup-string",
        {"searcher": {"startup_trials": "many"}},
        "searcher.startup_trials",
        "integer",
    ),
    P(
        "value-range-low-eq-high",
        search("losses.kd.temperature", type="float", low=4, high=4),
        "search.losses.kd.temperature",
        "low < high",
    ),
    P(
        "value-range-low-bool",
        search("losses.kd.temperature", type="float", low=True, high=4),
        "search.losses.kd.temperature.low",
        "finite number",
    ),
    P(
        "value-range-high-inf",
        search("losses.kd.temperature", type="float", low=1, high=float("inf")),
        "search.losses.kd.temperature.high",
        "finite number",
    ),
    P(
        "value-log-low-zero",
        search("losses.kd.temperature", type="float", low=0, high=4, log=True),
        "search.losses.kd.temperature.low",
        "log scale needs low > 0",
    ),
    P(
        "value-log-low-negative",
        search("optim.lr", type="float", low=-0.1, high=0.1, log=True),
        "search.optim.lr.low",
        "low > 0",
    ),
    P(
        "value-log-not-bool",
        search("losses.kd.temperature", type="float", low=1, high=4, log="yes"),
        "search.losses.kd.temperature.log",
        "true or false",
    ),
    P(
        "value-step-zero",
        search("epochs", type="int", low=2, high=8, step=0),
        "search.epochs.step",
        "> 0",
    ),
    P(
        "value-step-nan",
        search("losses.kd.temperature", type="float", low=1, high=4, step=float("nan")),
        "search.losses.kd.temperature.step",
        "> 0",
    ),
    P(
        "value-search-epochs-zero",
        search("epochs", type="int", low=0, high=8),
        "search.epochs",
        "trial.epochs",
        ">= 1",
    ),
    P(
        "value-categorical-wrong-type",
        search("losses.kd.temperature", type="categorical", values=[4, "hot"]),
        "search.losses.kd.temperature",
        "'hot'",
        "number",
    ),
    P(
        "value-categorical-unknown-loss",
        search("losses.kd.loss", type="categorical", values=["kd", "kdd"]),
        "search.losses.kd.loss",
        "'kdd'",
        "allowed",
    ),
    P(
        "value-categorical-grid-outside",
        search("losses.kd.temperature", type="categorical", values=[2, 4], grid=[2, 8]),
        "search.losses.kd.temperature.grid",
        "8",
        "allowed",
    ),
    P(
        "value-categorical-values-mapping",
        search("losses.kd.temperature", type="categorical", values={"a": 1}),
        "search.losses.kd.temperature.values",
        "non-empty list",
    ),
    P(
        "value-unknown-loss-term",
        {"trial": {"losses": {"kdx": {}}}},
        "trial.losses.kdx",
        "unknown loss 'kdx'",
        "allowed",
    ),
    P(
        "value-unknown-student",
        {"trial": {"student": {"arch": "resnet999"}}},
        "trial.student.arch",
        "resnet999",
        "allowed",
    ),
    P(
        "value-unknown-teacher",
        {"trial": {"teacher": {"arch": "cnn_huge"}}},
        "trial.teacher.arch",
        "cnn_huge",
        "allowed",
    ),
    P(
        "value-unknown-dataset",
        {"trial": {"data": {"dataset": "cifar1000"}}},
        "trial.data.dataset",
        "cifar1000",
        "allowed",
    ),
    P("value-dataset-int", {"trial": {"data": {"dataset": 10}}}, "trial.data.dataset", "string"),
    P("value-unknown-device", {"trial": {"device": "tpu"}}, "trial.device", "'tpu'", "allowed"),
    P("value-seeds-bool", {"seeds": [True, 1]}, "s.yaml: seeds:", "integers"),
    P(
        "value-final-tuning-seed",
        {"seeds": [0, 1], "final": {"seeds": [1, 2]}},
        "final.seeds",
        "[1] were used while tuning",
        "fresh seeds",
    ),
    P("value-name-int", {"name": 42}, "s.yaml: name: '42'", "letters, digits"),
    P("value-name-space", {"name": "my study"}, "s.yaml: name:", "letters, digits"),
    P("value-description-mapping", {"description": {"a": 1}}, "s.yaml: description:", "string"),
    P("value-objective-mode", {"objective": {"mode": "maximize"}}, "objective.mode", "max, min"),
    # -- typo: unknown keys at any depth -----------------------------------------------
    P("typo-top", {"sampels": 4}, "s.yaml: sampels: unknown section", "allowed: name"),
    P(
        "typo-failure",
        {"failure": {"max_failure": 3}},
        "failure.max_failure: unknown key",
        "max_failures",
    ),
    P(
        "typo-checkpoints",
        {"checkpoints": {"num_to_kep": 3}},
        "checkpoints.num_to_kep: unknown key",
        "num_to_keep",
    ),
    P(
        "typo-data",
        {"trial": {"data": {"batchsize": 32}}},
        "trial.data.batchsize: unknown key",
        "batch_size",
    ),
    P(
        "typo-teacher",
        {"trial": {"teacher": {"archh": "cnn_large"}}},
        "trial.teacher.archh: unknown key",
        "arch",
    ),
    P(
        "typo-weight-schedule",
        {"trial": {"losses": {"kd": {"weight_schedule": {"knd": "ramp_up"}}}}},
        "trial.losses.kd.weight_schedule.knd: unknown key",
        "kind",
    ),
    P(
        "typo-output",
        {"trial": {"output": {"keepbest": False}}},
        "trial.output.keepbest: unknown key",
        "keep_best",
    ),
    P("typo-cost", {"trial": {"cost": {"knd": "cka"}}}, "trial.cost.knd: unknown key", "kind"),
    P(
        "typo-search-entry",
        search("losses.kd.temperature", type="float", lo=1, high=4),
        "search.losses.kd.temperature.lo: unknown key",
        "low",
    ),
    P(
        "typo-objective",
        {"objective": {"metic": "val/top1"}},
        "objective.metic: unknown key",
        "metric",
    ),
    P(
        "typo-trial-scheduler",
        {"trial_scheduler": {"grace": 0.5}},
        "trial_scheduler.grace: unknown key",
        "grace_period",
    ),
    P("typo-final", {"final": {"topk": 2}}, "final.topk: unknown key", "top_k"),
    P(
        "typo-baseline-loss",
        {"baselines": {"kd": {"losses": {"kd": {"temprature": 2}}}}},
        "baselines.kd.losses.kd.temprature: unknown key",
        "temperature",
    ),
    P(
        "typo-points",
        {"points": [{"losses.kd.temprature": 4}]},
        "points[0].losses.kd.temprature: not a searched parameter",
        "searched:",
    ),
    P(
        "typo-when",
        search("losses.kd.temperature", type="float", low=1, high=4, when={"losses.kd.los": "kd"}),
        "when.losses.kd.los",
        "list the parameter",
    ),
    # -- extends -----------------------------------------------------------------------
    T("extends-self", "extends: s.yaml\n" + base_text(), "s.yaml: extends: circular"),
    T(
        "extends-directory",
        "extends: sub\n" + base_text(),
        "sub",
        "extends",
        "study file",
        extra={},
    ),
    T(
        "extends-non-utf8-base",
        "extends: b.yaml\n",
        "b.yaml",
        "UTF-8",
        extra={"b.yaml": b"trial: {epochs: \xff}\n"},
    ),
    T(
        "extends-list-base",
        "extends: b.yaml\n",
        "b.yaml",
        "mapping",
        extra={"b.yaml": "- 1\n- 2\n"},
    ),
    T(
        "extends-duplicate-in-base",
        "extends: b.yaml\n",
        "b.yaml",
        "duplicate key 'trial'",
        extra={"b.yaml": base_text() + "trial: {}\n"},
    ),
    # -- flag: CLI flags (in-process here; the subprocess table below runs a few for real) --
    Case(
        "flag-space-missing",
        lambda d: d / "nope.yaml",
        (),
        ("--space", "nope.yaml", "study YAML file"),
    ),
    Case("flag-space-directory", lambda d: d, (), ("--space", "directory", "study YAML file")),
    Case("flag-num-samples-negative", "", ("--num-samples", "-1"), ("--num-samples", ">= 1")),
    Case("flag-max-epochs-zero", "", ("--max-epochs", "0"), ("--max-epochs", ">= 1")),
    Case("flag-seed-negative", "", ("--seed", "-1"), ("--seed", ">= 0")),
    Case("flag-num-samples-text", "", ("--num-samples", "many"), ("--num-samples", "int")),
    Case("flag-unknown", "", ("--sampels", "3"), ("--sampels", "unrecognized")),
    Case("flag-storage-file", "", ("--storage", "{dir}/s.yaml"), ("--storage", "a directory")),
    Case(
        "flag-storage-under-file",
        "",
        ("--storage", "{dir}/s.yaml/st"),
        ("--storage", "a directory"),
    ),
    Case(
        "flag-storage-unwritable", "", ("--storage", "/proc/kdstudy/st"), ("--storage", "writable")
    ),
    Case(
        "flag-teachers-dir-file",
        "",
        ("--teachers-dir", "{dir}/s.yaml"),
        ("--teachers-dir", "a directory"),
    ),
    Case(
        "flag-tracking-uri-scheme",
        "",
        ("--tracking-uri", "ftp://host/mlruns"),
        ("--tracking-uri", "'ftp'", "allowed"),
    ),
    Case(
        "flag-tracking-uri-no-host",
        "",
        ("--tracking-uri", "http://"),
        ("--tracking-uri", "allowed"),
    ),
    Case(
        "flag-tracking-uri-bare-word",
        "",
        ("--tracking-uri", "mlflow"),
        ("--tracking-uri", "allowed"),
    ),
    Case(
        "flag-optuna-storage-scheme",
        "",
        ("--optuna-storage", "redis://host/0"),
        ("--optuna-storage", "'redis'", "allowed"),
    ),
    # -- file: teacher checkpoints and cost matrices ----------------------------------------
    P(
        "file-student-checkpoint-missing",
        {"trial": {"student": {"arch": "cnn_small", "checkpoint": "/nope.pt"}}},
        "trial.student.checkpoint",
        "not a file",
    ),
    P(
        "file-cost-path-missing",
        {"trial": {"cost": {"path": "/nope/cost.pt"}}},
        "trial.cost.path",
        "cost matrix",
    ),
    T(
        "file-cost-garbage",
        base_text({"trial": {"cost": {"path": "{dir}/cost.pt"}}}),
        "trial.cost.path",
        "square",
        extra={"cost.pt": b"\x00garbage" * 10},
    ),
    T(
        "file-cost-empty",
        base_text({"trial": {"cost": {"path": "{dir}/cost.pt"}}}),
        "trial.cost.path",
        "square",
        extra={"cost.pt": b""},
    ),
]


def _cost_tensor(folder: Path, value: Any) -> Path:
    import torch

    torch.save(value, folder / "cost.pt")
    path = folder / "s.yaml"
    path.write_text(base_text({"trial": {"cost": {"path": str(folder / "cost.pt")}}}))
    return path


CASES += [
    Case(
        "file-cost-not-square",
        lambda d: _cost_tensor(d, __import__("torch").zeros(3, 4)),
        (),
        ("trial.cost.path", "square"),
    ),
    Case(
        "file-cost-nan",
        lambda d: _cost_tensor(d, __import__("torch").full((10, 10), float("nan"))),
        (),
        ("trial.cost.path", "finite"),
    ),
    Case(
        "file-cost-wrong-classes",
        lambda d: _cost_tensor(d, __import__("torch").zeros(5, 5)),
        (),
        ("trial.cost.path", "10"),
    ),
    Case(
        "file-cost-dict",
        lambda d: _cost_tensor(d, {"d": __import__("torch").zeros(10, 10)}),
        (),
        ("trial.cost.path", "square"),
    ),
    # -- --dry-run checks what it can without training: data, teacher, local resources ------
    Case("flag-abbreviated", "", ("--num-sam", "3"), ("--num-sam", "unrecognized")),
    P(
        "file-teacher-checkpoint-without-arch",
        {"trial": {"teacher": {"checkpoint": "/some/ckpt_epoch_240.pth"}}},
        "trial.teacher.arch: required with teacher.checkpoint",
        "allowed: resnet8",
    ),
    Case(
        "file-dry-run-teacher-not-a-checkpoint",
        lambda d: _dry_run_teacher(d, b"# a README, not weights\n"),
        (),
        ("trial.teacher.checkpoint", "not a readable torch checkpoint", "allowed: a state dict"),
    ),
    Case(
        "file-dry-run-teacher-other-arch",
        lambda d: _dry_run_teacher(d, "cnn_small"),
        (),
        ("trial.teacher.checkpoint", "t.pth", "allowed: a state dict of cnn_large for 10 classes"),
    ),
    P(
        "file-dry-run-dataset-absent",
        {"trial": {"data": {"dataset": "cifar100", "root": "{dir}/nothing"}}},
        "trial.data.dataset",
        "cifar100",
    ),
    P("value-dry-run-cpu-64", {"resources": {"cpu": 64}}, "resources.cpu", "this machine has"),
]


def _dry_run_teacher(folder: Path, content: bytes | str) -> Path:
    """A study whose cnn_large teacher checkpoint is ``content`` (bytes), or the weights
    of another architecture (a model name): found only by loading it."""
    ckpt = folder / "t.pth"
    if isinstance(content, bytes):
        ckpt.write_bytes(content)
    else:
        import torch

        from trainables.models import build

        torch.save(build(content, 10, in_channels=1).state_dict(), ckpt)
    path = folder / "s.yaml"
    teacher = {"arch": "cnn_large", "checkpoint": str(ckpt)}
    path.write_text(base_text({"trial": {"teacher": teacher}}))
    return path


def snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def check_line(err: str, expect: tuple[str, ...]) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"not one line: {err!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in err and 'File "' not in err, err
    for fragment in expect:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def _fill(text: str, folder: Path) -> str:
    return text.replace("{dir}", str(folder))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2_and_starts_nothing(
    case: Case, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a default ./studies/<name> would land here
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")  # main sets it; restored after
    monkeypatch.setenv("KDSTUDY_STATE_KEY", str(tmp_path / "state.key"))
    if case.id == "extends-directory":
        (tmp_path / "sub").mkdir()
    space = case.write(tmp_path)
    if space.is_file() and space.suffix == ".yaml":  # "{dir}" placeholders in the text
        raw = space.read_bytes()
        if b"{dir}" in raw:
            space.write_bytes(raw.replace(b"{dir}", str(tmp_path).encode()))
    before = snapshot(tmp_path)
    argv = ["--space", str(space), *(_fill(a, tmp_path) for a in case.argv)]
    if not any(a in ("--storage", "--tracking-uri", "--teachers-dir") for a in case.argv):
        argv.append("--dry-run")  # validation is the same; nothing could start anyway
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capfd.readouterr()
    assert code == 2, f"exit {code}; stdout {out[-300:]!r}; stderr {err!r}"
    check_line(err, tuple(_fill(e, tmp_path) for e in case.expect))
    assert snapshot(tmp_path) == before, "files were written"
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()
    assert "mlflow.tracking.fluent" not in sys.modules or not _active_mlflow_run()


def _active_mlflow_run() -> bool:
    import mlflow

    return mlflow.active_run() is not None


def test_the_corpus_covers_every_class() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    counts = {
        k: sum(i.startswith(k + "-") for i in ids)
        for k in ("decode", "value", "typo", "extends", "flag", "file")
    }
    assert all(n >= 4 for n in counts.values()), counts


# -- the real command, without --dry-run --------------------------------------------------


def _teacher_file(folder: Path, kind: str) -> Path:
    import torch

    from trainables.models import build

    ckpt = folder / "teacher.pth"
    if kind == "empty":
        ckpt.write_bytes(b"")
    else:
        torch.save({"model": build("cnn_large", 10, in_channels=1).state_dict()}, ckpt)
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])  # truncated
    return ckpt


def _with_teacher(kind: str) -> Callable[[Path], Path]:
    def build_inputs(folder: Path) -> Path:
        ckpt = _teacher_file(folder, kind)
        path = folder / "s.yaml"
        teacher = {"arch": "cnn_large", "checkpoint": str(ckpt)}
        path.write_text(base_text({"trial": {"teacher": teacher}}))
        return path

    return build_inputs


def _with_cost(folder: Path) -> Path:
    (folder / "cost.pt").write_bytes(b"PK\x03\x04 truncated zip")
    path = folder / "s.yaml"
    path.write_text(base_text({"trial": {"cost": {"path": str(folder / "cost.pt")}}}))
    return path


SUBPROCESS_CASES: list[Case] = [
    Case("cli-storage-is-a-file", "", ("--storage", "{dir}/s.yaml"), ("--storage", "a directory")),
    Case(
        "cli-teacher-empty", _with_teacher("empty"), (), ("trial.teacher", "teacher.pth", "empty")
    ),
    Case(
        "cli-teacher-truncated",
        _with_teacher("truncated"),
        (),
        ("trial.teacher", "teacher.pth", "truncated"),
    ),
    Case("cli-cost-corrupt", _with_cost, (), ("trial.cost.path", "cost.pt")),
]


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every subprocess case started at once (each imports torch: seconds apiece)."""
    procs = {}
    for case in SUBPROCESS_CASES:
        folder = tmp_path_factory.mktemp(case.id)
        (folder / "sub").mkdir()
        space = case.write(folder)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env["KDSTUDY_STATE_KEY"] = str(folder / "key" / "state.key")
        argv = ["--space", str(space), *(_fill(a, folder) for a in case.argv)]
        if "--storage" not in case.argv:
            argv += ["--storage", str(folder / "st")]
        argv += ["--teachers-dir", str(folder / "teachers"), "--quiet"]
        before = snapshot(folder)
        proc = subprocess.Popen(
            [*RUN, *argv],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs[case.id] = (proc, folder, before)
    out = {}
    for cid, (proc, folder, before) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[cid] = (proc.returncode, stdout, stderr, folder, before)
    return out


@pytest.mark.slow  # each imports torch (~9 s; they run in parallel)
@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=lambda c: c.id)
def test_the_command_refuses_bad_input_before_anything_starts(
    case: Case, cli_results: dict[str, Any]
) -> None:
    code, stdout, stderr, folder, before = cli_results[case.id]
    assert code == 2, f"exit {code}; stdout {stdout[-500:]!r}; stderr {stderr[-2000:]!r}"
    check_line(stderr, tuple(_fill(e, folder) for e in case.expect))
    assert snapshot(folder) == before, "files were written"
    assert not list(folder.rglob("mlflow.db"))
    assert "starting Ray" not in stdout


# -- a corrupt cost-matrix cache in the teacher registry: rebuilt, never a traceback --------


@pytest.mark.parametrize("damage", ["sidecar-list", "sidecar-binary", "nan", "not-square"])
def test_a_corrupt_cost_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    import json

    import torch

    from study.cost_matrix import cached_cost, cost_cache_key
    from study.teacher_checkpoint import sha256_file

    key = cost_cache_key("0" * 64, "fingerprint", "cka", 0, 10)
    pt, sidecar = tmp_path / f"cost_{key['id']}.pt", tmp_path / f"cost_{key['id']}.json"
    bad = torch.full((4, 4), float("nan")) if damage == "nan" else torch.zeros(4, 3)
    torch.save(bad, pt)
    record: Any = {"key": dict(key), "sha256": sha256_file(pt), "shape": list(bad.shape)}
    if damage == "sidecar-list":
        record = [record]
    sidecar.write_text(json.dumps(record))
    if damage == "sidecar-binary":
        sidecar.write_bytes(b"\xff\xfe\x00garbage")
    good = torch.rand(4, 4)
    got = cached_cost(tmp_path, key, lambda: good)
    assert not got.cache_hit and torch.equal(got.matrix, good)
    assert torch.equal(torch.load(pt, weights_only=True), good)  # the entry was replaced
