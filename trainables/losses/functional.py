"""Pure tensor functions: the public math API of the distillation losses.

Every formula here is pinned by ``spec/methods.md`` of the design documents (cited
below as "methods §N"). Conventions shared by all functions:

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

import math
from typing import NamedTuple

import torch
from torch import Tensor

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
    "gaussian_kl",
]

#: Floor added to the cost and to both Sinkhorn denominators in the published WKD-L
#: solver (methods §3, steps 3-4); kept as-is so the reference solver matches it.
_PUBLISHED_EPS = 1e-8

#: Default stopping tolerance of the converged solver: L1 violation of the marginals,
#: per sample. 1e-6 bounds the error of the transport cost by ~1e-6 · max(C) (costs
#: are <= 1 after sharpening), far below the loss scale, and is reachable in float64.
_DEFAULT_TOL = 1e-6


# --------------------------------------------------------------------------- helpers


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half/bfloat16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "logits must both be [B, C] with the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def _check_temperature(temperature: float, name: str = "temperature") -> None:
    if not temperature > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}")


def _target_mask(target: Tensor, num_classes: int) -> Tensor:
    """Boolean one-hot ``[B, C]`` of the labels."""
    return torch.nn.functional.one_hot(target.long(), num_classes).bool()


def _nontarget_log_softmax(scaled: Tensor, mask: Tensor) -> Tensor:
    """log of the renormalised non-target distribution, finite everywhere.

    ``scaled − logsumexp_{j≠y}(scaled)``: the entry at y is a finite, meaningless number
    (its probability is zeroed by the callers). This is the exact limit of the released
    code's ``softmax(z/T − 1000·onehot(y))`` (methods §2) without relying on exp(−1000)
    underflowing, and without −inf entries that would produce 0·∞ = NaN.
    """
    lse = torch.logsumexp(scaled.masked_fill(mask, float("-inf")), dim=1, keepdim=True)
    return scaled - lse


def _nontarget_softmax(scaled: Tensor, mask: Tensor) -> Tensor:
    """Non-target distribution p̃ with exactly zero mass at y (methods §3, step 2).

    softmax of −inf gives an exact 0 and its backward uses the output only, so the
    masked entry gets a zero (not NaN) gradient.
    """
    return torch.softmax(scaled.masked_fill(mask, float("-inf")), dim=1)


# --------------------------------------------------------------------------- KD / DKD


def kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: ``T² · mean_b KL(p_t^T ‖ p_s^T)`` (methods §1).

    Batch mean = sum over classes, mean over the batch (``kl_div(reduction="mean")``
    would also divide by C: the classic bug methods §1 warns about).

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``, detached here.
        temperature: T (published CIFAR default 4, methods §1; set by ``KDParams``).
    """
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    log_ps = torch.log_softmax(student_logits / temperature, dim=1)
    log_pt = torch.log_softmax(teacher_logits.detach() / temperature, dim=1)
    # p_t·(log p_t − log p_s) with log-softmax on both sides: finite even when p_t underflows
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return temperature**2 * kl.mean()


