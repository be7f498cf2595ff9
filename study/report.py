"""The report of a study: ``python study/report.py --study DIR`` (also written at the end
of ``study/run.py``).

It reads what the study stored and never re-trains: ``trials.json`` (every trial of every
phase), ``leaderboard.json`` (the tuning ranking), ``final/arms.json`` (the final arms),
each trial's per-epoch results (``ray/<phase>/<trial>/result.json``, written by the
driver), Optuna's record (``optuna.db``) and the study's MLflow store, to which the
report is logged back (artifacts of the parent run, and the experiment's description).

Two kinds of numbers, never in one table:

- **tuning** (validation split, tuning seeds): how the search ranked configurations;
  decisions were made on these, so they are optimistic for the winner;
- **final** (test split, fresh seeds, full training set): the claims. The headline is
  the last epoch's test top-1; the best epoch's is shown too, labelled, because
  mdistiller-style papers report it (it picks an epoch on the test set).

Writes ``<study>/report/``: ``report.md``, ``report.html`` (self-contained),
``tables/*.{md,csv,json}`` and ``figures/*.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import study  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study import stats
from study.cli_checks import OneLineParser
from study.final import load_arms
from trainables.fsutil import atomic_write_text

HEADLINE = "test/top1"  # the last epoch's test top-1 of a final run
BEST_EPOCH = "test/top1_best"  # the best epoch's (mdistiller-style; picked on the test set)
LOSS_METRICS = {"kl": "diag/kl", "tc": "diag/tc", "nc": "diag/nc", "w": "diag/w"}
RUNG_RELIABLE = 0.5  # Spearman below this: early stopping ranked trials unreliably
RUNG_MIN_TRIALS = 5  # fewer complete trials: a rank correlation says nothing either way


class ReportError(RuntimeError):
    """The study directory lacks what a report needs (one line for the CLI)."""


@dataclass
class Trial:
    trial_id: str
    phase: str  # baselines | search | final
    role: str  # baseline | trial | final
    name: str  # baseline name, searched family, or final arm
    seed: int
    value: float | None
    epochs: int
    planned_epochs: int
    status: str
    overrides: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)  # metric -> per epoch

    def series(self, metric: str) -> list[float]:
        return self.history.get(metric, [])

    def last(self, metric: str) -> float | None:
        s = [v for v in self.series(metric) if not math.isnan(v)]
        return s[-1] if s else None


# -- reading ------------------------------------------------------------------------------
PHASE_OF_ROLE = {"baseline": "baselines", "trial": "search", "final": "final"}


def read_history(storage: Path, phase: str, trial_id: str) -> dict[str, list[float]]:
    """Per-epoch metrics of one trial from Ray's ``result.json`` (one JSON object per
    result; a resumed trial may repeat an epoch: the last record of an epoch wins)."""
    path = storage / "ray" / phase / trial_id / "result.json"
    if not path.is_file():
        return {}
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(rec, dict) and "training_iteration" in rec:
            by_epoch[int(rec["training_iteration"])] = rec
    if not by_epoch:
        return {}
    keys = {k for rec in by_epoch.values() for k, v in rec.items() if _is_number(v)}
    out: dict[str, list[float]] = {}
    for k in sorted(keys):
        out[k] = [
            float(by_epoch[e][k]) if _is_number(by_epoch[e].get(k)) else math.nan
            for e in range(1, max(by_epoch) + 1)
            if e in by_epoch
        ]
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def load_trials(storage: Path) -> list[Trial]:
    path = storage / "trials.json"
    if not path.is_file():
        raise ReportError(f"--study: {storage} has no trials.json (has the study finished?)")
    out = []
    for d in json.loads(path.read_text()):
        phase = PHASE_OF_ROLE.get(d["role"], d["role"])
        t = Trial(phase=phase, **d)
        t.history = read_history(storage, phase, t.trial_id)
        out.append(t)
    return out


# -- tables -------------------------------------------------------------------------------
def by_arm(trials: list[Trial], metric: str) -> dict[str, dict[int, float]]:
    """Final runs' ``metric`` at their last epoch, per arm and seed (complete runs only)."""
    out: dict[str, dict[int, float]] = {}
    for t in trials:
        if t.role != "final" or t.status != "TERMINATED" or t.epochs < t.planned_epochs:
            continue
        v = t.last(metric)
        if v is not None:
            out.setdefault(t.name, {})[t.seed] = v
    return out


