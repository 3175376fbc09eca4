r"""What SampledPPO converges to: the exact target of every (KL estimator, placement) pair,
advantage form, entropy bonus and reward processing it offers.

Notation as in SPEC §1: β = ``kl_coef``, π_ref the reference policy, at a state s
w_a = π(a|s)/π_ref(a|s) and ℓ_a = log w_a; Ṽ, Q̃, Ã the values of the reverse-KL
objective with τ = β; V^π, Q^π, A^π those of the plain MDP; d^π the visitation. The
per-sample KL estimates at a ~ π(·|s) are k1 = ℓ, k2 = ½ℓ², k3 = 1/w − 1 + ℓ.

**1. The expected update.** For a visited state s, SampledPPO moves θ(s,·) by ``lr`` times
the mean over s's samples of coef_i·(e_{a_i} − π(·|s)), where coef_i = ratio·Â_i (0 where
clipped), minus β ∂k/∂log π(a_i|s) when the KL is in the loss. At the first step of an
iteration the ratio is 1 and nothing is clipped, and as the batch grows the mean over s's
samples tends to the expectation given s (each visit draws a ~ π(·|s) afresh, whatever
came before). The expected update of state s is therefore (terminal states, where the
episodes end, are never sampled: F = 0 there, and every target keeps the start policy)

    F(s,a) = π(a|s) [X(s,a) − Σ_b π(b|s) X(s,b)],    X(s,a) = E[coef | s, a].

*The state weighting does not move fixed points*: standard PPO's sample average weights
state s by its visit frequency, exact PPO by d(s)/(1−γ), SampledPPO by 1; each multiplies
F(s,·) by a positive w(s), and w(s)F(s,·) = 0 exactly where F(s,·) = 0. (The path and the
stability can change; the target is the limit lr → 0, batch → ∞: a constant ``lr`` leaves
a noise floor around it.)

**2. The advantage forms and their scale c.** With the critic at its own fixed point
(V = V^π on the rewards it is trained on), E[Â^GAE_t | s, a] = Q(s,a) − V(s): the TD
errors after t have mean zero. ``reinforce`` has E[G | s, a] = Q(s,a); a baseline b(s)
changes nothing since Σ_a π(a|s)(e_a − π) = 0. The group forms use the returns G_1..G_G of
the G members of a group (independent episodes from one start state). Member j's return
does not depend on member i's action, so E[G_j (e_{a_i} − π)] = E[G_j]·E[e_{a_i} − π] = 0:

    rloo     G_i − (1/(G−1)) Σ_{j≠i} G_j              → c = 1
    dr_grpo  G_i − (1/G) Σ_j G_j = ((G−1)/G) G_i − (1/G) Σ_{j≠i} G_j  → c = (G−1)/G

(``advantage_scale``; the tests check (G−1)/G by simulation). So X = c·A_R − β φ·[loss],
A_R the advantage of the rewards the returns are built from. ``grpo`` divides by the
group's standard deviation, which depends on G_i itself: E[(G_i − Ḡ)/σ · (e − π)] is no
multiple of the above and depends on the return noise — no fixed target. ``whiten``
standardises over the batch: subtracting the batch mean changes nothing, dividing by the
batch std σ scales the advantage part by 1/σ; with the KL in the reward that scales all of
F (same target), with the KL in the loss it sets the balance of advantage and KL by σ,
the spread of the sampled advantages including the return noise — no fixed target. The
critic-free forms use returns cut at the horizon H (no bootstrap): a sample at step t sees
the (H − t)-step return, whose advantage is that of the finite-horizon problem. The
targets therefore hold when every episode ends before H (episodic MDPs; SampledPPO's
default horizon covers the longest episode there), and on a continuing MDP only up to the
last ~1/(1−γ) steps of every episode, however large H (on a 6-state garnet at γ = 0.6 the
per-step rloo update at the target is off by ~2e-3 in logits, not shrinking with the
batch). GAE bootstraps from the critic and has no such bias.

*Per step or per sequence.* The forms above at ``advantage_level="step"`` use the
reward-to-go G_t of the sample's own step t. At ``"sequence"`` (GRPO as practised: one
advantage for every token of a response) every step of member i carries the same
statistic of the whole-episode returns G_{0,j}. Write G_{0,i} = P_t + γ^t G_{t,i}, P_t the
discounted rewards before step t: they were earned before a_t was drawn, so
E[P_t (e_{a_t} − π) | history] = 0, and the step-t sample sees X = c·γ^t·A_R. As t is not
a function of s in general, the update of state s is c·w(s)·π(A_R − …) with
w(s) = E[γ^t | s visited at t] > 0 — which depends on when π visits s. A positive factor
per state moves no fixed point of an update made of the advantage part alone (k1 in the
reward, no KL, k2/k3 in the reward: stationarity and the stability condition of §5 are
both invariant), so those targets are the same at both levels. With a loss-placed KL or an
entropy bonus (§6) the factor sets the balance between advantage and loss term state by
state: the target then exists when every state has one depth t(s) from the start states
(trees, token MDPs; :func:`depths` checks it), with w(s) = γ^{t(s)} — τ = β/(c·γ^{t(s)})
in §3 — and at γ = 1 (w = 1); elsewhere NoTargetError. ``m(s) = c·w(s)`` below.

**3. KL in the loss** (GRPO). The returns are built from the plain rewards, so A_R = A^π;
φ_a = ∂k/∂log π(a|s) at the sample is 1 (k1), ℓ_a (k2), 1 − 1/w_a (k3), and

    π_a (φ_a − Σ_b π_b φ_b) = 0                                          (k1)
                            = π_a (ℓ_a − Σ_b π_b ℓ_b) = ∂KL(π‖π_ref)/∂θ(s,a)   (k2)
                            = π_a − π_ref,a             = ∂KL(π_ref‖π)/∂θ(s,a)   (k3)

(for k3 use Σ_b π_b (1 − π_ref,b/π_b) = 0). Hence F(s,·) is the softmax gradient of
c⟨p, Q^π(s,·)⟩ − β D(p ‖ π_ref(·|s)) at p = π(·|s) with Q^π frozen, D = KL(p‖π_ref) (k2),
KL(π_ref‖p) (k3), 0 (k1). For β > 0 this is strictly concave in p, and a softmax
gradient vanishes iff the gradient in p is constant over the actions, so the fixed points
are exactly

    π(·|s) = argmax_p ⟨p, c·Q^π(s,·)⟩ − β D(p ‖ π_ref(·|s)) = greedy_{D,τ}(Q^π(s,·)),  τ = β/c,

Q^π on the PLAIN rewards: π ∝ π_ref exp(Q^π/τ) (k2) and π_a = τ π_ref,a/(ν − Q^π_a) (k3,
SPEC §1's forward-KL greedy step), a fixed point and not an optimum (the divergence of
later states never enters Q^π). For k1 (or β = 0) the KL does nothing: the target is the
plain optimum (a deterministic policy, approached and never reached by the softmax).

*Computation.* Plain iteration π ← g(Q^π), g = greedy_{D,τ} (policy iteration with the
softened greedy step, Q^π by :func:`fastppo.evaluate`), until max|Δπ| ≤ 10⁻⁸; then
Newton's method. Such a π is fixed by its values: V = V^π satisfies
V(s) = h_s(Q_V) := Σ_a g_a(Q_V(s,·)) Q_V(s,a), Q_V = r + γPV: S equations
V − h(r + γPV) = 0, with the Jacobian I − γ W P,

    W(s,a) = ∂h_s/∂Q(s,a) = g_a + (ĉ_a/τ) (Q_a − Σ_b ĉ_b Q_b / Σ_b ĉ_b),  ĉ_a = π_ref,a/f''(w_a)

(g_a = π_ref,a (f')^{-1}((Q_a − ν)/τ), so ∂g_a/∂Q_b = (ĉ_a/τ)(δ_ab − ∂ν/∂Q_b), and
Σ_a g_a = 1 gives ∂ν/∂Q_b = ĉ_b/Σĉ; ĉ = g for reverse KL, g²/π_ref for forward KL; plain
iteration is this Newton step with W replaced by π). Each Newton system is solved
matrix-free by GMRES on products with P (no S × S matrix), with a backtracking line search
on ‖V − h‖∞. Plain iteration settled in every case tried; Newton alone can stall at a fold
of these equations (from π_ref on ``garnet(8, 3, 2, gamma=0.99, seed=3, locality=2)`` at
τ = 0.3). Where plain iteration does not settle and Newton stalls, the expected-update
flow θ ← θ + hF (h as in §5) leads from SampledPPO's start until Newton converges. The
result is certified with the library's exact operations: ``residual`` =
max_{s,a} |π − g(Q^π)| with Q^π from :func:`fastppo.evaluate`.

*Uniqueness.* The per-state problems are concave, but the coupling through Q^π is not
monotone: the fixed point need not be unique. On ``garnet(20, 3, 2, gamma=0.99, seed=3,
locality=2)`` with k2 in the loss and τ = 0.3 there are several, at state-wise total
variation up to 0.9 from one another. Each result is checked from several starts
(SampledPPO's start, random logits, the regularized optimum with the same D and τ); when
they disagree, the target is the fixed point the expected-update flow reaches from
SampledPPO's start (the path of SampledPPO as lr → 0 and the batch grows), and ``spread``
says how far the others are.

**4. k1 in the reward** (InstructGPT). Returns from r − βℓ: Q_R(s,a) = Q̃(s,a) − βℓ_a and
V_R = Σ_a π_a Q_R = Ṽ (SPEC §1 with f = x log x, τ = β), so F = c·π(Q̃ − βℓ − Ṽ) =
c·π(Ã − β(ℓ − Σπℓ)) — c(1−γ)/d(s) times the exact gradient. F = 0 iff
Q̃_a − β log(π_a/π_ref,a) is constant over a, i.e. π ∝ π_ref exp(Q̃/β): SPEC §1's regularized
optimum with τ = β, for every c. Unique (the regularized Bellman operator is a
γ-contraction); computed by :func:`fastppo.solve`.

**5. k2 and k3 in the reward.** The penalty βk(w_a) enters the returns and is
differentiated only through the score function. Q_R(s,a) = Q̂(s,a) − βk(w_a) with
Q̂ = r + γP V_R and V_R = (I − γP_π)^{-1}(r_π − β Σ_a π_a k(w_a)) (for k3 Σ_a π_a k3 =
KL(π‖π_ref), so V_R = Ṽ and Q̂ = Q̃), and F = c·π(Q_R − V_R). Stationarity (full support):

    Q̂(s,a) − β k(w_a) = V_R(s)  for every a,   i.e.  w_a = k^{-1}((Q̂(s,a) − V_R(s))/β),

which needs V_R(s) ≤ min_a Q̂(s,a) and has two roots per action: k decreases on (0, 1) and
increases on (1, ∞) (k2 = ½ log²w, k3 = 1/w − 1 + log w), unlike f' of a convex f. Which
are stable? With Q̂ frozen, F(s,·) = c ∇_θ Φ_s with
Φ_s(p) = ⟨p, Q̂(s,·)⟩ − β Σ_a π_ref,a K(p_a/π_ref,a) and K' = k: K(w) = w(½ℓ² − ℓ + 1) − 1
for k2, (1 + w) log w − 2(w − 1) for k3. K'' = k' < 0 on (0, 1): below the reference K is
concave, D_K is no divergence and Φ_s is not concave.
A stationary point attracts the update iff it is a strict local maximum of Φ_s, i.e. the
Hessian −β diag(h), h_a = k'(w_a)/π_ref,a, is negative definite on Σ_a δ_a = 0: iff at most
one h_a < 0 (at most one action below its reference probability) and, if one, Σ_a 1/h_a < 0.

- *Uniform π_ref: no stable interior point.* With one action j below (w_a > 1 for a ≠ j,
  Σ_a (w_a − 1) = 0) the condition reads Σ_{a≠j} w_a²/(w_a − 1) < w_j²/(1 − w_j) for k3;
  the left side is > Σ_{a≠j} 1/(w_a − 1) ≥ (n−1)²/(1 − w_j) ≥ 1/(1 − w_j) (Cauchy–Schwarz)
  and the right side < 1/(1 − w_j): impossible for n ≥ 2 actions. For k2 the terms are
  w_a/log w_a > 1/(w_a − 1) and w_j/(−log w_j) < 1/(1 − w_j), and the same holds. (Two or
  more actions below their reference: a saddle; none: π = π_ref, degenerate.)
- *Every deterministic policy attracts it.* The logit of a rare action b falls at the rate
  βπ_ref,b however rare b is, for k3 (π_b k3(w_b) → π_ref,b); for k2 its update
  π_b(Q̂_b − ½βℓ_b² − V_R) stays negative once ½βℓ_b² exceeds Q̂_b − V_R: rare actions
  keep falling.

So reward-placed k2 and k3 drive the policy toward deterministic policies, which one
depending on the path and the sampling noise: a 3-armed bandit r = (1, ½, 0) with uniform
π_ref and β = 1 ends at (1, 0, 0) with k2 or k3 in the reward (k1: (0.506, 0.307, 0.186)).
With a non-uniform π_ref stable interior points can exist: with two actions, iff the
action above its reference probability is the less likely one; e.g. r = (0.1, 0),
π_ref = (0.2, 0.8), β = 1, k3: stationary p_1 ∈ {0.131, 0.341, 0.616}, and only 0.341 is
stable (SampledPPO lands there).

*Computation.* The module follows the expected update itself, θ ← θ + hF with the exact
Q_R (:func:`fastppo.evaluate` on the penalised rewards) and h = ½/(β + c·max|Q̂ − V_R|)
(the Jacobian of F is bounded by about the denominator, which stays bounded as actions
collapse while A_R = Q̂ − βk − V_R does not), from
SampledPPO's start (``init`` or π_ref, nudged by a seeded 10⁻³ perturbation of the logits
so that a symmetric unstable point is not taken for a limit). When ‖F‖∞ ≤ 10⁻⁶,
Newton–Krylov on the equations F = 0 (one logit per state fixed) polishes it to ``tol``
and the stability condition above is checked at every state (``stable``). When an action
falls below 10⁻⁴ of its reference probability and is still falling, no fixed point lies
ahead: :class:`NoTargetError`, naming the pair. Each step is one exact evaluation, on an
MDP rebuilt with the penalised rewards: meant for small and medium MDPs.

**6. Entropy bonus** (``ent_coef`` = α). The loss gains −α H(π(·|s)) per sample of s;
∂H/∂θ(s,a) = −π_a (log π_a + H), i.e. X gains −α log π_a: the bonus is the loss-placed
penalty α KL(π‖uniform) (= α(log n − H)). It never enters the returns, so — like a
loss-placed KL — it gives a fixed point, not an optimum. Per state (Q frozen) the update
is the softmax gradient of m⟨p, Q⟩ − Ω_s(p) with

    Ω_s(p) = m β_R KL(p‖π_ref) + β_L D(p‖π_ref) + α KL(p‖uniform),

β_R = β for k1 in the reward (Q = Q̃^π, the returns carry the KL), β_L = β for k2 / k3
in the loss (D = reverse / forward KL, Q = Q^π plain), zero otherwise. Sums of reverse
KLs merge: with a = m β_R + β_L and b = a + α,

    π(·|s) ∝ π_ref^{a/b} exp(m Q(s,·)/b),    i.e. greedy_{KL(·‖π_ref^{a/b}), b/m}(Q),

so k1 in the loss (or β = 0) with α > 0 gives π = softmax(m Q^π/α), k2 in the loss
π ∝ π_ref^{β/(β+α)} exp(m Q^π/(β+α)), k1 in the reward π ∝ π_ref^{mβ/(mβ+α)}
exp(m Q̃^π/(mβ+α)) (back to the regularized optimum as α → 0). k3 in the loss with α
has no closed form: stationarity m Q_a + β π_ref,a/p_a − α(log p_a + 1) = ν gives
p_a = k_a/ω(log k_a − y_a/α), k_a = β π_ref,a/α, y_a = m Q_a − α − ν, ω the Wright
omega function (``scipy.special.wrightomega``), and ν by Newton's method on Σ_a p_a = 1
(convex and decreasing in ν, started where the best action has p = 1). All are computed
as in §3 with h_s = Σ_a g_a (Q_a − β_R log(g_a/π_ref,a)) and
W = g + m ĉ (y − Σĉy/Σĉ), y = Q − β_R log(g/π_ref), ĉ_a = 1/Ω''_s(g)_a per unit m
(g/b for the merged reverse KL, g²/(β π_ref + α g) for k3 with α). With k2 / k3 in the
reward the flow of §5 carries the term; the stability condition becomes: with
D_a = m β h_a + α/π_a, at most one D_a < 0 and then Σ_a 1/D_a < 0 (all D_a > 0: Φ_s is
concave, stable).

**7. Reward processing.** ``reward_clip`` clips every environment reward (before the KL
penalty, as OpenRLHF's ``reward_clip_range``): the rewards are deterministic per pair, so
the target is that of the MDP with clipped rewards (``reward_clip`` of the result says so;
``J_plain`` / ``J_reg`` stay on the MDP's own rewards). ``reward_norm`` standardises the
episode scores by the batch mean μ and std σ (``fastppo.process_rewards``): 1/σ sets the
balance with the KL or entropy term by the return noise, and at γ < 1 the shift −μ/σ on
an episode's last step is discounted by its length: no fixed target — except without KL
and entropy bonus at γ = 1, where every episode's return moves by the same affine map and
the plain optimum stays.

**8. Metrics.** At a fixed point no "gap" is defined (it maximises nothing); report the
d-weighted total variation Σ_s d^π_ρ(s) · ½ Σ_a |π(a|s) − π*(a|s)| (:func:`tv_distance`;
d on the non-terminal states)
and both objectives: ``J_plain`` = Σ_s ρ(s) V^π(s) and ``J_reg`` = Σ_s ρ(s) Ṽ^π(s) with the
regularizer given (SampledPPO's ``J``). Episodic MDPs (γ = 1) go through
:func:`fastppo.evaluate` and :func:`fastppo.solve` like the rest (one topological pass
each, ``fastppo._episodic``); d is then the visits over the expected episode length.
"""
import warnings

