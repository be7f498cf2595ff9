"""Keys and values made acceptable to MLflow before they are written.

MLflow rejects a whole ``log_batch`` for one bad entry, so every name is checked against
MLflow's own rule up front (one bad key drops itself, warned once, instead of dropping the
batch), values are capped at MLflow's length limits, metrics must be finite real numbers, and
ids that end up inside search filters cannot contain a quote. The limits are MLflow's own
constants (``mlflow.utils.validation``), not copies.

Dropping is reported through ``warn(key, message, *args)``: the caller decides the logger and
the once-per-key policy (:meth:`study.tracking.StudyTracker._warn_once`).

Used by ``study/tracking.py`` (every write) and ``study/callbacks.py`` (what a Ray result's
metric is). No Ray import.
"""

from __future__ import annotations

import json
import math
import numbers
import posixpath
from collections.abc import Callable, Collection, Mapping
from typing import Any

from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    MAX_TAG_VAL_LENGTH,
    validate_param_and_metric_name,
)

#: ``warn(dedup_key, message, *args)``: report a dropped entry (the caller dedups by key).
Warn = Callable[..., None]


def valid_key(key: str) -> bool:
    """MLflow's rule for metric/param/tag names (``mlflow.utils.validation``), checked up front
    so one bad key drops itself instead of failing (and dropping) a whole batch."""
    return (
        0 < len(key) <= MAX_ENTITY_KEY_LENGTH
        and bool(validate_param_and_metric_name(key))
        and posixpath.normpath(key) == key
        and not key.startswith((".", "/"))
    )


def check_literal(what: str, value: str) -> str:
    """Ids end up inside search filters ``tags.x = '<value>'``; MLflow's filter grammar has no
    escape for a single quote, so reject it rather than build a broken query."""
    if not value or "'" in value:
        raise ValueError(f"{what} must be a non-empty string without single quotes: {value!r}")
    return value


def str_map(items: Mapping[Any, Any] | None) -> dict[str, str]:
    """``{str(key): str(value)}`` (tags are strings in MLflow)."""
    return {str(k): str(v) for k, v in (items or {}).items()}


def is_metric_value(value: Any) -> bool:
    """A real number that is not a bool (``done``, ``should_checkpoint`` are no metrics)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping into MLflow parameters ``{"a.b.c": "value"}``.

    Keys are joined with ``.`` (the config subtree ``kd: {weight: 0.9}`` becomes ``kd.weight``,
    one name per concept, ARCHITECTURE.md) by the project's one flattener,
    ``trainables.config.flatten``; an empty subtree yields no parameter. Values are stringified
    (lists/tuples as JSON so they read the same as in the YAML). Values are NOT truncated here
    -- see :func:`clip_params`.
    """
    # Imported here: trainables.config pulls in the loss registry (torch, POT; ~5 s), which
    # importing the tracker alone should not cost. The driver has it loaded already.
    from trainables.config import flatten

    flat: dict[str, str] = {}
    for key, value in flatten(dict(params), prefix).items():
        if isinstance(value, Mapping):
            if value:  # a non-dict mapping: flatten it the same way
                flat.update(flatten_params(value, key))
        elif isinstance(value, list | tuple):
            flat[key] = json.dumps(list(value), default=str)
        else:
            flat[key] = str(value)
    return flat


def clean_metrics(metrics: Mapping[str, Any], warn: Warn) -> dict[str, float]:
    """The entries MLflow accepts as metrics, as floats: valid name, real (not bool), finite."""
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        key = str(key)
        if not valid_key(key):
            warn(f"name:{key}", "dropping metric with invalid MLflow name %r", key)
        elif not is_metric_value(value):
            warn(f"type:{key}", "dropping non-numeric metric %r (%s)", key, type(value).__name__)
        elif not math.isfinite(float(value)):
            warn(f"nonfinite:{key}", "dropping non-finite metric %r = %s", key, value)
        else:
            clean[key] = float(value)
    return clean


def clip_tags(
    tags: Mapping[str, str], warn: Warn, *, exempt: Collection[str] = ()
) -> dict[str, str]:
    """Tags with valid names (``exempt`` names are MLflow's own, kept as they are), values cut
    to ``MAX_TAG_VAL_LENGTH``."""
    clipped: dict[str, str] = {}
    for key, value in tags.items():
        if key not in exempt and not valid_key(key):
            warn(f"tag:{key}", "dropping tag with invalid MLflow name %r", key)
            continue
        clipped[key] = value[:MAX_TAG_VAL_LENGTH]
    return clipped


def clip_params(flat: Mapping[str, str], warn: Warn) -> dict[str, str]:
    """Params with valid names, values cut to ``MAX_PARAM_VAL_LENGTH`` (6000 in MLflow 3.17);
    see :func:`params_truncated` for keeping the full values."""
    clipped: dict[str, str] = {}
    for key, value in flat.items():
        if not valid_key(key):
            warn(f"param:{key}", "dropping param with invalid MLflow name %r", key)
            continue
        clipped[key] = value[:MAX_PARAM_VAL_LENGTH]
    return clipped


def params_truncated(flat: Mapping[str, str]) -> bool:
    """True when :func:`clip_params` cuts at least one value of ``flat``."""
    return any(len(v) > MAX_PARAM_VAL_LENGTH for v in flat.values())
