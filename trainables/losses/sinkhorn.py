"""The converged entropic-OT solver of WKD-L (``solver: converged``, methods §3).

Batched histograms ``p, q`` (``[B, n]``, zero entries allowed) on one shared ``[n, n]``
cost; float64 scaling form on the kernel ``K = exp(−C/λ)``; ε-scaling, plain Sinkhorn
sweeps, then Sinkhorn-Newton with a Jacobi-preconditioned CG (:func:`_converged_solve`);
implicit-function gradient (:class:`_ConvergedTransportCost`). Re-exported by
``trainables.losses.functional`` (``entropic_ot``, ``EntropicOT``), the public math API.

Work is counted in kernel sweeps: one sweep = two ``[B, n] × [n, n]`` products (one
with K, one with Kᵀ), the work of one iteration of the published reference solver; the
cap (``max_sweeps``) is in that unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["EntropicOT", "entropic_ot"]

#: Plain Sinkhorn sweeps continue while their measured rate (over the last
#: _CHECK_EVERY sweeps) predicts at most _SINKHORN_BUDGET more sweeps to the stage's
#: tolerance, then Newton takes over. With the Jacobi preconditioner of
#: :func:`_converged_solve` a Newton step costs ~4-15 sweeps at any λ, while Sinkhorn's
#: rate (the plan's spectral gap) collapses with λ. Chosen by measurement (C = 100 and
#: 1000, λ = 0.005-0.1, random/peaked/near-uniform student logits): budgets 10, 30 and
#: 100 give the same sweeps at λ >= 0.05, and 10 the fewest below (up to 3× fewer than
#: 100 at λ = 0.005).
_SINKHORN_BUDGET = 10

#: ε-scaling starts at the first λ·2^k >= _ANNEAL_FROM · max(C), where the kernel is
#: well spread and Sinkhorn converges in a few sweeps (0.05 took 15-25 % fewer sweeps
#: than 0.1 at λ = 0.05 and 0-15 % fewer at 0.005, C = 100 and 1000).
_ANNEAL_FROM = 0.05
#: λ grows by this factor per stage, and the stages above λ are solved to _STAGE_TOL
#: (factors 3 and 4, or stage tolerance 1e-2, gave the same or up to 15 % more sweeps at
#: C = 100, λ = 0.005-0.02).
_ANNEAL_FACTOR = 2.0
_STAGE_TOL = 1e-3

#: Convergence is tested every _CHECK_EVERY Sinkhorn sweeps (and every 2nd CG
#: iteration): each test reads a number back to the host (a device synchronisation on
#: a GPU). 2, 3 and 4 gave the same sweep counts within ±10 %.
_CHECK_EVERY = 4

#: Default stopping tolerance: per-sample L1 teacher-marginal error ‖Πᵀ1 − q‖₁. 1e-6
#: bounds the error of the transport cost by ~1e-6 · max(C) (costs are <= 1 after
#: sharpening), far below the loss scale, and is reachable in float64.
_DEFAULT_TOL = 1e-6

#: Relative tolerance of the backward CG (preconditioned residual norm), from the
#: forward's tolerance τ: _BACKWARD_RTOL_PER_TOL·τ, within [_BACKWARD_RTOL_MIN,
#: _BACKWARD_RTOL_MAX]. The implicit gradient is exact for the plan the forward returned,
#: whose marginal is off by τ; measured (C = 100 and 1000, λ = 0.005 and 0.05, B = 16),
#: τ = 1e-6 moves the gradient by 3e-8 to 5e-7 relative to a τ = 1e-12 solve, while the
#: backward's rtol 1e-8 (instead of 1e-12) adds at most 1.6e-8: solving tighter buys
#: nothing, and each decade costs ~3-7 CG iterations (two kernel products each). With
#: the Jacobi preconditioner the systems have condition numbers ~2-40 (CKA-like costs).
_BACKWARD_RTOL_PER_TOL = 1e-2
_BACKWARD_RTOL_MIN = 1e-12
_BACKWARD_RTOL_MAX = 1e-8

#: Entries of K∘K below this are set to 0 in the diagonal estimates: next to diagonals
#: of the scale of p they change nothing, and subnormal operands (K∘K reaches them at
#: max(C)/λ > 354) can make a matrix product orders of magnitude slower on x86.
_KK_FLOOR = 1e-200

#: Both Newton/Schur systems are solved as ``A + μ·D`` (D = the marginal's diagonal,
#: μ = _DAMPING). A is a difference of two nearly equal terms, so its computed products
#: carry rounding of ~n·ε·D: where the true eigenvalues fall below that (a plan that is
#: nearly diagonal, e.g. p̃_s = p̃_t at λ <= 0.01, where they are ~e^(−C/λ)) the system
#: is numerically indefinite and CG diverged to NaN. μ = 1e-12 keeps it definite up to
#: n ~ 10⁴ and moves the solution by at most μ / (smallest eigenvalue of D⁻¹A), ~1e-8
#: relative at the worst conditioning measured (8e-5 at λ = 0.005).
_DAMPING = 1e-12

#: CG iterations per Newton step, at most. A truncated CG solve is still an ascent
#: direction; without the cap, ill-conditioned samples far from the solution held the
#: whole batch for up to 4n iterations per step (C = 100, T = 4, 15·N(0,1) logits,
#: λ = 0.005: 3832 sweeps with a cap of 400, 420 with 20, 349 with 12, 330 with 8; the
#: cap made no difference on the other inputs measured).
_NEWTON_CG_CAP = 12


class EntropicOT(NamedTuple):
    """Result of :func:`entropic_ot` (per sample, ``[B]`` tensors; iterations an int).

    ``iterations`` is the number of kernel sweeps used (``max_sweeps`` caps it; the
    solve may overrun the cap by the few sweeps of its last step). A sample whose
    ``marginal_error`` is >= the tolerance stopped at the cap.
    """

    cost: Tensor
    marginal_error: Tensor
    iterations: int


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _squared_kernel(K: Tensor) -> Tensor:
    """``K∘K`` with entries below ``_KK_FLOOR`` set to 0 (see there)."""
    K2 = K * K
    return K2.masked_fill_(K2 < _KK_FLOOR, 0.0)


def _pcg(
    apply: Callable[[Tensor], Tensor],
    rhs: Tensor,
    inv_diag: Tensor,
    null_weight: Tensor,
    rtol: float,
    max_iters: int,
    check_every: int = 1,
) -> tuple[Tensor, int]:
    """Batched preconditioned conjugate gradients on per-sample PSD systems ``A x = rhs``.

    ``apply`` maps ``[B, n] -> [B, n]`` (one symmetric PSD operator per row). The systems
    used here are singular, with null vector ``1`` (on the support) and ``1ᵀ rhs = 0``.
    Instead of projecting every residual onto ``1^⊥``, CG runs on
    ``A' = A + m mᵀ / (1ᵀm)`` with ``m = null_weight`` (the diagonal of A, zero off the
    support): ``1ᵀA = 0`` gives ``1ᵀA'x = mᵀx = 1ᵀrhs = 0``, so the solution of
    ``A'x = rhs`` solves ``A x = rhs`` exactly, and A' is nonsingular on the support
    (the Jacobi preconditioner ``inv_diag = 1/m`` maps the null direction to the
    eigenvalue 1, inside the preconditioned spectrum), so rounding cannot grow along it.
    Stops when every row's preconditioned residual norm ``sqrt(rᵀ D⁻¹ r)`` is below
    ``rtol`` times its initial value, tested every ``check_every`` iterations (a test is
    a host read); returns ``(x, iterations)``. Vector updates are in place: at n = 100
    the cost of an iteration is the number of tensor ops, not their arithmetic.
    """
    tiny = torch.finfo(rhs.dtype).tiny
    m_scaled = null_weight / null_weight.sum(1, keepdim=True).clamp_min(tiny)
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = inv_diag * r
    d = z.clone()
    rz = torch.linalg.vecdot(r, z)
    stop = (rtol * rtol) * rz
    k = 0
    for k in range(1, max_iters + 1):  # noqa: B007 - k is the returned count
        ad = apply(d).addcmul_(m_scaled, torch.linalg.vecdot(null_weight, d).unsqueeze_(1))
        # a row whose residual is exactly 0 has d = 0, and a rounding-level dᵀAd <= 0
        # has no usable curvature: step = 0 for both (not NaN, not a huge step)
        dad = torch.linalg.vecdot(d, ad)
        step = torch.where(dad > 0, rz / dad.clamp_min(tiny), 0.0).unsqueeze_(1)
        x.addcmul_(step, d)
        r.addcmul_(step, ad, value=-1.0)
        torch.mul(inv_diag, r, out=z)
        rz_new = torch.linalg.vecdot(r, z)
        if k % check_every == 0 and not bool((rz_new > stop).any()):
            break
        d.mul_((rz_new / rz.clamp_min(tiny)).unsqueeze_(1)).add_(z)
        rz = rz_new
    return x, k


class _Solve(NamedTuple):
    u: Tensor
    v: Tensor
    K: Tensor
    KT: Tensor
    err: Tensor
    sweeps: int


def _converged_solve(
    p: Tensor, q: Tensor, cost: Tensor, reg: float, tol: float, max_sweeps: int
) -> _Solve:
    """Entropic OT scalings ``u, v`` (``Π = diag(u) K diag(v)``) to marginal error < tol.

    Returns ``(u, v, K, Kᵀ, err, sweeps)`` with ``err = ‖Πᵀ1 − q‖₁`` per sample of the
    returned plan. float64 scaling form on the shared kernel ``K = exp(−C/λ)``
    (methods §3: representable for C ≤ 1 down to λ ≈ 0.002). The returned plan ends
    with a u-update (as the reference solver): the student marginal is exact and the
    stopping test is on the teacher-marginal L1 error it carries. Stops when every
    sample is below ``tol`` or after ``max_sweeps`` kernel sweeps (the samples still
    at or above ``tol`` then say so through ``err``).

    Method. Plain Sinkhorn converges at the rate of the plan's spectral gap, which
    vanishes as the plan approaches a sparse OT plan (C = 100, T = 8, CKA-like cost:
    ~225 sweeps at λ = 0.05, ~21 000 at 0.02, > 200 000 at 0.005). So:

    * ε-scaling: λ·2^k down to λ (from λ·2^k ≥ ``_ANNEAL_FROM``·max C), warm-started
      through the potentials ``f = λ·log u``; intermediate stages are solved to 1e-3.
    * Each stage starts with plain sweeps (~8 tensor ops each, error tested every
      ``_CHECK_EVERY`` sweeps) and keeps them while their measured rate predicts the
      end within ``_SINKHORN_BUDGET`` sweeps (at large λ they finish alone).
    * Then damped Newton on the concave semi-dual in ``a = log u``
      (Sinkhorn-Newton, Brauer, Clason, Lorenz & Wirth 2017):
      ``ψ(a) = ⟨a, p⟩ − ⟨q, log Kᵀe^a⟩``, ``v = q / Kᵀu``,
      ``J δ = p − u∘Kv`` with ``J = D_p̂ − Π D_q⁻¹ Πᵀ``, solved by CG preconditioned
      with J's *exact* diagonal ``p̂ − u²∘((K∘K)(v²/q))`` (one extra product). Near a
      sparse plan most classes keep their mass on the zero-cost diagonal, where
      ``J_ii ≈ p_i(1 − p_i/q_i) ≪ p̂_i``; scaling by ``p̂`` (the textbook choice) leaves
      condition numbers of 10²-10⁴ at λ ≤ 0.02, the exact diagonal 2-40 (measured,
      n = 100 and 1000), hence ~5-15 CG iterations per step instead of hundreds.
    * Armijo backtracking on ψ, with the increment computed without cancellation:
      ``ψ(a+tδ) − ψ(a) = t⟨δ, p⟩ − ⟨q, log1p(Kᵀ(u∘expm1(tδ)) / Kᵀu)⟩``, so the test
      stays meaningful down to marginal errors of ~1e-15 (differencing two values of
      ψ loses it below ~1e-8: the step was then accepted or refused by rounding, and a
      refused step stalled the solve on some CPUs). A sample whose search fails takes
      the Sinkhorn u-update instead (already computed by the stopping test).

    Work is counted in ``[B, n] × [n, n]`` products and reported in kernel sweeps =
    products / 2, rounded up.
    """
    supp_p = p > 0
    # masks as numbers: multiplying by 0/1 costs a third of torch.where at n = 100, and
    # every quantity masked below is finite
    mp = supp_p.to(p.dtype)
    n_supp = mp.sum(1, keepdim=True).clamp_min(1.0)
    fin = torch.finfo(p.dtype)
    tiny = fin.tiny

    # annealing schedule: start where the kernel is well spread (λ ≥ _ANNEAL_FROM·max C)
    regs = [reg]
    c_max = float(cost.max())
    while regs[-1] < _ANNEAL_FROM * c_max and len(regs) < 12:
        regs.append(regs[-1] * _ANNEAL_FACTOR)
    regs.reverse()

    def normalise(a: Tensor) -> tuple[Tensor, Tensor]:
        # ψ and the plan are invariant to a → a + const: keep max e^a = 1 on the support,
        # so (Kᵀu)_j ≥ min K > 0 (entropic_ot refuses kernels that underflow)
        top = a.masked_fill(~supp_p, -math.inf).amax(1, keepdim=True)
        return (a - top).mul_(mp), top

    def to_u(a: Tensor) -> Tensor:
        return a.exp().mul_(mp)  # a is finite: exp(0)·0 = 0 off the support

    def log_u(u: Tensor) -> Tensor:
        return torch.log(u.clamp_min(tiny)).mul_(mp)

    a = torch.zeros_like(p)
    used = 0  # kernel products
    cap = 2 * max_sweeps
    symmetric = bool(torch.equal(cost, cost.T))
    K = KT = cost
    u_closed = v = err = p
    for stage, lam in enumerate(regs):
        last = stage == len(regs) - 1
        if stage > 0:
            a = a * (regs[stage - 1] / lam)  # same potential f = λ·a at the new λ
        K = torch.div(cost, -lam).exp_()
        KT = K if symmetric else K.T.contiguous()  # a transposed view is slower
        stage_tol = tol if last else max(tol, _STAGE_TOL)
        a, _ = normalise(a)

        # -- plain Sinkhorn sweeps
        ktu = to_u(a) @ K  # > 0 after normalise; v = 0 where q = 0
        used += 1
        history: list[float] = []
        done = False
        sweeps = 0
        while True:
            v = q / ktu
            u_closed = p / (v @ KT)
            ktu = u_closed @ K
            used += 2
            sweeps += 1
            at_cap = used >= cap
            if sweeps % _CHECK_EVERY and not at_cap:
                continue
            err = torch.addcmul(-q, v, ktu).abs_().sum(1)
            history.append(float(err.max()))
            if history[-1] < stage_tol:
                done = True
                break
            if at_cap:
                break
            # judged from the third test on: after a change of λ the error can rise first
            if len(history) >= 3:
                rate = (history[-1] / history[-2]) ** (1.0 / _CHECK_EVERY)
                # predicted sweeps left = log(tol/err) / log(rate) > budget: hand over
                if not rate < 1.0 or math.log(stage_tol / history[-1]) < (
                    _SINKHORN_BUDGET * math.log(rate)
                ):
                    break
        if done or at_cap:
            if last:
                break
            a = log_u(u_closed)
            continue

        # -- Sinkhorn-Newton
        K2T = _squared_kernel(KT)
        a, _ = normalise(log_u(u_closed))
        u = to_u(a)
        ktu = u @ K
        used += 1
        while True:
            v = q / ktu
            kv = v @ KT  # > 0 where p > 0 (v > 0 where q > 0, K > 0)
            p_hat = u * kv
            # stop on the quantity reported: the teacher-marginal error of the plan after
            # the closing u-update (u' = p / Kv)
            u_closed = p / kv
            ktu_closed = u_closed @ K
            err = torch.addcmul(-q, v, ktu_closed).abs_().sum(1)
            used += 2
            err_max = float(err.max())  # the one host read of a Newton step's test
            # NaN stops too (nothing to gain from iterating): reported, never converged
            if not err_max >= stage_tol or used >= cap:
                break
            todo = err >= stage_tol
            grad = p - p_hat  # both 0 off the support of p
            w = v / ktu  # D_q⁻¹ after Πᵀ: v²/q = q/(Kᵀu)², 0 where q = 0
            # exact diagonal of J + μ·D_p̂: p̂_i(1 + μ) − Σ_j Π_ij² / q_j (J_ii ≥ 0;
            # floored at μ·p̂_i against rounding)
            p_damped = p_hat * (1.0 + _DAMPING)
            diag = torch.addcmul(p_damped, u * u, w @ K2T, value=-1.0)
            diag = torch.maximum(diag, _DAMPING * p_hat)
            inv_diag = torch.where(diag > 0, 1.0 / torch.where(diag > 0, diag, 1.0), 0.0)
            used += 1
            neg_u = -u

            def jac(
                x: Tensor,
                u: Tensor = u,
                nu: Tensor = neg_u,
                w: Tensor = w,
                ph: Tensor = p_damped,
                K: Tensor = K,
                KT: Tensor = KT,
            ) -> Tensor:
                t = torch.mm(u * x, K).mul_(w)
                return torch.mm(t, KT).mul_(nu).addcmul_(ph, x)

            forcing = min(0.1, math.sqrt(err_max))
            cg_cap = max(1, min(_NEWTON_CG_CAP, 4 * p.shape[1], (cap - used) // 2))
            delta, k = _pcg(jac, grad, inv_diag, diag, forcing, cg_cap, 2)
            used += 2 * k
            # centred on the support, then a trust region per coordinate in log-scaling
            # units: a step never changes an entry of e^a by more than e^±30. Per
            # coordinate, not by scaling δ: classes of negligible mass (p ~ 1e-20 at
            # T = 1) ask for huge moves of their own log u, and scaling the whole step
            # down to them stalled the classes that carry the error (measured).
            delta.sub_(torch.linalg.vecdot(delta, mp).unsqueeze_(1) / n_supp).mul_(mp)
            delta.clamp_(-30.0, 30.0)
            slope = torch.linalg.vecdot(grad, delta)
            d_p = torch.linalg.vecdot(delta, p)
            scale = torch.linalg.vecdot(delta.abs(), p)
            step = (todo & (slope > 0)).to(p.dtype)
            ok = step > 0
            ktu_t = ktu
            for _ in range(40):
                # one product for both Kᵀ(u∘expm1(tδ)) (the increment, exact where it is
                # small) and Kᵀu_t (exact where it is not: Kᵀu + increment cancels where
                # Kᵀu drops a lot; there a clamped or rounded-to-0 value mis-estimated the
                # gain and made v = q/Kᵀu infinite, measured at C = 1000, T = 4)
                e = torch.expm1(step.unsqueeze(1) * delta)
                dk, ktu_t = torch.mm(torch.cat([u * e, u * e.add_(1.0)]), K).split(len(u))
                used += 2
                log_ratio = torch.where(
                    dk > -0.5 * ktu, torch.log1p(dk / ktu), torch.log(ktu_t / ktu)
                )  # log(Kᵀu_t / Kᵀu)
                gain = step * d_p - torch.linalg.vecdot(q, log_ratio)
                # rounding allowance of the two sums (a few ulps of their magnitudes)
                noise = (16 * fin.eps) * (step * scale + torch.linalg.vecdot(q, log_ratio.abs()))
                ok = gain >= 1e-4 * step * slope - noise
                if bool(ok.all()):
                    break
                step = torch.where(ok, step, 0.5 * step)
            step = step * ok
            a = torch.addcmul(a, step.unsqueeze(1), delta)
            ktu = torch.where(ok.unsqueeze(1), ktu_t, ktu)
            # where Newton made no progress (failed search), take the Sinkhorn u-update
            stuck = (todo & (step == 0)).unsqueeze(1)
            a = torch.where(stuck, log_u(u_closed), a)
            ktu = torch.where(stuck, ktu_closed, ktu)
            a, top = normalise(a)
            ktu = ktu * torch.exp(-top)
            u = to_u(a)
        if last:
            break
        a = log_u(u_closed)
    return _Solve(u_closed, v, K, KT, err, (used + 1) // 2)


class _ConvergedTransportCost(torch.autograd.Function):
    """⟨Π_λ, C⟩ of the converged entropic plan with its implicit-function gradient.

    Backward: the plan is defined by ``u∘Kv = p``, ``v∘Kᵀu = q``; linearising in
    ``(log u, log v)`` gives the symmetric system ``[[D_p, Π], [Πᵀ, D_q]]``, and the
    gradient of ``⟨Π, C⟩`` w.r.t. ``(p, q)`` is its solution with right-hand side the
    row and column sums of ``Π∘C``. Eliminating the rows leaves
    ``(D_q − Πᵀ D_p⁻¹ Π) y = c − Πᵀ D_p⁻¹ r`` (solved by CG preconditioned with the
    exact diagonal ``q̂ − v²∘((K∘K)ᵀ(u/Kv))``, relative tolerance from the forward's,
    see ``_BACKWARD_RTOL_PER_TOL``)
    and ``x = D_p⁻¹ (r − Π y)``. Exact at the fixed point, independent of the number of
    forward iterations (no unrolled graph is stored); at a forward tolerance τ the
    gradient is that of a plan whose marginals are off by τ (L1). The null direction
    (x + t, y − t) is a constant shift, which the softmax that produced p and q ignores.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        p: Tensor,
        q: Tensor,
        cost_matrix: Tensor,
        reg: float,
        tol: float,
        max_sweeps: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        u, v, K, KT, err, used = _converged_solve(p, q, cost_matrix, reg, tol, max_sweeps)
        KC = K * cost_matrix
        kcv = v @ KC.T  # ((K∘C) v)_i
        cost = (u * kcv).sum(1)
        ctx.save_for_backward(u, v, p, q, K, KT, KC, kcv)
        ctx.rtol = min(_BACKWARD_RTOL_MAX, max(_BACKWARD_RTOL_MIN, _BACKWARD_RTOL_PER_TOL * tol))
        iters = torch.tensor(used)
        ctx.mark_non_differentiable(err, iters)
        return cost, err, iters

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_cost: Tensor, _g_err: Tensor, _g_it: Tensor
    ) -> tuple[Tensor | None, ...]:
        u, v, p, q, K, KT, KC, kcv = ctx.saved_tensors
        supp_p = p > 0
        supp_q = q > 0
        zero = torch.zeros((), dtype=u.dtype, device=u.device)
        kv = v @ KT  # (K v)_i > 0 wherever some v_j > 0
        kv_safe = torch.where(kv > 0, kv, 1.0)
        ktu = u @ K
        q_hat = v * ktu  # actual column marginal: keeps the system exactly consistent
        # r = u ∘ kcv: row sums of Π∘C
        c = v * (u @ KC)  # column sums of Π∘C
        # D_p⁻¹ Π z = K(v∘z) / (K v) once u = p/(Kv) (last update of the solve)
        rhs = torch.where(supp_q, c - v * ((u * kcv / kv_safe) @ K), zero)

        u_kv = u / kv_safe  # D_p⁻¹ Π = diag(u/Kv) K diag(v)

        q_hat = torch.where(supp_q, q_hat, zero)
        q_damped = q_hat * (1.0 + _DAMPING)  # the system is S + μ·D_q̂ (see _DAMPING)

        def schur(y: Tensor) -> Tensor:
            t = torch.mm(v * y, KT).mul_(u_kv)
            return torch.addcmul(torch.mm(t, K).mul_(v).neg_(), q_damped, y)

        # exact diagonal of the Schur complement: q̂_j − v_j² Σ_i K_ij² u_i / (Kv)_i
        diag = torch.addcmul(q_damped, v * v, u_kv @ _squared_kernel(K), value=-1.0)
        diag = torch.where(supp_q, torch.maximum(diag, _DAMPING * q_hat), zero)
        inv_diag = torch.where(diag > 0, 1.0 / torch.where(diag > 0, diag, 1.0), zero)
        y, _ = _pcg(schur, rhs, inv_diag, diag, ctx.rtol, 10 + 4 * p.shape[1], 2)
        x = torch.where(supp_p, (kcv - (v * y) @ KT) / kv_safe, zero)
        g = g_cost[:, None]
        return g * x, g * y, None, None, None, None


