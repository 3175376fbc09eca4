r"""The regularized optimum and deterministic (exact) policy-optimization methods.

**Regularized optimum** (``solve``). The regularized Bellman operator

    (T V)(s) = max_{p ∈ Δ} Σ_a p_a [r(s,a) + γ Σ_s' P(s'|s,a) V(s')] − τ D_f(p ‖ π_ref(·|s))

is a γ-contraction. Regularized policy iteration alternates exact evaluation of Ṽ^π
with the per-state greedy step (a kernel): reverse KL p ∝ π_ref exp(Q/τ); forward
KL p_a = τ π_ref,a / (ν − Q_a); other f via (f')^{-1} and a 1-D root for ν. τ = 0
is classic policy iteration (deterministic optimal policy).

**Deterministic actor-only PPO-Clip** (``PPOClip``; arXiv 2512.16565). Each outer
iteration evaluates Ã_old = Ã^{π_old} and d_old = d^{π_old}_μ exactly, then takes K
ascent steps θ ← θ + η g on the clipped surrogate

    L(θ) = 1/(1−γ) Σ_s d_old(s) [ Σ_a π_old min(r Ã_old, clip(r, 1−ε_low, 1+ε_high) Ã_old)
                                  − τ D_f(π_θ(·|s) ‖ π_ref(·|s)) ],   r = π_θ / π_old,

whose gradient in logits is
g(s,a) = d_old(s)/(1−γ) · π_θ [ (B − Σ π_θ B) − τ (f'(w) − Σ π_θ f'(w)) ],
B = Ã_old on pairs where the clip is inactive, else 0. At the first inner step g is
the exact policy gradient (``fastppo.gradient``).

**Step size.** The per-state step is η d_old(s)/(1−γ), and d averages 1/S, so the
natural η grows like S·(1−γ) times a dimensionless step. ``lr`` is the raw η of the
update above (comparable with the paper); ``lr=None`` uses the scale-free
η = ``step_scale`` · (1−γ) / max_s d_0(s) (d_0: visitation of the initial policy), so
the largest per-state step is ``step_scale`` at the start, at every size. At γ = 1
(episodic MDPs, SPEC §1) d_old(s)/(1−γ) is the expected number of visits n_old(s)
before termination and η = ``step_scale`` / max_s n_0(s) (``fastppo._episodic``);
``solve``, ``PPOClip`` and ``SoftmaxPG`` accept γ = 1. Too large a
step makes the K inner steps bounce across the clip boundary, and PPO-Clip can then
stall at a non-optimal fixed point (a ``ConvergenceWarning``): reduce ``step_scale``
(or ``inner_steps``) if the gap stops falling.

Baselines with the same interface: ``SoftmaxPG`` (exact policy gradient: K = 1, no
clip), ``NPG`` (natural policy gradient / policy mirror descent with a KL proximal
term, linearised regularizer: π_new ∝ π_old exp(η (Q̃ − τ f'(π_old/π_ref)))), and
``KLPenaltyPPO`` (PPO with an adaptive KL penalty β KL(π_old ‖ π_θ) instead of the
clip; β doubled / halved when the KL leaves [target/1.5, 1.5 target], as in the
PPO paper).
"""
import functools
import math
import time

import numpy as np

from . import _validation as V
from ._backend import get_kernel, resolve_backend, resolve_threads
from ._episodic import visit_weights
from ._errors import renamed_parameters
from ._evaluator import DEFAULT_TOL, Evaluator, ppo_log_ref
from ._krylov import ConvergenceError, StoppingRule, dot, norm
from ._result import Result
from ._run import IterativeMethod, RunResult, check_states
from .regularizers import ReverseKL

__all__ = ["solve", "PPOClip", "SoftmaxPG", "NPG", "KLPenaltyPPO", "SolveResult", "RunResult"]


class SolveResult(Result):
    """Result of :func:`solve`: ``policy``, ``sigma`` (per state, the action label of the
    policy's most probable action, ties to the lowest label: for τ = 0 the optimal
    action), ``v``, ``q``, ``adv``, ``J``, ``n_iter``, ``bellman_residual`` (‖TṼ − Ṽ‖∞ at the
    returned policy), ``n_matvec``, ``n_passes`` (reads of P's arrays), ``converged``."""


def solve(mdp, reg=None, *, tol=1e-12, max_iter=10_000, lin_tol=1e-13, v0=None, pi0=None,
          backend=None, n_threads=None):
    """The globally optimal (regularized) policy by regularized policy iteration.

    Parameters
    ----------
    mdp : MDP
    reg : Regularizer, optional
        None (or τ = 0): the plain MDP and a deterministic optimal policy.
    tol : float, default 1e-12
        Stop when ‖TṼ^π − Ṽ^π‖∞ ≤ max(tol, floor) · max(‖Ṽ^π‖∞, ‖r‖∞) (T: the regularized
        Bellman operator; floor = 10·eps·(1+γ)/(1−γ), the round-off floor of the one
        stopping rule, ``fastppo._krylov.StoppingRule``), or, for τ = 0, when the greedy
        policy is stable. A residual that stops decreasing within 10 × floor is
        convergence too; above it, ``ConvergenceError``. The test is relative: rewards × c
        (with τ × c) give the same policy and values × c at every scale.
    max_iter : int, default 10000
        Policy-iteration steps (RiverSwim's chain of n states needs n + 1: each step
        turns one more state towards the far reward).
    lin_tol : float, default 1e-13
        Relative residual of each exact evaluation (below the round-off floor of the
        system, the floor is used).
    v0 : array_like of shape (n_states,), optional
        Warm start: a guess of the optimal values (e.g. the previous solve's ``v``
        after the rewards changed a little). The first evaluation starts from it and,
        unless ``pi0`` is given, the first policy is greedy in Q̃ = r + γPv0 (one
        policy-iteration step from v0).
    pi0 : array_like of shape (n_pairs,) or (n_states, n_actions), or int array of shape (n_states,), optional
        Warm start: the first policy (e.g. the previous solve's ``policy``, or its
        ``sigma`` for τ = 0), as in :func:`fastppo.evaluate`. For τ > 0 its divergence
        must be finite (a ``sigma`` is not, for forward KL: give the previous
        ``policy``).
    backend, n_threads
        Kernel backend and threads (see ``fastppo.set_backend``).

    Returns
    -------
    SolveResult
        ``policy`` (table shape), ``sigma`` (n_states,) int64 action labels (the argmax of
        ``policy``, ties to the lowest label), ``v`` (n_states,), ``q``, ``adv``, ``J``, ``n_iter``,
        ``bellman_residual``, ``n_matvec``, ``n_passes``, ``converged``.

    Raises
    ------
    ConvergenceError
        If ``max_iter`` iterations do not reach ``tol``, or the Bellman residual stops
        decreasing above 10 × floor.
    """
    tol = V.check_positive(tol, "tol")
    max_iter = V.check_int(max_iter, "max_iter")
    lin_tol = V.check_positive(lin_tol, "lin_tol")
    E = Evaluator(mdp, reg, resolve_backend(backend), resolve_threads(n_threads), tol=lin_tol,
                  tol_name="lin_tol")
    v0 = None if v0 is None else V.check_state_vector(np.asarray(v0), mdp.n_states, "v0")
    pi = _first_policy(E, v0, pi0)
    pi, ev, it, residual, n_matvec, converged = _policy_iteration(E, pi, v0, tol, max_iter,
                                                                   lin_tol)
    return SolveResult(policy=mdp.to_table(pi), sigma=_sigma(mdp, pi), v=ev.v,
                       q=mdp.to_table(ev.q), adv=mdp.to_table(ev.adv), J=ev.J, n_iter=it,
                       bellman_residual=residual, n_matvec=n_matvec, n_passes=E.n_passes,
                       converged=converged, backend=E.backend)


