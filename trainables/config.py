"""Typed, validated trial configuration.

A trial config arrives as a nested dict (from YAML plus the searched values as
dotted overrides, ``losses.wkd_l.sinkhorn_reg``). ``TrialConfig.from_dict``
rejects unknown keys and bad values with one line naming the key path, the bad
value and what is allowed. Epoch positions (schedule windows, LR milestones,
warm-ups) are fractions of the planned epochs (methods.md §6); YAML may write them as
exact fractions of a recipe's epochs, ``"20/240"`` (parsed here to the float 20/240).

Published settings (one place): when a loss term leaves a parameter unset, the
published value for the trial's (teacher, student) pair fills it (``PUBLISHED`` tables
in the loss modules: DKD's β, GKL's α/β/γ/GI, ...; an explicit value always wins,
unknown pairs keep the generic defaults). ``published_recipe`` is a family's whole
published recipe for a pair (optimizer, losses, schedules): what a baseline runs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from trainables.losses import LOSSES
from trainables.schedules import FRACTION, Handoff, WeightSchedule


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
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        from trainables.datasets import resolve_dataset

        resolve_dataset(self.dataset)  # one line naming the allowed datasets


@dataclass(frozen=True)
class NetConfig:
    arch: str = "cnn_small"
    checkpoint: str | None = None  # teacher: absolute path resolved by the driver

    def __post_init__(self) -> None:
        from trainables.models import MODELS

        if self.arch not in MODELS:
            raise ValueError(f"arch {self.arch!r} is not a model; allowed: {', '.join(MODELS)}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.05  # CIFAR recipe (methods.md §9); 0.01 for ShuffleNet/MobileNet students
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False  # WKL's trainer uses Nesterov, the others plain momentum
    lr_schedule: str = "multistep"  # multistep | cosine
    milestones: tuple[float, ...] = field(
        default=(150 / 240, 180 / 240, 210 / 240), metadata=FRACTION
    )  # fractions of E
    decay: float = 0.1
    warmup: float = field(default=0.0, metadata=FRACTION)  # linear LR warm-up, fraction of E
    lr_min: float = 0.0  # cosine floor: lr_min + (lr − lr_min)·½(1 + cos πx); KD²M: 1e-4

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("multistep", "cosine"):
            raise ValueError(
                f"lr_schedule {self.lr_schedule!r} is not allowed; allowed: multistep, cosine"
            )
        for name in ("lr", "momentum", "weight_decay", "decay", "warmup", "lr_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0 (SGD refuses Nesterov without it)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.decay <= 0:
            raise ValueError(f"decay must be > 0 (the multistep LR factor), got {self.decay}")
        if not 0.0 <= self.warmup <= 1.0:
            raise ValueError(
                f"warmup must be a fraction of the planned epochs in [0, 1], got {self.warmup}"
            )
        if not 0.0 <= self.lr_min <= self.lr:
            raise ValueError(
                f"lr_min must be in [0, peak learning rate {self.lr}] (the cosine floor), "
                f"got {self.lr_min}"
            )
        if any(not (math.isfinite(m) and 0.0 <= m <= 1.0) for m in self.milestones):
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
    weight_schedule: WeightSchedule
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
        for net in ("teacher", "student"):
            net_raw = raw.get(net)
            if isinstance(net_raw, dict) and net_raw.get("checkpoint") and "arch" not in net_raw:
                # a checkpoint loads into one architecture only: never guess it
                from trainables.models import MODELS

                raise ConfigError(
                    _join(path, f"{net}.arch"),
                    f"required with {net}.checkpoint (the checkpoint's architecture); "
                    f"allowed: {', '.join(MODELS)}",
                )
        if isinstance(raw.get("teacher"), dict) and "arch" not in raw["teacher"]:
            raw["teacher"] = {"arch": cls().teacher.arch, **raw["teacher"]}
        cfg = _build(cls, raw, path, skip={"losses", "handoff"})
        if not losses_raw:
            raise ConfigError(_join(path, "losses"), "at least one loss term is required")
        if not isinstance(losses_raw, dict):
            raise ConfigError(_join(path, "losses"), "expected a mapping of term name -> settings")
        pair = (cfg.teacher.arch, cfg.student.arch)
        terms = {
            name: _build_term(name, spec, _join(path, f"losses.{name}"), pair, cfg.family)
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
        if not _DEVICE_RE.fullmatch(cfg.device):
            raise ConfigError(
                _join(path, "device"),
                f"{cfg.device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N, mps",
            )
        return dataclasses.replace(cfg, losses=terms, handoff=handoff)

    # -- views -----------------------------------------------------------------------
    def schedules(self) -> dict[str, WeightSchedule]:
        """Each term's effective weight schedule (the hand-off overrides its two terms)."""
        out = {name: t.weight_schedule for name, t in self.losses.items()}
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
                        "weight_schedule": t.weight_schedule.to_dict(),
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
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, tuple):
        return list(v)
    return v