def _dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD) without T² (methods §2), shape ``[B]`` each."""
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    num_classes = student_logits.shape[1]
    if num_classes <= 2:
        raise ValueError(
            f"DKD needs at least 3 classes: with C = {num_classes} the non-target "
            "distribution has a single class (C = 2) or none, so NCKD is undefined "
            "(methods §2). Use KD for binary problems."
        )
    mask = _target_mask(target, num_classes)
    zs = student_logits / temperature
    zt = teacher_logits.detach() / temperature

    def binary_logs(z: Tensor) -> tuple[Tensor, Tensor]:
        # log p(y) and log(1 − p(y)) from log-sum-exps: exact, no 1 − p cancellation
        lse_all = torch.logsumexp(z, dim=1)
        lse_nt = torch.logsumexp(z.masked_fill(mask, float("-inf")), dim=1)
        log_py = z.gather(1, target.long()[:, None]).squeeze(1) - lse_all
        return log_py, lse_nt - lse_all

    ls_y, ls_n = binary_logs(zs)
    lt_y, lt_n = binary_logs(zt)
    tckd = lt_y.exp() * (lt_y - ls_y) + lt_n.exp() * (lt_n - ls_n)

    log_qs = _nontarget_log_softmax(zs, mask)
    log_qt = _nontarget_log_softmax(zt, mask)
    qt = log_qt.exp().masked_fill(mask, 0.0)  # zero mass at y: its (finite) log terms drop out
    nckd = (qt * (log_qt - log_qs)).sum(dim=1)
    return tckd, nckd


def dkd(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Decoupled KD parts ``(TCKD, NCKD)``, each ``T² ·`` batch mean (methods §2).

    ``b = [p^T(y), 1 − p^T(y)]``, ``TCKD = T²·mean_b KL(b_t ‖ b_s)``;
    ``NCKD = T²·mean_b KL(q_t ‖ q_s)`` over the renormalised non-target classes.
    The weights α, β and the warm-up are applied by the caller (``DKDParams``).
    Identity: ``KD/T² = TCKD/T² + (1 − p_t^T(y))·NCKD/T²`` per sample.

    Raises:
        ValueError: for C ≤ 2, where NCKD is undefined (methods §2).
    """
    tckd, nckd = _dkd_terms(student_logits, teacher_logits, target, temperature)
    t2 = temperature**2
    return t2 * tckd.mean(), t2 * nckd.mean()


def alignment_diagnostics(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> dict[str, Tensor]:
    """Per-batch alignment diagnostics in the units of the WKL figures (methods §6).

    Returns ``{"kl": KL(p_t^T‖p_s^T) batch mean (no T²), "tc": T²·TCKD,
    "nc": 2·T²·NCKD}`` (β = 2 is built into the published ``loss_nc``), computed under
    ``no_grad``. For C ≤ 2 the NCKD-based entries are NaN (undefined, methods §2) rather
    than an exception, because the loop calls this for every loss.
    """
    with torch.no_grad():
        kl = kd(student_logits, teacher_logits, temperature) / temperature**2
        if student_logits.shape[1] <= 2:
            nan = torch.full_like(kl, float("nan"))
            return {"kl": kl, "tc": nan, "nc": nan}
        tc, nc = dkd(student_logits, teacher_logits, target, temperature)
        return {"kl": kl, "tc": tc, "nc": 2.0 * nc}


# --------------------------------------------------------------------------- WKD-L


class WKDLogit(NamedTuple):
    """Unweighted parts of WKD-L (methods §3).

    target:         ``L_t = −mean_b p_t(y)·log p_s(y)`` at T = 1 (never decayed).
    wasserstein:    batch mean of the transport cost over the non-target classes
                    (the debiased Sinkhorn divergence when ``debiased=True``).
    marginal_error: batch mean of ``‖Πᵀ1 − p̃_t‖₁`` (detached): the collapse detector.
    """

    target: Tensor
    wasserstein: Tensor
    marginal_error: Tensor


class EntropicOT(NamedTuple):
    """Result of :func:`entropic_ot` (per sample, ``[B]`` tensors; iterations an int)."""

    cost: Tensor
    marginal_error: Tensor
    iterations: int


def sharpen_cost(D: Tensor, cost_sharpen: float) -> Tensor:
    """WKD-L cost sharpening: ``C = 1 − exp(−κ·D)`` if κ ≠ 0 else ``D`` (methods §3, step 3).

    ``D`` is the cached category-interrelation matrix (``1 − CKA`` or ``1 − cos``,
    methods §5), stored before sharpening so κ can vary per trial. κ = 1 is the
    published value (set by ``WKDLParams``). The ``relu(C) + 1e-8`` floor is applied
    inside :func:`wkd_logit`, where the published solver applies it.
    """
    if cost_sharpen == 0:
        return D
    return 1.0 - torch.exp(-cost_sharpen * D)


def _floored_cost(cost: Tensor, dtype: torch.dtype) -> Tensor:
    """``relu(C) + 1e-8`` exactly as published (methods §3, step 3)."""
    return torch.relu(cost.detach().to(dtype)) + _PUBLISHED_EPS


def _reference_solve(
    p: Tensor, q: Tensor, mask: Tensor, K: Tensor, iters: int
) -> tuple[Tensor, Tensor]:
    """The published plain-domain solver (methods §3, step 4), batched on a shared kernel.

    ``mask`` marks the target class.

    ``u⁰ = 1/(C−1)`` on the non-target classes; repeat ``iters`` times
    ``v = p̃_t / (Kᵀu + 1e-8)``, ``u = p̃_s / (K v + 1e-8)``. The target class has zero
    mass in p̃_s and p̃_t, so u⁰ is zeroed there too: then ``u_y = v_y = 0`` at every step
    and the other entries see exactly the sums of the literal per-sample
    ``[C−1, C−1]`` solver (tested). Autograd runs through the unrolled iterations.
    """
    C = p.shape[1]
    u = torch.full_like(p, 1.0 / (C - 1)).masked_fill(mask, 0.0)
    v = torch.zeros_like(q)
    for _ in range(iters):
        v = q / (u @ K + _PUBLISHED_EPS)  # (Kᵀu)_j = Σ_i u_i K_ij
        u = p / (v @ K.T + _PUBLISHED_EPS)  # (K v)_i = Σ_j K_ij v_j
    return u, v


def _pcg(
    apply: object, rhs: Tensor, inv_diag: Tensor, support: Tensor, rtol: float, max_iters: int
) -> tuple[Tensor, int]:
    """Batched preconditioned conjugate gradients on per-sample PSD systems.

    ``apply`` maps ``[B, n] -> [B, n]`` (one symmetric PSD operator per row); the
    systems used here are singular with a null space orthogonal to ``rhs``, where CG
    still converges (the null component of the solution is irrelevant to its use).
    Stops when every row's residual is below ``rtol`` times its initial norm. The null
    vector is the indicator of ``support``: the residual is kept orthogonal to it, since
    rounding components along it would otherwise grow.
    """
    assert callable(apply)
    n_supp = support.sum(1, keepdim=True).clamp_min(1)

    def project(t: Tensor) -> Tensor:
        return torch.where(support, t - t.sum(1, keepdim=True) / n_supp, 0.0)

    x = torch.zeros_like(rhs)
    r = project(rhs)
    z = inv_diag * r
    d = z.clone()
    rz = (r * z).sum(1)
    r0 = r.norm(dim=1)
    k = 0
    for k in range(1, max_iters + 1):  # noqa: B007 - k is the returned count
        ad = apply(d)
        dad = (d * ad).sum(1)
        active = (r.norm(dim=1) > rtol * r0) & (dad > 0)
        alpha = torch.where(active, rz / torch.where(active, dad, 1.0), 0.0)[:, None]
        x = x + alpha * d
        r = project(r - alpha * ad)
        if not bool((r.norm(dim=1) > rtol * r0).any()):
            break
        z = inv_diag * r
        rz_new = (r * z).sum(1)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)[:, None]
        d = z + beta * d
        rz = rz_new
    return x, k


