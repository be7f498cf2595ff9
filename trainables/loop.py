"""The distillation loop: knows nothing of Ray or MLflow.

``run_training(cfg, report, resume)`` trains a student from a teacher with the
Criterion of ``cfg`` and calls ``report(metrics, state)`` once per epoch, where
``state`` is everything needed to resume exactly (model, optimizer, loss state
such as the GKL prior and WKD-F projector, epoch, best so far, RNG). The epoch
always comes from the resume state (PBT copies a donor's state including its
epoch). Learning rate and loss weights are pure functions of the epoch, so no
scheduler state exists to go stale.

Common random numbers: student init, loss-module init (projectors), data order
and augmentation each draw from their own stream derived from ``cfg.seed``, so
two trials with the same seed differ only by what was tuned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as torch_f
from torch import Tensor, nn

from trainables.config import TrialConfig
from trainables.data import BatchLoader, DataBundle, load_configured
from trainables.losses import LOSSES, Criterion, Term
from trainables.losses import functional as F
from trainables.models import build as build_model
from trainables.models import load_state_file
from trainables.types import EpochInfo, ModelOutputs

#: epochs averaged by the ``<split>/top1_last3`` metric
LAST_K = 3

Report = Callable[[dict[str, float], dict[str, Any]], None]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf: the trial fails with this reason."""


class LossUnhealthy(RuntimeError):
    """A loss term's epoch health check failed with ``fatal`` (e.g. a collapsed or
    non-converged Sinkhorn with ``on_collapse: fail``): the trial ends with this reason."""


def derive_seed(seed: int, stream: str) -> int:
    """A stable 63-bit seed for a named random stream (independent of Python's hash)."""
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with the global torch RNG set to ``seed``, restoring it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available")
    return dev


def lr_at(cfg: TrialConfig, epoch: int) -> float:
    """Learning rate of a 1-based epoch: a pure function (exact resume, PBT-safe)."""
    o = cfg.optim
    E = cfg.epochs
    x = (epoch - 1) / E  # position at the *start* of the epoch, as the recipe decays
    if o.warmup > 0 and x < o.warmup:
        return o.lr * (epoch / max(o.warmup * E, 1.0))
    if o.lr_schedule == "cosine":  # to the floor lr_min (KD²M: 1e-4), 0 by default
        return o.lr_min + (o.lr - o.lr_min) * 0.5 * (1 + math.cos(math.pi * x))
    # multistep: decays at epochs 150, 180, 210 of 240 -> from epoch 151 on (mdistiller)
    passed = sum(1 for m in o.milestones if epoch > round(m * E))
    return o.lr * (o.decay**passed)


def build_criterion(cfg: TrialConfig, cost: Tensor | None) -> Criterion:
    schedules = cfg.schedules()
    terms = []
    for name, t in cfg.losses.items():
        loss = LOSSES[t.loss](t.params)
        if loss.needs_cost:
            if cost is None:
                raise ValueError(f"loss term {name!r} ({t.loss}) needs cost.path (a cost matrix)")
            loss.set_cost(cost)
        terms.append(Term(name, loss, t.weight, schedules[name]))
    return Criterion(terms)


def load_teacher_weights(model: nn.Module, path: str) -> None:
    """Strict load of a teacher file (mdistiller ``{"model": sd}``, plain or DataParallel)."""
    model.load_state_dict(load_state_file(path), strict=True)