import numpy as np
import scipy.sparse.linalg as spla
from scipy.special import wrightomega

from . import _validation as V
from ._backend import get_kernel, resolve_backend, resolve_threads
from ._codes import FORWARD_KL
from ._errors import ConvergenceWarning
from ._krylov import ConvergenceError
from ._result import Result
from .evaluation import evaluate, visitation
from .mdp import MDP
from .regularizers import ForwardKL, ReverseKL

__all__ = ["NoTargetError", "SampledTarget", "advantage_scale", "expected_update",
           "sampled_target", "tv_distance"]

KL_ESTIMATORS = ("k1", "k2", "k3")
ADVANTAGES = ("gae", "grpo", "dr_grpo", "rloo", "reinforce")
LEVELS = ("sequence", "step")
_GROUPED = ("grpo", "dr_grpo", "rloo")
LIN_TOL = 1e-13           # relative residual of every exact evaluation here
FLOW_TO_NEWTON = {"reward": 1e-6, "loss": 1e-4}  # relative ‖F‖∞ at which the flow hands
                                                 # over to Newton (shallow basins: reward)
COLLAPSE = 1e-4           # w below which a still-falling action is taken as collapsing
NUDGE = 1e-3              # seeded perturbation of the flow's start logits
_LOG_W_MIN = -700.0       # k3 = e^{-ℓ} − 1 + ℓ stays finite