#: Published per-pair params of losses whose module (owned elsewhere) has no ``published``
#: table yet; the same shape as ``trainables.losses.dkd.PUBLISHED``.
_PUBLISHED_FALLBACK: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
    # WKD-L (methods.md §3): RN32x4->RN8x4 γ0 600, T 8; WRN40-2->SNV1 γ0 200, T 6
    "wkd_l": {
        ("resnet32x4", "resnet8x4"): {"temperature": 8.0, "wd_weight": 600.0},
        ("wrn_40_2", "ShuffleV1"): {"temperature": 6.0, "wd_weight": 200.0},
    },
    # WKD-F (methods.md §4): RN32x4->RN8x4 ρ 4, G 1; WRN40-2->SNV1 ρ 3, G 4 (w_F: term weight)
    "wkd_f": {
        ("resnet32x4", "resnet8x4"): {"mean_weight": 4.0, "grid": 1},
        ("wrn_40_2", "ShuffleV1"): {"mean_weight": 3.0, "grid": 4},
    },
}


def published_params(
    loss: str, teacher: str, student: str, family: str = "", settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The published params of ``loss`` for the (teacher, student) pair ({} if unknown)."""
    fn = getattr(LOSSES[loss], "published", None)
    if fn is not None:
        return dict(fn(teacher, student, family, settings or {}))
    return dict(_PUBLISHED_FALLBACK.get(loss, {}).get((teacher, student), {}))


def _build_term(
    name: str, spec: Any, path: str, pair: tuple[str, str] = ("", ""), family: str = ""
) -> TermConfig:
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
    if not math.isfinite(weight) or weight < 0:
        raise ConfigError(
            _join(path, "weight"), f"{weight!r} is not allowed; allowed: a finite number >= 0"
        )
    weight_schedule = _build(
        WeightSchedule, spec.pop("weight_schedule", None) or {}, _join(path, "weight_schedule")
    )
    # the resolve step: unset params take the published values of the pair (explicit wins)
    Params = LOSSES[loss].Params
    names = (
        {f.name for f in dataclasses.fields(Params)} if dataclasses.is_dataclass(Params) else set()
    )
    unknown = [key for key in spec if key not in names]
    if unknown and dataclasses.is_dataclass(Params):  # name the term's keys, not only Params'
        allowed = ", ".join(["loss", "weight", "weight_schedule", *sorted(names)])
        raise ConfigError(_join(path, str(unknown[0])), f"unknown key; allowed: {allowed}")
    for key, value in published_params(loss, *pair, family, spec).items():
        if key in names and key not in spec:
            spec[key] = value
    params = _build(Params, spec, path)
    for key in ("temperature", "prior_temperature"):  # every family: T > 0
        value = getattr(params, key, None)
        if isinstance(value, int | float) and not value > 0:
            raise ConfigError(
                _join(path, key), f"{value!r} is not allowed; allowed: a temperature > 0"
            )
    return TermConfig(
        loss=loss, weight=float(weight), weight_schedule=weight_schedule, params=params
    )


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
        fraction = bool(fields_[key].metadata.get("fraction"))
        kwargs[key] = _coerce(hints[key], value, _join(path, key), fraction)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        # name the field when the message does (dataclass checks say "solver ...")
        msg = str(exc)
        named = [k for k in kwargs if re.search(rf"(^|[ .]){re.escape(k)}\b", msg)]
        raise ConfigError(_join(path, named[0]) if named else path, msg) from None


_FRACTION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def parse_fraction(value: str, path: str = "") -> float:
    """``"20/240"`` -> the float nearest to 20/240 (exact rational arithmetic, one rounding)."""
    m = _FRACTION_RE.match(value)
    if not m:
        raise ConfigError(
            path, f'expected a number or an exact fraction such as "20/240", got {value!r}'
        )
    num, den = Fraction(m[1]), Fraction(m[2])
    if den == 0:
        raise ConfigError(path, f"{value!r} divides by zero")
    return float(num / den)


def _coerce(tp: Any, value: Any, path: str, fraction: bool = False) -> Any:
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
                return _coerce(a, value, path, fraction)
            except ConfigError as exc:
                errors.append(exc.detail)
        raise ConfigError(path, errors[0] if errors else f"bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), value, path)
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
        if fraction and isinstance(value, str):
            return parse_fraction(value, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(path, f"expected a finite number, got {value!r}")
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
        return tuple(_coerce(inner, v, f"{path}[{i}]", fraction) for i, v in enumerate(value))
    return value


# -- published recipes (what a baseline runs) ------------------------------------------
#: The common CIFAR-100 optimizer (methods.md §9): SGD momentum 0.9, wd 5e-4, lr 0.05
#: (0.01 for ShuffleNet/MobileNet students) × 0.1 at epochs 150, 180, 210 of 240.
CIFAR_OPTIM: dict[str, Any] = {
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "nesterov": False,
    "lr_schedule": "multistep",
    "milestones": ["150/240", "180/240", "210/240"],
    "decay": 0.1,
    "warmup": 0.0,
    "lr_min": 0.0,
}
LOW_LR_STUDENTS = frozenset({"ShuffleV1", "ShuffleV2", "MobileNetV2"})  # lr 0.01 (§9)
#: KD²M (methods.md §8): ImageNet-pretrained ResNet34 -> ResNet18 fine-tuned on CIFAR,
#: SGD lr 0.01 momentum 0.9, no weight decay, cosine to 1e-4 (15 epochs, batch 128: task).
KD2M_OPTIM: dict[str, Any] = {
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "nesterov": False,
    "lr_schedule": "cosine",
    "milestones": [],
    "decay": 0.1,
    "warmup": 0.0,
    "lr_min": 1e-4,
}
PAIR_OPTIM: dict[tuple[str, str], dict[str, Any]] = {("tv_resnet34", "tv_resnet18"): KD2M_OPTIM}

_WARMUP_20 = {"kind": "ramp_up", "shape": "linear", "start": 0.0, "end": "20/240"}  # DKD, GKL
_DECAY_150 = {"kind": "ramp_down", "shape": "cosine", "start": "150/240", "end": 1.0}  # WKD
_WKD_L = {"sinkhorn_reg": 0.05, "sinkhorn_iters": 10, "cost_sharpen": 1.0, "solver": "reference"}
#: per-pair term weights (the params come from the PUBLISHED tables): WKD-F's w_F, WKL's κ_KL
_WKD_F_WEIGHT = {("resnet32x4", "resnet8x4"): 0.08, ("wrn_40_2", "ShuffleV1"): 0.3}
_WKL_KL_WEIGHT = {("resnet32x4", "resnet8x4"): 0.5, ("wrn_40_2", "ShuffleV1"): 1.0}


def _family_losses(family: str, pair: tuple[str, str]) -> dict[str, Any] | None:
    """A family's published loss terms and schedules (methods.md §1-§8); per-pair params
    are left unset: ``from_dict`` fills them from the loss modules' tables."""
    ce = {"ce": {"weight": 1.0}}
    if family == "ce":  # the student alone (KD²M's "Student" row)
        return ce
    if family == "kd":  # §1: CE 0.1 + KD 0.9, T = 4
        return {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}
    if family == "dkd":  # §2: CE 1, DKD with warm-up min(e/20, 1)
        return {**ce, "dkd": {"weight_schedule": dict(_WARMUP_20)}}
    if family == "gkl":  # §7: CE 1, GKL with warm-up 20
        return {**ce, "gkl": {"weight_schedule": dict(_WARMUP_20)}}
    if family == "ikl":  # §7: IKL = GKL with γ 1, normalised by B, T2 100, warm-up 20
        return {
            **ce,
            "ikl": {"loss": "gkl", "normalize": "batch", "weight_schedule": dict(_WARMUP_20)},
        }
    if family == "wkd_l":  # §3: L_t + γ0 cosine-decayed from 150/240
        return {**ce, "wkd_l": {**_WKD_L, "weight_schedule": dict(_DECAY_150)}}
    if family == "wkd_f":  # §4: w_F cosine-decayed from 150/240
        w = _WKD_F_WEIGHT.get(pair, 0.08)
        return {**ce, "wkd_f": {"weight": w, "weight_schedule": dict(_DECAY_150)}}
    if family == "kd2m":  # §8: CE + 1e-4 · diagonal Gaussian W2
        return {**ce, "kd2m": {"weight": 1e-4, "distance": "gaussian_w2", "diagonal": True}}
    if family == "wkl":  # §6: CE + WKD-L (γ0, T) + κ_KL · DKD(1, 2, T), hand-off below
        return {
            **ce,
            "wkd_l": dict(_WKD_L),
            "kl": {"loss": "dkd", "weight": _WKL_KL_WEIGHT.get(pair, 0.5)},
        }
    return None


#: WKL's published hand-off (methods.md §6): W cosine on [150/240, 1], KL cosine on [0, 1]
WKL_HANDOFF: dict[str, Any] = {
    "mode": "independent",
    "w_term": "wkd_l",
    "kl_term": "kl",
    "w_shape": "cosine",
    "w_start": "150/240",
    "w_end": 1.0,
    "kl_shape": "cosine",
    "kl_start": 0.0,
    "kl_end": 1.0,
}
RECIPE_FAMILIES = ("ce", "kd", "dkd", "gkl", "ikl", "wkd_l", "wkd_f", "kd2m", "wkl")


def published_optim(family: str, teacher: str, student: str) -> dict[str, Any]:
    """The published optimizer for a pair: KD²M's for its pair, else the CIFAR recipe
    (lr 0.01 for ShuffleNet/MobileNet students); Nesterov only for WKL (§9)."""
    optim = copy.deepcopy(PAIR_OPTIM.get((teacher, student), CIFAR_OPTIM))
    if (teacher, student) not in PAIR_OPTIM and student in LOW_LR_STUDENTS:
        optim["lr"] = 0.01
    if family == "wkl":
        optim["nesterov"] = True
    return optim


def published_recipe(family: str, teacher: str, student: str) -> dict[str, Any]:
    """A family's published recipe for the (teacher, student) pair, as a trial-dict
    fragment: ``family``, ``optim``, ``losses`` (None for a family without a published
    recipe: its losses must be given) and ``handoff`` (WKL only). The task (data,
    models, epochs, device) is not part of a recipe."""
    pair = (teacher, student)
    out: dict[str, Any] = {
        "family": family,
        "optim": published_optim(family, teacher, student),
        "losses": _family_losses(family, pair),
    }
    if family == "wkl":
        out["handoff"] = dict(WKL_HANDOFF)
    return out


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


@dataclass(frozen=True)
class ResolvedTrial:
    """What a Ray trial config means: its base, its searched values and the config."""

    base: str  # "search" or "<baseline>:<seed>"
    overrides: dict[str, Any]  # the searched values (flat dotted names)
    full: dict[str, Any]  # the base with the overrides applied (nested dict)
    config: TrialConfig


def trial_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """Searched values of a Ray config: flat dotted names, or a grid ``point``."""
    flat = {k: v for k, v in config.items() if k not in ("point", "base")}
    flat.update(config.get("point") or {})
    return flat


def resolve_trial(bases: dict[str, dict[str, Any]], ray_config: dict[str, Any]) -> ResolvedTrial:
    """The only way a Ray config becomes a ``TrialConfig``: ``ray_config["base"]`` picks a
    fully resolved base (default ``"search"``), the rest are dotted overrides."""
    base = str(ray_config.get("base", "search"))
    over = trial_overrides(ray_config)
    full = with_overrides(bases[base], over)
    return ResolvedTrial(base, over, full, TrialConfig.from_dict(full))


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
