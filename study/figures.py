"""Figures for a finished study, from plain Python data.

Every function takes lists and dicts (no Ray, MLflow or torch objects), writes one PNG
and returns its path, or returns ``None`` when there is nothing to draw so the caller can
skip the figure. Arms keep one colour across all figures (:func:`arm_colors`): the
baselines ``kd``, ``wkd_l`` and ``gkl`` have fixed colours, other arms (WKL variants)
take colours from a qualitative palette in sorted-name order.

Per-seed series are ``series[arm] = [seed_0_values, seed_1_values, ...]`` with one value
per epoch (epochs 1..E). A seed stopped early has a shorter list; NaN marks a missing
value. Bands are the min–max over seeds when fewer than 3 seeds have a value at that
epoch's arm, else ±1 standard deviation; the legend says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

DPI = 120
SINGLE_FIGSIZE = (8.0, 5.0)

# Fixed colours for the baselines (neutral/earthy so WKL arms stand out).
BASELINE_COLORS: dict[str, str] = {
    "kd": "#4d4d4d",  # dark grey
    "wkd_l": "#8c564b",  # brown
    "gkl": "#9467bd",  # purple
}
# Qualitative palette for every other arm (tab10 without the baselines' grey/brown/purple,
# then the light tab20 tones).
_PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
)

LOSS_METRICS: tuple[tuple[str, str, str], ...] = (
    ("kl", "KL divergence KL(teacher ‖ student)", "KL (nats)"),
    ("tc", "target-class term (TC)", "TC term (nats)"),
    ("nc", "non-target-class term (NC)", "NC term (nats)"),
    ("w", "Wasserstein loss as trained: γ(e)·W", "γ(e)·W (ground-cost units)"),
)


def _baseline_key(arm: str) -> str:
    return arm.strip().lower().replace("-", "_")


def arm_colors(arms: list[str]) -> dict[str, str]:
    """One colour per arm: fixed for the baselines, palette order (sorted names) otherwise.

    Call it once with every arm of the study and pass the result to each figure
    (``colors=``) so an arm has the same colour everywhere.
    """
    colors: dict[str, str] = {}
    others: list[str] = []
    for arm in arms:
        key = _baseline_key(arm)
        if key in BASELINE_COLORS:
            colors[arm] = BASELINE_COLORS[key]
        elif arm not in others:
            others.append(arm)
    for i, arm in enumerate(sorted(others)):
        colors[arm] = _PALETTE[i % len(_PALETTE)]
    return colors


def _colors_for(arms: list[str], colors: dict[str, str] | None) -> dict[str, str]:
    base = arm_colors(arms)
    if colors:
        base.update({a: c for a, c in colors.items() if a in base})
    return base


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


@dataclass(frozen=True)
class _Band:
    epochs: np.ndarray  # 1..E
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_seeds: int  # seeds with at least one finite value
    kind: str  # "±1 std" | "min–max"


def _to_matrix(seeds: list[list[float]]) -> np.ndarray:
    """Seeds × epochs, NaN-padded to the longest seed."""
    length = max((len(s) for s in seeds), default=0)
    mat = np.full((len(seeds), length), np.nan, dtype=float)
    for i, s in enumerate(seeds):
        vals = [float("nan") if v is None else float(v) for v in s]
        mat[i, : len(vals)] = vals
    return mat


def _band(seeds: list[list[float]]) -> _Band | None:
    """Mean over seeds per epoch with a min–max (< 3 seeds) or ±1 std (≥ 3 seeds) band."""
    if not seeds:
        return None
    mat = _to_matrix(seeds)
    if mat.size == 0:
        return None
    finite = np.isfinite(mat)
    if not finite.any():
        return None
    n_seeds = int(finite.any(axis=1).sum())
    count = finite.sum(axis=0)
    safe = np.where(finite, mat, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, safe.sum(axis=0) / np.maximum(count, 1), np.nan)
        if n_seeds >= 3:
            dev = np.where(finite, (mat - mean) ** 2, 0.0)
            var = np.where(count > 1, dev.sum(axis=0) / np.maximum(count - 1, 1), 0.0)
            std = np.sqrt(var)
            low, high, kind = mean - std, mean + std, "±1 std"
        else:
            low = np.where(count > 0, np.where(finite, mat, np.inf).min(axis=0), np.nan)
            high = np.where(count > 0, np.where(finite, mat, -np.inf).max(axis=0), np.nan)
            kind = "min–max"
    low = np.where(count > 0, low, np.nan)
    high = np.where(count > 0, high, np.nan)
    epochs = np.arange(1, mat.shape[1] + 1)
    return _Band(epochs, mean, low, high, n_seeds, kind)


def _plot_band(ax: Any, band: _Band, color: str, label: str) -> None:
    marker = "o" if len(band.epochs) == 1 else None
    ax.plot(band.epochs, band.mean, color=color, lw=1.8, label=label, marker=marker)
    ax.fill_between(band.epochs, band.low, band.high, color=color, alpha=0.18, lw=0)


def _band_label(arm: str, band: _Band) -> str:
    unit = "seed" if band.n_seeds == 1 else "seeds"
    if band.n_seeds == 1:
        return f"{arm} (n={band.n_seeds} {unit})"
    return f"{arm} (n={band.n_seeds} {unit}, band {band.kind})"


def _epoch_axis(ax: Any, max_epoch: int) -> None:
    ax.set_xlabel("epoch")
    ax.set_xlim(1, max(max_epoch, 2))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)


def accuracy_curves(
    series: dict[str, list[list[float]]],
    path: Path,
    *,
    split: str,
    title: str | None = None,
    colors: dict[str, str] | None = None,
) -> Path | None:
    """Top-1 accuracy per epoch: per arm, the mean over seeds with a band."""
    bands = {arm: b for arm, seeds in series.items() if (b := _band(seeds)) is not None}
    if not bands:
        return None
    cmap = _colors_for(list(series), colors)
    fig, ax = plt.subplots(figsize=SINGLE_FIGSIZE)
    max_epoch = 1
    for arm, band in bands.items():
        _plot_band(ax, band, cmap[arm], _band_label(arm, band))
        max_epoch = max(max_epoch, int(band.epochs[-1]))
    _epoch_axis(ax, max_epoch)
    ax.set_ylabel(f"{split} top-1 accuracy (%)")
    ax.set_title(title or f"{split} top-1 accuracy per epoch: " + ", ".join(bands))
    ax.legend(
        title="mean over seeds; band: min–max (<3 seeds) or ±1 std (≥3)",
        title_fontsize="small",
        fontsize="small",
        loc="best",
    )
    return _save(fig, path)


def loss_evolution(
    series: dict[str, dict[str, list[list[float]]]],
    path: Path,
    *,
    title: str | None = None,
    colors: dict[str, str] | None = None,
) -> Path | None:
    """The WKL paper's loss-evolution figure: KL, TC, NC and W per epoch in a 2×2 grid."""
    panels: dict[str, dict[str, _Band]] = {}
    for metric, _, _ in LOSS_METRICS:
        panels[metric] = {}
        for arm, metrics in series.items():
            seeds = metrics.get(metric)
            if seeds and (band := _band(seeds)) is not None:
                panels[metric][arm] = band
    if not any(panels.values()):
        return None
    cmap = _colors_for(list(series), colors)
    fig, axes = plt.subplots(2, 2, figsize=(12.0, 8.0))
    handles: dict[str, Any] = {}
    for ax, (metric, panel_title, ylabel) in zip(axes.flat, LOSS_METRICS, strict=True):
        ax.set_title(panel_title, fontsize="medium")
        bands = panels[metric]
        if not bands:
            ax.text(
                0.5,
                0.5,
                "not logged",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize="large",
                color="0.4",
            )
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        max_epoch = 1
        for arm, band in bands.items():
            marker = "o" if len(band.epochs) == 1 else None
            (line,) = ax.plot(band.epochs, band.mean, color=cmap[arm], lw=1.8, marker=marker)
            ax.fill_between(band.epochs, band.low, band.high, color=cmap[arm], alpha=0.18, lw=0)
            max_epoch = max(max_epoch, int(band.epochs[-1]))
            if arm not in handles:
                n = max(b.n_seeds for m in panels.values() for a, b in m.items() if a == arm)
                handles[arm] = (line, f"{arm} (n={n} seed{'s' if n != 1 else ''})")
        _epoch_axis(ax, max_epoch)
        ax.set_ylabel(ylabel)
    fig.suptitle(title or "Loss evolution per epoch: " + ", ".join(series), fontsize="large")
    fig.legend(
        [h for h, _ in handles.values()],
        [lbl for _, lbl in handles.values()],
        loc="lower center",
        ncol=min(len(handles), 4),
        bbox_to_anchor=(0.5, -0.01),
        title="lines: mean over seeds; bands: min–max (<3 seeds) or ±1 std (≥3 seeds)",
        title_fontsize="small",
        fontsize="small",
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    return _save(fig, path)


def weight_schedule(
    epochs: int,
    chosen: dict[str, list[float]],
    published: dict[str, list[float]],
    path: Path,
    *,
    title: str | None = None,
) -> Path | None:
    """Loss weight per epoch per term: chosen schedule solid, published schedule dashed."""
    chosen = {k: list(v)[:epochs] for k, v in chosen.items() if v}
    published = {k: list(v)[:epochs] for k, v in published.items() if v}
    if epochs <= 0 or not (any(chosen.values()) or any(published.values())):
        return None
    terms = list(dict.fromkeys([*chosen, *published]))
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf")
    tcolor = {t: palette[i % len(palette)] for i, t in enumerate(terms)}
    fig, ax = plt.subplots(figsize=SINGLE_FIGSIZE)
    for term in terms:
        for source, style, lw, label in (
            (chosen, "-", 2.2, "chosen"),
            (published, "--", 1.6, "published"),
        ):
            values = source.get(term)
            if not values:
                continue
            x = np.arange(1, len(values) + 1)
            y = np.array([float("nan") if v is None else float(v) for v in values])
            ax.plot(
                x,
                y,
                linestyle=style,
                lw=lw,
                color=tcolor[term],
                label=f"{term} — {label}",
                drawstyle="steps-mid" if len(values) > 1 else "default",
                marker="o" if len(values) == 1 else None,
            )
    _epoch_axis(ax, epochs)
    ax.set_ylabel("loss weight")
    ax.set_title(title or "Loss-weight schedule per epoch: chosen (solid) vs published (dashed)")
    ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------
# parallel coordinates


@dataclass(frozen=True)
class _AxisScale:
    name: str
    kind: str  # "num" | "log" | "cat" | "none" (no trial has a value)
    lo: float = 0.0
    hi: float = 0.0
    categories: tuple[str, ...] = ()

    def normalise(self, value: float | str) -> float:
        if self.kind == "cat":
            key = _cat_key(value)
            if len(self.categories) <= 1:
                return 0.5
            return self.categories.index(key) / (len(self.categories) - 1)
        v = float(value)
        if self.kind == "log":
            v, lo, hi = math.log10(v), math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        if hi == lo:
            return 0.5
        return (v - lo) / (hi - lo)


def _cat_key(value: float | str) -> str:
    return value if isinstance(value, str) else repr(value)


def _is_active(value: object) -> bool:
    """A parameter's value is active unless it is missing, None or a non-finite number."""
    if value is None:
        return False
    if isinstance(value, str | bool):
        return True
    if isinstance(value, int | float):
        return math.isfinite(float(value))
    return False


def _axis_scales(
    trials: list[dict[str, float | str | None]], axes: list[str]
) -> dict[str, _AxisScale]:
    scales: dict[str, _AxisScale] = {}
    for name in axes:
        values = [t[name] for t in trials if name in t and _is_active(t[name])]
        if any(isinstance(v, str | bool) for v in values):
            cats = tuple(sorted({_cat_key(v) for v in values if v is not None}))
            scales[name] = _AxisScale(name, "cat", categories=cats)
            continue
        nums = [float(v) for v in values if v is not None]
        if not nums:  # never active: the axis is drawn, no value is plotted on it
            scales[name] = _AxisScale(name, "none", 0.0, 1.0)
            continue
        lo, hi = min(nums), max(nums)
        kind = "log" if lo > 0 and hi / lo > 100.0 else "num"
        scales[name] = _AxisScale(name, kind, lo, hi)
    return scales


def _polyline_segments(
    trial: dict[str, float | str | None],
    axes: list[str],
    scales: dict[str, _AxisScale] | None = None,
) -> list[list[tuple[int, float]]]:
    """A trial's polyline as runs of consecutive active axes: ``[[(axis_index, y), ...]]``
    with y in [0, 1]. An inactive parameter (missing, None, NaN) breaks the line and never
    appears in a segment; a run of one axis is a lone point."""
    if scales is None:
        scales = _axis_scales([trial], axes)
    segments: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for i, name in enumerate(axes):
        value = trial.get(name)
        if value is None or not _is_active(value):
            if current:
                segments.append(current)
            current = []
            continue
        current.append((i, scales[name].normalise(value)))
    if current:
        segments.append(current)
    return segments


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def parallel_coordinates(
    trials: list[dict[str, float | str | None]],
    objective: list[float],
    path: Path,
    *,
    objective_name: str,
    title: str | None = None,
) -> Path | None:
    """One polyline per trial over the searched parameters, coloured by the objective.

    Each axis is normalised to [0, 1] by its min/max (log10 when its positive values span
    more than two decades) or by category position; inactive parameters break the line.
    """
    if len(trials) != len(objective):
        raise ValueError(f"{len(trials)} trials but {len(objective)} objective values")
    axes = sorted({k for t in trials for k in t})
    if not trials or not axes:
        return None
    scales = _axis_scales(trials, axes)
    obj = np.array([float("nan") if v is None else float(v) for v in objective])
    finite_obj = obj[np.isfinite(obj)]
    lo = float(finite_obj.min()) if finite_obj.size else 0.0
    hi = float(finite_obj.max()) if finite_obj.size else 1.0
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
    cmap = plt.get_cmap("viridis")

    width = max(8.0, 1.3 * len(axes) + 2.5)
    fig, ax = plt.subplots(figsize=(width, 5.5))
    # draw worst first so the best trials are on top; trials without an objective in grey
    order = sorted(range(len(trials)), key=lambda i: (math.isfinite(obj[i]), obj[i]))
    alpha = 0.75 if len(trials) <= 50 else 0.45
    for i in order:
        color = cmap(norm(obj[i])) if math.isfinite(obj[i]) else (0.6, 0.6, 0.6, 1.0)
        for seg in _polyline_segments(trials[i], axes, scales):
            xs = [a for a, _ in seg]
            ys = [y for _, y in seg]
            if len(seg) == 1:
                ax.plot(xs, ys, "o", color=color, ms=4, alpha=alpha)
            else:
                ax.plot(xs, ys, "-", color=color, lw=1.2, alpha=alpha, marker="o", ms=2.5)

    for i, name in enumerate(axes):
        s = scales[name]
        ax.axvline(i, color="0.3", lw=1.0, zorder=0)
        box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8}
        if s.kind == "none":
            ax.text(i, 0.5, "never active", rotation=90, ha="right", va="center", fontsize=8)
        elif s.kind == "cat":
            for c in s.categories:
                ax.text(i + 0.04, s.normalise(c), c, fontsize=7, va="center", ha="left", bbox=box)
        else:
            ax.text(i, 1.03, _fmt(s.hi), ha="center", va="bottom", fontsize=8)
            ax.text(i, -0.03, _fmt(s.lo), ha="center", va="top", fontsize=8)
    labels = [f"{n}\n(log)" if scales[n].kind == "log" else n for n in axes]
    ax.set_xticks(range(len(axes)))
    rotate = len(axes) > 7
    ax.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.tick_params(axis="x", length=0, pad=14)
    ax.set_yticks([])
    ax.set_xlim(-0.3, len(axes) - 0.7 + (0.4 if len(axes) > 1 else 0.6))
    ax.set_ylim(-0.1, 1.1)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    cbar = fig.colorbar(sm, ax=ax, pad=0.02)
    cbar.set_label(objective_name)
    n_missing = int((~np.isfinite(obj)).sum())
    n_inactive = sum(1 for t in trials for a in axes if not _is_active(t.get(a)))
    ax.set_title(
        (title or f"Searched parameters vs {objective_name} ({len(trials)} trials)")
        + "\neach axis scaled to its parameter's min–max;"
        + " a line breaks where a parameter is inactive"
        + (f" ({n_inactive} inactive values)" if n_inactive else "")
        + (f"\ngrey: {n_missing} trial(s) without an objective value" if n_missing else ""),
        fontsize="medium",
    )
    return _save(fig, path)