def _converged_solve(
    p: Tensor, q: Tensor, cost: Tensor, reg: float, tol: float, max_iters: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Entropic OT scalings ``u, v`` (``Π = diag(u) K diag(v)``) to marginal error < tol.

    Returns ``(u, v, K, sweeps)``. float64 scaling form on the shared kernel
    ``K = exp(−C/λ)`` (methods §3: representable for C ≤ 1 down to λ ≈ 0.002).

    Why not plain Sinkhorn: its rate is the spectral gap of the plan, which shrinks as
    the plan approaches a sparse OT plan; measured at C = 100 (T = 8, CKA-like cost) it
    needs ~270 sweeps at λ = 0.05, ~19 000 at 0.02 and > 200 000 at 0.005. Instead:
    damped Newton on the semi-dual in ``a = log u`` (Sinkhorn-Newton, Brauer, Clason,
    Lorenz & Wirth 2017): ``v = q / Kᵀu`` exactly and ``J δ = p − u∘Kv`` with
    ``J = D_p̂ − Π D_q⁻¹ Πᵀ``, solved by diagonally preconditioned CG using only
    ``[B, C] × [C, C]`` products, then Armijo backtracking on the concave semi-dual
    ``ψ(a) = ⟨a, p⟩ − ⟨q, log Kᵀe^a⟩``. Newton's region of fast convergence shrinks with
    λ, so λ is annealed (ε-scaling: λ·2^k down to λ, warm-started through the
    potentials ``f = λ·a``), each intermediate stage solved loosely. Work is counted in
    kernel sweeps (one product with K and one with Kᵀ), the unit ``max_iters`` caps. The
    returned plan ends with a u-update (as the reference solver): the student marginal
    is exact and the stopping test is on the teacher-marginal L1 error it carries.
    """
    supp_p = p > 0
    supp_q = q > 0
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    q_safe = torch.where(supp_q, q, 1.0)

    # annealing schedule: start where the kernel is well spread (λ ≥ 0.1·max C)
    regs = [reg]
    c_max = float(cost.max())
    while regs[-1] < 0.1 * c_max and len(regs) < 12:
        regs.append(regs[-1] * 2.0)
    regs.reverse()

    def normalise(a: Tensor) -> Tensor:
        # ψ and the plan are invariant to a → a + const: keep e^a ≤ 1
        a = a - torch.where(supp_p, a, -math.inf).amax(1, keepdim=True)
        return torch.where(supp_p, a, zero)

    def to_u(a: Tensor) -> Tensor:
        return torch.where(supp_p, a.exp(), zero)

    a = torch.zeros_like(p)
    used = 0
    K = torch.exp(-cost / reg)
    for stage, lam in enumerate(regs):
        last = stage == len(regs) - 1
        if stage > 0:
            a = a * (regs[stage - 1] / lam)  # same potential f = λ·a at the new λ
        K = torch.exp(-cost / lam)
        KT = K.T
        stage_tol = tol if last else max(tol, 1e-3)

        def semi_dual(a: Tensor, K: Tensor = K) -> Tensor:
            log_ktu = torch.log(torch.where(supp_q, to_u(a) @ K, 1.0))
            out = (a * p).sum(1) - (q * log_ktu).sum(1)
            return torch.where(torch.isfinite(out), out, -math.inf)

        a = normalise(a)
        # two Sinkhorn sweeps: cheap, robust far from the solution
        for _ in range(2):
            v = torch.where(supp_q, q / (to_u(a) @ K), zero)
            kv = v @ KT
            a = normalise(torch.where(supp_p, torch.log(p / torch.where(supp_p, kv, 1.0)), zero))
            used += 1
        while True:
            u = to_u(a)
            v = torch.where(supp_q, q / (u @ K), zero)
            kv = v @ KT
            p_hat = u * kv
            # stop on the quantity reported: the teacher-marginal error of the plan after
            # the closing u-update (u' = p / Kv), one extra product per Newton step
            u_closed = torch.where(supp_p, p / torch.where(supp_p, kv, 1.0), zero)
            err = (v * (u_closed @ K) - q).abs().sum(1)
            used += 2
            todo = err >= stage_tol
            if not bool(todo.any()) or used >= max_iters:
                break
            err = torch.maximum(err, (p_hat - p).abs().sum(1))
            grad = torch.where(supp_p, p - p_hat, zero)
            w = torch.where(supp_q, v * v / q_safe, zero)  # D_q⁻¹ after Πᵀ, = q/(Kᵀu)²

            def jac(
                x: Tensor, u: Tensor = u, w: Tensor = w, ph: Tensor = p_hat, K: Tensor = K
            ) -> Tensor:
                return ph * x - u * ((w * ((u * x) @ K)) @ K.T)

            inv_diag = torch.where(p_hat > 0, 1.0 / torch.where(p_hat > 0, p_hat, 1.0), zero)
            forcing = min(0.1, math.sqrt(float(err.max())))
            cap = max(1, min(4 * p.shape[1], max_iters - used))
            delta, k = _pcg(jac, grad, inv_diag, supp_p & (p_hat > 0), forcing, cap)
            used += k
            # trust region in log-scaling units: a step never changes e^a by more than e^30
            delta = torch.where(
                supp_p,
                delta
                - (delta * supp_p).sum(1, keepdim=True) / supp_p.sum(1, keepdim=True).clamp_min(1),
                zero,
            )
            big = delta.abs().amax(1, keepdim=True)
            delta = delta * torch.clamp(30.0 / big.clamp_min(1e-300), max=1.0)
            slope = (grad * delta).sum(1)
            psi0 = semi_dual(a)
            step = torch.where(todo & (slope > 0), 1.0, 0.0).to(p.dtype)
            for _ in range(40):
                ok = semi_dual(a + step[:, None] * delta) >= psi0 + 1e-4 * step * slope
                used += 1
                if bool(ok.all()):
                    break
                step = torch.where(ok, step, 0.5 * step)
            step = torch.where(ok, step, 0.0)
            a_new = normalise(a + step[:, None] * delta)
            # where Newton made no progress (failed search), fall back to a Sinkhorn sweep
            stuck = todo & (step == 0)
            if bool(stuck.any()):
                v_s = torch.where(supp_q, q / (to_u(a) @ K), zero)
                kv = v_s @ KT
                a_sk = torch.where(supp_p, torch.log(p / torch.where(supp_p, kv, 1.0)), zero)
                a_new = torch.where(stuck[:, None], normalise(a_sk), a_new)
                used += 1
            a = a_new
    return u_closed, v, K, used


def _teacher_marginal_error(u: Tensor, v: Tensor, q: Tensor, K: Tensor) -> Tensor:
    """``‖Πᵀ1 − q‖₁`` per sample, with ``Πᵀ1 = v ∘ Kᵀu`` (methods §3 detector)."""
    return (v * (u @ K) - q).abs().sum(1)


class _ConvergedTransportCost(torch.autograd.Function):
    """⟨Π_λ, C⟩ of the converged entropic plan with its implicit-function gradient.

    Backward: the plan is defined by ``u∘Kv = p``, ``v∘Kᵀu = q``; linearising in
    ``(log u, log v)`` gives the symmetric system ``[[D_p, Π], [Πᵀ, D_q]]``, and the
    gradient of ``⟨Π, C⟩`` w.r.t. ``(p, q)`` is its solution with right-hand side the
    row and column sums of ``Π∘C``. Eliminating the rows leaves
    ``(D_q − Πᵀ D_p⁻¹ Π) y = c − Πᵀ D_p⁻¹ r`` (solved by preconditioned CG with
    ``[B, C] × [C, C]`` products) and ``x = D_p⁻¹ (r − Π y)``. Exact at the fixed
    point, independent of the number of forward iterations (no unrolled graph is
    stored). The null direction (x + t, y − t) is a constant shift, which the softmax
    that produced p and q ignores.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        p: Tensor,
        q: Tensor,
        cost_matrix: Tensor,
        reg: float,
        tol: float,
        max_iters: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        u, v, K, used = _converged_solve(p, q, cost_matrix, reg, tol, max_iters)
        KC = K * cost_matrix
        cost = (u * (v @ KC.T)).sum(1)
        err = _teacher_marginal_error(u, v, q, K)
        ctx.save_for_backward(u, v, p, q, K, KC)
        ctx.max_iters = max_iters
        iters = torch.tensor(used)
        ctx.mark_non_differentiable(err, iters)
        return cost, err, iters

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, g_cost: Tensor, _g_err: Tensor, _g_it: Tensor
    ) -> tuple[Tensor | None, ...]:
        u, v, p, q, K, KC = ctx.saved_tensors
        supp_p = p > 0
        supp_q = q > 0
        zero = torch.zeros((), dtype=u.dtype, device=u.device)
        kv = v @ K.T  # (K v)_i > 0 wherever some v_j > 0
        kv_safe = torch.where(kv > 0, kv, 1.0)
        ktu = u @ K
        q_hat = v * ktu  # actual column marginal: keeps the system exactly consistent
        kcv = v @ KC.T  # ((K∘C) v)_i ; r = u ∘ kcv
        c = v * (u @ KC)  # column sums of Π∘C
        # D_p⁻¹ Π z = K(v∘z) / (K v) once u = p/(Kv) (last update of the solve)
        rhs = torch.where(supp_q, c - v * ((u * kcv / kv_safe) @ K), zero)

        def schur(y: Tensor) -> Tensor:
            return q_hat * y - v * ((u * ((v * y) @ K.T) / kv_safe) @ K)

        inv_diag = torch.where(supp_q & (q_hat > 0), 1.0 / torch.where(q_hat > 0, q_hat, 1.0), zero)
        y, _ = _pcg(schur, rhs, inv_diag, supp_q & (q_hat > 0), 1e-10, max(10, 4 * p.shape[1]))
        x = torch.where(supp_p, (kcv - (v * y) @ K.T) / kv_safe, zero)
        g = g_cost[:, None]
        return g * x, g * y, None, None, None, None, None