def _sigma(mdp, pi):
    """``mdp.to_sigma(pi)``; for a deterministic π (one pair per state, τ = 0) the labels
    of its pairs, without the per-state maxima (16 ms at 50k states)."""
    used = np.flatnonzero(pi != 0)
    if used.shape[0] == mdp.n_states:  # every state has ≥ 1 pair with π > 0: exactly one
        return mdp.a_indices[used].astype(np.int64)
    return mdp.to_sigma(pi)


LOOSE_EVALUATION = 1e-4  # policy iteration's first evaluations: relative residual
WARM_EVALUATION = 1e-6  # the same from a warm start v0
LOOSE_STALLS = 3
FORCING = 0.05
# the loose evaluations after the first: FORCING × the relative Bellman residual, capped here
# (was the running minimum from LOOSE_EVALUATION: the pendulum at 50k kept 1e-4 for ten
# steps at residuals 0.8 … 0.01, 124 → 111 products; the grid 446 → 335)
LOOSE_CAP = 1e-3
START_FROM_TV = True
FUSED_GREEDY = True  # τ = 0: Q̃ and the greedy step in one pass (Evaluator.q_greedy)
NEAR_STABLE = 1e-3  # τ = 0: evaluate exactly once a step changes at most this share of states


def _policy_iteration(E, pi, v, tol, max_iter, lin_tol):
    """Regularized policy iteration from the policy ``pi`` (and values ``v`` or None) on
    the evaluator ``E`` (reductions over states through ``E.space``).

    Returns (pi, ev, n_iter, bellman_residual, n_matvec, converged); raises
    ConvergenceError after ``max_iter`` steps or on a stall above the round-off floor.
    """
    mdp, space, tau = E.mdp, E.space, E.tau
    tv = np.empty(mdp.n_states)
    # relative tests: rewards × c (and τ × c) scale v, Tv and this scale alike
    r_scale = space.amax(mdp.r)
    # round-off floor of the Bellman residual (none for the exact passes at γ = 1)
    floor = StoppingRule(tol, mdp.gamma).floor if mdp.gamma < 1 else 0.0
    target = max(tol, floor)
    n_matvec, best = 0, np.inf
    new_pi = np.empty(mdp.n_pairs)
    # Q̃ of the steps in two buffers taken in turn (the last step's is still read while
    # the next is made): no fresh per-pair array, and its page faults, per step
    q_buffers = [np.empty(mdp.n_pairs), np.empty(mdp.n_pairs)]
    # Inexact policy iteration (an inexact Newton method): an evaluation only needs to be
    # as accurate as the next Bellman residual, ~ the square of this one. Exact
    # evaluations from the step whose residual reached the evaluations' accuracy, or
    # whose policy is stable, or after LOOSE_STALLS steps running without a lower residual
    # (a safeguard against cycling on inexact values): a loose evaluation that looks
    # final is redone at lin_tol before anything is returned. For τ = 0, where the sweeps
    # converge fast (an exact evaluation costs a few sweeps more), a step that changes at
    # most NEAR_STABLE of the states makes the next evaluation exact: that policy is
    # usually the optimal one, and its exact evaluation then ends the run (on slow-mixing
    # MDPs the last steps change a few states each, and exact evaluations cost ~10x).
    # (from a warm start v, the first policy is near the optimum: a tighter first evaluation)
    first = LOOSE_EVALUATION if v is None else WARM_EVALUATION
    eval_tol, last, stalls = max(lin_tol, first), np.inf, 0
    reload = True
    # τ = 0: Q̃ and its greedy step in one pass (E.q_greedy), which names the new policy's
    # pairs: no search for them in the load, a comparison over states, not pairs
    fused = tau == 0 and E.fuses_greedy and FUSED_GREEDY
    pairs = new_pairs = None
    for it in range(1, max_iter + 1):
        if reload:
            if pairs is None:
                E.load(pi, patch=True)
            else:
                E.load(pi, patch=True, pairs=pairs)
        if fused:
            ev = _evaluate(E, v, eval_tol, q=False)
            ev.q = q_buffers[it % 2]
            new_pairs = E.q_greedy(ev.v, ev.q, new_pi, tv)
        else:
            ev = _evaluate(E, v, eval_tol, q_buffers[it % 2])
            E.greedy(ev.q, new_pi, tv)
        v, n_matvec = ev.v, n_matvec + ev.n_matvec
        residual = space.amax(tv - v)
        scale = max(r_scale, space.amax(v))
        if fused:
            stable = pairs is not None and space.all_equal(new_pairs, pairs)
        else:
            stable = tau == 0 and space.all_equal(new_pi, pi)
        stalls = stalls + 1 if residual >= last else 0
        if eval_tol > lin_tol and (stable or residual <= eval_tol * scale
                                   or stalls == LOOSE_STALLS):
            eval_tol = lin_tol  # certify (or finish) with exact evaluations
            if stable:
                reload = False  # the same policy, evaluated exactly
                continue
        elif eval_tol > lin_tol:
            # the forcing term of this step's residual, at most LOOSE_CAP (not the running
            # minimum: far from the optimum the residual shrinks slowly and the evaluations
            # need not be more accurate than it)
            eval_tol = max(lin_tol, min(LOOSE_CAP, FORCING * residual / scale))
        last = residual
        converged = eval_tol == lin_tol and (residual <= target * scale or stable)
        stalled = (not converged and eval_tol == lin_tol and residual >= best
                   and residual < 1e-8 * scale)  # round-off floor of evaluation
        if stalled and residual <= max(tol, 10.0 * floor) * scale:
            converged, stalled = True, False  # at round-off: the rule's convergence
        if converged and tau > 0:
            # Policy iteration is Newton's method: Ṽ^π is second order in the policy
            # error, so a tiny residual certifies v but π itself is only ~sqrt(residual)
            # from the optimum. The greedy policy of this v is first-order accurate
            # (error ~ residual/τ): return it, with its own exact evaluation.
            pi, new_pi = new_pi, pi
            E.load(pi)
            ev = _evaluate(E, v, lin_tol, q_buffers[(it + 1) % 2])
            v, n_matvec = ev.v, n_matvec + ev.n_matvec
            E.greedy(ev.q, new_pi, tv)
            residual = space.amax(tv - v)
        elif stalled:
            raise ConvergenceError(
                f"solve stalled at iteration {it}: Bellman residual {residual:.3g} no longer "
                f"decreases, above tol={tol:g} and 10x the round-off floor {floor:.2g} "
                f"(gamma={mdp.gamma:g}) times the scale {scale:.3g}; raise tol")
        if converged:
            if ev.adv is None:  # the steps skipped Ã: that of the returned policy, into
                # the Q̃ buffer that does not hold ev.q (the step before's, spent)
                spare = q_buffers[1] if ev.q is q_buffers[0] else q_buffers[0]
                ev.adv = E.advantages(ev.q, out=spare)
            return pi, ev, it, residual, n_matvec, converged
        if eval_tol == lin_tol:
            best = min(best, residual)
        elif (tau == 0 and ev.method == "richardson"
              and space.sum(new_pi != pi) <= 2 * NEAR_STABLE * space.size(v)):
            eval_tol = lin_tol  # few states changed: the next policy is likely the last
        pi, new_pi = new_pi, pi
        pairs = new_pairs
        reload = True
        if START_FROM_TV and ev.method == "richardson":
            # Tv is T_π v for the new greedy π (the greedy step's value): one sweep of the
            # next evaluation, free where the sweeps converge (garnet at 10k: 46 → 43
            # products; the Krylov solvers took a few more from it on queue2d, pendulum)
            v = tv.copy()
    raise ConvergenceError(f"solve did not reach tol={tol:g} in max_iter={max_iter} policy-"
                           f"iteration steps (Bellman residual {residual:.3g})")


# once Richardson's sweeps stalled in one evaluation (slow mixing), policy iteration's next
# evaluations skip them: on queue2d at 10k they were 1,000 of 1,541 products
SKIP_STALLED_SWEEPS = True