def n_eval_images(trials: list[Trial], split: str) -> int | None:
    for t in trials:
        n = t.last(f"{split}/images")
        if n:
            return int(n)
    return None


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()})
    return buf.getvalue()


def tuning_table(leaderboard: dict[str, Any], metric: str, top: int = 5) -> tuple[str, list]:
    """The search's ranking and the baselines on the tuning split (validation)."""
    rows: list[dict[str, Any]] = []
    for rank, g in enumerate(leaderboard.get("searched", [])[:top], 1):
        rows.append(
            {
                "what": f"searched #{rank} ({g['config_group'][:6]})",
                "mean": g["value"],
                "std": g.get("std"),
                "n": g["n"],
                "complete": g["complete"],
                "values": g["values"],
            }
        )
    for name, info in sorted(leaderboard.get("baselines", {}).items()):
        rows.append(
            {
                "what": f"baseline {name}",
                "mean": info["mean"],
                "std": info["std"],
                "n": info["n"],
                "complete": True,
                "values": info["values"],
            }
        )
    lines = [
        f"| configuration | {metric} mean | std | seeds | complete |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | {_f(r['mean'])} | {_f(r['std'])} | {r['n']} | "
            f"{'yes' if r['complete'] else 'stopped early'} |"
        )
    return "\n".join(lines), rows


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


# -- figures' data --------------------------------------------------------------------------
def curves(trials: list[Trial], role: str, metric: str, names: list[str]) -> dict:
    out: dict[str, list[list[float]]] = {}
    for t in trials:
        if t.role == role and t.name in names and t.series(metric):
            out.setdefault(t.name, []).append(t.series(metric))
    return out


def rung_agreement(
    trials: list[Trial], metric: str, rungs: list[int], mode: str
) -> list[tuple[int, float, int]]:
    """Spearman rank correlation, per rung epoch, between the searched trials' ``metric``
    at the rung and their final value, over the trials that ran the full budget."""
    complete = [
        t
        for t in trials
        if t.role == "trial" and t.status == "TERMINATED" and t.epochs >= t.planned_epochs
    ]
    out = []
    for r in rungs:
        pairs = [
            (t.series(metric)[r - 1], t.value)
            for t in complete
            if len(t.series(metric)) >= r and t.value is not None
        ]
        if len(pairs) >= 3:
            rho = stats.spearman([p[0] for p in pairs], [float(p[1]) for p in pairs])
            out.append((r, rho, len(pairs)))
    return out


def weight_schedules(spec: Any, overrides: dict[str, Any]) -> dict[str, list[float]]:
    """Each loss term's weight at every epoch of the configuration ``overrides``."""
    from trainables.config import TrialConfig, with_overrides
    from trainables.types import EpochInfo

    cfg = TrialConfig.from_dict(with_overrides(spec.trial, overrides))
    E = cfg.epochs
    out = {}
    for name, sched in cfg.schedules().items():
        w = cfg.losses[name].weight
        out[name] = [w * sched(EpochInfo(e, E)) for e in range(1, E + 1)]
    return out


def importances(storage: Path, url: str | None) -> tuple[dict[str, float], str]:
    """Optuna's default importance evaluator over the search's complete trials."""
    from study.space import OPTUNA_DB, OPTUNA_STUDY

    if url is None:
        if not (storage / OPTUNA_DB).is_file():
            return {}, ""
        url = f"sqlite:///{storage / OPTUNA_DB}"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        st = optuna.load_study(study_name=OPTUNA_STUDY, storage=url)
        done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) < 2:
            return {}, f"{len(done)} complete trial(s): too few for importances"
        with warnings.catch_warnings():  # "some regimes have less than 2 trials": noted below
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(st)
        evaluator = "Optuna's default evaluator (fANOVA) over " + f"{len(done)} complete trials"
        return {k: float(v) for k, v in values.items()}, evaluator
    except Exception as exc:  # no parameter common to all trials, an unreachable storage...
        return {}, f"importances unavailable ({type(exc).__name__}: {str(exc)[:200]})"