class NoTargetError(ValueError):
    """The variant has no fixed target: its expected update has no (attracting) fixed point,
    or depends on quantities outside the MDP (the sampling noise)."""


class _NewtonStall(ConvergenceError):
    """Newton's method found no descent direction (a fold of the equation nearby)."""


class SampledTarget(Result):
    """Result of :func:`sampled_target`.

    Attributes
    ----------
    policy : ndarray of the MDP's table shape
        The target π* (for rectangular MDPs (S, A), else (n_pairs,)).
    J_plain, J_reg : float
        Σ_s ρ(s) V^π*(s) on the plain rewards, and Σ_s ρ(s) Ṽ^π*(s) with the regularizer given
        (``J_reg == J_plain`` without one): the ``J`` SampledPPO's history reports.
    kind : {"optimum", "fixed point"}
    objective : str
        What the target is, in words.
    divergence : {"none", "reverse-kl", "forward-kl", "forward-kl+entropy", "k2-reward", "k3-reward"}
        The per-state penalty of the fixed-point condition ("reverse-kl" also for an entropy
        bonus, a KL to uniform, alone or merged with a reverse KL, §6).
    tau : float
        Its weight: β/c in the loss, β in the reward (0 for the plain optimum); with an
        entropy bonus α that of the merged reverse KL, β_R + (β_L + α)/c (§6).
    kl_coef, scale, ent_coef : float
        β, the advantage scale c and the entropy bonus α.
    advantage_level : {"sequence", "step"}
        The advantage level it was computed for (module §2).
    reward_clip : (float, float) or None
        The reward range the target was computed on, when clipping changed a reward.
    method : str
        How it was computed: "solve"; "iteration+newton", "newton" or "flow+newton"
        (module docstring §3); "flow+newton-krylov" (§5).
    residual : float
        Fixed-point residual over the non-terminal states. Reverse-KL optimum and loss
        placement: max_{s,a} |π* − G(π*)|, G the map π ↦ greedy(Q^π) of the fixed-point
        condition (Q̃^π for the optimum), Q^π by :func:`fastppo.evaluate`. Plain optimum:
        max_s (max_a Q^π*(s,a) − V^π*(s)) (reward units; ties make π* non-unique).
        Reward-placed k2/k3: max_{s,a} |F(s,a)|, the expected update (reward units).
    update_norm : float
        max_{s,a} |F(s,a)| of :func:`expected_update` at π* (every kind).
    converged : bool
        ``residual <= tol * max(1, max|Q^π*|)``: a relative error ε of the exact values moves
        the greedy step by about ε·max|Q|/τ, so the attainable residual scales with |Q|
        (as ``solve``'s tolerance scales with |V|).
    n_iter : int
        Steps from SampledPPO's start: policy-iteration steps of ``solve``; plain-iteration,
        flow and Newton steps (§3); flow and Newton–Krylov steps (§5).
    spread : float
        Largest state-wise total variation max_s ½‖π_j(·|s) − π*(·|s)‖₁ between π* and the
        fixed points reached from the other starts: 0 up to round-off when they all agree;
        ``inf`` when (reward-placed k2/k3) the flow from another start collapses to the
        boundary, i.e. that start is in the basin of a deterministic policy. 0 for the
        "optimum" kinds (unique by contraction).
    starts : dict
        Start name → that state-wise total variation; ``nan`` where Newton's method found
        nothing from that start within ``max_iter`` steps (only SampledPPO's own start
        falls back to the expected-update flow, which is slower).
    stable : bool or None
        Reward-placed k2/k3: the per-state stability condition (§5) holds; else None.
    """




def advantage_scale(advantage, group_size=None):
    """The scale c of an advantage form: E[Â (e_a − π) | s] = c · π(a|s) A(s,a) (module §2).

    Parameters
    ----------
    advantage : {"gae", "dr_grpo", "rloo", "reinforce"}
    group_size : int, optional
        G, for ``dr_grpo`` (default 8, as SampledPPO).

    Returns
    -------
    float
        1 for gae, rloo and reinforce; (G − 1)/G for dr_grpo.

    Raises
    ------
    NoTargetError
        For ``grpo`` (its division by the group's std has no fixed scale).
    """
    V.check_choice(advantage, "advantage", ADVANTAGES)
    if advantage == "grpo":
        raise NoTargetError(
            "advantage='grpo' has no fixed target: dividing by the group's standard deviation "
            "correlates with each member's own return, so the expected update is no multiple "
            "of the policy gradient and depends on the return noise; use 'dr_grpo' or 'rloo'")
    if advantage != "dr_grpo":
        return 1.0
    g = V.check_int(8 if group_size is None else group_size, "group_size", minimum=2)
    return (g - 1.0) / g


def resolve_level(advantage, level):
    """The advantage level of a SampledPPO configuration: ``level``, or by default
    "sequence" for grpo (GRPO as practised) and "step" for the others; "sequence" with gae
    is rejected (GAE is per step)."""
    if level is None:
        return "sequence" if advantage == "grpo" else "step"
    V.check_choice(level, "advantage_level", LEVELS)
    if level == "sequence" and advantage == "gae":
        raise ValueError("advantage_level='sequence' applies to the critic-free advantages "
                         "(grpo, dr_grpo, rloo, reinforce); gae is per step")
    return level


def check_reward_clip(reward_clip):
    """None, or (low, high) with low < high from a number c > 0 (meaning (−c, c)) or a pair."""
    if reward_clip is None:
        return None
    if np.ndim(reward_clip) == 0:
        c = V.check_positive(reward_clip, "reward_clip")
        return -c, c
    if np.shape(reward_clip) != (2,):
        raise ValueError(f"reward_clip must be a number c > 0 or a pair (low, high), got "
                         f"{reward_clip!r}")
    low, high = (V.check_finite_float(x, "reward_clip") for x in reward_clip)
    if not low < high:
        raise ValueError(f"reward_clip must have low < high, got ({low}, {high})")
    return low, high


def _lognormalize(mdp, x):
    """Per-state log-softmax of a per-pair array (log-sum-exp, no underflow)."""
    starts = mdp.a_indptr[:-1]
    s = mdp.s_indices
    shifted = x - np.maximum.reduceat(x, starts)[s]  # exact; keeps Σ exp = 1 to round-off
    return shifted - np.log(np.add.reduceat(np.exp(shifted), starts))[s]