def _evaluate(E, v, tol, q_out=None, q=True):
    """``E.evaluation(v, tol)``, Q̃ without Ã (``adv`` may be None), into ``q_out``
    if given (``q`` False: neither, ``q`` None). After an evaluation
    whose sweeps stalled and whose next solver (SGS-BiCGSTAB, or the LU where it is
    cheap) finished, the next evaluations start with that solver (``E.method``), and fall
    back to "auto" if it fails."""
    options = dict(advantages=False, q_out=q_out) if q else dict(advantages=False, q=False)
    if E.method != "auto":
        try:
            return E.evaluation(v, tol=tol, **options)
        except ConvergenceError:
            E.method = "auto"
    ev = E.evaluation(v, tol=tol, **options)
    if SKIP_STALLED_SWEEPS and ev.method in ("richardson+sgs", "richardson+lu"):
        E.method = ev.method.split("+")[1]
    return ev


FIRST_SWEEPS = 1


def _first_policy(E, v0, pi0):
    """Policy iteration's first policy, flat (n_pairs,): ``pi0``; else greedy in
    Q̃ = r + γPv0; cold: π_ref for τ > 0, for τ = 0 greedy in Q̃ of v = T^k 0 (k =
    ``FIRST_SWEEPS`` value-iteration sweeps from zero; k = 0: greedy in r)."""
    mdp = E.mdp
    pi = np.empty(mdp.n_pairs)
    value = np.empty(mdp.n_states)
    if pi0 is not None:
        pi[:] = V.as_policy(mdp, pi0, "pi0")
        if E.tau > 0:
            E.load(pi)
            try:
                E.regularized_reward()
            except ValueError:
                raise ValueError("pi0: the divergence D_f(pi0 || pi_ref) is infinite at some state "
                                 "(pi0 is zero where this f needs support); start from a policy "
                                 "with full support, e.g. the previous solve's policy, not its "
                                 "sigma") from None
    elif v0 is not None:
        q = np.empty(mdp.n_pairs)
        get_kernel("q_values", E.backend)(mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r,
                                          mdp.gamma, v0, q, E.n_threads)
        E.greedy(q, pi, value)
    elif E.tau > 0:
        pi[:] = E.ref
    else:
        # greedy in Q̃ of T^k 0 (FIRST_SWEEPS value-iteration sweeps from 0), not in r alone:
        # at 10k queue2d took 8 policy steps instead of 16, the garnet 4 instead of 5
        q = mdp.r
        for _ in range(FIRST_SWEEPS):
            E.greedy(q, pi, value)
            q = E.q_values(value)
            E.n_passes += 1
        E.greedy(q, pi, value)
    return pi


ADAPTIVE_SHARE = 0.01  # lin_tol="adaptive": J's solve error ≤ this share of its last change
ADAPTIVE_MAX = 1e-6


MAX_INNER_STEPS = 10_000  # K: a checkpoint or typo asking for 10**12 would run for ever
_HISTORY = [("iter", np.int64), ("J", np.float64), ("gap", np.float64),
            ("max_abs_adv", np.float64), ("clipfrac", np.float64), ("kl", np.float64),
            ("grad_norm", np.float64), ("n_matvec", np.int64), ("n_passes", np.int64),
            ("seconds", np.float64)]

# ------------------------------------------------------- predicted warm starts
# steps x_k − x_{k−1} between consecutive solutions kept per linear system: at most
# WARM_STEPS, and at most WARM_BYTES of them (12 at 50k, 10⁶ and 10⁷ states, float32 from
# FLOAT32_STEPS_FROM). The README run took 1,312 passes with 12 against 1,406 with 7
# (RESULTS.md); at 10⁶ (float32, from log π* + 0.001 noise) 12 per system reached 5 passes
# per late iteration from iteration 14 on, 7 stayed at 6 (12 for d and 7 for v: 5 passes,
# but 8.5 products per iteration against 7, and 30 % more CPU)
WARM_STEPS = 12
WARM_BYTES = 500_000_000
SKETCH_ROWS = 512
# the steps are kept in float32 only where WARM_STEPS of them in float64 would pass
# WARM_BYTES (from ~5.2·10⁶ states: 40 MB a step at 10⁷, not 80 MB); a step only shapes
# the start, the solve certifies the result. Float32 rounding, amplified by the fit's
# coefficients, costs passes: at 10⁶ states float64 steps cut the visitation start's error
# by ~30 % and a late PPO-Clip iteration's passes from 3.25 to 2.88 (RESULTS.md)
FLOAT32_STEPS_FROM = WARM_BYTES // (8 * WARM_STEPS) + 1


# the visitation's warm start may fit its coefficients to the policy's newest step, known
# before the solve (:func:`predicted_start`, ``design``), seen at this many pairs drawn
# once (README run: 1,198 passes with 2¹², 1,182 with 2¹⁴; ~0.1 ms a step at 50k)
DESIGN_PAIRS = 1 << 14


@functools.lru_cache(maxsize=4)
def design_pairs(n_pairs):
    """The pairs at which the policy's steps are kept for the visitation's warm start:
    all of them up to DESIGN_PAIRS, else DESIGN_PAIRS drawn once (sorted, read-only)."""
    if n_pairs <= DESIGN_PAIRS:
        pairs = np.arange(n_pairs)
    else:
        pairs = np.sort(np.random.default_rng(20_513).choice(n_pairs, DESIGN_PAIRS,
                                                             replace=False))
    pairs.flags.writeable = False
    return pairs


# the value system's warm start fits its coefficients to residuals where it can: each kept
# solution's residual under the new policy, b − (I − γP_π) v_j, at PROBE_STATES states drawn
# once, from v_j and Q̃_j kept there (no pass over P; :func:`predicted_start`). The README
# run's late iterations took 2.3 passes against 3.15, 10⁶ states 2.7 against 2.85 (fewer
# fused ones: RESULTS.md). Fewer states (each a row of the fit) where the probes of
# WARM_STEPS + 1 solutions would pass 1/8 of a per-pair array, none below PROBE_MIN. At
# 10⁶ states 2,048 took 2.40 passes a late iteration against 2.58 with 256 (fewer value
# solves missing tol at the start: 1.08 value products against 1.20); 8,192 no fewer
PROBE_STATES = 2048
PROBE_MIN = 64