def load_pretrained(model: nn.Module, path: str) -> list[str]:
    """Initialise ``model`` from pretrained weights (e.g. a student's ImageNet weights,
    KD²M's recipe, methods.md §8): every tensor whose name and shape match is loaded;
    the others (the classifier head of another task) keep their seeded initialisation.
    Returns the names left as initialised; refuses a file that matches nothing."""
    state = load_state_file(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(
            f"student.checkpoint {path}: no tensor matches the {type(model).__name__} "
            "architecture by name and shape"
        )
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


@dataclass
class TrialSetup:
    device: torch.device
    data: DataBundle
    teacher: nn.Module | None  # None when no loss term reads it
    student: nn.Module
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    train_loader: BatchLoader
    eval_loader: BatchLoader


def setup_trial(cfg: TrialConfig, device: torch.device | None = None) -> TrialSetup:
    device = device or pick_device(cfg.device)
    d = cfg.data
    data = load_configured(d, final=cfg.final)
    C, in_ch = data.num_classes, data.in_channels
    cost = None
    if cfg.cost.path:
        cost = torch.load(cfg.cost.path, map_location="cpu", weights_only=True)
    criterion = build_criterion(cfg, cost).to(device)
    teacher: nn.Module | None = None
    if criterion.needs_teacher:  # CE alone (training a teacher) runs without one
        with seeded(derive_seed(cfg.seed, "teacher_init"), device):  # matters with no weights
            teacher = build_model(cfg.teacher.arch, C, in_channels=in_ch)
        if cfg.teacher.checkpoint:
            load_teacher_weights(teacher, cfg.teacher.checkpoint)
        teacher = teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    with seeded(derive_seed(cfg.seed, "student_init"), device):
        student = build_model(cfg.student.arch, C, in_channels=in_ch).to(device)
    if cfg.student.checkpoint:  # pretrained start (every arm of a study gets the same)
        load_pretrained(student, cfg.student.checkpoint)
    train_loader = BatchLoader(
        data.train,
        data.preset,
        d.batch_size,
        device,
        train=True,
        seed=derive_seed(cfg.seed, "data"),
        drop_last=len(data.train.labels) > d.batch_size,
    )
    eval_loader = BatchLoader(
        data.eval, data.preset, d.eval_batch_size, device, train=False, seed=0
    )
    # lazy loss state (projectors, priors) from one real batch, with its own stream
    if len(data.eval.labels) == 0 or len(data.train.labels) == 0:
        raise ValueError(
            f"data: the {data.eval_split} or train split of {d.dataset!r} is empty "
            f"(max_per_class={d.max_per_class}, val_fraction={d.val_fraction}); use more images"
        )
    x, y = next(iter(eval_loader.epoch(1)))
    student.eval()
    with torch.no_grad():
        s_out = student(x)
        t_out = teacher(x) if teacher is not None else None
    with seeded(derive_seed(cfg.seed, "loss_init"), device):
        criterion.setup(s_out, t_out, C)
    criterion.to(device)
    params = list(student.parameters()) + list(criterion.parameters())
    o = cfg.optim
    optimizer = torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
    )
    return TrialSetup(
        device, data, teacher, student, criterion, optimizer, train_loader, eval_loader
    )


def _accuracy_and_logits(
    model: nn.Module, loader: BatchLoader, num_classes: int, amp: bool
) -> tuple[float, float, Tensor, Tensor, list[float]]:
    model.eval()
    logits, labels = [], []
    with torch.no_grad(), _autocast(loader.device, amp):
        for x, y in loader.epoch(1):
            logits.append(model(x).logits.float())
            labels.append(y)
    z = torch.cat(logits)
    y = torch.cat(labels)
    loss = torch_f.cross_entropy(z, y).item()
    pred = z.argmax(1)
    correct = (pred == y).float()
    top1 = 100.0 * correct.mean().item()
    per_class = []
    for c in range(num_classes):
        m = y == c
        per_class.append(100.0 * correct[m].mean().item() if m.any() else float("nan"))
    return top1, loss, z.cpu(), y.cpu(), per_class