def entropic_ot(
    p: Tensor, q: Tensor, cost: Tensor, reg: float, max_sweeps: int, tol: float = _DEFAULT_TOL
) -> EntropicOT:
    """Converged entropic OT between batched histograms on a shared cost (methods §3).

    Returns the per-sample transport cost ``⟨Π_λ, C⟩`` of the entropic plan (what
    POT's ``sinkhorn2`` returns, not the entropic objective), the teacher-marginal
    error ``‖Πᵀ1 − q‖₁`` and the number of kernel sweeps used (``max_sweeps`` caps it;
    samples whose error is still >= ``tol`` stopped at the cap).
    ``p, q``: ``[B, C]`` on the simplex (zero entries allowed); ``cost``: ``[C, C]``
    used as given (no floor). Computed in float64; differentiable in ``p`` and ``q``
    through the implicit function theorem (see ``_ConvergedTransportCost``).
    """
    if not reg > 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if max_sweeps < 1:
        raise ValueError(f"max_sweeps must be >= 1, got {max_sweeps}")
    out_dtype = _float_dtype(p, q)
    p64, q64 = p.to(torch.float64), q.to(torch.float64)
    c64 = cost.detach().to(device=p.device, dtype=torch.float64)
    if bool((torch.exp(-c64.max() / reg) == 0).any()):
        raise ValueError(
            f"exp(-cost/reg) underflows in float64 at reg={reg} (max cost "
            f"{float(c64.max()):.3g}): the converged solver supports max(cost)/reg < ~700"
        )
    c_out, err, it = _ConvergedTransportCost.apply(p64, q64, c64, reg, tol, max_sweeps)
    return EntropicOT(c_out.to(out_dtype), err.to(out_dtype), int(it))


def _entropic_objective_no_grad_potentials(
    p: Tensor, q: Tensor, cost: Tensor, reg: float, tol: float, max_sweeps: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Potentials ``(f, g)`` of OT_λ(p, q) with the KL(Π‖p⊗q) regulariser, the
    teacher-marginal error and the sweeps used. ``Π_ij = p_i q_j exp((f_i + g_j − C_ij)/λ)``,
    so ``f = λ log(u/p)``, ``g = λ log(v/q)`` on the supports (0 elsewhere)."""
    with torch.no_grad():
        u, v, _, _, err, sweeps = _converged_solve(p, q, cost, reg, tol, max_sweeps)
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        sp, sq = p > 0, q > 0
        f = torch.where(
            sp, reg * torch.log(torch.where(sp, u / torch.where(sp, p, 1.0), 1.0)), zero
        )
        g = torch.where(
            sq, reg * torch.log(torch.where(sq, v / torch.where(sq, q, 1.0), 1.0)), zero
        )
        return f, g, err, sweeps
