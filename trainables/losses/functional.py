"""Pure tensor functions: the public math API of the distillation losses.

One module per family holds the math, each opening with its equation and paper;
this module re-exports their public names (and the few private ones that tests and
benchmarks reach), so ``from trainables.losses import functional as F`` is the one
import the loss modules, the loop, the driver and the benchmarks need:

==========================  ===============================================  ==========
module                      names                                            methods
==========================  ===============================================  ==========
``math_kd``                 :func:`kd`                                       §1
``math_dkd``                :func:`dkd`, :func:`alignment_diagnostics`       §2, §6
``math_wkd_logit``          :class:`WKDLogit`, :func:`sharpen_cost`,         §3
                            :func:`wkd_logit`
``sinkhorn``                :class:`EntropicOT`, :func:`entropic_ot`         §3
``math_wkd_feature``        :func:`wkd_feature`, :func:`category_cost`       §4, §5
``math_gkl``                :func:`gkl`                                      §7
``math_kd2m``               :func:`w2_empirical`, :func:`cw2`, :func:`jw2`,  §8
                            :func:`gaussian_w2`, :func:`gaussian_cw2`,
                            :func:`gaussian_kl`
==========================  ===============================================  ==========

Every formula is pinned by ``docs/methods.md`` (cited as "methods §N"). Conventions
shared by all functions:

* ``[B, C]`` logits, teacher side always detached inside (methods, notation);
* "batch mean" = sum over classes, mean over the batch;
* numerically sensitive arguments (temperatures, Sinkhorn regulariser/iterations,
  solver, tolerances of the caller's choice) have no defaults here: the defaults and
  their sources live in the loss modules' ``Params`` dataclasses;
* float32 and float64 inputs are accepted; float64 in gives float64 out.

Memory: nothing here builds a ``[B, C, C]`` tensor. WKD-L shares its ``[C, C]`` cost
(and kernel) across the batch and removes the target class by zeroing its mass;
GKL uses the exact O(B·C) identity of methods §7.
"""

from __future__ import annotations

from trainables.losses._math_common import (  # noqa: F401
    _check_logits,
    _check_temperature,
    _float_dtype,
    _nontarget_log_softmax,
    _nontarget_softmax,
    _target_mask,
)
from trainables.losses.math_dkd import _dkd_terms, alignment_diagnostics, dkd  # noqa: F401
from trainables.losses.math_gkl import gkl
from trainables.losses.math_kd import kd
from trainables.losses.math_kd2m import (
    LOGIT_COSTS,
    cw2,
    gaussian_cw2,
    gaussian_kl,
    gaussian_w2,
    jw2,
    w2_empirical,
)
from trainables.losses.math_wkd_feature import category_cost, wkd_feature
from trainables.losses.math_wkd_logit import (  # noqa: F401
    _PUBLISHED_EPS,
    WKDLogit,
    _converged_parts,
    _floored_cost,
    _kernel_transpose,
    _reference_iterations,
    _reference_solve,
    _ReferenceWKD,
    sharpen_cost,
    wkd_logit,
)
from trainables.losses.sinkhorn import (  # noqa: F401
    _DEFAULT_TOL,
    EntropicOT,
    _entropic_objective_no_grad_potentials,
    entropic_ot,
)

__all__ = [
    "WKDLogit",
    "EntropicOT",
    "kd",
    "dkd",
    "sharpen_cost",
    "wkd_logit",
    "entropic_ot",
    "gkl",
    "alignment_diagnostics",
    "wkd_feature",
    "category_cost",
    "w2_empirical",
    "cw2",
    "jw2",
    "gaussian_w2",
    "gaussian_cw2",
    "gaussian_kl",
    "LOGIT_COSTS",
]