def depths(mdp):
    """Depth t(s) of every state reached from ρ (its support; terminal states excluded),
    −1 where unreached; None if some state is reached at two depths (or on a cycle).

    A breadth-first pass over the transition graph, one vectorised step per depth."""
    depth = np.full(mdp.n_states, -1, dtype=np.int64)
    frontier = np.flatnonzero((mdp.rho > 0) & ~mdp.terminal)
    t = 0
    while frontier.size:
        if (depth[frontier] >= 0).any():
            return None
        depth[frontier] = t
        pairs = _ranges(mdp.a_indptr[frontier], mdp.a_indptr[frontier + 1])
        nnz = _ranges(mdp.p_indptr[pairs], mdp.p_indptr[pairs + 1])
        succ = np.unique(mdp.p_indices[nnz][mdp.p_data[nnz] > 0])
        frontier = succ[~mdp.terminal[succ]]
        t += 1
    return depth


def longest_episode(mdp):
    """Steps of the longest episode from ρ's support when every episode ends (the
    non-terminal states form a DAG, ``MDP.topological_order``), else None.

    One vectorised step per level: the states reachable in exactly t steps."""
    if not mdp.terminal.any():
        return None
    try:
        mdp.topological_order
    except ValueError:
        return None
    frontier = np.flatnonzero((mdp.rho > 0) & ~mdp.terminal)
    t = 0
    while frontier.size:
        t += 1
        pairs = _ranges(mdp.a_indptr[frontier], mdp.a_indptr[frontier + 1])
        nnz = _ranges(mdp.p_indptr[pairs], mdp.p_indptr[pairs + 1])
        succ = np.unique(mdp.p_indices[nnz][mdp.p_data[nnz] > 0])
        frontier = succ[~mdp.terminal[succ]]
    return t


def _ranges(lo, hi):
    """Concatenation of arange(lo[i], hi[i]) (vectorised)."""
    lengths = hi - lo
    out = np.repeat(lo - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return out + np.arange(int(lengths.sum()))


class _Problem:
    """A SampledPPO configuration resolved for the computations of this module.

    ``mdp`` (rewards clipped), ``ref`` (π_ref per pair), ``beta``, ``c``, ``alpha`` (the
    entropy bonus), ``kind`` ("plain", "reverse-optimum", "loss-reverse", "loss-forward",
    "k2-reward", "k3-reward"), ``m`` = c·w per pair (w = γ^t(s) for sequence-level
    advantages where it matters, module §2), ``opts`` (backend, threads)."""

    def __init__(self, mdp, ref, beta, c, alpha, kind, w, opts, weighted=False, clip=None):
        self.mdp, self.ref, self.beta, self.c, self.alpha, self.kind = mdp, ref, beta, c, alpha, kind
        self.m = c * w[mdp.s_indices]
        self.opts, self.weighted, self.clip = opts, weighted, clip
        self.reward = kind in ("k2-reward", "k3-reward")
        # the fixed point π = g(Q^π) of §3 (loss KL, or any entropy bonus outside §5)
        self.greedy_fixed_point = kind in ("loss-reverse", "loss-forward") or (
            alpha > 0 and kind in ("plain", "reverse-optimum"))
        self.beta_R = beta if kind == "reverse-optimum" else 0.0   # k1 in the returns
        self.forward = kind == "loss-forward"
        self.beta_L = beta if kind in ("loss-reverse", "loss-forward") else 0.0

    # ---------------------------------------------------------------- evaluations
    def q_values(self, pi):
        """Q the fixed-point condition is greedy in: Q^π (plain rewards), or Q̃^π with β KL in
        the returns (k1 in the reward)."""
        reg = ReverseKL(self.beta_R, self.ref) if self.beta_R > 0 else None
        return self.mdp.to_pairs(evaluate(self.mdp, self.unpenalised_terminals(pi), reg,
                                          tol=LIN_TOL, **self.opts).q)

    def unpenalised_terminals(self, pi):
        """π with π_ref in the terminal states: SampledPPO's episodes end there, so no KL is
        sampled there (absorbing with zero reward, their policy enters only through the KL)."""
        if not self.mdp.terminal.any():
            return pi
        return np.where(self.mdp.terminal[self.mdp.s_indices], self.ref, pi)

    # ---------------------------------------------------------------- greedy maps
    def greedy(self, q):
        """(g, W, y): per state g = argmax_p ⟨p, m q⟩ − m β_R KL(p‖π_ref) − β_L D(p‖π_ref)
        − α KL(p‖uniform), the Newton weights W = ∂h/∂Q of h_s = Σ_a g_a y_a, and
        y = q − β_R log(g/π_ref) (module §3)."""
        mdp, m, ref = self.mdp, self.m, self.ref
        s, starts = mdp.s_indices, mdp.a_indptr[:-1]
        if not self.forward:
            a = m * self.beta_R + self.beta_L          # weight of KL(·‖π_ref), per pair
            b = a + self.alpha                         # of KL(·‖π_ref^{a/b}) overall
            g = np.exp(_lognormalize(mdp, (a / b) * np.log(ref) + m * q / b))
            chat = g / b                               # 1/Ω'' per unit m
        elif self.alpha == 0.0:
            g = np.empty(mdp.n_pairs)
            get_kernel("greedy_policy", self.opts["backend"])(
                mdp.a_indptr, m * q / self.beta_L, ref, FORWARD_KL, 0.0, 1.0, g, np.empty(mdp.n_states),
                self.opts["n_threads"])
            chat = g * g / (self.beta_L * ref)
        else:
            g = self._forward_entropy_greedy(q)
            chat = g * g / (self.beta_L * ref + self.alpha * g)
        y = q if self.beta_R == 0.0 else q - self.beta_R * (np.log(g) - np.log(ref))
        ybar = np.add.reduceat(chat * y, starts) / np.add.reduceat(chat, starts)
        return g, g + m * chat * (y - ybar[s]), y

    def _forward_entropy_greedy(self, q):
        """argmax_p ⟨p, m q⟩ − β KL(π_ref‖p) − α Σ p log p per state: p_a = k_a/ω(log k_a − y_a/α),
        k_a = β π_ref,a/α, y_a = m q_a − α − ν (ω the Wright omega function), with ν by
        Newton's method from the left (Σ p is convex and decreasing in ν)."""
        mdp, alpha, beta = self.mdp, self.alpha, self.beta_L
        s, starts = mdp.s_indices, mdp.a_indptr[:-1]
        mq = self.m * q
        log_k = np.log(beta * self.ref / alpha)
        best = np.maximum.reduceat(mq, starts)
        is_best = mq == best[s]
        ref_best = np.maximum.reduceat(np.where(is_best, self.ref, 0.0), starts)
        nu = best - alpha + beta * ref_best          # p = 1 at a best action: Σ p ≥ 1

        def probabilities(nu):
            y = mq - alpha - nu[s]
            x = log_k - y / alpha
            with np.errstate(over="ignore", under="ignore"):
                small = x < -600.0                    # ω(x) = e^x there: p = e^{y/α}
                p = np.where(small, np.exp(np.minimum(y / alpha, 700.0)),
                             np.exp(log_k) / wrightomega(np.where(small, 0.0, x)))
            return p

        for _ in range(200):
            p = probabilities(nu)
            excess = np.add.reduceat(p, starts) - 1.0
            chat = p * p / (beta * self.ref + alpha * p)
            if np.max(np.abs(excess)) <= 1e-15:
                break
            nu = nu + excess / np.add.reduceat(chat, starts)
        p = probabilities(nu)
        return p / np.add.reduceat(p, starts)[s]

    def greedy_residual(self, pi):
        """max |π − g(Q^π)| over the non-terminal states, Q^π by fastppo.evaluate."""
        g, _, _ = self.greedy(self.q_values(pi))
        return float(np.max(np.abs(pi - g), initial=0.0,
                            where=~self.mdp.terminal[self.mdp.s_indices]))

    # ---------------------------------------------------------------- the update
    def field(self, pi):
        """(F, spread) of module §1 at π, flat (n_pairs,): F = 0 on pairs with π = 0 and in
        terminal states (SampledPPO's episodes end there: it never updates them); spread
        bounds the advantage part of the Jacobian of F (the flow's step, ``_flow``)."""
        mdp, beta, m = self.mdp, self.beta, self.m
        live = (pi > 0) & ~mdp.terminal[mdp.s_indices]
        with np.errstate(divide="ignore"):
            log_pi = np.where(live, np.log(np.where(live, pi, 1.0)), 0.0)
        log_w = np.where(live, log_pi - np.log(self.ref), 0.0)
        if self.reward:
            a = mdp.to_pairs(_penalised_evaluation(self, pi, log_w).adv)
            x = m * a
            spread = float(np.max(np.abs(m * (a + beta * _k_value(self.kind, log_w)))))
        elif self.kind == "reverse-optimum":
            a = mdp.to_pairs(evaluate(mdp, self.unpenalised_terminals(pi), ReverseKL(beta, self.ref),
                                      tol=LIN_TOL, **self.opts).adv)
            x = m * (a - beta * log_w)  # m (Q_R − V_R) up to a per-state constant
            spread = float(np.max(np.abs(m * a)))
        else:
            a = mdp.to_pairs(evaluate(mdp, pi, tol=LIN_TOL, **self.opts).adv)
            x = m * a
            spread = float(np.max(np.abs(x)))
            if self.kind == "loss-reverse":
                x = x - beta * log_w
            elif self.kind == "loss-forward":  # φ = 1 − 1/w
                x = x - beta * (1.0 - np.exp(-np.maximum(log_w, _LOG_W_MIN)))
        if self.alpha:
            x = x - self.alpha * log_pi
        mean = np.add.reduceat(pi * x, mdp.a_indptr[:-1])
        return np.where(live, pi * (x - mean[mdp.s_indices]), 0.0), spread

    def objective(self):
        """What the target is, in words (ASCII)."""
        text = self._objective()
        if self.clip is not None:
            text += f" (rewards clipped to [{self.clip[0]:g}, {self.clip[1]:g}])"
        return text

    def _objective(self):
        cw = "c w" if self.weighted else "c"
        w = (" (w = gamma^t(s), t(s) the depth of s: sequence-level advantages)"
             if self.weighted else "")
        ent = " - alpha KL(p || uniform)" if self.alpha else ""
        if self.kind == "plain" and not self.alpha:
            return ("the optimum of the plain MDP (beta = 0, or k1 in the loss: no expected KL "
                    "gradient)")
        if self.kind == "reverse-optimum" and not self.alpha:
            return "the optimum of J = sum rho V~ with tau KL(pi || pi_ref), tau = beta"
        if self.kind == "reverse-optimum":
            return (f"fixed point pi(.|s) = argmax_p <p, {cw} Q~^pi(s,.)> - {cw} beta "
                    f"KL(p || pi_ref){ent}, Q~^pi with beta KL(pi || pi_ref) in the returns (k1 "
                    f"in the reward, the entropy bonus in the loss){w}")
        if self.greedy_fixed_point:
            d = {"plain": "", "loss-reverse": " - beta KL(p || pi_ref)",
                 "loss-forward": " - beta KL(pi_ref || p)"}[self.kind]
            return (f"fixed point pi(.|s) = argmax_p <p, {cw} Q^pi(s,.)>{d}{ent}, Q^pi on the "
                    f"plain rewards{w}")
        return (f"attracting fixed point of the expected update with {self.kind[:2]} in the "
                f"reward: Q^(s,a) - beta k(pi/pi_ref) = V_R(s) for all a"
                + (" (with the entropy bonus)" if self.alpha else ""))


def _setup(mdp, reg, kl_coef, kl_estimator, kl_penalty, advantage, group_size, whiten,
           advantage_level=None, ent_coef=0.0, reward_clip=None, reward_norm=False):
    """(mdp, ref, beta, c, alpha, kind, w, clip, weighted) of a SampledPPO configuration:
    ``mdp`` with the rewards clipped (``clip`` the range in effect, None if it changes
    nothing), w the per-state weights of module §2."""
    if reg is not None and not isinstance(reg, ReverseKL):
        raise TypeError(f"reg must be ReverseKL or None (as for SampledPPO), got {type(reg).__name__}")
    V.check_choice(kl_estimator, "kl_estimator", KL_ESTIMATORS)
    V.check_choice(kl_penalty, "kl_penalty", ("reward", "loss"))
    V.check_choice(advantage, "advantage", ADVANTAGES)
    level = resolve_level(advantage, advantage_level)
    alpha = V.check_positive(ent_coef, "ent_coef", strict=False)
    clip = check_reward_clip(reward_clip)
    reward_norm = V.check_bool(reward_norm, "reward_norm")
    ref = mdp.uniform_policy() if reg is None else reg.reference_policy(mdp)
    beta = (0.0 if reg is None else reg.tau) if kl_coef is None else kl_coef
    beta = V.check_positive(beta, "kl_coef", strict=False)
    c = advantage_scale(advantage, group_size)
    if group_size is not None:
        V.check_int(group_size, "group_size", minimum=2 if advantage in _GROUPED else 1)
    if whiten and ((kl_penalty == "loss" and beta > 0) or alpha > 0):
        raise NoTargetError(
            "whiten=True with the KL in the loss (or an entropy bonus) has no fixed target: "
            "dividing the advantages by their batch standard deviation sets the balance between "
            "advantage and loss term by the spread of the sampled advantages (return noise "
            "included), no MDP quantity; with kl_penalty='reward' whitening only rescales the "
            "update")
    if beta == 0.0 or (kl_penalty == "loss" and kl_estimator == "k1"):
        kind = "plain"
    elif kl_penalty == "reward":
        kind = "reverse-optimum" if kl_estimator == "k1" else f"{kl_estimator}-reward"
    else:
        kind = "loss-reverse" if kl_estimator == "k2" else "loss-forward"
    if reward_norm and not (kind == "plain" and alpha == 0.0 and mdp.gamma == 1.0):
        raise NoTargetError(
            "reward_norm=True has no fixed target: the rewards are standardised by batch "
            "statistics of the sampled returns, which set the balance between reward and KL or "
            "entropy term (and, at gamma < 1, shift the return by an amount discounted by the "
            "episode's length); only without KL and entropy bonus at gamma = 1 does it leave the "
            "plain optimum in place")
    if clip is not None and ((mdp.r < clip[0]) | (mdp.r > clip[1])).any():
        mdp = MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data,
                  np.clip(mdp.r, *clip), mdp.gamma, mdp.rho, dtype=mdp.p_data.dtype)
    else:
        clip = None
    w = np.ones(mdp.n_states)
    weighted = (level == "sequence" and mdp.gamma < 1.0
                and (kind in ("loss-reverse", "loss-forward") or alpha > 0))
    if weighted:
        t = depths(mdp)
        if t is None:
            raise NoTargetError(
                "sequence-level advantages at gamma < 1 with a loss-placed KL or an entropy bonus "
                "have no fixed target on this MDP: every token's advantage carries the discount "
                "gamma^t of its step t, which weighs the advantage against the loss term, and "
                "here a state is reached at several depths t (module section 2); use "
                "advantage_level='step', or an MDP whose states each have one depth (token MDPs)")
        w = np.where(t >= 0, mdp.gamma ** np.maximum(t, 0), 1.0)
    return mdp, ref, beta, c, alpha, kind, w, clip, weighted


