"""Compatibility re-exports: the feature-distribution math moved to one module per family.

WKD-F and the category-interrelation cost live in ``math_wkd_feature.py`` (methods §4,
§5), the KD²M distances in ``math_kd2m.py`` (methods §8), the shared helpers in
``_math_common.py``. Import from ``trainables.losses.functional`` (the public math API)
or from the family module; this module only keeps older imports working.
"""

from __future__ import annotations

from trainables.losses._math_common import _result_dtype, _safe_sqrt
from trainables.losses.math_kd2m import (
    _DIRECT_DIST_ELEMENTS,
    LOGIT_COSTS,
    _centred_stats,
    _check_pair,
    _exact_plan,
    _pairwise_kl,
    _psd_sqrt_no_grad,
    _squared_distances,
    cw2,
    gaussian_cw2,
    gaussian_kl,
    gaussian_w2,
    jw2,
    w2_empirical,
)
from trainables.losses.math_wkd_feature import (
    _BLOCK_ELEMENTS,
    _cell_bounds,
    _cell_mean_std,
    _EqualCellMeanStd,
    _stack_classes,
    category_cost,
    wkd_feature,
)

__all__ = [
    "LOGIT_COSTS",
    "_BLOCK_ELEMENTS",
    "_DIRECT_DIST_ELEMENTS",
    "_EqualCellMeanStd",
    "_cell_bounds",
    "_cell_mean_std",
    "_centred_stats",
    "_check_pair",
    "_exact_plan",
    "_pairwise_kl",
    "_psd_sqrt_no_grad",
    "_result_dtype",
    "_safe_sqrt",
    "_squared_distances",
    "_stack_classes",
    "category_cost",
    "cw2",
    "gaussian_cw2",
    "gaussian_kl",
    "gaussian_w2",
    "jw2",
    "w2_empirical",
    "wkd_feature",
]