def probe_points(a_indptr):
    """(states, pairs, starts) of the value system's residual fit, or None (too few
    states: :data:`PROBE_MIN`): states drawn once (sorted), their pairs in order, and where
    each state's pairs start among them (read-only)."""
    n = a_indptr.shape[0] - 1
    m = min(PROBE_STATES, n // (8 * (WARM_STEPS + 1)))
    if m < PROBE_MIN:
        return None
    states = np.sort(np.random.default_rng(20_514).choice(n, m, replace=False))
    counts = np.diff(a_indptr)[states]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pairs = np.repeat(a_indptr[states] - starts, counts) + np.arange(int(counts.sum()))
    for a in (states, pairs, starts):
        a.flags.writeable = False
    return states, pairs, starts


@functools.lru_cache(maxsize=4)
def _count_sketch(n):
    """(bucket, sign) of a fixed CountSketch ℝⁿ → ℝ^SKETCH_ROWS: x ↦ Σ_i sign_i x_i e_bucket_i
    (uint16 and int8: 30 MB at 10⁷ states, not 160)."""
    rng = np.random.default_rng(20_512)
    bucket = rng.integers(0, SKETCH_ROWS, size=n).astype(np.uint16)
    sign = (rng.integers(0, 2, size=n) * 2 - 1).astype(np.int8)
    bucket.flags.writeable = sign.flags.writeable = False
    return bucket, sign


CHUNK = 1 << 20  # entries per block of the O(n) loops over steps (no vector-sized temporaries)
# entries per block of predicted_start's sum of steps: its float64 temporaries stay in L2
# (10⁶ states, 12 float32 steps: 12.0 ms a start against 16.5 ms in blocks of CHUNK)
STEP_CHUNK = 1 << 16


def sketch(x):
    """The CountSketch of x, shape (SKETCH_ROWS,), summed per block of CHUNK entries."""
    bucket, sign = _count_sketch(x.shape[0])
    out = np.zeros(SKETCH_ROWS)
    for lo in range(0, x.shape[0], CHUNK):
        part = slice(lo, lo + CHUNK)
        out += np.bincount(bucket[part], weights=np.multiply(sign[part], x[part],
                                                              dtype=np.float64),
                           minlength=SKETCH_ROWS)
    return out


def predicted_start(x, steps, sketches, design=None, residuals=None):
    r"""The warm start x + Σ_i c_i Δ_i for the next solve of a linear system whose
    solutions over the last outer iterations were x, x − Δ_1, x − Δ_1 − Δ_2, ...

    Late in a run the outer iterates, hence the solutions, move along a smooth path, so
    the steps Δ_1, Δ_2, ... (newest first, ``steps``) follow a linear recurrence. Its
    coefficients are fitted to the last step, Δ_1 ≈ Σ_{i=1..m} c_i Δ_{i+1} (least
    squares), and extrapolated one step: Δ_next ≈ Σ_{i=1..m} c_i Δ_i, m = len(steps) − 1.
    The fit is solved on the CountSketch of the steps (``sketches``, 512 rows): a subspace
    embedding of the m + 1 vectors, so its residual is within a small factor of the
    exact one, at the cost of one O(n) pass per new step (the QR of the steps
    themselves, nearly collinear late in a run, would need m² passes). On the README
    problem this leaves 2–3 sweeps per solve late in the run, against 12–16 from x
    alone. A prediction longer than twice the last step (a trajectory that is not
    smooth) falls back to x.

    With a ``design`` ``(u_0, [u_1, ..., u_M])``, steps of something that drives the
    solutions, u_i the one behind Δ_i and u_0 the newest, known before this solve (the
    policy's steps, for the visitation), the coefficients may be fitted to the newest step
    instead: u_0 ≈ Σ_{i=1..M} c_i u_i, and Δ_next ≈ Σ_{i=1..M} c_i Δ_i (to first order
    the solution moves linearly with the policy); of the two fits, the one with the
    smaller expected error is taken (:func:`_error`: a sample of the policy that misses
    its step does not fit). On the README run this halved the visitation start's error
    late in the run and took 1,182 passes against 1,341 (RESULTS.md).

    With ``residuals`` ``[ρ_0, ρ_1, ...]``, samples of the residuals that x, x − Δ_1, ...
    have in the system about to be solved (one per solution), the coefficients may
    minimize the start's sampled residual instead, ρ_0 − Σ_i c_i (ρ_i − ρ_{i−1}) (the
    residual is affine in the start), where that fit beats the steps' own on held-out
    samples (:func:`_residual_fit`). The solve stops on the residual, and this fit sees
    the new system, which the extrapolations do not: PPO-Clip's value start then has
    1/12–1/16 of the residual late in a run (RESULTS.md).

    Parameters
    ----------
    x : ndarray of shape (n,)
        The last solution.
    steps, sketches : list of ndarray of shape (n,) and (SKETCH_ROWS,)
        The steps, newest first (float64, or float32 from ``FLOAT32_STEPS_FROM`` states
        on), and their sketches.

    Returns
    -------
    ndarray of shape (n,)
        ``x`` itself when fewer than two steps are known.
    """
    if len(steps) < 2:
        return x
    with np.errstate(over="ignore", invalid="ignore"):  # steps of any size (a resumed run)
        fit = _fit(sketches)  # Δ_1 on Δ_2..Δ_M
        if residuals is not None:
            fit = _residual_fit(residuals, fit)
        if design is not None and residuals is None:  # u_0 on u_1..u_M, if its error looks smaller
            other = _fit([design[0], *design[1]])
            if other is not None and (fit is None or _error(other, sketches, steps[0].dtype)
                                      < _error(fit, sketches, steps[0].dtype)):
                fit = other
        if fit is None:
            return x
        c = fit[0]
        m = c.shape[0]
        step = np.empty(x.shape[0])
        for lo in range(0, x.shape[0], STEP_CHUNK):  # steps may be float32: per block, in float64
            part = slice(lo, lo + STEP_CHUNK)
            block = np.multiply(steps[0][part], c[0], out=step[part], dtype=np.float64)
            for i in range(1, m):
                block += np.multiply(steps[i][part], c[i], dtype=np.float64)
        size = norm(step)
        last = math.sqrt(float(np.einsum("i,i->", steps[0], steps[0], dtype=np.float64)))
        if not (math.isfinite(size) and size <= 2.0 * last):  # or NaN
            return x
    step += x
    return step


def _fit(vectors):
    """(c, residual): least squares v_0 ≈ Σ_i c_i v_i over the columns v_1, v_2, ... and
    its residual relative to ‖v_0‖ (inf for v_0 = 0); None if they are all zero or not
    finite."""
    cols = np.column_stack(vectors)
    big = float(np.abs(cols).max())
    if not (math.isfinite(big) and big > 0.0):
        return None
    cols = np.ldexp(cols, -np.frexp(big)[1])  # entries ≤ 1 (exactly scaled): LAPACK's range
    c = np.linalg.lstsq(cols[:, 1:], cols[:, 0], rcond=None)[0]
    target = float(np.linalg.norm(cols[:, 0]))
    miss = float(np.linalg.norm(cols[:, 0] - cols[:, 1:] @ c))
    return c, miss / target if target > 0.0 else math.inf


def _residual_fit(residuals, fit):
    """The fit of :func:`predicted_start` on the sampled residuals ρ_0, ρ_1, ... (rows), if
    it beats ``fit`` (the steps' own, or None) on the probes it was not fitted on: fitted
    on the even ones, both are compared on the odd ones; the winner on all of them.
    Least squares on CountSketches: a small LAPACK problem (on a tall one OpenBLAS's
    threads woke and spun against the kernels')."""
    rows = np.asarray(residuals)
    columns = [rows[0], *np.diff(rows, axis=0)]  # ρ_0 − Σ c_i (ρ_i − ρ_{i−1})

    def fitted(part):
        return _fit([sketch(u[part]) for u in columns])

    def missed(c, part):  # the start's residual at the probes ``part``
        used = np.column_stack([u[part] for u in columns[1:c.shape[0] + 1]])
        return norm(columns[0][part] - used @ c)

    even, odd = slice(0, None, 2), slice(1, None, 2)
    trial = fitted(even)
    if trial is None or (fit is not None and missed(fit[0], odd) <= missed(trial[0], odd)):
        return fit
    return fitted(slice(None))


def _error(fit, sketches, dtype):
    """The error a fit's prediction Σ c_i Δ_i is expected to have: its relative residual
    times the last step, plus the rounding of the steps (float32 from FLOAT32_STEPS_FROM
    states) that the coefficients amplify, independent from step to step:
    ε (Σ c_i² ‖Δ_i‖²)^½ (norms from the sketches)."""
    c, residual = fit
    sizes = np.array([np.linalg.norm(u) for u in sketches[:c.shape[0]]])
    return residual * sizes[0] + np.finfo(dtype).eps * float(np.linalg.norm(c * sizes))


def _read_only(x):
    """A read-only copy of x (x itself if it is read-only)."""
    if not x.flags.writeable:
        return x
    x = x.copy()
    x.flags.writeable = False
    return x


class _Trajectory:
    """The last solution of one linear system across outer iterations and the steps
    before it (:func:`predicted_start`), each with the step of what drove it where one is
    given (``designs``, None else)."""

    def __init__(self):
        self.x, self.steps, self.sketches, self.designs = None, [], [], []
        self.probes = []  # per solution, newest first: what its residual is made from, or None

    def push(self, x, step=True, design=None, probe=None):
        """Record the newest solution; ``step``: it follows the previous one (False for
        a repeated evaluation of the same policy), ``design`` the step that drove it,
        ``probe`` what :meth:`start`'s ``residuals`` makes its residual from."""
        probe = None if probe is None else _read_only(probe)
        if not (step and self.x is not None):  # x replaces the newest solution
            self.probes[:1] = [probe]
        else:
            n = x.shape[0]
            dx = np.subtract(x, self.x, out=np.empty(
                n, dtype=np.float32 if n >= FLOAT32_STEPS_FROM else np.float64))
            dx.flags.writeable = False  # never changed: a checkpoint shares it, no copy
            self.steps.insert(0, dx)
            self.sketches.insert(0, sketch(dx))
            self.designs.insert(0, None if design is None else _read_only(design))
            self.probes.insert(0, probe)
            keep = max(2, min(WARM_STEPS, WARM_BYTES // dx.nbytes))
            del self.steps[keep:], self.sketches[keep:], self.designs[keep:]
            del self.probes[keep + 1:]
        self.x = x

    def start(self, design=None, residuals=None):
        """The predicted warm start (None before any solution); with ``design``, the
        newest step of what drives the solutions, fitted on it where every step has its
        own; with ``residuals`` (the probes, newest first ↦ their solutions' sampled
        residuals in the next system, one row each), fitted on them where every solution
        has a probe."""
        if self.x is None:
            return None
        known = design is not None and all(u is not None for u in self.designs)
        probed = (residuals is not None and len(self.probes) == len(self.steps) + 1
                  and len(self.steps) >= 2 and all(p is not None for p in self.probes))
        return predicted_start(self.x, self.steps, self.sketches,
                               (design, self.designs) if known else None,
                               residuals(self.probes) if probed else None)

    def restore(self, x, steps, designs=(), probes=()):
        self.x, self.steps = x, [_read_only(dx) for dx in steps]
        self.sketches = [sketch(dx) for dx in self.steps]
        designs = [None if u is None else _read_only(u) for u in designs]
        self.designs = (designs + [None] * len(steps))[:len(steps)]
        probes = [None if p is None else _read_only(p) for p in probes]
        self.probes = (probes + [None] * (len(steps) + 1))[:len(steps) + 1] if x is not None else []


class _ExactMethod(IterativeMethod):
    """Set-up and the outer step of the exact methods: an exact evaluation each outer
    iteration, then the method's ``_update``. The run loop, history and checkpoints are
    ``fastppo._run``'s."""

    HISTORY = _HISTORY
    EPISODIC = False  # gamma = 1 accepted (PPOClip, SoftmaxPG)
    HISTORY_ADDED = {"n_passes": -1}  # not in histories saved before it (-1: not recorded)
    FALLBACK_MEASURE = "grad_norm"  # run(tol=...) without J*: the gradient norm
    # checkpoint fields beyond the common ones: the weighting and the linear solves' warm
    # starts (the last solutions v_warm, d_warm and the steps before them, v_step1 =
    # v_warm − the solution before, ... : the predicted start of the next solve)
    # the policy's steps behind d's (d_design1: the sketch of π at design_pairs of d_warm's
    # policy − of the one before, ...) and π at design_pairs of d_warm's policy (pi_design);
    # v and Q̃ − r of v's solutions at the probe points (v_probe0 for v_warm, v_probe1 for
    # the solution before, ...: what their residuals under the next policy are made from)
    STATE = {"mu": ("states", False), "v_warm": ("states", True), "d_warm": ("states", True),
             **{f"{x}_step{i}": ("states", True) for x in "vd" for i in range(1, WARM_STEPS + 1)},
             "pi_design": ("pairs", True),
             **{f"d_design{i}": ("pairs", True) for i in range(1, WARM_STEPS + 1)},
             **{f"v_probe{i}": ("pairs", True) for i in range(WARM_STEPS + 1)}}
    SETTINGS = ("lr", "lin_tol", "warm_start", "backend", "n_threads")

    def __init__(self, mdp, reg, lr, mu, init, step_scale, reference, backend, n_threads,
                 lin_tol, warm_start):
        if not self.EPISODIC:
            V.check_discounted(mdp, type(self).__name__)
        self.mdp = mdp
        self.reg = reg
        self.backend = resolve_backend(backend)
        self.n_threads = resolve_threads(n_threads)
        self.lin_tol = V.check_lin_tol(lin_tol)
        self.warm_start = V.check_bool(warm_start, "warm_start")
        E = self._evaluator
        self._code, self._alpha, self._tau, self._ref = E.code, E.alpha, E.tau, E.ref
        self.mu = self._weighting(mu)
        if init is None:
            self.logits = np.log(mdp.uniform_policy() if self._tau == 0 else self._ref)
        else:
            self.logits = V.check_logits(mdp, init, "init")
        self._table = init is None or np.ndim(init) != 1  # results as (S, A) tables
        self.pi = E.softmax(self.logits)
        self._vs, self._ds = _Trajectory(), _Trajectory()  # solutions of v and d
        self._pi_design = None  # π at design_pairs of d's last solution (_visit_design)
        # where v's solutions keep what their residuals are made of (_value_residuals)
        self._probe = probe_points(mdp.a_indptr) if mdp.gamma < 1 else None
        if self._probe is not None:
            E.probe_pairs = self._probe[1]
        if lr is None:
            step_scale = V.check_positive(step_scale, "step_scale")
            E.load(self.pi)
            vis0 = E.visitation(self.mu)
            self._remember_visitation(vis0.d, step=False)
            lr = (step_scale / float(vis0.visits.max()) if mdp.gamma == 1.0  # max n₀
                  else step_scale * (1.0 - mdp.gamma) / float(vis0.d.max()))
        self.lr = V.check_positive(lr, "lr")
        self.n_iter = 0
        self._rows = []
        if reference is True:
            reference = solve(mdp, reg, backend=self.backend, n_threads=self.n_threads).J
        elif reference is False:
            reference = None
        self.reference = None if reference is None else V.check_finite_float(reference, "reference")

    def _weighting(self, mu):
        mdp = self.mdp
        if mu is None:
            rho = mdp.rho
            return rho if (rho > 0).all() else 0.5 * (rho + 1.0 / mdp.n_states)
        if isinstance(mu, str) and mu == "uniform":
            return np.full(mdp.n_states, 1.0 / mdp.n_states)
        mu = V.check_distribution(mu, mdp.n_states, "mu")
        if (mu <= 0).any():
            raise ValueError(f"mu must have full support (the convergence theory needs it): "
                             f"mu[{int(np.argmax(mu <= 0))}] = 0")
        return mu

    @property
    def _evaluator(self):
        """The method's Evaluator (made on first use)."""
        E = self.__dict__.get("_E")
        if E is None:
            tol = DEFAULT_TOL if self.lin_tol == "adaptive" else self.lin_tol
            E = self._E = Evaluator(self.mdp, self.reg, self.backend, self.n_threads, tol=tol,
                                    tol_name="lin_tol")
        return E

    @property
    def _v(self):
        """Ṽ of the last evaluated policy, one sweep past its certified solution where the
        solve gave that sweep (``Evaluation.v_ahead``: the warm start); None before the
        first."""
        return self._vs.x

    @property
    def _d(self):
        """d of the last evaluated policy, one sweep past its certified solution where
        the solve gave that sweep (PPOClip's warm start: ``_d_weight``); None before the
        first and for NPG."""
        return self._ds.x

    def _warm(self, trajectory, design=None):
        """The start of the next solve of a system: predicted from its last solutions
        (``design``: :meth:`_Trajectory.start`)."""
        return trajectory.start(design) if self.warm_start else None

    def _remember(self, trajectory, x, design=None, probe=None):
        """Record x, this outer iteration's solution; the first iteration's replaces a
        solution of the same policy made at set-up (d_0 for the step size)."""
        trajectory.push(x, step=self.warm_start and self.n_iter > 0, design=design,
                        probe=probe)

    def _value_start(self):
        """The value system's warm start, fitted on the residuals where it can."""
        return self._vs.start(residuals=self._value_residuals) if self.warm_start else None

    def _value_probe(self, ev):
        """What the residual of the kept v is made from (an evaluation's v, or ``v_ahead``
        where it has one): v at the probe states, then Q̃ − r = γ P v at their pairs (None
        without them)."""
        v, q = ((ev.v_ahead, ev.get("q_probe_ahead")) if "v_ahead" in ev
                else (ev.v, ev.get("q_probe")))
        if self._probe is None or q is None:
            return None
        states, pairs, _ = self._probe
        return np.concatenate((v[states], q - self.mdp.r[pairs]))

    def _value_residuals(self, probes):
        """The residuals b − (I − γP_π) v_j at the probe states, one row per probe of a
        solution v_j, for the loaded policy π (b = r_π − τ D_f): b − v_j + Σ_a π (Q̃_j − r)."""
        states, pairs, starts = self._probe
        n = states.shape[0]
        table = np.array(probes)
        table[:, n:] *= self.pi[pairs]
        return (self._evaluator.regularized_reward()[states] - table[:, :n]
                + np.add.reduceat(table[:, n:], starts, axis=1))

    def _visit_design(self):
        """The CountSketch of the policy's step since d's last solution at
        :func:`design_pairs` (None before one): what the visitation's warm start is fitted
        on (a least-squares fit on SKETCH_ROWS rows, not DESIGN_PAIRS)."""
        if self._pi_design is None:
            return None
        return sketch(self.pi[design_pairs(self.mdp.n_pairs)] - self._pi_design)

    def _remember_visitation(self, d, design=None, step=True):
        """:meth:`_remember` d of the loaded policy ``self.pi``, with its policy step
        ``design`` (:meth:`_visit_design`, made for this policy's start)."""
        if step:
            self._remember(self._ds, d, design)
        else:
            self._ds.push(d, step=False)
        self._pi_design = self.pi[design_pairs(self.mdp.n_pairs)]

    def _solve_tol(self):
        """The relative residual of this iteration's solves: None (the evaluator's,
        ``lin_tol``) unless ``lin_tol="adaptive"``.

        Adaptive: a residual r of the value system moves J = ρᵀṼ by
        |d_ρᵀ r| / (1 − γ) ≤ ‖d_ρ‖₂ ‖r‖₂ / (1 − γ), with ‖r‖₂ ≤ tol ‖c‖₂ ≤ tol (1 + γ) ‖Ṽ‖₂.
        The tolerance keeps that bound (with the last Ṽ, and d_ρ the last visitation when
        μ = ρ, else ‖d_ρ‖₂ ≤ 1) below ADAPTIVE_SHARE of the last change of J, between
        DEFAULT_TOL and ADAPTIVE_MAX: loose while J moves a lot, DEFAULT_TOL near the
        optimum. The same tolerance serves the visitation system."""
        if self.lin_tol != "adaptive" or len(self._rows) < 2 or self._v is None:
            return None
        g = self.mdp.gamma
        d = self._d if self._d is not None and np.array_equal(self.mu, self.mdp.rho) else None
        d_norm = 1.0 if d is None else norm(d)
        change = abs(self._rows[-1]["J"] - self._rows[-2]["J"])
        bound = (1.0 + g) / (1.0 - g) * norm(self._v) * d_norm
        tol = ADAPTIVE_SHARE * change / bound if bound > 0 else 0.0
        return min(ADAPTIVE_MAX, max(DEFAULT_TOL, tol))

    def _evaluate(self):
        """Exact quantities of the current policy that the update needs (an Evaluation)."""
        E = self._evaluator
        E.load(self.pi)
        return E.evaluation(self._value_start(), tol=self._solve_tol())

    def step(self):
        """One outer iteration; returns its diagnostics (a dict, also appended to history)."""
        t0 = time.perf_counter()
        mdp = self.mdp
        if self.n_iter == 0:
            self._check_iterate(1, "the init logits are too far apart")
        ev = self._evaluate()
        self._remember(self._vs, ev.get("v_ahead", ev.v), probe=self._value_probe(ev))
        max_abs_adv = float(max(ev.adv.max(), -ev.adv.min()))  # before _update (no temporary)
        info = self._update(ev)
        self._check_iterate(self.n_iter + 1)
        self.n_iter += 1
        row = dict(iter=self.n_iter, J=ev.J,
                   gap=np.nan if self.reference is None else self.reference - ev.J,
                   max_abs_adv=max_abs_adv,
                   n_matvec=ev.n_matvec + info.pop("n_matvec", 0), n_passes=ev.n_passes,
                   **info, seconds=time.perf_counter() - t0)
        self._rows.append(row)
        return row

    # PPO-type updates divide by π_old (the ratio π_θ/π_old): a policy that underflowed to
    # exactly 0 (logits ~745 apart) would make it 0/0 in the next iteration.
    _zeros_ok = False

    def _check_logits(self, it, hint="reduce lr"):
        # min and max are finite iff every logit is (NaN propagates): no temporary
        if math.isfinite(self.logits.min()) and math.isfinite(self.logits.max()):
            return
        bad = ~np.isfinite(self.logits)
        if bad.any():
            k = int(np.argmax(bad))
            raise FloatingPointError(
                f"{type(self).__name__}: non-finite logits at iteration {it} "
                f"({self.mdp.pair_name(k)}: {self.logits[k]}); {hint}")

    def _check_iterate(self, it, hint="reduce lr"):
        """FloatingPointError naming iteration ``it`` if the iterate left the range of doubles."""
        self._check_logits(it, hint)
        if not self._zeros_ok and not self.pi.min() > 0:  # π ≥ 0 or NaN
            k = int(np.argmax(~(self.pi > 0)))
            s = int(self.mdp.s_indices[k])
            theta = self.logits[self.mdp.a_indptr[s]:self.mdp.a_indptr[s + 1]]
            with np.errstate(over="ignore"):
                span = float(theta.max() - theta.min())
            raise FloatingPointError(
                f"{type(self).__name__}: the policy underflowed to 0 at iteration {it} "
                f"({self.mdp.pair_name(k)}; the logits of state {s} span {span:.3g}), and the "
                f"update divides by it or takes its log; {hint}")

    # ------------------------------------------- run loop and checkpoint hooks (_run)
    def _final(self):
        self._evaluator.load(self.pi)
        final = self._evaluator.evaluation(self._v)
        return final.v, final.J, {}

    def _postfix(self, row):
        return {**super()._postfix(row), "products": row["n_matvec"]}

    def _stall_message(self, row):
        # a run whose J no longer moves while the gradient is not small has stalled (e.g.
        # PPO-Clip's inner steps cycling across the clip boundary). Small is relative to the
        # scale of Q, max|V| + max|A| ≥ max|Q|: near the optimum J moves by about the square
        # of the gradient, so J stops moving (at 1e-14 relative, see _run) once the gradient
        # is below sqrt(1e-14) = 1e-7 of that scale; and the linear solves give Q only to
        # about lin_tol × horizon of it. Below either, J is at the optimum, not stalled.
        scale = (0.0 if self._v is None else float(np.max(np.abs(self._v)))) + row["max_abs_adv"]
        gamma = self.mdp.gamma  # horizon: 1/(1 − γ), or at γ = 1 at most S steps (a DAG)
        horizon = 1.0 / (1.0 - gamma) if gamma < 1 else float(self.mdp.n_states)
        lin_tol = ADAPTIVE_MAX if self.lin_tol == "adaptive" else self.lin_tol  # the loosest
        roundoff = max(1e-7, 100.0 * lin_tol * horizon) * scale
        if not row["grad_norm"] > roundoff:
            return None
        return (f"{type(self).__name__} stalled at iteration {row['iter']}: J is not changing "
                f"but the gradient norm is {row['grad_norm']:.3g}; the step is too large for "
                f"this problem (lower step_scale/lr or inner_steps)")

    @classmethod
    def _setting_names(cls):
        return cls.SETTINGS

    def _settings(self):
        return {name: getattr(self, name) for name in self.SETTINGS}

    def _state(self):
        state = {"mu": self.mu, "v_warm": self._v, "d_warm": self._d,
                 "pi_design": self._pi_design}
        for x, trajectory in (("v", self._vs), ("d", self._ds)):
            for i, dx in enumerate(trajectory.steps, 1):
                state[f"{x}_step{i}"] = dx
        for i, u in enumerate(self._ds.designs, 1):
            state[f"d_design{i}"] = u
        for i, p in enumerate(self._vs.probes):
            state[f"v_probe{i}"] = p
        return state

    @classmethod
    def _state_checks(cls, mdp):
        steps = {f"{x}_step{i}": check_states(mdp) for x in "vd" for i in range(1, WARM_STEPS + 1)}
        n = design_pairs(mdp.n_pairs).shape[0]

        def sized(size, size_name):
            return lambda x, name: V.check_state_vector(x, size, name, False, size_name)
        designs = {f"d_design{i}": sized(SKETCH_ROWS, "SKETCH_ROWS")
                   for i in range(1, WARM_STEPS + 1)}
        probe = probe_points(mdp.a_indptr)
        m = 0 if probe is None else probe[0].shape[0] + probe[1].shape[0]
        probes = {f"v_probe{i}": sized(m, "the probed states and pairs")
                  for i in range(WARM_STEPS + 1)}
        return {"mu": None, "v_warm": check_states(mdp),
                "d_warm": check_states(mdp, nonnegative=True), **steps,
                "pi_design": sized(n, "the sampled pairs"), **designs, **probes}

    @classmethod
    def _restore_arguments(cls, state):
        return {"mu": state["mu"]}  # validated by the constructor (a distribution, full support)

    def _set_state(self, state):
        for x, trajectory in (("v", self._vs), ("d", self._ds)):
            steps = [state[f"{x}_step{i}"] for i in range(1, WARM_STEPS + 1)]
            given = [dx is not None for dx in steps]
            n = given.index(False) if False in given else WARM_STEPS
            if any(given[n:]) or (n and state[f"{x}_warm"] is None):
                raise ValueError(f"{x}_step1..{x}_step{WARM_STEPS} must be a run of steps "
                                 f"from {x}_step1, after {x}_warm")
            designs = [state.get(f"{x}_design{i}") for i in range(1, WARM_STEPS + 1)]
            extra = [i for i, u in enumerate(designs, 1) if u is not None and i > n]
            if extra:
                raise ValueError(f"{x}_design{extra[0]} without its {x}_step{extra[0]}")
            probes = [state.get(f"{x}_probe{i}") for i in range(WARM_STEPS + 1)]
            extra = [i for i, p in enumerate(probes) if p is not None
                     and (i > n or state[f"{x}_warm"] is None)]
            if extra:
                raise ValueError(f"{x}_probe{extra[0]} without its solution ({x}_warm, "
                                 f"{x}_step1..)")
            trajectory.restore(state[f"{x}_warm"], steps[:n], designs[:n], probes[:n + 1])
        self._pi_design = state["pi_design"]


class PPOClip(_ExactMethod):
    """Deterministic actor-only PPO-Clip with an f-divergence regularizer (exact).

    Parameters
    ----------
    mdp : MDP
    reg : Regularizer, optional
        τ·D_f(π ‖ π_ref); None for the plain MDP.
    clip : float or (float, float), default 0.2
        ε, or (ε_low, ε_high) for an asymmetric clip range [1 − ε_low, 1 + ε_high].
    inner_steps : int, default 10
        K ascent steps per outer iteration.
    lr : float, optional
        Raw step size η of the update (as in the paper). If None,
        η = step_scale·(1−γ)/max_s d_0(s) (at γ = 1: step_scale/max_s n_0(s), n_0 the
        expected visits before termination).
    mu : array_like of shape (n_states,) or "uniform", optional
        Weighting distribution with full support; default ``mdp.rho`` (mixed half and
        half with uniform when ρ lacks full support).
    init : array_like of shape (n_pairs,) or (S, A), optional
        Initial logits; default log π_ref.
    step_scale : float, default 1.0
        Scale-free step used when ``lr`` is None (formerly ``step``).
    reference : bool or float, default False
        True: compute J* with :func:`solve` so the history records the gap J* − J;
        a float: J* itself (finite).
    backend, n_threads
        Kernel backend and threads.
    lin_tol : float or "adaptive", default 1e-12
        Relative residual of the exact linear solves (formerly ``tol``). "adaptive"
        (opt-in): per iteration, loose while J still moves a lot, 1e-12 near the
        optimum (the error it allows in J stays below 1 % of J's last change; see
        ``_ExactMethod._solve_tol``).
    warm_start : bool, default True
        Start each solve from the previous iteration's solution.
    """

    SETTINGS = ("clip", "inner_steps", *_ExactMethod.SETTINGS)
    EPISODIC = True

    @renamed_parameters(step="step_scale", tol="lin_tol")
    def __init__(self, mdp, reg=None, clip=0.2, inner_steps=10, lr=None, mu=None, init=None, *,
                 step_scale=1.0, reference=False, backend=None, n_threads=None,
                 lin_tol=DEFAULT_TOL, warm_start=True):
        self.eps_low, self.eps_high = _clip_range(clip)
        self.inner_steps = V.check_int(inner_steps, "inner_steps", maximum=MAX_INNER_STEPS)
        self.beta = 0.0
        super().__init__(mdp, reg, lr, mu, init, step_scale, reference, backend, n_threads,
                         lin_tol, warm_start)
        # reverse KL: log π_ref once per run (a fifth per-pair array), not a log per pair
        # in every ppo_update call
        self._log_ref = ppo_log_ref(self._code, self._tau, self._ref)

    @property
    def clip(self):
        """(ε_low, ε_high)."""
        return [self.eps_low, self.eps_high]

    def _evaluate(self):
        # Ã_old and d_old of the same policy: the two linear systems advance together
        E = self._evaluator
        E.load(self.pi)
        design = self._visit_design()
        ev, vis = E.evaluation_and_visitation(self.mu, self._value_start(),
                                              self._warm(self._ds, design),
                                              tol=self._solve_tol(), q=False, ahead=True)
        ev.visitation, ev.design = vis, design
        return ev

    def _d_weight(self, ev):
        """d_old/(1−γ) from the evaluation, and the products its solve took. What is kept
        for the next warm start is d_old one sweep on (``d_ahead``) where the solve gave
        it: the kept solutions' own residuals were most of the next start's (10⁶ states:
        2.40 passes a late iteration against 1.68, RESULTS.md); the weights take d_old."""
        vis = ev.visitation
        self._remember_visitation(vis.get("d_ahead", vis.d), ev.design)
        return visit_weights(self.mdp, vis), vis.n_matvec

    def _update(self, ev):
        # π_new is written over Ã (ppo_update reads each state's pairs before it writes
        # them), so a step holds four per-pair float64 arrays: θ, π_old, π_ref and Ã/π_new
        # (and log π_ref for reverse KL)
        mdp = self.mdp
        weight, n_mv = self._d_weight(ev)
        adv = ev.adv
        pi_old = self.pi
        pi_new = ev.adv
        ev.adv = None  # overwritten below
        clipped = np.empty(mdp.n_states, dtype=np.int64)
        gsq = np.empty(mdp.n_states)
        kl = np.empty(mdp.n_states)
        get_kernel("ppo_update", self.backend)(
            mdp.a_indptr, pi_old, adv, weight, self._ref, self._log_ref, self._code, self._alpha,
            self._tau, self.eps_low, self.eps_high, self.beta, self.lr, self.inner_steps,
            self.logits, pi_new, clipped, gsq, kl, self.n_threads)
        self.pi = pi_new
        # KL ≥ 0; the per-state sums Σ π log(π/π_old) round to ±1e-17 once π ≈ π_old
        return dict(clipfrac=clipped.sum() / mdp.n_pairs,
                    kl=dot(self._d, np.maximum(kl, 0.0)),
                    grad_norm=float(np.sqrt(gsq.sum())), n_matvec=n_mv)


class SoftmaxPG(PPOClip):
    """Exact softmax policy gradient θ ← θ + η ∇_θ Ṽ(μ) (PPOClip with K = 1 and no clip)."""

    SETTINGS = _ExactMethod.SETTINGS

    @renamed_parameters(step="step_scale", tol="lin_tol")
    def __init__(self, mdp, reg=None, lr=None, mu=None, init=None, **kwargs):
        super().__init__(mdp, reg, clip=np.inf, inner_steps=1, lr=lr, mu=mu, init=init, **kwargs)


class KLPenaltyPPO(PPOClip):
    """PPO with an adaptive KL penalty β KL(π_old ‖ π_θ) instead of the clip.

    After each outer iteration, with KL = Σ_s d(s) KL(π_old ‖ π_new) (the divergence the
    penalty uses): β ← 2β if KL > 1.5·kl_target, β ← β/2 if KL < kl_target/1.5
    (Schulman et al., 2017, §4). The inner steps are explicit, so β is capped at
    1/(η max_s d(s)/(1−γ)), beyond which the penalty step itself overshoots.

    Parameters
    ----------
    kl_target : float, default 0.01
        Target of the d-weighted KL(π_old ‖ π_new) per outer iteration.
    beta : float, default 1.0
        Initial penalty weight β ≥ 0.
    mdp, reg, inner_steps, lr, mu, init, **kwargs
        As in :class:`PPOClip` (no clip).
    """

    SETTINGS = ("kl_target", "beta", "inner_steps", *_ExactMethod.SETTINGS)
    EPISODIC = False  # the cap on beta still reads d/(1 - gamma)

    @renamed_parameters(step="step_scale", tol="lin_tol")
    def __init__(self, mdp, reg=None, kl_target=0.01, beta=1.0, inner_steps=10, lr=None,
                 mu=None, init=None, **kwargs):
        super().__init__(mdp, reg, clip=np.inf, inner_steps=inner_steps, lr=lr, mu=mu,
                         init=init, **kwargs)
        self.kl_target = V.check_positive(kl_target, "kl_target")
        self.beta = V.check_positive(beta, "beta", strict=False)

    def _update(self, ev):
        pi_old = self.pi
        d = self._d
        if d is not None:
            self.beta = min(self.beta, (1.0 - self.mdp.gamma) / (self.lr * float(d.max())))
        info = super()._update(ev)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pi_old > 0, pi_old * np.log(pi_old / self.pi), 0.0)
        kl_old_new = np.bincount(self.mdp.s_indices, terms, minlength=self.mdp.n_states)
        info["kl"] = float(self._d @ np.maximum(kl_old_new, 0.0))
        info["beta"] = self.beta
        if info["kl"] > 1.5 * self.kl_target:
            self.beta *= 2.0
        elif info["kl"] < self.kl_target / 1.5:
            self.beta /= 2.0
        return info


class NPG(_ExactMethod):
    """Natural policy gradient / policy mirror descent with a KL proximal term.

    π_new(·|s) ∝ π_old(·|s) exp(η (Q̃(s,·) − τ f'(π_old/π_ref))), i.e.
    θ ← θ + η (Q̃ − τ f'(π/π_ref)): the closed-form maximiser of
    η ⟨p, Q̃ − τ f'(π_old/π_ref)⟩ − KL(p ‖ π_old) (regularizer linearised at π_old).
    ``lr=None`` uses η = step_scale/τ when τ > 0 (for reverse KL and step_scale = 1 this
    is soft policy iteration, π_new ∝ π_ref exp(Q̃/τ)) and η = step_scale/(1−γ) otherwise;
    ``step_scale`` defaults to 1 for reverse KL and τ = 0, and to 0.2 for the other f, whose f'(π/π_ref)
    is steep where π is small. History: ``kl`` is KL(π_new ‖ π_old) under μ and
    ``grad_norm`` the natural-gradient norm (Σ_s μ(s) Σ_a π (u − Σ_b π u)²)^½ of the
    direction u = Q̃ − τ f'(π/π_ref), zero exactly at the optimum.

    Parameters
    ----------
    mdp : MDP
    reg : Regularizer, optional
    lr : float, optional
        Raw step η; default from ``step_scale`` as above.
    mu : array_like of shape (n_states,) or "uniform", optional
        Weighting of the history's KL and gradient norm (default as in PPOClip).
    init : array_like, optional
        Initial logits; default log π_ref.
    step_scale : float, optional
        Scale-free step (see above; formerly ``step``).
    **kwargs
        ``reference``, ``backend``, ``n_threads``, ``lin_tol``, ``warm_start`` as in PPOClip.
    """

    @renamed_parameters(step="step_scale", tol="lin_tol")
    def __init__(self, mdp, reg=None, lr=None, mu=None, init=None, *, step_scale=None, **kwargs):
        V.check_discounted(mdp, "NPG")
        if lr is None:
            tau = 0.0 if reg is None else reg.tau
            if step_scale is None:
                step_scale = 1.0 if tau == 0 or isinstance(reg, ReverseKL) else 0.2
            step_scale = V.check_positive(step_scale, "step_scale")
            lr = step_scale / tau if tau > 0 else step_scale / (1.0 - mdp.gamma)
        super().__init__(mdp, reg, lr, mu, init, step_scale, kwargs.pop("reference", False),
                         kwargs.pop("backend", None), kwargs.pop("n_threads", None),
                         kwargs.pop("lin_tol", DEFAULT_TOL), kwargs.pop("warm_start", True))
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {', '.join(kwargs)}")
        # NPG adds Q̃ − τ f'(π/π_ref) to the logits (no ratio): a zero probability is harmless
        # unless f'(0) is infinite (reverse/forward KL, Hellinger, JS, alpha > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            self._zeros_ok = self._tau == 0 or bool(np.isfinite(self.reg.fprime(np.array(0.0))))

    def _update(self, ev):
        mdp = self.mdp
        q = ev.q
        direction = q
        if self._tau > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                direction = q - self._tau * self.reg.fprime(self.pi / self._ref)
        old = self.pi
        self.logits = self.logits + self.lr * direction
        self._check_logits(self.n_iter + 1)  # before softmax, which rejects non-finite input
        self.pi = self._evaluator.softmax(self.logits)
        s = mdp.s_indices
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(self.pi > 0, self.pi * np.log(self.pi / old), 0.0)
        kl = np.bincount(s, terms, minlength=mdp.n_states)
        mean = np.bincount(s, old * direction, minlength=mdp.n_states)
        spread = np.bincount(s, old * (direction - mean[s]) ** 2, minlength=mdp.n_states)
        return dict(clipfrac=0.0, kl=float(self.mu @ np.maximum(kl, 0.0)),
                    grad_norm=float(np.sqrt(self.mu @ spread)))


def _clip_range(clip):
    if np.ndim(clip) == 0:
        eps = np.inf if clip == np.inf else V.check_positive(clip, "clip")
        return eps, eps
    if len(clip) != 2:
        raise ValueError(f"clip must be a float or a pair (eps_low, eps_high), got {clip!r}")
    low = V.check_positive(clip[0], "clip[0] (eps_low)")
    high = V.check_positive(clip[1], "clip[1] (eps_high)")
    return low, high