def _problem(mdp, reg, opts, **settings):
    mdp, ref, beta, c, alpha, kind, w, clip, weighted = _setup(mdp, reg, **settings)
    return _Problem(mdp, ref, beta, c, alpha, kind, w, opts, weighted, clip)


def _k_value(kind, log_w):
    """Per-sample estimate k2 = ½ℓ² or k3 = e^{−ℓ} − 1 + ℓ at ℓ = log w."""
    if kind == "k2-reward":
        return 0.5 * log_w * log_w
    log_w = np.maximum(log_w, _LOG_W_MIN)
    return np.expm1(-log_w) + log_w


def _k_prime_over_ref(kind, w, ref):
    """h_a = k'(w_a)/π_ref,a (the per-state Hessian of §5, up to −β)."""
    if kind == "k2-reward":
        return np.log(w) / w / ref
    return (w - 1.0) / (w * w) / ref


def _penalised_evaluation(pb, pi, log_w):
    """evaluate() on the rewards r − β k(w) (k2/k3 in the reward); pairs with π = 0 and
    terminal states (episodes end there: nothing is sampled) keep r."""
    mdp = pb.mdp
    penalised = (pi > 0) & ~mdp.terminal[mdp.s_indices]
    r = np.where(penalised, mdp.r - pb.beta * _k_value(pb.kind, log_w), mdp.r)
    shifted = MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data, r,
                  mdp.gamma, mdp.rho, dtype=mdp.p_data.dtype)
    return evaluate(shifted, pi, tol=LIN_TOL, **pb.opts)