def entropic_ot(
    p: Tensor, q: Tensor, cost: Tensor, reg: float, iters: int, tol: float = _DEFAULT_TOL
) -> EntropicOT:
    """Converged entropic OT between batched histograms on a shared cost (methods §3).

    Returns the per-sample transport cost ``⟨Π_λ, C⟩`` of the entropic plan (what
    POT's ``sinkhorn2`` returns, not the entropic objective), the teacher-marginal
    error ``‖Πᵀ1 − q‖₁`` and the number of kernel sweeps used (``iters`` caps it).
    ``p, q``: ``[B, C]`` on the simplex (zero entries allowed); ``cost``: ``[C, C]``
    used as given (no floor). Computed in float64; differentiable in ``p`` and ``q``
    through the implicit function theorem (see ``_ConvergedTransportCost``).
    """
    if not reg > 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    out_dtype = _float_dtype(p, q)
    p64, q64 = p.to(torch.float64), q.to(torch.float64)
    c64 = cost.detach().to(device=p.device, dtype=torch.float64)
    if bool((torch.exp(-c64.max() / reg) == 0).any()):
        raise ValueError(
            f"exp(-cost/reg) underflows in float64 at reg={reg} (max cost "
            f"{float(c64.max()):.3g}): the converged solver supports max(cost)/reg < ~700"
        )
    c_out, err, it = _ConvergedTransportCost.apply(p64, q64, c64, reg, tol, iters)
    return EntropicOT(c_out.to(out_dtype), err.to(out_dtype), int(it))


