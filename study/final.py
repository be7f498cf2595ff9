"""Final runs: what a study's claims rest on.

``python study/final.py --study DIR`` (or the last phase of ``study/run.py``): the best
``final.top_k`` searched configurations (ranked on the tuning split) and every baseline
are re-trained on the **full training set** under fresh seeds (``final.seeds``: never
used while tuning, the same for every arm, so every comparison is paired) and evaluated
on the **test set**, which no study decision has touched. They are tracked as runs with
role ``final`` under the study's parent run, through the same driver, Ray and MLflow
tracker as the search, so they resume and survive faults the same way.

The arms are chosen once, when the search has ended, and written to
``<study>/final/arms.json``; a resumed study reads them back instead of choosing again.
This module plans; ``study/run.py`` runs (Ray lives there).
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    import study  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.config import with_overrides
from trainables.fsutil import atomic_write_bytes


@dataclass(frozen=True)
class FinalSpec:
    """The final runs: what a study's claims rest on (``study/final.py``)."""

    top_k: int = 1  # searched configurations re-trained (rank 1..top_k on the tuning split)
    seeds: tuple[int, ...] = (1000, 1001, 1002)  # fresh: disjoint from every tuning seed


def parse_final(  # called by study/spec.py's validate (err: its one-line error reporter)
    raw: Any, seeds: list[int], trial: dict[str, Any], search: list[Any], err: Any
) -> FinalSpec:
    """``final:``; its seeds must never have been used while tuning (the study's seeds,
    ``trial.seed``, and any seed value the search may propose)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        err("final", f"{raw!r}", "a mapping {top_k, seeds}")
    for k in raw:
        if k not in ("top_k", "seeds"):
            err(f"final.{k}", "unknown key", "allowed: top_k, seeds")
    top_k = raw.get("top_k", FinalSpec.top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        err("final.top_k", f"{top_k!r}", "an integer >= 1")
    fseeds = raw.get("seeds", list(FinalSpec.seeds))
    if (
        not isinstance(fseeds, list)
        or len(fseeds) < 2
        or any(isinstance(s, bool) or not isinstance(s, int) for s in fseeds)
    ):
        err("final.seeds", f"{fseeds!r}", "a list of at least 2 integers (paired comparisons)")
    if len(set(fseeds)) != len(fseeds):
        err("final.seeds", f"{fseeds!r} has repeats", "distinct integers")
    tuning = set(seeds)
    if trial.get("seed") is not None:
        tuning.add(trial["seed"])
    for p in search:
        if p.name == "seed":
            if p.type == "categorical":
                tuning.update(v for v in p.values if isinstance(v, int))
            elif p.low is not None and p.high is not None:
                tuning.update(s for s in fseeds if p.low <= s <= p.high)
    used = sorted(set(fseeds) & tuning)
    if used:
        err(
            "final.seeds",
            f"{used} were used while tuning",
            "fresh seeds, disjoint from seeds, trial.seed and any searched seed",
        )
    return FinalSpec(top_k=top_k, seeds=tuple(int(s) for s in fseeds))


ARMS_FILE = Path("final") / "arms.json"
PREFIX = "final"


@dataclass(frozen=True)
class Arm:
    """One arm of the final comparison: a searched configuration or a baseline."""

    name: str  # "wkl-1" (rank 1 of the searched family wkl), "kd", "wkd_l", ...
    kind: str  # searched | baseline
    rank: int | None  # searched: its rank on the tuning split
    config_group: str | None  # searched: the id its seeds share in MLflow
    tuning_value: float | None  # searched: its objective on the tuning split (mean)
    overrides: dict[str, Any]  # searched: the searched values (dotted); baseline: {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def base_key(arm: str, seed: int) -> str:
    """The Ray ``base`` of a final run: ``final:<arm>:<seed>``."""
    return f"{PREFIX}:{arm}:{seed}"


def parse_base_key(key: str) -> tuple[str, int] | None:
    """``final:<arm>:<seed>`` -> ``(arm, seed)``; None for any other base."""
    parts = key.split(":")
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    return parts[1], int(parts[2])


def choose_arms(
    searched: list[dict[str, Any]], baselines: list[str], family: str, top_k: int
) -> list[Arm]:
    """The top ``top_k`` complete searched configurations (the leaderboard's rows, best
    first) and every baseline. A configuration that did not run its full budget is never
    chosen: it was ranked on a lower fidelity than the others."""
    arms = []
    complete = [row for row in searched if row.get("complete")]
    for rank, row in enumerate(complete[:top_k], 1):
        arms.append(
            Arm(
                name=f"{family}-{rank}",
                kind="searched",
                rank=rank,
                config_group=row.get("config_group"),
                tuning_value=row.get("value"),
                overrides=dict(row.get("overrides") or {}),
            )
        )
    arms += [Arm(b, "baseline", None, None, None, {}) for b in sorted(baselines)]
    return arms


def final_bases(
    arms: list[Arm], seeds: list[int], bases: dict[str, dict[str, Any]], tuning_seed: int
) -> dict[str, dict[str, Any]]:
    """Every final run's fully resolved trial dict, keyed by :func:`base_key`: the arm's
    tuning config (its task, teacher, cost matrix and output folder included) with
    ``final: true`` (full training set, test-set evaluation), role ``final`` and the
    fresh seed."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        if arm.kind == "searched":
            cfg = with_overrides(bases["search"], arm.overrides)
        else:
            cfg = copy.deepcopy(bases[f"{arm.name}:{tuning_seed}"])
        for seed in seeds:
            run = copy.deepcopy(cfg)
            run.update({"seed": seed, "final": True, "role": "final"})
            out[base_key(arm.name, seed)] = run
    return out