def expected_update(mdp, pi, reg=None, *, kl_coef=None, kl_estimator="k1", kl_penalty="reward",
                    advantage="gae", group_size=None, advantage_level=None, ent_coef=0.0,
                    reward_clip=None, backend=None, n_threads=None):
    """SampledPPO's expected update per unit ``lr``, F(s,a) of the module docstring §1.

    F(s,a) = π(a|s) [X(s,a) − Σ_b π(b|s) X(s,b)], X = c·w(s)·A_R − β φ (loss placement)
    − α log π (entropy bonus α = ``ent_coef``): the large-batch limit of the mean per-sample
    gradient of state s at the first step of an iteration, with an exact critic. Its zeros
    are the fixed points of every weighting of the states.

    Parameters
    ----------
    mdp : MDP
    pi : array_like of shape (n_pairs,) or (n_states, n_actions)
        Policy probabilities with full support (the estimators take log π).
    reg, kl_coef, kl_estimator, kl_penalty, advantage, group_size
        As for :class:`fastppo.SampledPPO`.
    advantage_level, ent_coef, reward_clip
        As for :class:`fastppo.SampledPPO` (``advantage_level="sequence"`` weighs state s by
        w(s) = γ^t(s) where that matters, module §2).
    backend, n_threads
        Kernel backend and threads.

    Returns
    -------
    ndarray of the shape of ``pi``
        In reward units per unit logit step; sums to 0 over each state's actions.
    """
    opts = dict(backend=resolve_backend(backend), n_threads=resolve_threads(n_threads))
    pb = _problem(mdp, reg, opts, kl_coef=kl_coef, kl_estimator=kl_estimator,
                  kl_penalty=kl_penalty, advantage=advantage, group_size=group_size, whiten=False,
                  advantage_level=advantage_level, ent_coef=ent_coef, reward_clip=reward_clip)
    flat = V.check_policy(mdp, pi)
    if not (flat > 0).all():
        k = int(np.argmax(flat <= 0))
        raise ValueError(f"pi must have full support (the KL estimators take log pi): "
                         f"{mdp.pair_name(k)} has probability 0")
    F, _ = pb.field(flat)
    return mdp.to_table(F, like=pi)


# ------------------------------------------------------------------ §3 fixed points
def _newton_fixed_point(pb, pi0, tol, max_iter):
    """The fixed point π = g(Q^π) of §3 by Newton's method on V (S unknowns).

    Returns (pi, residual, n_iter)."""
    mdp, P = pb.mdp, pb.mdp.P
    gamma, r, starts = mdp.gamma, mdp.r, mdp.a_indptr[:-1]
    n = mdp.n_states

    def equation(v):
        q = r + gamma * (P @ v)
        g, w, y = pb.greedy(q)
        return v - np.add.reduceat(g * y, starts), g, w

    reg = ReverseKL(pb.beta_R, pb.ref) if pb.beta_R > 0 else None
    v = evaluate(mdp, pi0, reg, tol=LIN_TOL, **pb.opts).v
    F, g, w = equation(v)
    norm = float(np.max(np.abs(F)))
    it = 0
    while norm > 1e-14 * max(1.0, float(np.max(np.abs(v)))):
        if it == max_iter:
            raise _NewtonStall(f"Newton's method did not converge in max_iter={max_iter} "
                               f"steps (|V - h| = {norm:.3g})")
        it += 1
        jac = spla.LinearOperator(
            (n, n), dtype=np.float64,
            matvec=lambda x, w=w: x - gamma * np.add.reduceat(w * (P @ x), starts))
        # inexact Newton: a relative residual of about |F| keeps quadratic convergence
        forcing = min(1e-2, max(1e-13, norm / max(1.0, float(np.max(np.abs(v))))))
        step, _ = spla.gmres(jac, -F, rtol=forcing, atol=0.0, restart=min(n, 60), maxiter=50)
        t = 1.0
        while t >= 1e-8:
            F_new, g_new, w_new = equation(v + t * step)
            norm_new = float(np.max(np.abs(F_new)))
            if norm_new < (1.0 - 1e-4 * t) * norm:
                break
            t *= 0.5
        else:
            if norm <= 1e-9 * max(1.0, float(np.max(np.abs(v)))):
                break  # the round-off floor of the equation
            raise _NewtonStall(
                f"Newton's method on the fixed-point equation V = h(r + gamma P V) found no "
                f"descent at step {it} (|V - h| = {norm:.3g})")
        v, F, g, w, norm = v + t * step, F_new, g_new, w_new, norm_new
    pi = g
    # certify with exact evaluations; polish by plain steps while they help (quadratic
    # error of Newton's V leaves g(Q_V) at the round-off of the greedy step)
    pi, residual = _polish(pb, pi, pb.greedy_residual(pi), tol, 3)
    return pi, residual, it


def _polish(pb, pi, residual, tol, steps):
    """Up to ``steps`` plain greedy steps from ``pi`` while they lower its greedy residual
    (above ``tol``); (pi, residual)."""
    for _ in range(steps):
        if residual <= tol:
            break
        new, _, _ = pb.greedy(pb.q_values(pi))
        new_res = pb.greedy_residual(new)
        if new_res >= residual:
            break
        pi, residual = new, new_res
    return pi, residual


def _plain_iteration(pb, pi, max_steps):
    """π ← g(Q^π) (policy iteration with the softened greedy step) until max|Δπ| ≤ 1e-8.
    Returns (pi, n_steps, converged)."""
    for n in range(1, max_steps + 1):
        new, _, _ = pb.greedy(pb.q_values(pi))
        step = float(np.max(np.abs(new - pi)))
        pi = new
        if step <= 1e-8:
            return pi, n, True
    return pi, max_steps, False


def _loss_fixed_point(pb, x0, tol, max_iter, flow_steps, follow=False):
    """The fixed point of §3 from logits x0: plain iteration, then Newton's method to
    polish (or from x0 if plain iteration does not settle in 10·max_iter steps). With
    ``flow_steps`` > 0 the expected-update flow leads the way: first (``follow``: the
    fixed point SampledPPO's path reaches) or when both stall, then again with a 100x
    tighter hand-over each time Newton stalls. Returns (pi, residual, n_iter, method);
    raises _NewtonStall."""
    n_flow, x, stop = 0, _lognormalize(pb.mdp, x0), 1.0
    if not follow:
        pi, n_plain, settled = _plain_iteration(pb, np.exp(x), 10 * max_iter)
        try:
            pi, residual, it = _newton_fixed_point(pb, pi if settled else np.exp(x), tol,
                                                   max_iter)
            if settled:
                return pi, residual, n_plain + it, "iteration+newton"
            return pi, residual, it, "newton"
        except _NewtonStall:
            if flow_steps == 0:
                raise
    while True:
        x, n = _flow(pb, x, flow_steps - n_flow, stop)
        n_flow += n
        try:
            pi, residual, it = _newton_fixed_point(pb, np.exp(x), tol, max_iter)
            return pi, residual, n_flow + it, "flow+newton"
        except _NewtonStall:
            stop *= 0.01


# --------------------------------------------------------- reward-placed k2 / k3
def _gauge(mdp):
    """Mask of free logits: all but the last action of each state."""
    free = np.ones(mdp.n_pairs, dtype=bool)
    free[mdp.a_indptr[1:] - 1] = False
    return free


def _stable(pb, log_pi):
    """The per-state stability condition of §5 (Q̂ frozen): with D_a = m β h_a + α/π_a, at
    most one D_a < 0 and then Σ 1/D_a < 0. Returns (all states pass, first failing state
    or −1)."""
    mdp, ref = pb.mdp, pb.ref
    w = np.exp(log_pi - np.log(ref))
    D = pb.m * pb.beta * _k_prime_over_ref(pb.kind, w, ref) + pb.alpha / np.exp(log_pi)
    starts = mdp.a_indptr[:-1]
    counts = np.diff(mdp.a_indptr)
    neg = np.add.reduceat((D < 0).astype(np.int64), starts)
    with np.errstate(divide="ignore"):
        inv = np.add.reduceat(1.0 / D, starts)
    # no negative D: Φ_s is concave there (α > 0), or π = π_ref (α = 0: D = 0, not strict);
    # terminal states are never updated
    ok = (counts == 1) | mdp.terminal | ((neg == 1) & (inv < 0)) | ((neg == 0) & (pb.alpha > 0))
    bad = np.flatnonzero(~ok)
    return bad.size == 0, int(bad[0]) if bad.size else -1