def _entropic_objective_no_grad_potentials(
    p: Tensor, q: Tensor, cost: Tensor, reg: float, tol: float, max_iters: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Potentials ``(f, g)`` of OT_λ(p, q) with the KL(Π‖p⊗q) regulariser, and the
    teacher-marginal error. ``Π_ij = p_i q_j exp((f_i + g_j − C_ij)/λ)``, so
    ``f = λ log(u/p)``, ``g = λ log(v/q)`` on the supports (0 elsewhere)."""
    with torch.no_grad():
        u, v, K, _ = _converged_solve(p, q, cost, reg, tol, max_iters)
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        sp, sq = p > 0, q > 0
        f = torch.where(
            sp, reg * torch.log(torch.where(sp, u / torch.where(sp, p, 1.0), 1.0)), zero
        )
        g = torch.where(
            sq, reg * torch.log(torch.where(sq, v / torch.where(sq, q, 1.0), 1.0)), zero
        )
        return f, g, _teacher_marginal_error(u, v, q, K)


def wkd_logit(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    cost: Tensor,
    temperature: float,
    reg: float,
    iters: int,
    solver: str,
    *,
    tol: float | None = None,
    debiased: bool = False,
) -> WKDLogit:
    """WKD-L parts: target term and discrete Wasserstein over non-target classes (methods §3).

    Args:
        student_logits, teacher_logits: ``[B, C]``; the teacher is detached.
        target: ``[B]`` labels.
        cost: the already sharpened ``[C, C]`` cost (:func:`sharpen_cost`); the published
            ``relu(C) + 1e-8`` floor is applied here for both solvers, so they solve the
            same problem (it shifts every transport cost by exactly 1e-8).
        temperature: T of the non-target distributions (published 8 for RN32x4→RN8x4).
        reg: entropic regulariser λ, ``sinkhorn_reg`` (published 0.05).
        iters: ``sinkhorn_iters``: the fixed iteration count of the reference solver
            (published 10) or the cap, in kernel sweeps, of the converged one.
        solver: ``"reference"`` — the published plain-domain solver, unrolled for
            autograd, in float32 even under autocast (float64 if an input is float64);
            it collapses silently below λ ≈ 0.03 (methods §3), which ``marginal_error``
            detects. ``"converged"`` — float64 Sinkhorn-Newton to ``tol``, gradient by
            implicit differentiation (exact at the fixed point), accurate for λ down to
            0.005 and below while ``max(cost)/λ < ~700``.
        tol: converged solver only (ignored by the reference solver): per-sample
            teacher-marginal L1 error to stop at; ``None`` means 1e-6 (``_DEFAULT_TOL``).
        debiased: converged solver only: the debiased Sinkhorn divergence
            ``OT_λ(p,q) − ½OT_λ(p,p) − ½OT_λ(q,q)`` where OT_λ is the entropic objective
            (Feydy et al. 2019: ≥ 0 and zero iff p = q when exp(−C/λ) is a positive
            definite kernel; the transport cost alone carries no such guarantee), with
            its exact envelope gradient (the potentials).

    The target class is removed by zeroing its mass in p̃_s and p̃_t with the ``[C, C]``
    cost shared across the batch, which is exact (a zero-mass row/column carries no
    transport) and never builds a ``[B, C, C]`` tensor.

    Returns:
        :class:`WKDLogit` with ``target`` (T = 1, never decayed), ``wasserstein``
        (unweighted batch mean, no T²) and ``marginal_error`` (detached batch mean of
        ``‖Πᵀ1 − p̃_t‖₁``).
    """
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    B, C = student_logits.shape
    if C < 3:
        raise ValueError(f"WKD-L needs at least 3 classes (C − 1 ≥ 2 non-target), got C = {C}")
    if cost.shape != (C, C):
        raise ValueError(f"cost must be [{C}, {C}], got {tuple(cost.shape)}")
    if not reg > 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if solver not in ("reference", "converged"):
        raise ValueError(f"solver must be 'reference' or 'converged', got {solver!r}")
    if solver == "reference" and debiased:
        raise ValueError("debiased needs solver='converged'")
    out_dtype = _float_dtype(student_logits, teacher_logits)
    teacher_logits = teacher_logits.detach()
    mask = _target_mask(target, C)

    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        zs = student_logits.to(out_dtype)
        zt = teacher_logits.to(out_dtype)
        # target term at T = 1 (methods §3, step 1)
        log_ps_y = torch.log_softmax(zs, dim=1).gather(1, target.long()[:, None]).squeeze(1)
        pt_y = torch.softmax(zt, dim=1).gather(1, target.long()[:, None]).squeeze(1)
        target_term = -(pt_y * log_ps_y).mean()

        if solver == "reference":
            # float32 unless float64 was given (methods §3, step 4)
            cf = _floored_cost(cost.to(zs.device), out_dtype)
            K = torch.exp(-cf / reg)
            ps = _nontarget_softmax(zs / temperature, mask)
            pt = _nontarget_softmax(zt / temperature, mask)
            u, v = _reference_solve(ps, pt, mask, K, iters)
            wd = (u * (v @ (K * cf).T)).sum(1)
            with torch.no_grad():
                err = _teacher_marginal_error(u, v, pt, K)
            return WKDLogit(target_term, wd.mean(), err.mean())

        tol_ = _DEFAULT_TOL if tol is None else float(tol)
        if not tol_ > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        ps = _nontarget_softmax(zs.to(torch.float64) / temperature, mask)
        pt = _nontarget_softmax(zt.to(torch.float64) / temperature, mask)
        cf = _floored_cost(cost.to(zs.device), torch.float64)
        if not debiased:
            res = entropic_ot(ps, pt, cf, reg, iters, tol_)
            return WKDLogit(
                target_term, res.cost.mean().to(out_dtype), res.marginal_error.mean().to(out_dtype)
            )
        f_st, g_st, err = _entropic_objective_no_grad_potentials(ps, pt, cf, reg, tol_, iters)
        f_ss, g_ss, _ = _entropic_objective_no_grad_potentials(ps, ps, cf, reg, tol_, iters)
        f_tt, g_tt, _ = _entropic_objective_no_grad_potentials(pt, pt, cf, reg, tol_, iters)
        # value = dual objective ⟨f,p⟩ + ⟨g,q⟩; detached potentials give the envelope
        # gradient (∂OT_λ/∂p = f, ∂OT_λ/∂q = g): both marginals of OT(p̃_s, p̃_s) are p̃_s
        ot_st = (f_st * ps).sum(1) + (g_st * pt).sum(1)
        ot_ss = (f_ss * ps).sum(1) + (g_ss * ps).sum(1)
        ot_tt = (f_tt * pt).sum(1) + (g_tt * pt).sum(1)
        div = ot_st - 0.5 * ot_ss - 0.5 * ot_tt
        return WKDLogit(target_term, div.mean().to(out_dtype), err.mean().to(out_dtype))


# --------------------------------------------------------------------------- GKL / IKL


def gkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float,
    gamma: float,
    class_prior: Tensor | None,
    prior_temperature: float,
    normalize: str = "weight",
) -> tuple[Tensor, Tensor]:
    """GKL / IKL parts ``(wmse, soft_ce)`` in the paper's naming (methods §7).

    ``wMSE = ¼ Σ_b Σ_jk w_jk (Δ^t_jk − Δ^s_jk)² / N`` with ``Δ_jk = z_j − z_k`` on raw
    logits (no T), gradient into the student through Δ^s, detached weights
    ``w_jk = s_j^γ s_k^γ``; ``s = class_prior[target]`` (GI) or, when ``class_prior`` is
    None, the per-sample ``softmax(z_t / prior_temperature)``. ``N = Σ_b Σ_jk w_jk``
    (``normalize="weight"``, GKL) or ``B`` (``"batch"``, IKL with γ = 1).
    Computed in O(B·C) by the exact identity of methods §7:
    ``Σ_jk w_j w_k (d_j − d_k)² = 2 S Σ_j w_j (d_j − d̄)²`` with ``d = z_t − z_s``,
    ``S = Σ_j w_j``, ``d̄ = Σ_j w_j d_j / S`` (not the paper's Algorithm 2, which is
    wrong unless Σ_j w_j = 1). ``soft_ce = −mean_b Σ_j p_t^T(j) log p_s^T(j)``, no T².
    The total ``α·wmse + β·soft_ce`` and the warm-up are the caller's (``GKLParams``;
    the released configs swap the names α/β — methods §7).

    Args:
        temperature: T of soft_ce (CIFAR 4, ImageNet 1).
        gamma: exponent γ ≥ 0 (γ = 0: uniform weights).
        class_prior: ``[C, C]`` class-mean teacher probabilities (row c for class c) or None.
        prior_temperature: T2 of the per-sample weights (used when ``class_prior`` is None).
        normalize: ``"weight"`` (GKL) or ``"batch"`` (IKL).
    """
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    _check_temperature(prior_temperature, "prior_temperature")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if normalize not in ("weight", "batch"):
        raise ValueError(f"normalize must be 'weight' or 'batch', got {normalize!r}")
    B, C = student_logits.shape
    zt = teacher_logits.detach()
    with torch.no_grad():
        if class_prior is not None:
            if class_prior.shape != (C, C):
                raise ValueError(f"class_prior must be [{C}, {C}], got {tuple(class_prior.shape)}")
            s = class_prior.detach().to(zt)[target.long()]
        else:
            s = torch.softmax(zt / prior_temperature, dim=1)
        w = s.pow(gamma)  # 0^0 = 1: γ = 0 gives uniform weights even for zero priors
        S = w.sum(1)
    d = zt.to(student_logits.dtype) - student_logits
    d_bar = (w * d).sum(1, keepdim=True) / S[:, None]
    num = (2.0 * S * (w * (d - d_bar) ** 2).sum(1)).sum()
    denom = (S * S).sum() if normalize == "weight" else torch.tensor(float(B), dtype=num.dtype)
    wmse = 0.25 * num / denom

    log_ps = torch.log_softmax(student_logits / temperature, dim=1)
    pt = torch.softmax(zt / temperature, dim=1)
    soft_ce = -(pt * log_ps).sum(1).mean()
    return wmse, soft_ce


# Feature-distribution math lives in its own module (WKD-F, CKA cost, KD²M distances,
# methods §4, §5, §8); re-exported so ``functional`` stays the one public math API.
from trainables.losses._feature_math import (  # noqa: E402, F401
    category_cost,
    cw2,
    gaussian_kl,
    gaussian_w2,
    jw2,
    w2_empirical,
    wkd_feature,
)