def save_arms(storage: Path, arms: list[Arm], seeds: list[int]) -> None:
    blob = {"seeds": list(seeds), "arms": [a.to_dict() for a in arms]}
    path = storage / ARMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(blob, indent=1, default=str).encode())


def load_arms(storage: Path) -> tuple[list[Arm], list[int]] | None:
    path = storage / ARMS_FILE
    if not path.is_file():
        return None
    blob = json.loads(path.read_text())
    return [Arm(**a) for a in blob["arms"]], [int(s) for s in blob["seeds"]]


def plan(
    storage: Path,
    leaderboard_summary: dict[str, Any],
    bases: dict[str, dict[str, Any]],
    *,
    family: str,
    baselines: list[str],
    top_k: int,
    seeds: list[int],
    tuning_seed: int,
) -> tuple[list[Arm], dict[str, dict[str, Any]]]:
    """The final arms (chosen now, or read back on resume) and their runs' trial dicts."""
    loaded = load_arms(storage)
    if loaded is not None:
        arms, seeds = loaded
    else:
        arms = choose_arms(leaderboard_summary.get("searched", []), baselines, family, top_k)
        save_arms(storage, arms, seeds)
    return arms, final_bases(arms, seeds, bases, tuning_seed)


def main(argv: list[str] | None = None) -> int:
    """Run (or finish) the final phase of an existing study: the study is resumed from its
    directory with its stored spec; finished phases are not re-run."""
    from study.cli_checks import OneLineParser

    p = OneLineParser(
        prog="study/final.py",
        description="Re-train the best searched configurations and the baselines under fresh "
        "seeds on the full training set; evaluate on the test set.",
    )
    p.add_argument("--study", required=True, help="the study directory (--storage of run.py)")
    p.add_argument("--quiet", action="store_true", help="only the final tables")
    p.add_argument("--verbose", action="store_true", help="Ray's own messages on the console")
    args = p.parse_args(argv)
    storage = Path(args.study)
    spec_file = storage / "spec.json"
    if not (storage / "study.json").is_file() or not spec_file.is_file():
        print(f"error: --study: no study at {storage} (study.json missing)", file=sys.stderr)
        return 2
    from study.run import main as run_main

    argv2 = ["--space", str(spec_file), "--storage", str(storage), "--resume"]
    argv2 += ["--quiet"] if args.quiet else []
    argv2 += ["--verbose"] if args.verbose else []
    return run_main(argv2)


if __name__ == "__main__":
    sys.exit(main())