def _flow(pb, x, max_steps, stop=1.0):
    """Euler steps x ← x + hF of the expected update (§1) from logits x, until
    ‖F‖∞ ≤ stop · FLOW_TO_NEWTON · (β + α + spread). Returns (log π, n_steps).

    The step h = ½/(β + α + spread), spread = max|m Q̂| with Q̂ = Q_R − V_R + βk for k2/k3
    in the reward (bounded as actions collapse, unlike A_R ~ −βk), max|m A| otherwise:
    the Jacobian of F is bounded by about that sum. With k2/k3 in the reward, an action
    below COLLAPSE of its reference probability and still falling raises NoTargetError."""
    mdp = pb.mdp
    log_ref = np.log(pb.ref)
    x = _lognormalize(mdp, x)
    norm = np.inf
    scale = pb.beta + pb.alpha
    for n in range(max_steps + 1):
        F, spread = pb.field(np.exp(x))
        norm = float(np.max(np.abs(F)))
        if norm <= stop * FLOW_TO_NEWTON["reward" if pb.reward else "loss"] * (scale + spread):
            return x, n
        falling = (x - log_ref < np.log(COLLAPSE)) & (F < 0) if pb.reward else None
        if pb.reward and falling.any():
            k = int(np.argmax(falling))
            raise NoTargetError(
                f"kl_penalty='reward' with kl_estimator='{pb.kind[:2]}': the expected update "
                f"drives {mdp.pair_name(k)} to probability 0 (now {np.exp(x[k]):.3g}, "
                f"{np.exp(x[k] - log_ref[k]):.2g} of pi_ref, still falling) after {n} steps "
                f"of the flow: no fixed point lies ahead. This estimator in the reward acts as a "
                f"non-convex penalty that pushes rare actions down (fastppo.targets, section 5); "
                f"where SampledPPO ends depends on its path and noise")
        x = _lognormalize(mdp, x + 0.5 / (scale + spread) * F)
    hint = "; such runs typically drive actions to 0" if pb.reward else ""
    raise ConvergenceError(
        f"the expected update did not settle in flow_steps={max_steps} steps (|F| = {norm:.3g}, "
        f"smallest pi/pi_ref = {float(np.exp(np.min(x - log_ref))):.3g}){hint}")


def _reward_fixed_point(pb, x0, tol, flow_steps):
    """Follow the expected update from logits x0, then Newton–Krylov (§5).

    Returns (log_pi, residual, n_iter) or raises NoTargetError / ConvergenceError."""
    mdp = pb.mdp
    x, n_flow = _flow(pb, x0, flow_steps)
    free = _gauge(mdp)
    fixed = np.flatnonzero(~free)
    base = np.repeat(x[fixed], np.diff(mdp.a_indptr))

    def logits(y):
        z = np.zeros(mdp.n_pairs)
        z[free] = y
        return _lognormalize(mdp, z)

    def equations(y):
        return pb.field(np.exp(logits(y)))[0][free]

    from scipy.optimize import NoConvergence, newton_krylov  # here: a shorter import

    y = (x - base)[free]
    n_nk = 0
    if y.size:
        try:
            counter = {"n": 0}

            def cb(*_):
                counter["n"] += 1
            y = newton_krylov(equations, y, f_tol=tol, maxiter=50, callback=cb)
            n_nk = counter["n"]
        except NoConvergence as exc:
            y = exc.args[0]
    x = logits(y) if y.size else x
    residual = float(np.max(np.abs(pb.field(np.exp(x))[0])))
    return x, residual, n_flow + n_nk


# ------------------------------------------------------------------ public entry
def _state_tv(mdp, p, q):
    return float(np.max(0.5 * np.add.reduceat(np.abs(p - q), mdp.a_indptr[:-1])))


