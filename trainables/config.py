"""Typed, validated trial configuration.

A trial config arrives as a nested dict (from YAML plus the searched values as
dotted overrides, ``losses.wkd_l.sinkhorn_reg``). ``TrialConfig.from_dict``
rejects unknown keys and bad values with one line naming the key path, the bad
value and what is allowed. Epoch positions (schedule windows, LR milestones,
warm-ups) are fractions of the planned epochs (methods.md §6).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from trainables.losses import LOSSES
from trainables.schedules import Handoff, Schedule


class ConfigError(ValueError):
    """A bad configuration value: ``path``, the value and what is allowed."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.detail = message


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"  # digits | cifar10 | cifar100 | imagefolder:<path>
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.1  # the tuning split (study decisions never see the test set)
    split_seed: int = 0
    batch_size: int = 64  # CIFAR recipe (methods.md §9)
    eval_batch_size: int = 512
    max_per_class: int | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")


@dataclass(frozen=True)
class NetConfig:
    arch: str = "cnn_small"
    checkpoint: str | None = None  # teacher: absolute path resolved by the driver


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.05  # CIFAR recipe (methods.md §9); 0.01 for ShuffleNet/MobileNet students
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False  # WKL's trainer uses Nesterov, the others plain momentum
    schedule: str = "multistep"  # multistep | cosine
    milestones: tuple[float, ...] = (150 / 240, 180 / 240, 210 / 240)  # fractions of E
    decay: float = 0.1
    warmup: float = 0.0  # linear LR warm-up, fraction of E

    def __post_init__(self) -> None:
        if self.schedule not in ("multistep", "cosine"):
            raise ValueError(
                f"schedule {self.schedule!r} is not allowed; allowed: multistep, cosine"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if any(not 0.0 <= m <= 1.0 for m in self.milestones):
            raise ValueError(
                f"milestones are fractions of the planned epochs in [0, 1], got {self.milestones}"
            )


@dataclass(frozen=True)
class CostConfig:
    kind: str = "cka"  # cka | classifier_cosine (methods.md §5)
    seed: int = 0  # sampling seed of the images (part of the cache key)
    max_per_class: int | None = None
    path: str | None = None  # raw D (before sharpening), absolute, set by the driver
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("cka", "classifier_cosine"):
            raise ValueError(f"kind {self.kind!r} is not allowed; allowed: cka, classifier_cosine")


@dataclass(frozen=True)
class TermConfig:
    loss: str
    weight: float
    schedule: Schedule
    params: Any


@dataclass(frozen=True)
class OutputConfig:
    dir: str | None = None  # absolute; per-trial files go below it
    keep_best: bool = True
    keep_last: bool = True
    save_logits: bool = True


@dataclass(frozen=True)
class TrialConfig:
    epochs: int = 240
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # mixed precision on GPU (the Sinkhorn stays float32)
    final: bool = False  # final run: train on the full train set, evaluate on the test set
    role: str = "trial"  # trial | baseline | final
    family: str = ""  # a label for the MLflow UI (wkl, kd, wkd_l, gkl, ...)
    on_nonfinite: str = "fail"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: NetConfig = field(default_factory=lambda: NetConfig("cnn_large"))
    student: NetConfig = field(default_factory=NetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    losses: dict[str, TermConfig] = field(default_factory=dict)
    handoff: Handoff | None = None
    output: OutputConfig = field(default_factory=OutputConfig)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: str = "") -> TrialConfig:
        if not isinstance(raw, dict):
            raise ConfigError(path, f"expected a mapping, got {type(raw).__name__}")
        raw = dict(raw)
        losses_raw = raw.pop("losses", None)
        handoff_raw = raw.pop("handoff", None)
        cfg = _build(cls, raw, path, skip={"losses", "handoff"})
        if not losses_raw:
            raise ConfigError(_join(path, "losses"), "at least one loss term is required")
        if not isinstance(losses_raw, dict):
            raise ConfigError(_join(path, "losses"), "expected a mapping of term name -> settings")
        terms = {
            name: _build_term(name, spec, _join(path, f"losses.{name}"))
            for name, spec in losses_raw.items()
        }
        handoff = None
        if handoff_raw is not None:
            handoff = _build(Handoff, handoff_raw, _join(path, "handoff"))
            for key in ("w_term", "kl_term"):
                term = getattr(handoff, key)
                if term not in terms:
                    raise ConfigError(
                        _join(path, f"handoff.{key}"),
                        f"{term!r} is not a loss term; terms: {', '.join(sorted(terms))}",
                    )
        for key, allowed in (("role", ROLES), ("on_nonfinite", ("fail", "skip_batch"))):
            if getattr(cfg, key) not in allowed:
                raise ConfigError(
                    _join(path, key), f"{getattr(cfg, key)!r} is not allowed; allowed: {allowed}"
                )
        if cfg.epochs < 1:
            raise ConfigError(_join(path, "epochs"), f"must be >= 1, got {cfg.epochs}")
        return dataclasses.replace(cfg, losses=terms, handoff=handoff)

    # -- views -----------------------------------------------------------------------
    def schedules(self) -> dict[str, Schedule]:
        """Each term's effective schedule (the hand-off overrides its two terms)."""
        out = {name: t.schedule for name, t in self.losses.items()}
        if self.handoff is not None:
            w, kl = self.handoff.schedules()
            out[self.handoff.w_term] = w
            out[self.handoff.kl_term] = kl
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (round-trips through ``from_dict``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "losses":
                out["losses"] = {
                    n: {
                        "loss": t.loss,
                        "weight": t.weight,
                        "schedule": t.schedule.to_dict(),
                        **_plain(t.params),
                    }
                    for n, t in v.items()
                }
            elif f.name == "handoff":
                if v is not None:
                    out["handoff"] = _plain(v)
            else:
                out[f.name] = _plain(v)
        return out

    def config_hash(self) -> str:
        """Hash of everything that defines the trial's training (not where it writes)."""
        d = self.to_dict()
        d.pop("output", None)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


ROLES = ("trial", "baseline", "final")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, tuple):
        return list(v)
    return v


def _build_term(name: str, spec: Any, path: str) -> TermConfig:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ConfigError(path, f"expected a mapping of settings, got {spec!r}")
    spec = dict(spec)
    loss = spec.pop("loss", name)
    if loss not in LOSSES:
        raise ConfigError(
            _join(path, "loss") if "loss" in spec or loss != name else path,
            f"unknown loss {loss!r}; allowed: {', '.join(sorted(LOSSES))}",
        )
    weight = spec.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ConfigError(_join(path, "weight"), f"expected a number, got {weight!r}")
    schedule = _build(Schedule, spec.pop("schedule", None) or {}, _join(path, "schedule"))
    params = _build(LOSSES[loss].Params, spec, path)
    return TermConfig(loss=loss, weight=float(weight), schedule=schedule, params=params)


def _build(cls: type, raw: Any, path: str, skip: set[str] | None = None) -> Any:
    """Build a frozen dataclass from a dict, checking keys and value types by path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    allowed = sorted(n for n in fields_ if n not in (skip or set()))
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields_ or key in (skip or set()):
            raise ConfigError(_join(path, str(key)), f"unknown key; allowed: {', '.join(allowed)}")
        kwargs[key] = _coerce(hints[key], value, _join(path, key))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        # name the field when the message does (dataclass checks say "solver ...")
        msg = str(exc)
        named = [k for k in kwargs if re.search(rf"(^|[ .]){re.escape(k)}\b", msg)]
        raise ConfigError(_join(path, named[0]) if named else path, msg) from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, path)
            except ConfigError as exc:
                errors.append(exc.detail)
        raise ConfigError(path, errors[0] if errors else f"bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, f"expected a string, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {value!r}")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
    return value


# -- nested-dict helpers shared by the study side -----------------------------------
def set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``d["a"]["b"]["c"] = value`` for ``"a.b.c"``, creating mappings on the way."""
    keys = dotted.split(".")
    cur = d
    for i, k in enumerate(keys[:-1]):
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(".".join(keys[: i + 1]), f"is {nxt!r}, cannot set {dotted} below it")
        cur = nxt
    cur[keys[-1]] = value


def get_path(d: dict[str, Any], dotted: str, default: Any = None) -> Any:
    cur: Any = d
    for k in dotted.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return default
        cur = cur[k]
    return cur


def with_overrides(base: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with dotted ``flat`` values set (sorted, so parents first)."""
    out = copy.deepcopy(base)
    for k in sorted(flat):
        set_path(out, k, flat[k])
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