def _autocast(device: Any, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if enabled and dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_training(
    cfg: TrialConfig,
    report: Report,
    resume: dict[str, Any] | None = None,
    *,
    trial_dir: str | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Train and report every epoch; returns the last metrics.

    ``trial_dir`` (absolute) receives what cannot be regenerated: best and last
    student weights, final evaluation logits and per-class accuracy.
    """
    ts = setup_trial(cfg, device)
    dev, amp = ts.device, cfg.amp and ts.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    start_epoch, best, best_epoch = 1, -1.0, 0
    recent: list[float] = []  # the last LAST_K epochs' top-1 (in the resume state)
    if resume is not None:
        ts.student.load_state_dict(resume["student"])
        ts.criterion.load_state_dict(resume["criterion"])
        ts.optimizer.load_state_dict(resume["optimizer"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        start_epoch = int(resume["epoch"]) + 1
        best, best_epoch = float(resume["best"]), int(resume["best_epoch"])
        recent = [float(v) for v in resume.get("recent_top1", [])]
    out_dir = Path(trial_dir) if trial_dir else None
    split = ts.data.eval_split
    T_diag = ts.criterion.kl_temperature()
    C = ts.data.num_classes
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        info = EpochInfo(epoch, cfg.epochs)
        lr = lr_at(cfg, epoch)
        for g in ts.optimizer.param_groups:
            g["lr"] = lr
        ts.student.train()
        ts.criterion.train()
        ts.criterion.on_epoch_start(info)
        # detached device tensors, read once per epoch: no host sync per part and batch
        sums: dict[str, Tensor] = {}
        n_batches = 0
        for batch, (x, y) in enumerate(ts.train_loader.epoch(epoch)):
            t_out = None
            if ts.teacher is not None:
                with torch.no_grad(), _autocast(dev, amp):
                    t_out = ts.teacher(x)
            with _autocast(dev, amp):
                s_out = ts.student(x)
                out = ts.criterion(s_out, t_out, y, info)
            loss = out.total
            if not torch.isfinite(loss):
                bad = {k: float(v.detach()) for k, v in out.parts.items()}
                raise NonFiniteLoss(
                    f"non-finite loss at epoch {epoch} batch {batch}: "
                    f"total={float(loss.detach())} parts={bad}"
                )
            ts.optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(ts.optimizer)
                scaler.update()
            else:
                loss.backward()
                ts.optimizer.step()
            s_det = ModelOutputs(s_out.logits.detach(), (), s_out.pooled.detach())
            ts.criterion.on_batch_end(s_det, t_out, y)
            _accumulate(sums, "train/loss", loss)
            for k, v in out.parts.items():
                _accumulate(sums, f"train/{k}", v)
            for k, v in out.diagnostics.items():
                _accumulate(sums, f"diag/{k}", v)
            if t_out is not None:  # the alignment diagnostics compare with the teacher
                for k, v in _alignment(s_out.logits, t_out.logits, y, T_diag).items():
                    _accumulate(sums, f"diag/{k}", v)
            n_batches += 1
        ts.criterion.on_epoch_end(info)
        metrics = {k: float(v) / max(n_batches, 1) for k, v in sums.items()}
        for name, w in out.weights.items():
            metrics[f"weight/{name}"] = w
        # the headline diagnostics each family declares (e.g. the figures' loss_w)
        metrics.update(_headlines(ts.criterion, metrics))
        _check_health(ts.criterion, metrics, epoch, out_dir)
        top1, vloss, z, yv, per_class = _accuracy_and_logits(ts.student, ts.eval_loader, C, amp)
        improved = top1 > best
        if improved:
            best, best_epoch = top1, epoch
        recent = [*recent, top1][-LAST_K:]
        metrics.update(
            {
                f"{split}/top1": top1,
                f"{split}/top1_best": best,
                f"{split}/loss": vloss,
                f"{split}/best_epoch": float(best_epoch),
                # the mean of the last LAST_K epochs: reported beside the objective (issue 8
                # measured best / last / mean of the last 2-3 as equally faithful rankings)
                f"{split}/top1_last{LAST_K}": sum(recent) / len(recent),
                # the evaluation set's size: one image is 100/images points of top-1
                f"{split}/images": float(len(yv)),
                "lr": lr,
                "epoch": float(epoch),
                "time/epoch_s": time.perf_counter() - t0,
            }
        )
        if out_dir is not None:
            _save_outputs(cfg, out_dir, ts, epoch, top1, improved, z, yv, per_class)
        state = {
            "epoch": epoch,
            "student": ts.student.state_dict(),
            "criterion": ts.criterion.state_dict(),
            "optimizer": ts.optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "best": best,
            "best_epoch": best_epoch,
            "recent_top1": list(recent),
            "config_hash": cfg.config_hash(),
        }
        report(metrics, state)
    return metrics


def _accumulate(sums: dict[str, Tensor], key: str, value: Tensor) -> None:
    v = value.detach().double()  # float64: the epoch sum of hundreds of batches
    sums[key] = sums[key] + v if key in sums else v


def _alignment(zs: Tensor, zt: Tensor, y: Tensor, T: float) -> dict[str, Tensor]:
    d = F.alignment_diagnostics(zs.detach().float(), zt.float(), y, T)
    with torch.no_grad():
        # target term L_t of WKD-L at T = 1: −p_t(y)·log p_s(y), batch mean
        pt = torch.softmax(zt.float(), 1).gather(1, y[:, None])
        ls = torch.log_softmax(zs.detach().float(), 1).gather(1, y[:, None])
        d = {**d, "target": -(pt * ls).mean()}
    return d


def _headlines(criterion: Criterion, metrics: dict[str, float]) -> dict[str, float]:
    """``diag/<name>``: the sum over terms of the weighted part each family names."""
    out: dict[str, float] = {}
    for term in criterion.terms:
        for name, part in term.loss.headline_parts.items():
            value = metrics.get(f"train/{term.name}/{part}")
            if value is not None:
                out[f"diag/{name}"] = out.get(f"diag/{name}", 0.0) + value
    return out


def _check_health(
    criterion: Criterion, metrics: dict[str, float], epoch: int, out_dir: Path | None
) -> None:
    """Ask every term to judge its epoch from its own diagnostics: warn, or end the
    trial (``LossUnhealthy``). The loop names no loss: each family owns its check.

    A warning is reported as the metric ``health/<term>`` = 1 (the study's progress
    output and MLflow see it) and its message appended to ``<trial dir>/health.jsonl``.
    """
    for term in criterion.terms:
        prefix = f"diag/{term.name}/"
        diag = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        issue = term.loss.epoch_health(diag, epoch)
        if issue is None:
            continue
        msg = f"{term.name}: {issue.message}"
        if issue.fatal:
            raise LossUnhealthy(msg)
        metrics[f"health/{term.name}"] = 1.0
        print(f"warning: {msg}", file=sys.stderr, flush=True)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            with (out_dir / "health.jsonl").open("a") as fh:
                fh.write(json.dumps({"epoch": epoch, "term": term.name, "message": msg}) + "\n")


def _save_outputs(
    cfg: TrialConfig,
    out_dir: Path,
    ts: TrialSetup,
    epoch: int,
    top1: float,
    improved: bool,
    z: Tensor,
    y: Tensor,
    per_class: list[float],
) -> None:
    o = cfg.output
    weights = {"student": ts.student.state_dict(), "epoch": epoch, "top1": top1}
    if o.keep_best and improved:
        _atomic_save(weights, out_dir / "best.pt")
    # overwritten every epoch: a trial stopped early by the scheduler keeps its latest too
    if o.keep_last:
        _atomic_save(weights, out_dir / "last.pt")
    if o.save_logits:
        _atomic_save({"logits": z.half(), "labels": y, "epoch": epoch}, out_dir / "eval_logits.pt")
    summary = {"epoch": epoch, "top1": top1, "per_class_top1": per_class}
    _atomic_text(json.dumps(summary, indent=1), out_dir / "per_class.json")