# -- the report -------------------------------------------------------------------------------
def build(storage: Path, *, log_to_mlflow: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Write ``<storage>/report/`` and return its summary (also ``report/summary.json``)."""
    from study import figures, html_report
    from study.spec import validate

    storage = storage.resolve()
    meta_path, spec_path = storage / "study.json", storage / "spec.json"
    if not meta_path.is_file() or not spec_path.is_file():
        raise ReportError(f"--study: no study at {storage} (study.json missing)")
    meta = json.loads(meta_path.read_text())
    spec = validate(json.loads(spec_path.read_text()), spec_path)
    trials = load_trials(storage)
    lb_path = storage / "leaderboard.json"
    leaderboard = json.loads(lb_path.read_text()) if lb_path.is_file() else {}
    arms_seeds = load_arms(storage)
    arms = arms_seeds[0] if arms_seeds else []
    out = storage / "report"
    figdir = out / "figures"
    tabdir = out / "tables"
    figdir.mkdir(parents=True, exist_ok=True)
    tabdir.mkdir(parents=True, exist_ok=True)
    metric = spec.objective.reported_metric
    summary: dict[str, Any] = {"study": spec.name, "objective": metric}
    sections: list[tuple[str, str]] = []
    notes: list[str] = []

    # final (test) -------------------------------------------------------------------
    headline = by_arm(trials, HEADLINE)
    best_epoch = by_arm(trials, BEST_EPOCH)
    searched_arms = [a for a in arms if a.kind == "searched"]
    baseline_arms = [a.name for a in arms if a.kind == "baseline"]
    n_test = n_eval_images(trials, "test")
    resolution = stats.resolution_points(n_test) if n_test else None
    final_md = ""
    comparisons: list[Any] = []
    if headline:
        summ = {a: stats.summarize_arm(v) for a, v in sorted(headline.items())}
        summ_best = {a: stats.summarize_arm(v) for a, v in sorted(best_epoch.items())}
        final_md += (
            f"Test split ({n_test or '?'} images; one image = "
            f"{_f(resolution)} points), full training set, fresh seeds "
            f"{list(arms_seeds[1]) if arms_seeds else '?'} (never used while tuning), "
            "the same seeds for every arm.\n\n"
            "**Headline: last-epoch test top-1 (%)**\n\n"
            + stats.format_arms_markdown(summ, "last-epoch test top-1 (%)")
            + "\n\nBest-epoch test top-1 (%), as mdistiller-style papers report it "
            "(the epoch is picked on the test set, so it is optimistic):\n\n"
            + stats.format_arms_markdown(summ_best, "best-epoch test top-1 (%)")
        )
        summary["final"] = {a: s.to_dict() for a, s in summ.items()}
        summary["final_best_epoch"] = {a: s.to_dict() for a, s in summ_best.items()}
        _write_table(tabdir, "final_test", [{"arm": a, **s.to_dict()} for a, s in summ.items()])
        if searched_arms and searched_arms[0].name in headline and baseline_arms:
            best = searched_arms[0].name
            comparisons = stats.compare_to_baselines(
                headline[best],
                {b: headline[b] for b in baseline_arms if b in headline},
                best_name=best,
                resolution=resolution,
            )
            final_md += (
                f"\n\n**{best} against each baseline** (last-epoch test top-1, seed-paired)\n\n"
                + stats.format_comparisons_markdown(comparisons)
            )
            summary["comparisons"] = [c.to_dict() for c in comparisons]
            _write_table(tabdir, "comparisons", [c.to_dict() for c in comparisons])
        missing = sorted({a.name for a in arms} - set(headline))
        if missing:
            notes.append(f"final arms without a complete run: {', '.join(missing)}")
    else:
        final_md = (
            "No final runs yet: the claims need them (`python study/final.py --study "
            f"{storage}`). The tuning numbers below are optimistic for the winner."
        )
    sections.append(("Final runs (test split): the claims", final_md))
    if headline:
        sections.insert(0, ("In one sentence", _one_sentence(headline, comparisons)))

    # tuning (validation) ------------------------------------------------------------
    tmd, trows = tuning_table(leaderboard, metric)
    _write_table(tabdir, "tuning", trows)
    n_val = n_eval_images(trials, "val")
    sections.append(
        (
            "Tuning (validation split): how the search ranked",
            f"Validation split ({n_val or '?'} images), tuning seeds {spec.seeds}. Decisions "
            "were made on these numbers; they are not claims.\n\n" + tmd,
        )
    )
    if arms:
        sections.append(("Final arms", _arms_md(arms)))

    # figures ------------------------------------------------------------------------
    figs: list[tuple[str, Path]] = []

    def add(caption: str, path: Path | None) -> None:
        if path is not None:
            figs.append((caption, path))

    best_name = searched_arms[0].name if searched_arms else None
    fam = str(spec.trial.get("family", spec.name))
    tuning_names = [fam] + [b.name for b in spec.baselines]
    arm_names = [a.name for a in arms]
    # one colour per arm in every figure (the tuning curve of the best arm shares its colour)
    colors = figures.arm_colors(sorted({*arm_names, *tuning_names}))
    if best_name:
        colors[f"{best_name} (tuning)"] = colors[best_name]
    val_curves = curves(trials, "baseline", "val/top1", tuning_names)
    if best_name and searched_arms[0].config_group:
        grp = [
            t.series("val/top1")
            for t in trials
            if t.role == "trial"
            and stats_group(t) == searched_arms[0].config_group
            and t.series("val/top1")
        ]
        if grp:
            val_curves = {f"{best_name} (tuning)": grp, **val_curves}
    add(
        "Validation top-1 per epoch (tuning seeds): the best searched configuration and "
        "the baselines",
        figures.accuracy_curves(
            val_curves,
            figdir / "val_top1.png",
            split="validation",
            title="Tuning: validation top-1 per epoch",
            colors=colors,
        ),
    )
    add(
        "Test top-1 per epoch (final runs, fresh seeds)",
        figures.accuracy_curves(
            curves(trials, "final", "test/top1", arm_names),
            figdir / "test_top1.png",
            split="test",
            title="Final runs: test top-1 per epoch",
            colors=colors,
        ),
    )
    loss_src = "final" if headline else "baseline"
    loss_series: dict[str, dict[str, list[list[float]]]] = {}
    for t in trials:
        if t.role != loss_src:
            continue
        if loss_src == "final" and t.name not in ([best_name] + baseline_arms):
            continue
        for short, key in LOSS_METRICS.items():
            if t.series(key):
                loss_series.setdefault(t.name, {}).setdefault(short, []).append(t.series(key))
    add(
        "Loss evolution (the WKL paper's Figs. 2-5): KL, target-class (tc), non-target-class "
        "(nc) and Wasserstein (w) terms per epoch, measured on the training batches",
        figures.loss_evolution(loss_series, figdir / "loss_evolution.png", colors=colors),
    )
    if searched_arms and spec.points:
        chosen = weight_schedules(spec, searched_arms[0].overrides)
        published = weight_schedules(spec, dict(spec.points[0]))
        terms = [k for k in chosen if k != "ce"]
        add(
            "Loss weights per epoch: the chosen configuration (solid) against the published "
            "point (dashed)",
            figures.weight_schedule(
                spec.epochs,
                {k: chosen[k] for k in terms},
                {k: published[k] for k in terms if k in published},
                figdir / "weight_schedule.png",
            ),
        )
        summary["weight_schedule"] = {"chosen": chosen, "published": published}
    searched = [
        t
        for t in trials
        if t.role == "trial" and t.value is not None and t.epochs >= t.planned_epochs
    ]
    add(
        f"Searched parameters of the {len(searched)} trials that ran the full budget, "
        f"coloured by {metric} (a break: the parameter was inactive in that trial)",
        figures.parallel_coordinates(
            [{k: v for k, v in t.overrides.items() if k != "seed"} for t in searched],
            [float(t.value) for t in searched if t.value is not None],
            figdir / "parallel_coordinates.png",
            objective_name=metric,
        ),
    )
    imp, evaluator = importances(storage, meta.get("optuna_storage"))
    if imp:
        summary["importances"] = imp
    elif evaluator:
        notes.append(evaluator)
    add(
        "Parameter importances",
        figures.importances(imp, figdir / "importances.png", evaluator=evaluator),
    )
    rungs = _rungs(spec)
    agreement = rung_agreement(trials, metric, rungs, spec.objective.mode)
    summary["rung_agreement"] = agreement
    for r, rho, n in agreement:
        if n < RUNG_MIN_TRIALS:
            notes.append(
                f"early stopping not checked at epoch {r}: only {n} trials ran the full "
                f"budget (at least {RUNG_MIN_TRIALS} are needed for a rank agreement)"
            )
        elif not rho >= RUNG_RELIABLE:
            notes.append(
                f"early stopping was unreliable at epoch {r}: rank agreement with the final "
                f"ranking {rho:+.2f} over {n} trials (below {RUNG_RELIABLE})"
            )
    add(
        "Multi-fidelity check: rank agreement of each early-stopping rung with the final ranking",
        figures.rung_agreement(agreement, figdir / "rung_agreement.png", threshold=RUNG_RELIABLE),
    )

    # assemble -----------------------------------------------------------------------
    title = f"Study {spec.name}: report"
    md = [f"# {title}", ""]
    for heading, body in sections:
        md += [f"## {heading}", "", body, ""]
    if notes:
        md += ["## Warnings", ""] + [f"- {n}" for n in notes] + [""]
    md += ["## Figures", ""] + [f"- [{c}](figures/{p.name})" for c, p in figs] + [""]
    atomic_write_text(out / "report.md", "\n".join(md))
    html_report.write_html(
        out / "report.html", title=title, sections=sections, figures=figs, notes=notes
    )
    summary["figures"] = [str(p.relative_to(out)) for _, p in figs]
    summary["notes"] = notes
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    if not quiet:
        print(_console(headline, comparisons, n_test, notes, out))
    if log_to_mlflow:
        _log_to_mlflow(meta, storage, out, comparisons, headline)
    return summary


def _one_sentence(headline: dict[str, dict[int, float]], comparisons: list[Any]) -> str:
    """Who won on the test split, and what the best searched configuration's difference
    from the strongest baseline is, with its interval and verdict."""
    ranked = sorted(headline, key=lambda a: -stats.summarize_arm(headline[a]).mean)
    top = stats.summarize_arm(headline[ranked[0]])
    text = (
        f"Highest last-epoch test top-1: **{ranked[0]}** ({top.mean:.2f} ± {_f(top.std)} over "
        f"{top.n} seeds)."
    )
    if comparisons:
        c = min(comparisons, key=lambda c: c.delta)
        text += (
            f" The best searched configuration against the strongest baseline: "
            f"**{c.name_a} − {c.name_b} = {c.delta:+.2f} points** (95% CI [{c.ci_low:+.2f}, "
            f"{c.ci_high:+.2f}], seed-paired): {c.verdict.split(': ', 1)[-1]}."
        )
    return text


def stats_group(t: Trial) -> str:
    from study.leaderboard import config_group

    return config_group(t.overrides)


def _rungs(spec: Any) -> list[int]:
    from study.space import asha_milestones

    sch = spec.trial_scheduler
    if sch.kind != "asha":
        return []
    return asha_milestones(spec.epochs, sch.grace_epochs(spec.epochs), sch.reduction_factor)


def _arms_md(arms: list[Any]) -> str:
    lines = [
        "| arm | kind | tuning rank | tuning value | searched values |",
        "|---|---|---:|---:|---|",
    ]
    for a in arms:
        over = ", ".join(f"{k}={v}" for k, v in sorted(a.overrides.items()))
        lines.append(
            f"| {a.name} | {a.kind} | {a.rank or '–'} | {_f(a.tuning_value)} | {over or '–'} |"
        )
    return "\n".join(lines)


def _write_table(tabdir: Path, name: str, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(tabdir / f"{name}.json", json.dumps(rows, indent=1, default=str))
    atomic_write_text(tabdir / f"{name}.csv", rows_to_csv(rows))


def _console(
    headline: dict[str, dict[int, float]],
    comparisons: list[Any],
    n_test: int | None,
    notes: list[str],
    out: Path,
) -> str:
    """The end of a study's console: the final result per arm and one line per
    comparison (the report files hold the full tables)."""
    if not headline:
        text = ["No final runs yet: no claim (python study/final.py --study DIR runs them)."]
    else:
        n = max(len(v) for v in headline.values())
        text = [
            f"Final runs: last-epoch test top-1 (%), {n} fresh seeds, "
            f"test split of {n_test or '?'} images",
            "",
            f"{'arm':<12}{'mean':>8}{'std':>7}  per seed",
        ]
        for arm, vals in sorted(headline.items(), key=lambda kv: -stats.summarize_arm(kv[1]).mean):
            s = stats.summarize_arm(vals)
            per = ", ".join(f"{v:.2f}" for _, v in sorted(vals.items()))
            text.append(f"{arm:<12}{s.mean:>8.2f}{_f(s.std):>7}  {per}")
        if comparisons:
            text += ["", "seed-paired Δ (t interval, Holm-corrected paired t-test):"]
            for c in comparisons:
                text.append(
                    f"  {c.name_a} − {c.name_b}: {c.delta:+.2f} [{c.ci_low:+.2f}, "
                    f"{c.ci_high:+.2f}]  P(A>B) {c.prob_improvement:.2f}  -> {c.verdict}"
                )
    text += [""] + [f"warning: {n}" for n in notes]
    text += [f"report: {out / 'report.html'} (and report.md, tables/, figures/)"]
    return "\n".join(text)


def _log_to_mlflow(
    meta: dict[str, Any], storage: Path, out: Path, comparisons: list[Any], headline: dict
) -> None:
    """The report on the study's parent run (artifacts ``report/``) and as the
    experiment's description; a report is still complete on disk when MLflow is down."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = meta.get("tracking_uri") or f"sqlite:///{storage / 'mlflow.db'}"
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(meta.get("experiment") or "")
        if exp is None:
            return
        runs = client.search_runs(
            [exp.experiment_id],
            f"tags.study_id = '{meta['study_id']}' and tags.role = 'study'",
            max_results=1,
        )
        note = _mlflow_note(out, comparisons, headline)
        client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", note)
        # open in the model-training view, not the GenAI one
        client.set_experiment_tag(
            exp.experiment_id, "mlflow.experimentKind", "custom_model_development"
        )
        if runs:
            rid = runs[0].info.run_id
            client.set_tag(rid, "mlflow.note.content", note)
            client.log_artifacts(rid, str(out), "report")
            for c in comparisons:
                client.log_metric(rid, f"final/delta_vs_{c.name_b}", c.delta)
    except mlflow.exceptions.MlflowException as exc:
        print(f"warning: report not logged to MLflow ({uri}): {exc}", file=sys.stderr)


def _mlflow_note(out: Path, comparisons: list[Any], headline: dict) -> str:
    """The experiment's description: its first line (all the UI shows collapsed) is the
    final result per arm; then the paired comparisons."""
    if headline:
        arms = " · ".join(
            f"{arm} {s.mean:.2f} ± {_f(s.std)}"
            for arm, s in sorted(
                ((a, stats.summarize_arm(v)) for a, v in headline.items()),
                key=lambda x: -x[1].mean,
            )
        )
        n = max(len(v) for v in headline.values())
        first = f"**Final runs, last-epoch test top-1 (%), {n} fresh seeds:** {arms}"
        if comparisons:  # against the strongest baseline: the one a reader checks first
            c = min(comparisons, key=lambda c: c.delta)
            first += (
                f" — {c.name_a} − {c.name_b}: {c.delta:+.2f} points "
                f"(95% CI [{c.ci_low:+.2f}, {c.ci_high:+.2f}])"
            )
        lines = [first, ""]
    else:
        lines = ["**No final runs yet** (python study/final.py --study DIR)", ""]
    if comparisons:
        lines += ["**Paired comparisons:**", ""] + [f"- {c.verdict}" for c in comparisons]
    lines += ["", f"Full report: artifacts `report/report.html` of the study run ({out.name})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(
        prog="study/report.py",
        description="Tables, figures and an HTML page from a finished study (never re-trains).",
    )
    p.add_argument("--study", required=True, help="the study directory (--storage of run.py)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    args = p.parse_args(argv)
    try:
        build(Path(args.study), log_to_mlflow=not args.no_mlflow)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
