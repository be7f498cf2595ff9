"""Does one trial fit on the Ray cluster? Checked once, right after the driver joined Ray.

Ray Tune does not refuse a trial that asks for more than any node has: it waits,
warning every minute, for a node that never comes (a study asking for ``gpu: 1`` on a
CPU-only machine hangs forever). :func:`check_resources` compares one trial's request
(the spec's ``resources``) with the alive nodes of the cluster (``ray.nodes()``) and
returns one line naming what does not fit, or None. A trial runs on one node, so the
whole request must fit on a single node.

An autoscaling cluster (KubeRay with the autoscaler, a worker group scaled from zero)
adds nodes only once trials wait for them; there, set ``KDSTUDY_SKIP_RESOURCE_CHECK=1``
(:func:`resource_problem` then checks nothing) or keep one node of each kind running.

No Ray import at module level: ``study/run.py`` imports this before it has set Ray's
authentication environment (Ray reads it once, at import).
"""

from __future__ import annotations

import os
from typing import Any

# spec key -> Ray resource name (anything else is a custom resource, same name)
RAY_NAMES = {"cpu": "CPU", "gpu": "GPU"}
_EPS = 1e-9
SKIP_ENV = "KDSTUDY_SKIP_RESOURCE_CHECK"


class ResourceUnavailable(Exception):
    """One trial's resources fit on no node of the cluster (a one-line message)."""


def _name(key: str) -> str:
    return RAY_NAMES.get(key, key)


def _spec_key(key: str) -> str:
    """Where the spec sets ``key``: ``resources.cpu``, or ``resources.custom.<name>``."""
    return f"resources.{key}" if key in RAY_NAMES else f"resources.custom.{key}"


def _offer(node: dict[str, float], names: list[str]) -> str:
    return ", ".join(f"{n} {node.get(n, 0.0):g}" for n in names)


def _offers(nodes: list[dict[str, float]], names: list[str], limit: int = 4) -> str:
    """Distinct per-node offers, largest first: ``CPU 2, GPU 0 (x3); CPU 8, GPU 1``."""
    counts: dict[str, int] = {}
    keyed: dict[str, tuple[float, ...]] = {}
    for node in nodes:
        text = _offer(node, names)
        counts[text] = counts.get(text, 0) + 1
        keyed[text] = tuple(node.get(n, 0.0) for n in names)
    order = sorted(counts, key=lambda t: keyed[t], reverse=True)
    parts = [t + (f" (x{counts[t]})" if counts[t] > 1 else "") for t in order[:limit]]
    if len(order) > limit:
        parts.append(f"... {len(order) - limit} more kinds")
    return "; ".join(parts)


def check_resources(per_trial: dict[str, float], nodes: list[dict[str, Any]]) -> str | None:
    """One line saying why one trial (``per_trial``: the spec's ``resources``, e.g.
    ``{"cpu": 1, "gpu": 0.5}``; other keys are Ray custom resources, set in the spec's
    ``resources.custom`` and named so in the message) fits on no alive
    node of ``nodes`` (``ray.nodes()``: dicts with ``Alive`` and ``Resources``), or None
    when at least one node can hold it."""
    wanted = {_name(k): float(v) for k, v in per_trial.items() if float(v) > 0}
    alive = [
        {k: float(v) for k, v in (n.get("Resources") or {}).items()}
        for n in nodes
        if n.get("Alive", n.get("alive", False))
    ]
    names = ["CPU", "GPU"] + sorted(n for n in wanted if n not in ("CPU", "GPU"))
    if not alive:
        return "resources: the Ray cluster has no alive node"
    offers = _offers(alive, names)
    for key, amount in per_trial.items():
        name, amount = _name(key), float(amount)
        if amount <= 0:
            continue
        best = max(node.get(name, 0.0) for node in alive)
        if best + _EPS >= amount:
            continue
        if best <= 0:
            has = "no node of this cluster has any"
        else:
            has = f"the largest node offers {best:g}"
        return (
            f"{_spec_key(key)}: a trial asks for {amount:g} {name}; {has} (nodes offer: {offers})"
        )
    if any(all(node.get(n, 0.0) + _EPS >= a for n, a in wanted.items()) for node in alive):
        return None
    asked = " + ".join(f"{a:g} {n}" for n, a in wanted.items())
    return (
        f"resources: a trial asks for {asked} on one node; no node has all of it "
        f"(nodes offer: {offers})"
    )


def cluster_nodes() -> list[dict[str, Any]]:
    """The nodes of the Ray cluster this process joined (``ray.init`` done)."""
    import ray

    return list(ray.nodes())


def resource_problem(per_trial: dict[str, float]) -> str | None:
    """:func:`check_resources` against the joined cluster, unless ``$KDSTUDY_SKIP_RESOURCE_CHECK``
    is set (autoscaling clusters: nodes appear only once trials wait for them)."""
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        return None
    return check_resources(per_trial, cluster_nodes())
