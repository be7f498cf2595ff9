"""WKD-L: discrete Wasserstein distance over the non-target classes (methods §3).

    L = L_t + λ_w · WD_λ(p̃_s, p̃_t; C)
    L_t = −mean_b p_t(y) · log p_s(y)                        (T = 1, never decayed)
    p̃ = softmax(z / T) over the non-target classes          (class y: zero mass)
    C = 1 − exp(−κ · D)  (κ ≠ 0),  D = 1 − CKA (methods §5)   (:func:`sharpen_cost`)
    WD_λ = Σ_ij Π*_ij C_ij,  Π* = argmin_{Π ∈ U(p̃_s, p̃_t)} ⟨Π, C⟩ − λ H(Π)   (Sinkhorn)

Two solvers: ``"reference"`` — the published plain-domain Sinkhorn, a fixed number of
iterations unrolled for autograd (here with a hand-written reverse pass,
:class:`_ReferenceWKD`); ``"converged"`` — float64 Sinkhorn-Newton to a tolerance with
implicit gradients (``trainables/losses/sinkhorn.py``), optionally the debiased
Sinkhorn divergence [SD]. Memory: the ``[C, C]`` cost and kernel are shared across the
batch; nothing builds a ``[B, C, C]`` tensor.

Paper: J. Lv, H. Yang, P. Li, *Wasserstein Distance Rivals Kullback-Leibler Divergence
for Knowledge Distillation*, NeurIPS 2024 [WKD].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from trainables.losses._math_common import (
    _check_logits,
    _check_temperature,
    _float_dtype,
    _nontarget_softmax,
    _target_mask,
)
from trainables.losses.sinkhorn import (
    _DEFAULT_TOL,
    _entropic_objective_no_grad_potentials,
    entropic_ot,
)

__all__ = ["WKDLogit", "sharpen_cost", "wkd_logit"]

#: Floor added to the cost and to both Sinkhorn denominators in the published WKD-L
#: solver (methods §3, steps 3-4); kept as-is so the reference solver matches it.
_PUBLISHED_EPS = 1e-8


class WKDLogit(NamedTuple):
    """Unweighted parts of WKD-L (methods §3).

    target:         ``L_t = −mean_b p_t(y)·log p_s(y)`` at T = 1 (never decayed).
    wasserstein:    batch mean of the transport cost over the non-target classes
                    (the debiased Sinkhorn divergence when ``debiased=True``).
    marginal_error: batch mean of ``‖Πᵀ1 − p̃_t‖₁`` (detached): the collapse detector.
    sweeps:         kernel sweeps the solve used (detached 0-dim, in the output dtype):
                    ``iters`` for the reference solver; for the converged one the sum
                    over its solves (three when debiased), each capped by ``max_sweeps``.
    max_error:      largest per-sample ``‖Πᵀ1 − q‖₁`` over the batch and over the
                    solves (detached 0-dim).
    cap_hit:        converged solver: 1.0 if some solve stopped at ``max_sweeps`` with a
                    sample at or above ``tol`` (the result is then not converged), else
                    0.0; always 0.0 for the reference solver (fixed count by design).
    """

    target: Tensor
    wasserstein: Tensor
    marginal_error: Tensor
    sweeps: Tensor
    max_error: Tensor
    cap_hit: Tensor


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


def _kernel_transpose(K: Tensor, cost: Tensor) -> Tensor:
    """``Kᵀ`` for the ``[B, C] × [C, C]`` products, laid out contiguously.

    With a transposed view, a skinny product reads K across rows: at C = 1000 and
    B = 16 that is ~1.5× slower (measured, float32 and float64). The category costs
    (``1 − CKA``, ``1 − cos``, methods §5) are symmetric by construction, and then K is
    its own transpose: no copy. Otherwise one contiguous copy, shared by all products.
    """
    if cost.shape[0] == cost.shape[1] and bool(torch.equal(cost, cost.T)):
        return K
    return K.T.contiguous()


def _floored_cost(cost: Tensor, dtype: torch.dtype) -> Tensor:
    """``relu(C) + 1e-8`` exactly as published (methods §3, step 3)."""
    return torch.relu(cost.detach().to(dtype)).add_(_PUBLISHED_EPS)


def _reference_iterations(
    p: Tensor, q: Tensor, target: Tensor, K: Tensor, KT: Tensor, iters: int
) -> list[Tensor]:
    """The published plain-domain solver (methods §3, step 4), batched on a shared kernel.

    ``u⁰ = 1/(C−1)`` on the non-target classes; repeat ``iters`` times
    ``v = p̃_t / (Kᵀu + 1e-8)``, ``u = p̃_s / (K v + 1e-8)``. The target class has zero
    mass in p̃_s and p̃_t, so u⁰ is zero there too: then ``u_y = v_y = 0`` at every step
    and the other entries see exactly the sums of the literal per-sample
    ``[C−1, C−1]`` solver (tested). ``KT`` is ``Kᵀ`` (:func:`_kernel_transpose`).

    Returns one ``[4, B, C]`` tensor per iteration k holding ``(S_k, V_k, T_k, U_k)``:
    ``S_k = Kᵀu_{k−1} + 1e-8``, ``V_k = p̃_t / S_k``, ``T_k = K V_k + 1e-8``,
    ``U_k = p̃_s / T_k``, what the hand-written backward of :class:`_ReferenceWKD`
    needs. No autograd here; results are written in place into those buffers. One
    buffer per iteration rather than one for all: glibc serves blocks above 32 MB
    (all iterates at B = 256, C = 1000) by a fresh mmap every call, whose page faults
    cost ~25 % of the solve; 4 MB blocks are reused from the heap.
    The first product is free: ``(Kᵀu⁰)_j = (Σ_i K_ij − K_yj)/(C−1)``.
    """
    B, C = p.shape
    its = [torch.empty((4, B, C), dtype=p.dtype, device=p.device) for _ in range(iters)]
    with torch.no_grad():
        torch.sub(K.sum(0), K.index_select(0, target), out=its[0][0])
        its[0][0].div_(C - 1).add_(_PUBLISHED_EPS)
        for k, (s, v, t, u) in enumerate(its):
            if k > 0:
                torch.mm(its[k - 1][3], K, out=s)  # (Kᵀu)_j = Σ_i u_i K_ij
                s.add_(_PUBLISHED_EPS)
            torch.div(q, s, out=v)
            torch.mm(v, KT, out=t)  # (K v)_i = Σ_j K_ij v_j
            t.add_(_PUBLISHED_EPS)
            torch.div(p, t, out=u)
    return its


def _reference_solve(
    p: Tensor, q: Tensor, target: Tensor, K: Tensor, cost: Tensor, iters: int
) -> tuple[Tensor, Tensor]:
    """Final scalings ``(u, v)`` of the reference solver (no autograd; benchmarks)."""
    its = _reference_iterations(p, q, target, K, _kernel_transpose(K, cost), iters)
    return its[-1][3], its[-1][1]


class _ReferenceWKD(torch.autograd.Function):
    """Per-sample ``(WD_b, ‖Πᵀ1 − p̃_t‖₁)`` of the reference solver, differentiated
    through the unrolled iterations (methods §3, step 4: "autograd goes through the
    unrolled iterations") by a hand-written reverse pass.

    Why not plain autograd: it computes the same products, but every iteration
    allocates fresh ``[B, C]`` buffers and ``DivBackward`` spends several elementwise
    ops per division; at ImageNet shape that was ~30 % of the time. The reverse pass
    is the exact adjoint of :func:`_reference_iterations`, per iteration k (from last
    to first), with ``ḡ`` the gradient w.r.t. a quantity:

    ``ḡp += ḡu_k / T_k``; ``ḡt = −ḡu_k · U_k / T_k``; ``ḡv_k = ḡt K`` (+ the cost
    term at k = last); ``ḡq += ḡv_k / S_k``; ``ḡs = −ḡv_k · V_k / S_k``;
    ``ḡu_{k−1} = ḡs Kᵀ``,

    and ``WD = Σ_i u_i ((K∘C) v)_i`` gives ``ḡu_L = g·(K∘C)v``, ``ḡv_L ∋ (g·u_L)(K∘C)``.
    u⁰ is a constant, so the pass stops at the first iteration (tested against
    autograd through the literal per-sample solver and by gradcheck). ``K`` and the
    cost are constants (detached, methods §3). First-order only.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        p: Tensor,
        q: Tensor,
        target: Tensor,
        K: Tensor,
        KT: Tensor,
        KC: Tensor,
        iters: int,
    ) -> tuple[Tensor, Tensor]:
        its = _reference_iterations(p, q, target, K, KT, iters)
        u, v = its[-1][3], its[-1][1]
        kcv = v @ KC.T  # ((K∘C) v)_i
        wd = (u * kcv).sum(1)
        err = (v * (u @ K) - q).abs_().sum(1)  # Πᵀ1 = v ∘ Kᵀu (the collapse detector)
        ctx.save_for_backward(K, KT, KC, kcv, *its)
        ctx.mark_non_differentiable(err)
        return wd, err

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, g_wd: Tensor, _g_err: Tensor
    ) -> tuple[Tensor | None, ...]:
        K, KT, KC, kcv, *its = ctx.saved_tensors
        S, V, T, U = ([it[j] for it in its] for j in range(4))
        need_p, need_q = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = g_wd[:, None]
        gp = torch.zeros_like(U[0]) if need_p else None
        gq = torch.zeros_like(U[0]) if need_q else None
        gu = g * kcv
        last = len(S) - 1
        for k in range(last, -1, -1):
            w = gu.div_(T[k])  # ḡu_k / T_k
            if gp is not None:
                gp.add_(w)
            if k == 0 and gq is None:
                break  # v_1 depends on the constant u⁰ and on q only
            w.mul_(U[k])  # = −ḡt
            nh = w @ K  # = −ḡv_k (from T_k)
            if k == last:
                nh.sub_((g * U[-1]) @ KC)  # the cost term's ḡv_L
            if gq is not None:
                gq.sub_(nh / S[k])
            if k == 0:
                break
            gu = nh.mul_(V[k]).div_(S[k]) @ KT  # ḡs = −ḡv_k·V_k/S_k = nh·V_k/S_k
        return gp, gq, None, None, None, None, None


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
    max_sweeps: int | None = None,
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
            (published 10). Not used by the converged solver (see ``max_sweeps``).
        solver: ``"reference"`` — the published plain-domain solver, unrolled for
            autograd, in float32 even under autocast (float64 if an input is float64);
            it collapses silently below λ ≈ 0.03 (methods §3), which ``marginal_error``
            detects. ``"converged"`` — float64 Sinkhorn then Sinkhorn-Newton to ``tol``
            (see ``_converged_solve``), gradient by
            implicit differentiation (exact at the fixed point), accurate for λ down to
            0.005 and below while ``max(cost)/λ < ~700``.
        tol: converged solver only (ignored by the reference solver): per-sample
            teacher-marginal L1 error to stop at; ``None`` means 1e-6 (``_DEFAULT_TOL``).
        max_sweeps: converged solver only, required there: the cap in kernel sweeps
            (two ``[B, C] × [C, C]`` products, the work of one reference iteration) of
            each solve; a solve that reaches it unconverged says so in ``cap_hit``.
            The default and the minimum per λ live in ``WKDLParams`` / ``wkd.min_sweeps``.
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
        (unweighted batch mean, no T²), ``marginal_error`` (detached batch mean of
        ``‖Πᵀ1 − p̃_t‖₁``) and the solver's ``sweeps``, ``max_error`` and ``cap_hit``.
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
    if solver == "converged" and (max_sweeps is None or max_sweeps < 1):
        raise ValueError(f"solver='converged' needs max_sweeps >= 1, got {max_sweeps}")
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
            K = torch.div(cf, -reg).exp_()  # in place: [C, C] buffers are not free at C = 1000
            ps = _nontarget_softmax(zs / temperature, mask)
            pt = _nontarget_softmax(zt / temperature, mask)
            KT = _kernel_transpose(K, cf)
            wd, err = _ReferenceWKD.apply(ps, pt, target.long(), K, KT, K * cf, iters)
            sweeps = torch.tensor(float(iters), dtype=out_dtype, device=zs.device)
            zero = torch.zeros((), dtype=out_dtype, device=zs.device)
            return WKDLogit(target_term, wd.mean(), err.mean(), sweeps, err.max(), zero)

        tol_ = _DEFAULT_TOL if tol is None else float(tol)
        if not tol_ > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        ps = _nontarget_softmax(zs.to(torch.float64) / temperature, mask)
        pt = _nontarget_softmax(zt.to(torch.float64) / temperature, mask)
        cf = _floored_cost(cost.to(zs.device), torch.float64)
        assert max_sweeps is not None
        if not debiased:
            res = entropic_ot(ps, pt, cf, reg, max_sweeps, tol_)
            return _converged_parts(
                target_term,
                res.cost.mean(),
                res.marginal_error,
                [res.marginal_error],
                res.iterations,
                tol_,
                out_dtype,
            )
        solve = _entropic_objective_no_grad_potentials
        f_st, g_st, err, n_st = solve(ps, pt, cf, reg, tol_, max_sweeps)
        f_ss, g_ss, err_ss, n_ss = solve(ps, ps, cf, reg, tol_, max_sweeps)
        f_tt, g_tt, err_tt, n_tt = solve(pt, pt, cf, reg, tol_, max_sweeps)
        # value = dual objective ⟨f,p⟩ + ⟨g,q⟩; detached potentials give the envelope
        # gradient (∂OT_λ/∂p = f, ∂OT_λ/∂q = g): both marginals of OT(p̃_s, p̃_s) are p̃_s
        ot_st = (f_st * ps).sum(1) + (g_st * pt).sum(1)
        ot_ss = (f_ss * ps).sum(1) + (g_ss * ps).sum(1)
        ot_tt = (f_tt * pt).sum(1) + (g_tt * pt).sum(1)
        div = ot_st - 0.5 * ot_ss - 0.5 * ot_tt
        return _converged_parts(
            target_term,
            div.mean(),
            err,
            [err, err_ss, err_tt],
            n_st + n_ss + n_tt,
            tol_,
            out_dtype,
        )


def _converged_parts(
    target_term: Tensor,
    wasserstein: Tensor,
    err: Tensor,
    all_errs: list[Tensor],
    sweeps: int,
    tol: float,
    out_dtype: torch.dtype,
) -> WKDLogit:
    """WKDLogit of the converged solver; ``all_errs``: float64 per-sample errors of
    every solve (cap_hit compares them with tol before any cast to float32)."""
    with torch.no_grad():
        max_err = torch.stack([e.max() for e in all_errs]).max()
        cap_hit = (~(max_err < tol)).to(out_dtype)  # NaN counts as not converged
        mean_err = err.mean().to(out_dtype)
        sweeps_t = torch.tensor(float(sweeps), dtype=out_dtype, device=err.device)
    # the loss itself outside no_grad: its cast to float32 must stay differentiable
    return WKDLogit(
        target_term,
        wasserstein.to(out_dtype),
        mean_err,
        sweeps_t,
        max_err.to(out_dtype),
        cap_hit,
    )