def sampled_target(mdp, reg=None, *, kl_coef=None, kl_estimator="k1", kl_penalty="reward",
                   advantage="gae", group_size=None, whiten=False, advantage_level=None,
                   ent_coef=0.0, reward_clip=None, reward_norm=False, init=None, n_starts=3,
                   seed=0, tol=1e-12, max_iter=50, flow_steps=20_000, backend=None,
                   n_threads=None):
    """The exact target of a SampledPPO configuration: the policy its expected update fixes.

    The arguments mirror :class:`fastppo.SampledPPO`; the module docstring derives each
    target. Summary (β = ``kl_coef``, c = :func:`advantage_scale`, α = ``ent_coef``):

    ============  =========  =============================================================
    estimator     placement  target
    ============  =========  =============================================================
    k1            reward     regularized optimum, KL(π‖π_ref), τ = β (any c) (SPEC §1);
                             with α > 0 the fixed point π ∝ π_ref^{cβ/(cβ+α)}
                             exp(cQ̃^π/(cβ+α)) (§6)
    k1 (or β=0)   loss       optimum of the plain MDP (the KL has no expected gradient);
                             with α > 0 the fixed point π = softmax(cQ^π/α) (§6)
    k2            loss       fixed point π = greedy_{KL(·‖π_ref), β/c}(Q^π), Q^π plain
                             (with α: KL(·‖π_ref^{β/(β+α)}), τ = (β+α)/c)
    k3            loss       fixed point π = greedy_{KL(π_ref‖·), β/c}(Q^π), Q^π plain
                             (with α: the sum of both penalties, §6)
    k2, k3        reward     the attracting fixed point of the expected update if there is
                             one; NoTargetError when it drives an action to 0 (always with
                             a uniform π_ref and α = 0)
    ============  =========  =============================================================

    Sequence-level advantages at γ < 1 weigh the advantage part of state s by γ^t(s)
    (module §2): with a loss-placed KL or α > 0 the target then needs each state to have
    one depth t(s) (token MDPs), else NoTargetError. Reward clipping computes the target
    on the MDP with clipped rewards (``J_plain`` / ``J_reg`` stay on the MDP's own).

    Parameters
    ----------
    mdp : MDP
    reg : ReverseKL or None
        SampledPPO's objective: π_ref (uniform when None) and the default β = τ; ``J_reg``
        is measured on it.
    kl_coef : float ≥ 0, optional
        β; default ``reg.tau`` (0 without a regularizer). A fixed β: the adaptive controller
        (``kl_target_step``, ``kl_target_sequence``) has no fixed target.
    kl_estimator : {"k1", "k2", "k3"}, default "k1"
    kl_penalty : {"reward", "loss"}, default "reward"
    advantage : {"gae", "dr_grpo", "rloo", "reinforce"}, default "gae"
        ``grpo`` raises NoTargetError.
    group_size : int, optional
        G of dr_grpo (default 8, as SampledPPO).
    whiten : bool, default False
        True raises NoTargetError with the KL in the loss or an entropy bonus (§2); with
        the KL in the reward it does not move the target.
    advantage_level : {"sequence", "step"}, optional
        As for SampledPPO (default "sequence" for the group forms, "step" otherwise).
    ent_coef : float ≥ 0, default 0
        α, the entropy bonus α H(π(·|s)) in the loss (a penalty α KL(π‖uniform), §6).
    reward_clip : float or (float, float), optional
        The environment rewards clipped to [−c, c] or [low, high] before the KL penalty.
    reward_norm : bool, default False
        True raises NoTargetError, unless without KL and entropy bonus at γ = 1.
    init : array_like, optional
        SampledPPO's initial logits (default log π_ref): the first start.
    n_starts : int, default 3
        Starts for the uniqueness check: SampledPPO's start, then random logits (seeded),
        and (fixed points of §3) the regularized optimum with a similar penalty.
    seed : int, default 0
        Seeds the random starts and the flow's nudge.
    tol : float, default 1e-12
        Fixed-point residual (see ``SampledTarget.residual``), relative to max(1, max|Q^π|).
        If round-off keeps the residual above it (small τ at γ near 1), the result says
        ``converged=False`` and a ConvergenceWarning is issued.
    max_iter : int, default 50
        Newton steps per start.
    flow_steps : int, default 20000
        Steps of the expected-update flow (reward-placed k2/k3) per start.
    backend, n_threads
        Kernel backend and threads.

    Returns
    -------
    SampledTarget

    Raises
    ------
    NoTargetError
        grpo; whiten with the KL in the loss or an entropy bonus; reward_norm (but see
        above); sequence-level advantages at γ < 1 with a loss term on an MDP whose states
        have several depths; reward-placed k2/k3 whose expected update drives an action to
        probability 0 from SampledPPO's start.
    ConvergenceError
        If an iteration fails to converge.

    Examples
    --------
    >>> import numpy as np, fastppo
    >>> bandit = fastppo.MDP.from_dense(np.ones((1, 3, 1)), [[1.0, 0.5, 0.0]], gamma=0.0)
    >>> t = fastppo.sampled_target(bandit, fastppo.ReverseKL(1.0), kl_estimator="k3",
    ...                            kl_penalty="loss")
    >>> t.kind, t.divergence, np.round(t.policy, 3).tolist()
    ('fixed point', 'forward-kl', [[0.51, 0.289, 0.202]])
    """
    which, nt = resolve_backend(backend), resolve_threads(n_threads)
    opts = dict(backend=which, n_threads=nt)
    pb = _problem(mdp, reg, opts, kl_coef=kl_coef, kl_estimator=kl_estimator,
                  kl_penalty=kl_penalty, advantage=advantage, group_size=group_size, whiten=whiten,
                  advantage_level=advantage_level, ent_coef=ent_coef, reward_clip=reward_clip,
                  reward_norm=reward_norm)
    level = resolve_level(advantage, advantage_level)
    n_starts = V.check_int(n_starts, "n_starts")
    tol = V.check_positive(tol, "tol")
    max_iter = V.check_int(max_iter, "max_iter")
    flow_steps = V.check_int(flow_steps, "flow_steps")
    x_init = np.log(pb.ref) if init is None else V.check_logits(mdp, init, "init")
    from .solvers import solve

    emdp, beta, ref, c, alpha = pb.mdp, pb.beta, pb.ref, pb.c, pb.alpha
    out = dict(stable=None, spread=0.0)
    if pb.kind in ("plain", "reverse-optimum") and not pb.greedy_fixed_point:
        reg_opt = None if pb.kind == "plain" else ReverseKL(beta, ref)
        res = solve(emdp, reg_opt, backend=which, n_threads=nt)
        pi = emdp.to_pairs(res.policy)
        if pb.kind == "plain":
            # ties make the optimal policy non-unique: the residual is the Bellman optimality
            # residual max_s (max_a Q^π(s,a) − V^π(s)), in reward units
            tau = 0.0
            ev = evaluate(emdp, pi, tol=LIN_TOL, **opts)
            qmax = np.maximum.reduceat(emdp.to_pairs(ev.q), emdp.a_indptr[:-1])
            residual = float(np.max(qmax - ev.v, initial=0.0, where=~emdp.terminal))
        else:
            tau = beta
            residual = pb.greedy_residual(pi)
        if pb.kind != "plain":  # polish by soft policy-iteration steps
            pi, residual = _polish(pb, pi, residual, tol, 5)
        out.update(kind="optimum", method="solve", n_iter=res.n_iter, tau=tau,
                   divergence="none" if pb.kind == "plain" else "reverse-kl",
                   starts={"solve": 0.0})
    elif pb.greedy_fixed_point:
        rng = np.random.default_rng(seed)
        starts = [("init" if init is not None else "reference", x_init)]
        for j in range(max(0, n_starts - 2)):
            starts.append((f"random {j}", 2.0 * rng.normal(size=mdp.n_pairs)))
        if pb.forward:
            tau, start_reg = pb.beta_L / c, ForwardKL(pb.beta_L / c, ref)
        else:
            a = c * pb.beta_R + pb.beta_L
            tau = (a + alpha) / c
            tilted = np.exp(_lognormalize(emdp, (a / (a + alpha)) * np.log(ref)))
            start_reg = ReverseKL(tau, tilted)
        if n_starts >= 2:
            opt = emdp.to_pairs(solve(emdp, start_reg, backend=which, n_threads=nt).policy)
            starts.append(("optimum", np.log(np.maximum(opt, 1e-300))))
        pi, residual, n_iter, method = _loss_fixed_point(pb, x_init, tol, max_iter, flow_steps)
        found = [(starts[0][0], pi)]
        for name, x0 in starts[1:]:  # Newton only: nan where it finds nothing
            try:
                found.append((name, _loss_fixed_point(pb, x0, tol, max_iter, 0)[0]))
            except _NewtonStall:
                found.append((name, None))
        if method != "flow+newton" and any(p is not None and _state_tv(emdp, p, pi) > 1e-8
                                      for _, p in found):
            # several fixed points: the target is the one the expected update reaches from
            # SampledPPO's start
            pi, residual, n_iter, method = _loss_fixed_point(pb, x_init, tol, max_iter,
                                                             flow_steps, follow=True)
        divergence = ("forward-kl+entropy" if alpha else "forward-kl") if pb.forward else "reverse-kl"
        out.update(kind="fixed point", method=method, n_iter=n_iter, tau=tau,
                   divergence=divergence,
                   starts={name: np.nan if p is None else _state_tv(emdp, p, pi)
                           for name, p in found})
    else:
        rng = np.random.default_rng(seed)
        nudge = NUDGE * rng.normal(size=mdp.n_pairs)
        x, residual, n_iter = _reward_fixed_point(pb, x_init + nudge, tol, flow_steps)
        stable, bad = _stable(pb, x)
        if not stable:
            raise NoTargetError(
                f"kl_penalty='reward' with kl_estimator='{pb.kind[:2]}': the expected update came "
                f"to rest at a stationary point that is not stable at state {bad} (more than one "
                f"action below its reference probability, fastppo.targets section 5): no "
                f"attracting fixed point")
        pi = np.exp(x)
        found = {"init" if init is not None else "reference": 0.0}
        for j in range(n_starts - 1):
            try:
                xj, _, _ = _reward_fixed_point(pb, 2.0 * rng.normal(size=mdp.n_pairs), tol,
                                               flow_steps)
                found[f"random {j}"] = _state_tv(emdp, np.exp(xj), pi)
            except (NoTargetError, ConvergenceError):
                found[f"random {j}"] = np.inf
        out.update(kind="fixed point", method="flow+newton-krylov", n_iter=n_iter, tau=beta,
                   divergence=pb.kind, stable=True, starts=found)
    # SampledPPO never samples in terminal states (its episodes end there): its policy there
    # stays at the start
    term = mdp.terminal[mdp.s_indices]
    pi = np.where(term, np.exp(_lognormalize(mdp, x_init)), pi)
    tvs = [v for v in out["starts"].values() if not np.isnan(v)]
    out["spread"] = float(max(tvs))
    scale = max(1.0, float(np.max(np.abs(evaluate(emdp, pi, tol=LIN_TOL, **opts).q))))
    converged = residual <= tol * scale
    if not converged:
        warnings.warn(f"sampled_target: fixed-point residual {residual:.3g} above tol x "
                      f"max(1, |Q|) = {tol * scale:.3g} (round-off of the exact evaluations at "
                      f"this gamma and tau); the result says converged=False",
                      ConvergenceWarning, stacklevel=2)
    F, _ = pb.field(pi)
    J_plain = evaluate(mdp, pi, tol=LIN_TOL, **opts).J
    J_reg = J_plain if reg is None else evaluate(mdp, pi, reg, tol=LIN_TOL, **opts).J
    return SampledTarget(policy=mdp.to_table(pi.copy()), J_plain=J_plain, J_reg=J_reg,
                         kind=out["kind"], objective=pb.objective(), divergence=out["divergence"],
                         tau=float(out["tau"]), kl_coef=beta, scale=c, ent_coef=alpha,
                         advantage_level=level, reward_clip=pb.clip, method=out["method"],
                         residual=residual, update_norm=float(np.max(np.abs(F))),
                         converged=converged, n_iter=int(out["n_iter"]), spread=out["spread"],
                         starts=out["starts"], stable=out["stable"])


def tv_distance(mdp, pi, target, mu=None, *, backend=None, n_threads=None):
    """d-weighted total variation Σ_s d^π_μ(s) · ½ Σ_a |π(a|s) − π*(a|s)| to a target.

    d^π_μ is taken on the non-terminal states (renormalised there): the policy acts only
    there, and on an episodic MDP this is each state's share of the visits however close γ
    is to 1 (the discounted visitation would put almost all its mass on the absorbing
    state). Without terminal states it is d^π_μ itself.

    Parameters
    ----------
    mdp : MDP
    pi : array_like or SampledTarget
        Shape (n_pairs,) or (n_states, n_actions), or int array of shape (n_states,).
        The policy (probabilities, or sigma), e.g. SampledPPO's iterate; its visitation
        weights the states.
    target : SampledTarget or array_like
        π*: a :class:`SampledTarget` or a policy in any form ``pi`` accepts.
    mu : array_like of shape (n_states,), optional
        Start distribution of the visitation d^π_μ; ``mdp.rho`` by default.
    backend, n_threads
        Kernel backend and threads.

    Returns
    -------
    float
        In [0, 1]: 0 iff π = π* on every state π visits.
    """
    flat = V.as_policy(mdp, pi.policy if isinstance(pi, SampledTarget) else pi)
    star = V.as_policy(mdp, target.policy if isinstance(target, SampledTarget) else target, "target")
    d = visitation(mdp, flat, mu, backend=backend, n_threads=n_threads)
    return float(_acting(mdp, d) @ (0.5 * np.add.reduceat(np.abs(flat - star), mdp.a_indptr[:-1])))


def _acting(mdp, d):
    """d on the non-terminal states, renormalised (d itself without terminal states)."""
    if not mdp.terminal.any():
        return d
    d = np.where(mdp.terminal, 0.0, d)
    total = d.sum()
    return d / total if total > 0 else d