def importances(
    values: dict[str, float],
    path: Path,
    *,
    title: str | None = None,
    evaluator: str = "",
) -> Path | None:
    """Parameter importances as horizontal bars, largest at the top."""
    items = [(k, float(v)) for k, v in values.items() if v is not None and math.isfinite(v)]
    if not items:
        return None
    items.sort(key=lambda kv: kv[1], reverse=True)
    names = [k for k, _ in items]
    vals = [v for _, v in items]
    height = max(3.0, min(12.0, 0.45 * len(items) + 1.8))
    fig, ax = plt.subplots(figsize=(8.0, height))
    y = np.arange(len(items))
    ax.barh(y, vals, color="#1f77b4")
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    vmax = max(max(vals), 0.0)
    for yi, v in enumerate(vals):
        ax.text(v + 0.01 * (vmax or 1.0), float(yi), f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(min(0.0, min(vals)), (vmax or 1.0) * 1.15)
    ax.set_xlabel("importance (fraction of objective variance)")
    ax.grid(True, axis="x", alpha=0.3)
    head = title or "Hyperparameter importance"
    sub = f"evaluator: {evaluator}" if evaluator else "evaluator: not stated"
    ax.set_title(f"{head}\n{sub}", fontsize="medium")
    return _save(fig, path)


def rung_agreement(
    rows: list[tuple[int, float, int]],
    path: Path,
    *,
    threshold: float = 0.5,
    title: str | None = None,
) -> Path | None:
    """Spearman rank correlation of each rung's ranking with the final ranking."""
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r[0])
    fig, ax = plt.subplots(figsize=SINGLE_FIGSIZE)
    x = np.arange(len(rows))
    rhos = [float("nan") if r[1] is None else float(r[1]) for r in rows]
    colors = [
        ("#2ca02c" if v >= threshold else "#d62728") if math.isfinite(v) else "0.7" for v in rhos
    ]
    ax.bar(x, [v if math.isfinite(v) else 0.0 for v in rhos], color=colors, width=0.6)
    for xi, v in enumerate(rhos):
        if not math.isfinite(v):
            ax.text(xi, 0.03, "n/a", ha="center", va="bottom", fontsize=9)
            continue
        if abs(v) > 0.85:  # label inside the bar's end, so it stays within [-1, 1]
            y, va, color = v - math.copysign(0.03, v), "top" if v > 0 else "bottom", "white"
        else:
            y, va, color = v + math.copysign(0.03, v), "bottom" if v >= 0 else "top", "black"
        ax.text(xi, y, f"{v:.2f}", ha="center", va=va, fontsize=9, color=color)
    ax.axhline(
        threshold,
        color="0.2",
        ls="--",
        lw=1.2,
        label=f"threshold ρ = {threshold:g} (below: early stopping unreliable)",
    )
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([f"epoch {r[0]}\n(n={r[2]} trials)" for r in rows], fontsize=9)
    ax.set_xlabel("rung (epoch at which trials are compared)")
    ax.set_ylabel("Spearman ρ with final ranking")
    ax.set_ylim(-1.0, 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or "Rank agreement of early rungs with the final ranking")
    return _save(fig, path)
