"""Tests of study/mlflow_sanitize.py: MLflow key rules, value caps, param flattening."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from study.mlflow_sanitize import (
    check_literal,
    clean_metrics,
    clip_params,
    clip_tags,
    flatten_params,
    is_metric_value,
    params_truncated,
    str_map,
)


class Warnings:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, key: str, message: str, *args: Any) -> None:
        message % args  # the arguments fit the message
        self.keys.append(key)


def _reference_flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The tracker's former walker, kept as the reference of unchanged behaviour."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_reference_flatten(value, name))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(list(value), default=str)
        else:
            flat[name] = str(value)
    return flat


def test_flatten_params_unchanged_on_edge_cases() -> None:
    nested = {
        "a": {"b": {"c": 1.5}, "empty": {}},
        "lst": [1, "x", None],
        "tup": (0.5,),
        "proxy": MappingProxyType({"k": True, "inner": {"z": "s"}}),
        "empty_proxy": MappingProxyType({}),
        3: "int key",
        "none": None,
    }
    flat = flatten_params(nested)
    assert flat == _reference_flatten(nested)
    assert list(flat) == list(_reference_flatten(nested))  # same order too
    assert flat["proxy.inner.z"] == "s" and "a.empty" not in flat and flat["3"] == "int key"
    assert flatten_params({}) == {}


def test_clean_metrics_keeps_finite_reals_and_warns_per_key() -> None:
    warn = Warnings()
    metrics = {"ok": 1, "f": 0.5, "nan": float("nan"), "b": True, "s": "x", "bad|name": 1.0}
    assert clean_metrics(metrics, warn) == {"ok": 1.0, "f": 0.5}
    assert warn.keys == ["nonfinite:nan", "type:b", "type:s", "name:bad|name"]
    assert is_metric_value(3) and not is_metric_value(False) and not is_metric_value("1")


def test_tags_and_params_are_clipped_and_bad_names_dropped() -> None:
    warn = Warnings()
    tags = {"ok": "v" * (MAX_TAG_VAL_LENGTH + 5), "../up": "x", "mlflow.parentRunId": "p"}
    out = clip_tags(tags, warn, exempt=("mlflow.parentRunId",))
    assert out == {"ok": "v" * MAX_TAG_VAL_LENGTH, "mlflow.parentRunId": "p"}
    assert warn.keys == ["tag:../up"]

    flat = {"long": "y" * (MAX_PARAM_VAL_LENGTH + 1), "short": "z", "/abs": "q"}
    assert params_truncated(flat) and not params_truncated({"short": "z"})
    assert clip_params(flat, warn) == {"long": "y" * MAX_PARAM_VAL_LENGTH, "short": "z"}
    assert warn.keys[-1] == "param:/abs"
    assert str_map({1: 2.5}) == {"1": "2.5"} and str_map(None) == {}


@pytest.mark.parametrize("bad", ["", "it's"])
def test_check_literal_rejects_quotes_and_empty(bad: str) -> None:
    with pytest.raises(ValueError):
        check_literal("trial_id", bad)
    assert check_literal("trial_id", "abc_00001") == "abc_00001"
